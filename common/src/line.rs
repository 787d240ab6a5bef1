//! The visits log line: `time|referrer|user-agent|ip`, one visit per line, and its escaping.
//!
//! - time: ISO 8601 UTC, 7 fractional digits, `Z` (see [`crate::timestamp`]);
//! - referrer, user-agent: `null` when absent or empty, otherwise the header bytes (cut at the
//!   configured cap) escaped so that no value can break or forge a line and the bytes can be recovered:
//!   `\` → `\\`, `|` → `\|`; control characters (U+0000–U+001F, U+007F–U+009F), U+2028 and U+2029 as
//!   `\xHH` per UTF-8 byte; bytes that are not UTF-8 as `\xHH`; a value that is literally `null` has
//!   its first byte written `\x6e`, so a bare `null` always means "absent";
//! - ip: the visitor's address as text, or `hash-` and 32 hex digits (see [`crate::visitor_ip`]).

use std::io::Write;
use std::net::IpAddr;

use crate::{timestamp, HeaderText, Visit, VisitorIp};

/// Written in place of an absent referrer or user-agent.
pub const NULL: &[u8] = b"null";

/// Appends the visit's line, newline included, to `out`; header values are cut at `max_field_bytes`.
pub fn write_line(visit: &Visit, max_field_bytes: usize, out: &mut Vec<u8>) {
    timestamp::write(&visit.ts, out);
    for field in [&visit.referrer, &visit.user_agent] {
        out.push(b'|');
        match field {
            Some(text) => escape_into(truncate(text.as_bytes(), max_field_bytes), out),
            None => out.extend_from_slice(NULL),
        }
    }
    out.push(b'|');
    write_ip(&visit.ip, out);
    out.push(b'\n');
}

/// The address as `Display` writes it; IPv4, nearly every visit, without the formatting machinery
/// (what that saved: bench/RESULTS.md).
fn write_ip(ip: &VisitorIp, out: &mut Vec<u8>) {
    match ip {
        VisitorIp::Addr(IpAddr::V4(v4)) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        // Writing into a Vec cannot fail.
        ip => drop(write!(out, "{ip}")),
    }
}

/// The first `max` bytes of `bytes`, moved back (by at most 3 bytes) so as not to split a UTF-8 character.
pub fn truncate(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let mut end = max;
    while end > 0 && max - end < 3 && is_continuation(bytes[end]) {
        end -= 1;
    }
    if is_continuation(bytes[end]) {
        end = max; // Not UTF-8 here anyway: keep every byte the cap allows.
    }
    &bytes[..end]
}

/// Appends `bytes` escaped so that the result holds no `|`, line break or other control character.
pub fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    if bytes == NULL {
        out.extend_from_slice(b"\\x6eull");
        return;
    }
    // Most values are plain ASCII throughout: their leading plain run is copied without decoding.
    let plain = plain_prefix(bytes);
    out.extend_from_slice(&bytes[..plain]);
    for chunk in bytes[plain..].utf8_chunks() {
        let text = chunk.valid();
        let bytes = text.as_bytes();
        // Runs that need no escape are copied whole; printable ASCII is told apart without decoding.
        let (mut plain_from, mut at) = (0, 0);
        while at < bytes.len() {
            at += plain_prefix(&bytes[at..]);
            let Some(&byte) = bytes.get(at) else { break };
            let c = if byte.is_ascii() {
                char::from(byte)
            } else {
                text[at..].chars().next().expect("inside a valid chunk")
            };
            let end = at + c.len_utf8();
            // `None`: written as `\xHH` per UTF-8 byte.
            let replacement: Option<&[u8]> = match c {
                '\\' => Some(b"\\\\"),
                '|' => Some(b"\\|"),
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => None,
                _ => {
                    at = end;
                    continue;
                }
            };
            out.extend_from_slice(&bytes[plain_from..at]);
            match replacement {
                Some(replacement) => out.extend_from_slice(replacement),
                None => hex_escape(&bytes[at..end], out),
            }
            (plain_from, at) = (end, end);
        }
        out.extend_from_slice(&bytes[plain_from..]);
        hex_escape(chunk.invalid(), out);
    }
}

/// How many leading bytes are plain, checked 16 at a time where possible (the compiler turns a
/// fixed-size chunk's check into vector instructions; what that saved: bench/RESULTS.md).
fn plain_prefix(bytes: &[u8]) -> usize {
    const LANES: usize = 16;
    let whole_chunks = bytes
        .chunks_exact(LANES)
        .take_while(|chunk| chunk.iter().fold(true, |all, &b| all & is_plain(b)))
        .count();
    let checked = whole_chunks * LANES;
    checked
        + bytes[checked..]
            .iter()
            .take_while(|&&b| is_plain(b))
            .count()
}

/// Printable ASCII that is written as it is.
fn is_plain(b: u8) -> bool {
    matches!(b, b' '..=b'~') && b != b'|' && b != b'\\'
}

fn hex_escape(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]);
    }
}

/// Why a field of the log cannot be read back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnescapeError {
    #[error("a lone backslash ends the field")]
    TrailingBackslash,
    #[error("bad escape at byte {0}")]
    BadEscape(usize),
}

/// Recovers the original header bytes from a referrer or user-agent field of the log.
/// `Ok(None)` is the bare `null` of an absent header.
pub fn unescape_field(field: &[u8]) -> Result<Option<HeaderText>, UnescapeError> {
    if field == NULL {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' {
            out.push(field[i]);
            i += 1;
            continue;
        }
        match field.get(i + 1) {
            None => return Err(UnescapeError::TrailingBackslash),
            Some(b'\\' | b'|') => {
                out.push(field[i + 1]);
                i += 2;
            }
            Some(b'x') => {
                // Exactly two hex digits: `from_str_radix` alone would also take a sign (`\x+f`).
                let hex = field
                    .get(i + 2..i + 4)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
                    .ok_or(UnescapeError::BadEscape(i))?;
                out.push(hex);
                i += 4;
            }
            Some(_) => return Err(UnescapeError::BadEscape(i)),
        }
    }
    Ok(HeaderText::new(out))
}

/// Splits a log line (without its newline) into its four fields at the unescaped `|`s.
pub fn split_fields(line: &[u8]) -> Option<[&[u8]; 4]> {
    let mut fields = Vec::with_capacity(4);
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'|' => {
                fields.push(&line[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    fields.push(&line[start.min(line.len())..]);
    fields.try_into().ok()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn escaped(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        escape_into(bytes, &mut out);
        String::from_utf8(out).expect("escaped text is UTF-8")
    }

    fn visit(referrer: Option<&[u8]>, user_agent: Option<&[u8]>, ip: &str) -> Visit {
        let mut visit = Visit::new(
            Utc.with_ymd_and_hms(2022, 12, 19, 14, 16, 49).unwrap()
                + chrono::Duration::nanoseconds(960_528_000),
            referrer.and_then(HeaderText::new),
            user_agent.and_then(HeaderText::new),
            ip.parse().unwrap(),
            "edge",
        );
        visit.edge.clear();
        visit
    }

    fn line_of(visit: &Visit, cap: usize) -> String {
        let mut out = Vec::new();
        write_line(visit, cap, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_match_the_task_examples() {
        let full = visit(
            Some(b"https://google.com"),
            Some(b"SomeUserAgent 1.2.3"),
            "192.168.1.1",
        );
        assert_eq!(
            line_of(&full, 4096),
            "2022-12-19T14:16:49.9605280Z|https://google.com|SomeUserAgent 1.2.3|192.168.1.1\n"
        );
        let bare = visit(None, Some(b""), "8.8.8.8");
        assert_eq!(
            line_of(&bare, 4096),
            "2022-12-19T14:16:49.9605280Z|null|null|8.8.8.8\n"
        );
        let v6 = visit(None, None, "2001:db8::1");
        assert_eq!(
            line_of(&v6, 4096),
            "2022-12-19T14:16:49.9605280Z|null|null|2001:db8::1\n"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::ff00:42:8329",
            "fe80::1:2:3:4",
            "hash-00112233445566778899aabbccddeeff",
        ] {
            let ip: VisitorIp = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(&ip, &mut out);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn escaping_neutralises_separators_breaks_and_controls() {
        assert_eq!(escaped(b"a|b\\c"), r"a\|b\\c");
        assert_eq!(escaped(b"x\ny\rz\t\x00\x7f"), r"x\x0ay\x0dz\x09\x00\x7f");
        assert_eq!(
            escaped("nel\u{85}ls\u{2028}ps\u{2029}".as_bytes()),
            r"nel\xc2\x85ls\xe2\x80\xa8ps\xe2\x80\xa9"
        );
        assert_eq!(escaped(b"bad\xff\xfeend"), r"bad\xff\xfeend");
        assert_eq!(
            escaped("Mozilla/5.0 (Ünïcödé; 日本)".as_bytes()),
            "Mozilla/5.0 (Ünïcödé; 日本)"
        );
        // Long plain runs are checked 16 bytes at a time: a special byte anywhere in or after them.
        for at in [0, 15, 16, 17, 31, 32, 40] {
            let mut value = vec![b'a'; 40];
            value.insert(at, b'|');
            let expected = format!("{}\\|{}", "a".repeat(at), "a".repeat(40 - at));
            assert_eq!(escaped(&value), expected, "| at {at}");
        }
        assert_eq!(escaped(b"null"), r"\x6eull");
        assert_eq!(escaped(b"nullx"), "nullx");
    }

    #[test]
    fn a_forged_line_stays_inside_its_field() {
        let forged = visit(
            None,
            Some(b"ua|1.1.1.1\n2022-01-01T00:00:00.0000000Z|x|y|6.6.6.6"),
            "9.9.9.9",
        );
        let line = line_of(&forged, 4096);
        assert_eq!(line.matches('\n').count(), 1);
        let fields = split_fields(line.trim_end().as_bytes()).unwrap();
        assert_eq!(fields[3], b"9.9.9.9");
        assert_eq!(unescape_field(fields[2]).unwrap(), forged.user_agent);
    }

    #[test]
    fn every_byte_string_round_trips() {
        let mut samples: Vec<Vec<u8>> = vec![
            b"|".to_vec(),
            b"\\".to_vec(),
            b"\\x41".to_vec(),
            b"\\|\\\\||".to_vec(),
            b"null".to_vec(),
            "\u{2028}\u{2029}\u{9f}\u{a0}".as_bytes().to_vec(),
            b"\xc3".to_vec(),
            b"\xe2\x80".to_vec(),
            b"ok\xed\xa0\x80surrogate".to_vec(),
        ];
        samples.push((0u8..=255).collect());
        samples.push((0u8..=255).rev().cycle().take(1000).collect());
        for sample in samples {
            let text = escaped(&sample);
            assert!(!text.contains('|') || text.contains("\\|"));
            assert!(!text.bytes().any(|b| b < 0x20 || b == 0x7f), "{text}");
            assert_eq!(
                unescape_field(text.as_bytes()).unwrap().unwrap().as_bytes(),
                &sample[..]
            );
            let line = line_of(&visit(Some(&sample), Some(&sample), "1.2.3.4"), usize::MAX);
            let fields = split_fields(line.trim_end_matches('\n').as_bytes()).unwrap();
            assert_eq!(
                unescape_field(fields[1]).unwrap().unwrap().as_bytes(),
                &sample[..]
            );
            assert_eq!(fields[3], b"1.2.3.4");
        }
        assert_eq!(unescape_field(b"null").unwrap(), None);
    }

    #[test]
    fn malformed_escapes_are_errors() {
        assert_eq!(
            unescape_field(b"a\\"),
            Err(UnescapeError::TrailingBackslash)
        );
        assert_eq!(unescape_field(b"a\\q"), Err(UnescapeError::BadEscape(1)));
        assert_eq!(unescape_field(b"\\x4"), Err(UnescapeError::BadEscape(0)));
        assert_eq!(unescape_field(b"\\xzz"), Err(UnescapeError::BadEscape(0)));
        for sign in [&b"\\x+f"[..], b"\\x-f", b"\\x+0", b"ab\\x+F"] {
            assert!(unescape_field(sign).is_err(), "{sign:?}");
        }
    }

    #[test]
    fn the_cap_cuts_at_a_character_boundary() {
        assert_eq!(truncate(b"abcdef", 4), b"abcd");
        assert_eq!(truncate(b"abc", 4), b"abc");
        let text = "aé日".as_bytes(); // 1 + 2 + 3 bytes
        assert_eq!(truncate(text, 2), b"a");
        assert_eq!(truncate(text, 3), "aé".as_bytes());
        assert_eq!(truncate(text, 5), "aé".as_bytes());
        assert_eq!(truncate(b"\x80\x80\x80\x80\x80", 4), b"\x80\x80\x80\x80");
        let long = visit(
            Some(&[b'r'; 5000]),
            Some("é".repeat(3000).as_bytes()),
            "1.2.3.4",
        );
        let line = line_of(&long, 4096);
        let fields = split_fields(line.trim_end().as_bytes()).unwrap();
        assert_eq!(fields[1].len(), 4096);
        assert_eq!(fields[2].len(), 4096);
    }
}
