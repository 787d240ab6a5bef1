//! `privacy.referrer = strip_query | origin`: what is kept of the `Referer` header.

use std::borrow::Cow;

/// The referrer up to its first `?` or `#`. Works on the raw bytes, so a header that is not UTF-8
/// (or not a URL) still loses everything after them.
pub fn strip_query(referrer: &[u8]) -> &[u8] {
    match memchr::memchr2(b'?', b'#', referrer) {
        Some(end) => &referrer[..end],
        None => referrer,
    }
}

/// `scheme://host[:port]` of the referrer, as browsers serialise an origin (host lowercased, IDN in
/// punycode, default port left out, user and password dropped). `None` when the referrer has no such
/// origin (not UTF-8, not a URL, or a URL without a host such as `data:`): nothing of it is kept.
pub fn origin(referrer: &[u8]) -> Option<Cow<'static, [u8]>> {
    let url = url::Url::parse(std::str::from_utf8(referrer).ok()?).ok()?;
    let origin = url.origin();
    origin
        .is_tuple()
        .then(|| Cow::Owned(origin.ascii_serialization().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_query_drops_query_and_fragment() {
        let cases: [(&[u8], &[u8]); 6] = [
            (
                b"https://shop.example/cart?email=a@b.example&t=1",
                b"https://shop.example/cart",
            ),
            (
                b"https://shop.example/doc#section-2",
                b"https://shop.example/doc",
            ),
            (b"https://a.example/x#f?q", b"https://a.example/x"),
            (b"https://a.example/plain", b"https://a.example/plain"),
            (b"?everything", b""),
            (b"\xff\xfe/x?token=\xff", b"\xff\xfe/x"),
        ];
        for (referrer, kept) in cases {
            assert_eq!(strip_query(referrer), kept);
        }
    }

    #[test]
    fn origin_keeps_scheme_host_and_port_only() {
        let cases: [(&[u8], Option<&str>); 8] = [
            (
                b"https://user:secret@Shop.Example:8443/cart?email=a@b.example#x",
                Some("https://shop.example:8443"),
            ),
            (b"https://shop.example:443/a", Some("https://shop.example")),
            (
                b"http://[2001:db8::1]:8080/",
                Some("http://[2001:db8::1]:8080"),
            ),
            (
                "https://bücher.example/".as_bytes(),
                Some("https://xn--bcher-kva.example"),
            ),
            (b"data:text/html,<h1>hi</h1>", None),
            (b"not a url", None),
            (b"https://a.example/\xff", None),
            (b"", None),
        ];
        for (referrer, kept) in cases {
            assert_eq!(
                origin(referrer).as_deref(),
                kept.map(str::as_bytes),
                "{}",
                String::from_utf8_lossy(referrer)
            );
        }
    }
}
