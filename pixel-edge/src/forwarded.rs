//! `http.trusted_proxies`: the visitor address behind load balancers and CDNs that name their client
//! in `X-Forwarded-For` or `Forwarded`. The header is read only when the connection's client is a
//! trusted proxy, and then right to left: each proxy appends the address it got the request from, so
//! the first address that is not a trusted proxy is the visitor, and whatever lies left of it was
//! written by someone we do not trust.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Deserialize;
use warp::http::HeaderMap;

/// Which header the trusted proxies write: only that one is read, since a proxy passes any other on
/// untouched, whatever the visitor put in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ForwardedHeader {
    #[default]
    #[serde(rename = "X-Forwarded-For", alias = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239: `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::17]:4711"`.
    #[serde(rename = "Forwarded", alias = "forwarded")]
    Forwarded,
}

/// The proxies whose word on the visitor is taken.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    pub networks: Vec<IpNet>,
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    fn trusts(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.networks.iter().any(|net| net.contains(&addr))
    }

    /// The visitor of a request that came from `client` (the TCP peer, or the source a PROXY
    /// header named) with `headers`.
    pub fn visitor(&self, client: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(client) {
            return client;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut visitor = client;
        // A proxy appends to the last line of the header, so lines are read last first too.
        for line in headers.get_all(name).iter().rev() {
            let Ok(line) = line.to_str() else {
                return visitor;
            };
            for hop in line.rsplit(',') {
                let hop = match self.header {
                    ForwardedHeader::XForwardedFor => parse_address(hop),
                    ForwardedHeader::Forwarded => forwarded_for(hop).and_then(parse_address),
                };
                // Assumption: an entry that is no address ("unknown", an obfuscated name, garbage)
                // ends the walk at the last proxy we trust, the nearest hop we can vouch for.
                let Some(hop) = hop else {
                    return visitor;
                };
                visitor = hop;
                if !self.trusts(hop) {
                    return hop;
                }
            }
        }
        // Every hop is a trusted proxy: the request started inside; the left-most hop is its origin.
        visitor
    }
}

/// The `for=` value of one `Forwarded` element (`for=...;proto=...;by=...`), unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`.
fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// `http.trusted_proxies` comes as a JSON list from the settings file, or as one comma-separated
/// string from an environment variable (`TRACKER__HTTP__TRUSTED_PROXIES=10.0.0.0/8,192.168.0.0/16`).
pub fn deserialize_networks<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Networks {
        List(Vec<String>),
        Text(String),
    }
    let texts = match Networks::deserialize(deserializer)? {
        Networks::List(list) => list,
        Networks::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    texts
        .iter()
        .map(|text| text.trim())
        .filter(|text| !text.is_empty())
        .map(|text| {
            // A bare address is a network of one.
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!("{text:?} is not a CIDR such as 10.0.0.0/8"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn proxies(header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies {
            networks: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8:f::/48".parse().unwrap(),
            ],
            header,
        }
    }

    fn headers(name: &'static str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(name, HeaderValue::from_str(line).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn from_an_untrusted_peer_the_headers_are_ignored() {
        let spoofed = headers("x-forwarded-for", &["198.51.100.1"]);
        let xff = proxies(ForwardedHeader::XForwardedFor);
        assert_eq!(xff.visitor(ip("203.0.113.9"), &spoofed), ip("203.0.113.9"));
        let none = TrustedProxies::default();
        assert_eq!(none.visitor(ip("10.0.0.1"), &spoofed), ip("10.0.0.1"));
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_visitor() {
        let xff = proxies(ForwardedHeader::XForwardedFor);
        // The visitor forged the first entry; the balancer 10.0.0.5 appended the real address.
        let map = headers("x-forwarded-for", &["1.1.1.1, 203.0.113.9, 10.0.0.5"]);
        assert_eq!(xff.visitor(ip("10.0.0.2"), &map), ip("203.0.113.9"));
        let lines = headers("x-forwarded-for", &["1.1.1.1", "203.0.113.9:5500,10.0.0.5"]);
        assert_eq!(xff.visitor(ip("10.0.0.2"), &lines), ip("203.0.113.9"));
        let v6 = headers("x-forwarded-for", &["[2001:db8::9]:443, 2001:db8:f::1"]);
        assert_eq!(xff.visitor(ip("::ffff:10.0.0.2"), &v6), ip("2001:db8::9"));
    }

    #[test]
    fn the_forwarded_header_is_read_only_when_chosen() {
        let map = {
            let mut map = headers(
                "forwarded",
                &[r#"for=1.1.1.1, for="[2001:db8::9]:4711";proto=https, For=10.0.0.5;by=10.0.0.2"#],
            );
            map.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
            map
        };
        let forwarded = proxies(ForwardedHeader::Forwarded);
        assert_eq!(forwarded.visitor(ip("10.0.0.2"), &map), ip("2001:db8::9"));
        let xff = proxies(ForwardedHeader::XForwardedFor);
        assert_eq!(xff.visitor(ip("10.0.0.2"), &map), ip("198.51.100.1"));
    }

    #[test]
    fn without_a_usable_entry_the_nearest_trusted_hop_is_the_visitor() {
        let xff = proxies(ForwardedHeader::XForwardedFor);
        let cases = [
            (vec![], "10.0.0.2"),
            (vec!["203.0.113.9, not-an-address, 10.0.0.5"], "10.0.0.5"),
            (vec!["10.0.0.7, 10.0.0.5"], "10.0.0.7"),
        ];
        for (lines, visitor) in cases {
            let map = headers("x-forwarded-for", &lines);
            assert_eq!(xff.visitor(ip("10.0.0.2"), &map), ip(visitor), "{lines:?}");
        }
        let forwarded = proxies(ForwardedHeader::Forwarded);
        let map = headers("forwarded", &["for=unknown;proto=http"]);
        assert_eq!(forwarded.visitor(ip("10.0.0.2"), &map), ip("10.0.0.2"));
        let mut bytes = HeaderMap::new();
        bytes.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff1.1.1.1").unwrap(),
        );
        assert_eq!(xff.visitor(ip("10.0.0.2"), &bytes), ip("10.0.0.2"));
    }

    #[test]
    fn networks_come_from_a_list_or_a_comma_separated_string() {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(deserialize_with = "deserialize_networks")]
            nets: Vec<IpNet>,
        }
        let list: Probe = serde_json::from_str(r#"{"nets": ["10.0.0.0/8", "::1"]}"#).unwrap();
        assert_eq!(
            list.nets,
            ["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
        );
        let text: Probe =
            serde_json::from_str(r#"{"nets": "10.0.0.0/8, 192.168.0.0/16"}"#).unwrap();
        assert_eq!(text.nets.len(), 2);
        let empty: Probe = serde_json::from_str(r#"{"nets": ""}"#).unwrap();
        assert!(empty.nets.is_empty());
        let err = serde_json::from_str::<Probe>(r#"{"nets": "10.0.0.0/33"}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }
}
