//! The one validated visit type: a pixel request as the edge saw it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::VisitorIp;

/// A request header's value as the raw bytes the client sent: browsers and bots may send any bytes,
/// and none of them may be lost or allowed to break a log line. Never empty: an empty header is no header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderText(Vec<u8>);

impl HeaderText {
    /// `None` for an empty value, so that "absent" and "empty" are one case downstream.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let bytes = bytes.into();
        (!bytes.is_empty()).then_some(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One visit: who asked for the pixel, from where, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    /// UUID v7 given by the edge; the sink uses it to recognise redelivered events.
    pub id: Uuid,
    /// When the request arrived at the edge.
    pub ts: DateTime<Utc>,
    pub referrer: Option<HeaderText>,
    pub user_agent: Option<HeaderText>,
    /// The visitor's address (an IPv4-mapped IPv6 address is stored as the IPv4 address), or what
    /// the edge's privacy settings keep of it.
    pub ip: VisitorIp,
    /// The id of the edge that took the request.
    pub edge: String,
}

impl Visit {
    /// A visit taken now, with a fresh time-ordered id.
    pub fn new(
        ts: DateTime<Utc>,
        referrer: Option<HeaderText>,
        user_agent: Option<HeaderText>,
        ip: VisitorIp,
        edge: &str,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            ts,
            referrer,
            user_agent,
            ip,
            edge: edge.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_header_is_no_header() {
        assert_eq!(HeaderText::new(Vec::new()), None);
        assert_eq!(HeaderText::new("a").unwrap().as_bytes(), b"a");
    }

    #[test]
    fn ipv4_mapped_peer_is_recorded_as_ipv4() {
        let mapped = "::ffff:1.2.3.4".parse::<std::net::IpAddr>().unwrap().into();
        let visit = Visit::new(Utc::now(), None, None, mapped, "e");
        assert_eq!(visit.ip.to_string(), "1.2.3.4");
        let v6 = "2001:db8::1".parse().unwrap();
        assert_eq!(
            Visit::new(Utc::now(), None, None, v6, "e").ip.to_string(),
            "2001:db8::1"
        );
    }
}
