//! `privacy.*` applied to each visit before it leaves the edge, so that what the settings drop never
//! reaches the broker or the log: what is kept of the visitor's address and referrer, and what an
//! opt-out signal (`Sec-GPC: 1`, `DNT: 1`) changes.

mod hash_key;
mod ip;
mod referrer;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use common::configuration::SettingsError;
use common::VisitorIp;
use warp::http::HeaderMap;

use self::hash_key::HashKey;
use self::ip::{truncate, Prefixes};
use self::referrer::{origin, strip_query};
use crate::configuration::{IpMode, OptOutMode, PrivacySettings, ReferrerMode};

/// The privacy settings made ready for requests: the hash key loaded or drawn.
pub struct Privacy {
    ip: IpRule,
    referrer: ReferrerMode,
    /// What `opt_out = anonymize` keeps of the address: always `truncate`.
    anonymized_ip: IpRule,
    opt_out: OptOutMode,
    honour_gpc: bool,
    honour_dnt: bool,
}

enum IpRule {
    Full,
    Truncate(Prefixes),
    Hash(HashKey),
}

/// What is kept of one visit.
pub struct Rules<'a> {
    ip: &'a IpRule,
    referrer: ReferrerMode,
}

impl Privacy {
    /// Reads (or creates) `privacy.hash_key_file`, or draws the first daily key.
    pub fn new(settings: &PrivacySettings) -> Result<Self, SettingsError> {
        let prefixes = Prefixes {
            v4: settings.ipv4_prefix,
            v6: settings.ipv6_prefix,
        };
        let ip = match (settings.ip, &settings.hash_key_file) {
            (IpMode::Full, _) => IpRule::Full,
            (IpMode::Truncate, _) => IpRule::Truncate(prefixes),
            (IpMode::Hash, Some(file)) => IpRule::Hash(HashKey::from_file(file)?),
            (IpMode::Hash, None) => IpRule::Hash(HashKey::daily(Utc::now()).map_err(|err| {
                SettingsError::invalid("privacy.ip", format!("no random key for hash: {err}"))
            })?),
        };
        Ok(Self {
            ip,
            referrer: settings.referrer,
            anonymized_ip: IpRule::Truncate(prefixes),
            opt_out: settings.opt_out,
            honour_gpc: settings.honour_gpc,
            honour_dnt: settings.honour_dnt,
        })
    }

    /// The rules for a request with these headers; `None` when it must not be recorded at all (an
    /// honoured opt-out signal under `opt_out = skip`).
    pub fn rules(&self, headers: &HeaderMap) -> Option<Rules<'_>> {
        let as_configured = Rules {
            ip: &self.ip,
            referrer: self.referrer,
        };
        match self.opt_out {
            OptOutMode::Ignore => Some(as_configured),
            _ if !self.opted_out(headers) => Some(as_configured),
            OptOutMode::Anonymize => Some(Rules {
                ip: &self.anonymized_ip,
                referrer: ReferrerMode::Origin,
            }),
            OptOutMode::Skip => None,
        }
    }

    fn opted_out(&self, headers: &HeaderMap) -> bool {
        // Both signals are defined with the single value `1`; anything else (`0`, garbage) is no signal.
        let says_one = |name| {
            headers
                .get(name)
                .is_some_and(|value| value.as_bytes().trim_ascii() == b"1")
        };
        (self.honour_gpc && says_one("sec-gpc")) || (self.honour_dnt && says_one("dnt"))
    }
}

impl Rules<'_> {
    /// What the log keeps of the visitor's address, for a visit taken at `ts`.
    pub fn ip(&self, ip: IpAddr, ts: DateTime<Utc>) -> VisitorIp {
        match self.ip {
            IpRule::Full => ip.into(),
            IpRule::Truncate(prefixes) => truncate(ip, *prefixes).into(),
            IpRule::Hash(key) => VisitorIp::Hashed(key.hash(ip, ts)),
        }
    }

    /// What the log keeps of a `Referer` header; `None` when nothing of it may be kept.
    pub fn referrer<'r>(&self, referrer: &'r [u8]) -> Option<Cow<'r, [u8]>> {
        match self.referrer {
            ReferrerMode::Full => Some(Cow::Borrowed(referrer)),
            ReferrerMode::StripQuery => Some(Cow::Borrowed(strip_query(referrer))),
            ReferrerMode::Origin => origin(referrer),
        }
    }
}

/// The effective settings, for the start-up log line: `ip=… referrer=… opt_out=…`.
impl fmt::Display for Privacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ip={}", self.ip)?;
        let referrer = match self.referrer {
            ReferrerMode::Full => "full",
            ReferrerMode::StripQuery => "strip_query",
            ReferrerMode::Origin => "origin",
        };
        write!(f, " referrer={referrer} opt_out=")?;
        let signals = [(self.honour_gpc, "Sec-GPC"), (self.honour_dnt, "DNT")]
            .into_iter()
            .filter_map(|(honoured, name)| honoured.then_some(name))
            .collect::<Vec<_>>()
            .join(", ");
        match self.opt_out {
            OptOutMode::Ignore => f.write_str("ignore"),
            OptOutMode::Skip => write!(f, "skip(on {signals})"),
            OptOutMode::Anonymize => write!(
                f,
                "anonymize(on {signals}: ip={} referrer=origin)",
                self.anonymized_ip
            ),
        }
    }
}

impl fmt::Display for IpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpRule::Full => f.write_str("full"),
            IpRule::Truncate(Prefixes { v4, v6 }) => write!(f, "truncate(/{v4}, /{v6})"),
            IpRule::Hash(key) => write!(f, "hash({})", key.source()),
        }
    }
}

#[cfg(test)]
mod tests {
    use warp::http::HeaderValue;

    use super::*;

    fn configured(edit: impl FnOnce(&mut PrivacySettings)) -> Privacy {
        let mut settings = PrivacySettings::default();
        edit(&mut settings);
        Privacy::new(&settings).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.parse().unwrap(), HeaderValue::from_static(value)))
            .collect()
    }

    const REFERRER: &[u8] = b"https://user:pw@shop.example:8443/cart?email=a@b.example#top";

    /// The address and referrer one visit from 192.168.1.77 is recorded with.
    fn recorded(privacy: &Privacy, headers: &HeaderMap) -> Option<(String, Option<Vec<u8>>)> {
        let rules = privacy.rules(headers)?;
        let ip = rules.ip("192.168.1.77".parse().unwrap(), Utc::now());
        Some((
            ip.to_string(),
            rules.referrer(REFERRER).map(Cow::into_owned),
        ))
    }

    #[test]
    fn the_defaults_keep_everything_even_for_an_opted_out_visitor() {
        let privacy = configured(|_| {});
        let signals = headers(&[("sec-gpc", "1"), ("dnt", "1")]);
        let full = Some(("192.168.1.77".to_owned(), Some(REFERRER.to_vec())));
        assert_eq!(recorded(&privacy, &signals), full);
        assert_eq!(privacy.to_string(), "ip=full referrer=full opt_out=ignore");
    }

    #[test]
    fn each_mode_applies_to_every_visit() {
        let privacy = configured(|s| {
            s.ip = IpMode::Truncate;
            s.referrer = ReferrerMode::StripQuery;
        });
        assert_eq!(
            recorded(&privacy, &headers(&[])),
            Some((
                "192.168.1.0".into(),
                Some(b"https://user:pw@shop.example:8443/cart".to_vec())
            ))
        );
        let privacy = privacy_hashing_to_origin();
        let (ip, referrer) = recorded(&privacy, &headers(&[])).unwrap();
        assert!(ip.starts_with("hash-") && ip.len() == 37, "{ip}");
        assert_eq!(referrer.unwrap(), b"https://shop.example:8443");
        assert_eq!(
            privacy.to_string(),
            "ip=hash(random key in memory, replaced daily) referrer=origin opt_out=ignore"
        );
    }

    fn privacy_hashing_to_origin() -> Privacy {
        configured(|s| {
            s.ip = IpMode::Hash;
            s.referrer = ReferrerMode::Origin;
        })
    }

    #[test]
    fn anonymize_truncates_and_keeps_the_origin_whatever_the_other_settings() {
        let privacy = configured(|s| {
            s.ip = IpMode::Hash;
            s.ipv4_prefix = 16;
            s.opt_out = OptOutMode::Anonymize;
        });
        let anonymized = Some((
            "192.168.0.0".to_owned(),
            Some(b"https://shop.example:8443".to_vec()),
        ));
        assert_eq!(
            recorded(&privacy, &headers(&[("sec-gpc", "1")])),
            anonymized
        );
        assert_eq!(recorded(&privacy, &headers(&[("dnt", " 1 ")])), anonymized);
        for no_signal in [&[][..], &[("dnt", "0")], &[("sec-gpc", "yes")]] {
            let (ip, referrer) = recorded(&privacy, &headers(no_signal)).unwrap();
            assert!(ip.starts_with("hash-"), "{no_signal:?}: {ip}");
            assert_eq!(referrer.unwrap(), REFERRER);
        }
        assert_eq!(
            privacy.to_string(),
            "ip=hash(random key in memory, replaced daily) referrer=full \
             opt_out=anonymize(on Sec-GPC, DNT: ip=truncate(/16, /48) referrer=origin)"
        );
    }

    #[test]
    fn skip_records_nothing_and_each_signal_can_be_switched_off() {
        let privacy = configured(|s| {
            s.opt_out = OptOutMode::Skip;
            s.honour_dnt = false;
        });
        assert!(privacy.rules(&headers(&[("sec-gpc", "1")])).is_none());
        assert!(privacy.rules(&headers(&[("dnt", "1")])).is_some());
        assert_eq!(
            privacy.to_string(),
            "ip=full referrer=full opt_out=skip(on Sec-GPC)"
        );
        let privacy = configured(|s| {
            s.opt_out = OptOutMode::Skip;
            s.honour_gpc = false;
        });
        assert!(privacy.rules(&headers(&[("sec-gpc", "1")])).is_some());
        assert!(privacy.rules(&headers(&[("dnt", "1")])).is_none());
    }

    #[test]
    fn an_origin_less_referrer_is_dropped() {
        let privacy = privacy_hashing_to_origin();
        let rules = privacy.rules(&headers(&[])).unwrap();
        assert_eq!(rules.referrer(b"android-app://com.example/"), None);
        assert_eq!(rules.referrer(b"garbage \xff"), None);
    }
}
