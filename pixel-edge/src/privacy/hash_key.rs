//! `privacy.ip = hash`: HMAC-SHA256 of the address's bytes under a secret key, cut to
//! [`IpHash::LEN`] bytes. Without the key nobody can tell which address a hash stands for (all of
//! IPv4 is only 2^32 guesses, so a plain hash would hide nothing).

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use common::configuration::SettingsError;
use common::visitor_ip::IpHash;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of key: SHA-256's output size, as RFC 2104 recommends at least.
const KEY_LEN: usize = 32;
const SECONDS_PER_DAY: i64 = 86_400;

pub enum HashKey {
    /// From `privacy.hash_key_file`: the same on every day, and on every edge given the same file.
    Fixed { mac: HmacSha256, file: PathBuf },
    /// Random, held in memory only and replaced on the first visit of each UTC day, so that once a
    /// day is over its hashes can be neither recomputed nor linked to another day's.
    Daily(Mutex<DayKey>),
}

pub struct DayKey {
    /// Days since 1970-01-01 UTC.
    day: i64,
    mac: HmacSha256,
}

impl HashKey {
    /// A fresh random key for the day of `now`.
    pub fn daily(now: DateTime<Utc>) -> Result<Self, getrandom::Error> {
        Ok(Self::Daily(Mutex::new(DayKey {
            day: day_of(now),
            mac: random_mac()?,
        })))
    }

    /// The key in `path` (base64 of 32 bytes); when there is no such file, a random key written there
    /// first, readable by its owner only.
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let invalid = |message: String| {
            SettingsError::invalid(
                "privacy.hash_key_file",
                format!("{}: {message}", path.display()),
            )
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                create_key_file(path).map_err(|err| invalid(format!("creating it: {err}")))?
            }
            Err(err) => return Err(invalid(err.to_string())),
        };
        let key = BASE64
            .decode(text.trim())
            .ok()
            .filter(|key| key.len() == KEY_LEN)
            .ok_or_else(|| {
                invalid(format!(
                    "must hold base64 of {KEY_LEN} bytes (`openssl rand -base64 {KEY_LEN}`)"
                ))
            })?;
        Ok(Self::Fixed {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length"),
            file: path.to_owned(),
        })
    }

    /// The hash of `ip` (made canonical first) for a visit taken at `ts`.
    pub fn hash(&self, ip: IpAddr, ts: DateTime<Utc>) -> IpHash {
        let mut mac = match self {
            Self::Fixed { mac, .. } => mac.clone(),
            Self::Daily(key) => key
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .for_day(day_of(ts)),
        };
        match ip.to_canonical() {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let digest = mac.finalize().into_bytes();
        IpHash::new(
            digest[..IpHash::LEN]
                .try_into()
                .expect("SHA-256 is 32 bytes"),
        )
    }

    /// Where the key comes from, for the start-up log line.
    pub fn source(&self) -> String {
        match self {
            Self::Fixed { file, .. } => format!("key from {}", file.display()),
            Self::Daily(_) => "random key in memory, replaced daily".into(),
        }
    }
}

impl DayKey {
    /// The key of `day`, drawn now if `day` is a new one. A visit stamped just before midnight but
    /// hashed after the change gets the new day's key: the old one is gone, as it should be.
    fn for_day(&mut self, day: i64) -> HmacSha256 {
        if day > self.day {
            // The same OS source every visit's UUID is drawn from: if it fails, so does `Visit::new`.
            self.mac = random_mac().expect("the OS random source");
            self.day = day;
        }
        self.mac.clone()
    }
}

fn day_of(ts: DateTime<Utc>) -> i64 {
    ts.timestamp().div_euclid(SECONDS_PER_DAY)
}

fn random_mac() -> Result<HmacSha256, getrandom::Error> {
    let mut key = [0; KEY_LEN];
    getrandom::fill(&mut key)?;
    Ok(HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length"))
}

/// Writes a new random key to `path` and returns the file's text. Another edge sharing the file may
/// create it first: then its key is the one read.
fn create_key_file(path: &Path) -> std::io::Result<String> {
    let mut key = [0; KEY_LEN];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    let text = BASE64.encode(key) + "\n";
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            Ok(text)
        }
        Err(err) if err.kind() == ErrorKind::AlreadyExists => std::fs::read_to_string(path),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use chrono::TimeZone;
    use common::VisitorIp;

    use super::*;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, day, hour, 0, 0).unwrap()
    }

    fn key_file(dir: &Path, key: &[u8]) -> PathBuf {
        let path = dir.join("hash.key");
        std::fs::write(&path, BASE64.encode(key) + "\n").unwrap();
        path
    }

    #[test]
    fn the_hash_is_hmac_sha256_of_the_address_bytes_cut_to_16_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let key = HashKey::from_file(&key_file(dir.path(), &[0x0b; KEY_LEN])).unwrap();
        // `printf '\xc0\xa8\x01\x01' | openssl dgst -sha256 -mac HMAC -macopt hexkey:0b0b…0b`
        // (the key: 32 bytes of 0x0b), its first 32 hex digits.
        let expected = "hash-25b63aafb1de82fd63c1482a8eb47055";
        let ip: std::net::IpAddr = "192.168.1.1".parse().unwrap();
        assert_eq!(
            VisitorIp::Hashed(key.hash(ip, at(1, 0))).to_string(),
            expected
        );
        let mapped = "::ffff:192.168.1.1".parse().unwrap();
        assert_eq!(key.hash(mapped, at(1, 0)), key.hash(ip, at(1, 0)));
        for other in ["192.168.1.2", "::1", "::", "::c0a8:101"] {
            assert_ne!(
                key.hash(other.parse().unwrap(), at(1, 0)),
                key.hash(ip, at(1, 0))
            );
        }
        assert_eq!(
            key.hash(ip, at(9, 0)),
            key.hash(ip, at(1, 0)),
            "a file key is kept"
        );
    }

    #[test]
    fn the_daily_key_is_random_and_changes_with_the_day() {
        let ip = "203.0.113.9".parse().unwrap();
        let key = HashKey::daily(at(1, 0)).unwrap();
        let first = key.hash(ip, at(1, 10));
        assert_eq!(key.hash(ip, at(1, 23)), first);
        let second = key.hash(ip, at(2, 0));
        assert_ne!(second, first);
        assert_eq!(key.hash(ip, at(1, 23)), second, "yesterday's key is gone");
        let other_edge = HashKey::daily(at(1, 0)).unwrap();
        assert_ne!(other_edge.hash(ip, at(1, 10)), first);
    }

    #[test]
    fn a_missing_key_file_is_created_for_its_owner_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hash.key");
        let ip = "2001:db8::1".parse().unwrap();
        let created = HashKey::from_file(&path).unwrap().hash(ip, at(1, 0));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let reread = HashKey::from_file(&path).unwrap().hash(ip, at(5, 0));
        assert_eq!(reread, created);
    }

    #[test]
    fn a_bad_key_file_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let short = key_file(dir.path(), &[1; 16]);
        let not_base64 = dir.path().join("garbage.key");
        std::fs::write(&not_base64, "not base64!").unwrap();
        let unreadable = dir.path().join("no-such-dir/hash.key");
        for path in [short, not_base64, unreadable] {
            let err = HashKey::from_file(&path).err().unwrap().to_string();
            assert!(err.contains("`privacy.hash_key_file`"), "{err}");
        }
    }
}
