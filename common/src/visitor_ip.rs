//! The visitor's address as the log line and the wire event carry it: an IP address (whole, or cut to
//! a prefix by the edge's `privacy.ip = truncate`), or a keyed hash of it (`privacy.ip = hash`),
//! written `hash-` and 32 lowercase hex digits so that it can never be read as an address.
//!
//! Both forms are checked strictly when read, so the field can only ever hold an address or a hash of
//! exactly that shape: nothing else can reach the log through it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Who asked for the pixel, as far as the edge's privacy settings let it be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisitorIp {
    /// An address; an IPv4-mapped IPv6 address is held as the IPv4 address.
    Addr(IpAddr),
    /// A keyed hash of the address, made by the edge.
    Hashed(IpHash),
}

/// A keyed hash of an address, cut to [`IpHash::LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHash([u8; IpHash::LEN]);

impl IpHash {
    /// Bytes kept of the hash: 128 bits, so distinct visitors of a day practically never collide.
    pub const LEN: usize = 16;
    /// What the text form starts with; `h`, `s` and `-` appear in no IP address.
    pub const PREFIX: &'static str = "hash-";

    pub fn new(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }
}

impl From<IpAddr> for VisitorIp {
    fn from(ip: IpAddr) -> Self {
        Self::Addr(ip.to_canonical())
    }
}

/// Why a text is neither an address nor a hash of the documented shape.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid ip {0:?}: neither an IP address nor `hash-` and 32 lowercase hex digits")]
pub struct InvalidVisitorIp(String);

impl FromStr for VisitorIp {
    type Err = InvalidVisitorIp;

    /// An address (made canonical) or a hash; anything else, uppercase hex included, is refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidVisitorIp(text.to_owned());
        let Some(hex) = text.strip_prefix(IpHash::PREFIX) else {
            return text
                .parse::<IpAddr>()
                .map(Self::from)
                .map_err(|_| invalid());
        };
        let is_lower_hex = |b| matches!(b, b'0'..=b'9' | b'a'..=b'f');
        if hex.len() != 2 * IpHash::LEN || !hex.bytes().all(is_lower_hex) {
            return Err(invalid());
        }
        let mut bytes = [0; IpHash::LEN];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).expect("checked ASCII");
            *byte = u8::from_str_radix(pair, 16).expect("checked hex");
        }
        Ok(Self::Hashed(IpHash(bytes)))
    }
}

impl fmt::Display for VisitorIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(ip) => ip.fmt(f),
            Self::Hashed(IpHash(bytes)) => {
                f.write_str(IpHash::PREFIX)?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl Serialize for VisitorIp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // As before hashes existed, so that an address travels byte for byte as it always has.
            Self::Addr(ip) => ip.serialize(serializer),
            Self::Hashed(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for VisitorIp {
    /// Parsed from the string in place: a `Cow<str>` would be copied into a `String` first
    /// (measured in bench/RESULTS.md).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = VisitorIp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or `hash-` and 32 hex digits")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<VisitorIp, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "hash-00112233445566778899aabbccddeeff";

    #[test]
    fn an_address_is_canonical_and_written_as_display_writes_it() {
        for (text, written) in [
            ("192.168.1.1", "192.168.1.1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("::1", "::1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let ip: VisitorIp = text.parse().unwrap();
            assert!(matches!(ip, VisitorIp::Addr(_)));
            assert_eq!(ip.to_string(), written);
        }
    }

    #[test]
    fn a_hash_round_trips_and_is_no_address() {
        let ip: VisitorIp = HASH.parse().unwrap();
        let bytes = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        assert_eq!(ip, VisitorIp::Hashed(IpHash::new(bytes)));
        assert_eq!(ip.to_string(), HASH);
        assert!(HASH.parse::<IpAddr>().is_err());
    }

    #[test]
    fn nothing_but_an_address_or_a_well_formed_hash_is_accepted() {
        for bad in [
            "",
            "hash-",
            "hash-00112233445566778899aabbccddeef",
            "hash-00112233445566778899aabbccddeeff0",
            "hash-00112233445566778899AABBCCDDEEFF",
            "hash-0011223344556677889|aabbccddeeff",
            "hash-+0112233445566778899aabbccddeeff",
            "HASH-00112233445566778899aabbccddeeff",
            "00112233445566778899aabbccddeeff",
            "999.1.1.1",
            "1.2.3.4\n",
            "1.2.3.4|5.6.7.8",
        ] {
            let err = bad.parse::<VisitorIp>().unwrap_err();
            assert!(err.to_string().starts_with("invalid ip"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn serde_writes_the_text_form() {
        let hashed: VisitorIp = HASH.parse().unwrap();
        assert_eq!(
            serde_json::to_string(&hashed).unwrap(),
            format!("\"{HASH}\"")
        );
        let addr: VisitorIp = "10.0.0.1".parse().unwrap();
        assert_eq!(serde_json::to_string(&addr).unwrap(), "\"10.0.0.1\"");
        let back: VisitorIp = serde_json::from_str(&format!("\"{HASH}\"")).unwrap();
        assert_eq!(back, hashed);
        assert!(serde_json::from_str::<VisitorIp>("\"hash-xyz\"").is_err());
        assert!(serde_json::from_str::<VisitorIp>("7").is_err());
    }
}
