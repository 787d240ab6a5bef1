//! The edge's settings: `mqtt.*`, `http.*`, `https.*`, `edge.*`, `privacy.*` and `admin.*`, layered as described in
//! [`common::configuration`].

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use common::configuration::{MqttSettings, SettingsError, Sources};
use common::mqtt_protocol::MqttProtocol;
use common::telemetry::LogSettings;
use ipnet::IpNet;
use serde::Deserialize;

use crate::forwarded::{ForwardedHeader, TrustedProxies};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub log: LogSettings,
    pub mqtt: MqttSettings,
    pub http: HttpSettings,
    pub https: HttpsSettings,
    pub edge: EdgeSettings,
    pub admin: AdminSettings,
    pub privacy: PrivacySettings,
}

/// The admin listener: `/healthz`, `/readyz` and `/metrics`, never on the pixel's ports.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminSettings {
    /// Where the admin routes are served, e.g. `127.0.0.1:9091`.
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        // 9091: beside a sink on the same host, which takes 9090.
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9091)),
        }
    }
}

/// The plain-HTTP listener, and the limits both listeners (plain and TLS) apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Whether the pixel is served over plain HTTP at all; `false` with `https.listen` serves HTTPS only.
    pub enabled: bool,
    /// Where the pixel is served, e.g. `0.0.0.0:8080` or `[::]:8080`.
    pub listen: SocketAddr,
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: NonZeroUsize,
    /// The request line and headers together, in bytes; a bigger head is answered 431.
    pub max_header_bytes: usize,
    /// The request URI, in bytes; a longer one is answered 414.
    pub max_uri_bytes: usize,
    /// A connection that has not sent a whole request head in this time is closed; for HTTP/1 this
    /// also bounds the wait for the next request on a keep-alive connection (hyper times it so).
    pub header_read_timeout_secs: NonZeroU64,
    /// A connection with no request in progress for this long is closed (HTTP/1 keep-alive, HTTP/2
    /// with no open stream), so idle connections cannot hold `http.max_connections`.
    pub idle_timeout_secs: NonZeroU64,
    /// HTTP/2 (over TLS): a PING goes out after this long without a frame from the client...
    pub http2_keep_alive_interval_secs: NonZeroU64,
    /// ...and the connection is closed when its answer takes longer than this.
    pub http2_keep_alive_timeout_secs: NonZeroU64,
    /// Runtime worker threads (HTTP and publishing); unset, one per CPU.
    pub workers: Option<NonZeroUsize>,
    /// Every connection on the pixel listeners opens with a PROXY protocol header (v1 or v2, sent
    /// by an L4 balancer), whose source is the client; a connection without a valid one is refused.
    pub proxy_protocol: bool,
    /// Proxies (CIDRs) whose `http.forwarded_header` names the visitor; from any other client the
    /// header is ignored. Empty (the default): the client is the visitor.
    #[serde(deserialize_with = "crate::forwarded::deserialize_networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// The header the trusted proxies write: `X-Forwarded-For` or `Forwarded`.
    pub forwarded_header: ForwardedHeader,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_connections: NonZeroUsize::new(10_000).unwrap(),
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            header_read_timeout_secs: NonZeroU64::new(10).unwrap(),
            idle_timeout_secs: NonZeroU64::new(30).unwrap(),
            http2_keep_alive_interval_secs: NonZeroU64::new(20).unwrap(),
            http2_keep_alive_timeout_secs: NonZeroU64::new(10).unwrap(),
            workers: None,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
        }
    }
}

/// The TLS listener: HTTP/2 and HTTP/1.1, with a certificate that is reloaded when it changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpsSettings {
    /// Where the pixel is served over TLS, e.g. `0.0.0.0:8443`; unset, no HTTPS.
    pub listen: Option<SocketAddr>,
    /// The PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// How often the two files are checked for a renewed certificate; SIGHUP reloads at once.
    pub reload_check_secs: NonZeroU64,
}

impl Default for HttpsSettings {
    fn default() -> Self {
        Self {
            listen: None,
            cert_file: None,
            key_file: None,
            reload_check_secs: NonZeroU64::new(30).unwrap(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EdgeSettings {
    /// Names this edge in every event and in its topic `{mqtt.topic}/{edge.id}`. Unset: the host
    /// name, below the broker user's name when there is one (`{mqtt.username}/{host}`), because the
    /// broker's ACL lets a user publish only to `{mqtt.topic}/{user}` and below.
    pub id: String,
    /// Visits held in memory while the broker is slow or away; past it a visit is dropped and counted.
    pub queue_capacity: NonZeroUsize,
    /// The same queue's bound in bytes of encoded visits (long headers make a visit ~16 KB).
    pub queue_max_bytes: usize,
    /// On shutdown, how long the edge keeps trying to deliver what it holds before it gives up.
    pub drain_timeout_secs: u64,
    /// Where visits wait on disk until they are confirmed. Unset: `spool/{edge.id}` in the working
    /// directory with `edge.receipts`, and no spool (visits wait in memory only) without.
    pub spool_dir: Option<PathBuf>,
    /// Keep each visit until the sink's receipt says it is in the log, not only until the broker's
    /// PUBACK, so that even a broker crash loses nothing. Needs a spool; `false` for an edge without a disk.
    pub receipts: bool,
    /// How long after a PUBACK the edge waits for a receipt that covers it before it sends again what
    /// the receipt does not cover (the broker acknowledged it and may never have delivered it), and
    /// the start of the back-off while no receipt comes at all (see `receipt_wait`).
    pub receipt_timeout_secs: u64,
    /// The spool's bound; once it is full, new visits wait in the queue, then are dropped and counted.
    pub spool_max_bytes: u64,
    /// Referrer and user-agent are cut to this many bytes before they are queued.
    pub max_field_bytes: NonZeroUsize,
    /// Published batches (256 KiB each at most) waiting for their PUBACK, in bytes at most: the
    /// window grows to it only while full batches come back acknowledged (a long or lossy link).
    pub max_in_flight_bytes: usize,
    /// With the default spool layout (`edge.spool_dir` unset, so every edge's spool is
    /// `spool/{edge.id}`), deliver the spools under `spool/` that no edge holds, under their own edge
    /// ids (see `orphans`). Off, or with `edge.spool_dir` set, the edge looks for none.
    pub adopt_orphaned_spools: bool,
    /// How long a spool no edge holds must have been untouched before another edge adopts it.
    pub orphan_after_secs: NonZeroU64,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            // Empty: derived in `Settings::load`, once the user name is known.
            id: String::new(),
            queue_capacity: NonZeroUsize::new(100_000).unwrap(),
            queue_max_bytes: 64 * 1024 * 1024,
            drain_timeout_secs: 10,
            spool_dir: None,
            receipts: true,
            // Assumed: a sink confirms within a second or two (a synced batch, receipts coalesced
            // over 100 ms); 30 s leaves room for a slow disk before visits are sent again.
            receipt_timeout_secs: 30,
            spool_max_bytes: 256 * 1024 * 1024,
            max_field_bytes: NonZeroUsize::new(4096).unwrap(),
            max_in_flight_bytes: 8 * 1024 * 1024,
            adopt_orphaned_spools: true,
            // Assumed: an edge restarted in place (`docker restart`, a crash) is back well within
            // 5 minutes, so its spool is never adopted meanwhile.
            orphan_after_secs: NonZeroU64::new(300).unwrap(),
        }
    }
}

/// `privacy.*`: what the edge keeps of the visitor's address and referrer, and which opt-out signals
/// it honours. Applied before a visit leaves the edge, so raw values never reach the broker. The
/// defaults keep everything, as the spec asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PrivacySettings {
    pub ip: IpMode,
    /// Leading bits of an IPv4 address that `truncate` (and opt-out `anonymize`) keeps, 0 to 32.
    pub ipv4_prefix: u8,
    /// Leading bits of an IPv6 address that `truncate` (and opt-out `anonymize`) keeps, 0 to 128.
    pub ipv6_prefix: u8,
    /// The key of `hash`, base64 of 32 bytes, made by the edge when the file does not exist. Unset,
    /// the key is random, held in memory only and replaced every UTC day: setting it is how hashes
    /// stay the same across days, restarts and edges.
    pub hash_key_file: Option<PathBuf>,
    pub referrer: ReferrerMode,
    /// What an opt-out signal changes.
    pub opt_out: OptOutMode,
    /// `Sec-GPC: 1` (Global Privacy Control) is an opt-out signal.
    pub honour_gpc: bool,
    /// `DNT: 1` (Do Not Track) is an opt-out signal.
    pub honour_dnt: bool,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            ip: IpMode::Full,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            hash_key_file: None,
            referrer: ReferrerMode::Full,
            opt_out: OptOutMode::Ignore,
            honour_gpc: true,
            honour_dnt: true,
        }
    }
}

/// `privacy.ip`: what the log keeps of the visitor's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpMode {
    /// The address.
    Full,
    /// The address with all but its first `ipv4_prefix` / `ipv6_prefix` bits zeroed.
    Truncate,
    /// `hash-` and 32 hex digits: a keyed HMAC-SHA256 of the address.
    Hash,
}

/// `privacy.referrer`: what the log keeps of the `Referer` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferrerMode {
    /// The header as sent.
    Full,
    /// Without its query and fragment, where tokens and e-mail addresses leak.
    StripQuery,
    /// Scheme, host and port only.
    Origin,
}

/// `privacy.opt_out`: what a visit carrying an honoured opt-out signal becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptOutMode {
    /// Recorded like any other.
    Ignore,
    /// Recorded with `ip = truncate` and `referrer = origin`, whatever those settings say.
    Anonymize,
    /// Not recorded at all: the pixel is served and the request counted as `opted_out`.
    Skip,
}

impl Settings {
    pub fn load(sources: Sources) -> Result<Self, SettingsError> {
        let mut settings: Self = sources.load()?;
        if settings.edge.id.is_empty() {
            settings.edge.id = settings.default_edge_id();
        }
        if settings.edge.receipts && settings.edge.spool_dir.is_none() {
            // What an operator would expect: one spool per edge, so two edges on a host never share one.
            settings.edge.spool_dir = Some(default_spool_dir(&settings.edge.id));
        }
        settings.validate()?;
        Ok(settings)
    }

    // Assumption: the host name is unique among edges (it is per container under compose).
    fn default_edge_id(&self) -> String {
        let host = hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "edge".into());
        match self.mqtt.user() {
            Some(user) => format!("{user}/{host}"),
            None => host,
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        self.mqtt.validate()?;
        self.check_edge_id(&self.edge.id)?;
        if self.edge.receipts && self.edge.spool_dir.is_none() {
            return Err(SettingsError::invalid(
                "edge.receipts",
                "needs edge.spool_dir: visits wait on disk until the sink confirms them",
            ));
        }
        if self.edge.receipt_timeout_secs == 0 {
            return Err(SettingsError::invalid(
                "edge.receipt_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.edge.spool_max_bytes < 1024 * 1024 {
            return Err(SettingsError::invalid(
                "edge.spool_max_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        let http = &self.http;
        // hyper refuses a read buffer below 8 KiB.
        if http.max_header_bytes < 8192 {
            return Err(SettingsError::invalid(
                "http.max_header_bytes",
                "must be at least 8192",
            ));
        }
        if http.max_uri_bytes == 0 || http.max_uri_bytes > http.max_header_bytes {
            return Err(SettingsError::invalid(
                "http.max_uri_bytes",
                "must be between 1 and http.max_header_bytes",
            ));
        }
        self.validate_https()?;
        if self.edge.max_in_flight_bytes < 2 * crate::batch::MAX_BATCH_BYTES {
            return Err(SettingsError::invalid(
                "edge.max_in_flight_bytes",
                "must be at least 524288 (two batches)",
            ));
        }
        if self.edge.queue_max_bytes < 1024 * 1024 {
            return Err(SettingsError::invalid(
                "edge.queue_max_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        self.privacy.validate()
    }

    /// Whether `id` may name an edge connecting with these settings: topic levels, below the broker
    /// user's name (checked for the edge itself, and for each orphaned spool it would deliver).
    pub fn check_edge_id(&self, id: &str) -> Result<(), SettingsError> {
        if id.split('/').any(|level| level.is_empty()) || id.contains(['+', '#', '\0']) {
            return Err(SettingsError::invalid(
                "edge.id",
                format!("{id:?} must be non-empty topic levels, without '+' or '#'"),
            ));
        }
        if let Some(user) = self.mqtt.user() {
            let below_user = id
                .strip_prefix(user)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if !below_user {
                return Err(SettingsError::invalid(
                    "edge.id",
                    format!("{id:?} must be {user:?} or start with \"{user}/\": the broker lets user {user:?} publish only there"),
                ));
            }
        }
        Ok(())
    }

    fn validate_https(&self) -> Result<(), SettingsError> {
        let https = &self.https;
        if https.listen.is_none() {
            if !self.http.enabled {
                return Err(SettingsError::invalid(
                    "http.enabled",
                    "is false and https.listen is unset: nothing would serve the pixel",
                ));
            }
            return Ok(());
        }
        // Loading them once here makes a wrong path or a key that does not match stop start-up.
        crate::https::Certificate::load(&self.https)?;
        Ok(())
    }

    /// The MQTT topic this edge publishes to.
    pub fn topic(&self) -> String {
        format!("{}/{}", self.mqtt.topic, self.edge.id)
    }

    /// Where the sink confirms this edge's visits.
    pub fn receipt_topic(&self) -> String {
        format!("{}/{}", self.mqtt.receipt_topic, self.edge.id)
    }

    /// The broker client id: `mqtt.client_id`, or `pixel-edge-{edge.id}`.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("pixel-edge-{}", self.edge.id))
    }

    /// `mqtt.protocol`, MQTT 5 unless set.
    pub fn protocol(&self) -> MqttProtocol {
        self.mqtt.protocol.unwrap_or(MqttProtocol::V5)
    }

    /// The directory that holds every edge's spool in the default layout (`edge.spool_dir` unset:
    /// `spool/{edge.id}`); `None` when this edge's spool is elsewhere.
    pub fn spool_root(&self) -> Option<PathBuf> {
        let default = self.edge.spool_dir.as_ref() == Some(&default_spool_dir(&self.edge.id));
        default.then(|| PathBuf::from(SPOOL_ROOT))
    }

    /// Settings for delivering the orphaned spool of edge `id`: its id (so its topic and receipt
    /// topic), its spool, and the client id `{this edge's client id}//adopting/{id}`. No edge id holds
    /// `//` (no empty levels), so no edge's own connection (this one's, or a later edge's with that
    /// id) ever has it. (Not `+`: Mosquitto's ACL patterns refuse a client id holding `+` or `#`.)
    pub fn adopting(&self, id: &str) -> Self {
        let mut settings = self.clone();
        settings.mqtt.client_id = Some(format!("{}//adopting/{id}", self.client_id()));
        settings.edge.id = id.to_owned();
        settings.edge.spool_dir = Some(default_spool_dir(id));
        settings
    }

    pub fn orphan_after(&self) -> Duration {
        Duration::from_secs(self.edge.orphan_after_secs.get())
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.edge.drain_timeout_secs)
    }

    pub fn receipt_timeout(&self) -> Duration {
        Duration::from_secs(self.edge.receipt_timeout_secs)
    }
}

/// Where every edge's spool is by default, in the working directory.
const SPOOL_ROOT: &str = "spool";

fn default_spool_dir(id: &str) -> PathBuf {
    PathBuf::from(SPOOL_ROOT).join(id)
}

impl HttpSettings {
    pub fn trusted_proxies(&self) -> TrustedProxies {
        TrustedProxies {
            networks: self.trusted_proxies.clone(),
            header: self.forwarded_header,
        }
    }
}

impl PrivacySettings {
    /// The key file itself is read when the edge starts ([`crate::privacy::Privacy::new`]).
    fn validate(&self) -> Result<(), SettingsError> {
        if self.ipv4_prefix > 32 {
            return Err(SettingsError::invalid(
                "privacy.ipv4_prefix",
                "must be between 0 and 32",
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err(SettingsError::invalid(
                "privacy.ipv6_prefix",
                "must be between 0 and 128",
            ));
        }
        if self.hash_key_file.is_some() && self.ip != IpMode::Hash {
            return Err(SettingsError::invalid(
                "privacy.hash_key_file",
                format!("is set but privacy.ip is {:?}, not hash", self.ip),
            ));
        }
        if self.opt_out != OptOutMode::Ignore && !self.honour_gpc && !self.honour_dnt {
            return Err(SettingsError::invalid(
                "privacy.opt_out",
                "has no effect: privacy.honour_gpc and privacy.honour_dnt are both false",
            ));
        }
        Ok(())
    }
}

impl HttpsSettings {
    pub fn reload_check(&self) -> Duration {
        Duration::from_secs(self.reload_check_secs.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load(Sources::with_env(None, pairs))
    }

    #[test]
    fn the_documented_overrides_work() {
        let settings = load(&[
            ("TRACKER__MQTT__PORT", "1884"),
            ("TRACKER__HTTP__LISTEN", "[::]:8080"),
            ("TRACKER__EDGE__ID", "edge-eu-1"),
            ("TRACKER__HTTP__PROXY_PROTOCOL", "true"),
            ("TRACKER__HTTP__TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7"),
            ("TRACKER__HTTP__FORWARDED_HEADER", "Forwarded"),
        ])
        .unwrap();
        assert!(settings.http.proxy_protocol);
        let proxies = settings.http.trusted_proxies();
        assert_eq!(
            proxies.networks,
            [
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        assert_eq!(proxies.header, ForwardedHeader::Forwarded);
        assert_eq!(settings.mqtt.port, 1884);
        assert_eq!(settings.http.listen, "[::]:8080".parse().unwrap());
        assert_eq!(settings.topic(), "tracker/visits/edge-eu-1");
        assert_eq!(settings.receipt_topic(), "tracker/receipts/edge-eu-1");
        assert_eq!(
            settings.edge.spool_dir,
            Some(PathBuf::from("spool/edge-eu-1")),
            "receipts are on by default, with a spool per edge id"
        );
        assert_eq!(settings.spool_root(), Some(PathBuf::from("spool")));
        let adopting = settings.adopting("edge-eu-0");
        assert_eq!(adopting.topic(), "tracker/visits/edge-eu-0");
        assert_eq!(adopting.receipt_topic(), "tracker/receipts/edge-eu-0");
        assert_eq!(
            adopting.edge.spool_dir,
            Some(PathBuf::from("spool/edge-eu-0"))
        );
        assert_eq!(
            adopting.client_id(),
            "pixel-edge-edge-eu-1//adopting/edge-eu-0"
        );
        let elsewhere = load(&[("TRACKER__EDGE__SPOOL_DIR", "/var/spool/edge")]).unwrap();
        assert_eq!(elsewhere.spool_root(), None, "no known root: no adoption");
        let diskless = load(&[("TRACKER__EDGE__RECEIPTS", "false")]).unwrap();
        assert_eq!(diskless.edge.spool_dir, None);
        assert_eq!(diskless.spool_root(), None);
        assert_eq!(settings.client_id(), "pixel-edge-edge-eu-1");
        assert_eq!(settings.protocol(), MqttProtocol::V5);
        let rabbitmq = load(&[("TRACKER__MQTT__PROTOCOL", "3.1.1")]).unwrap();
        assert_eq!(rabbitmq.protocol(), MqttProtocol::V311);
    }

    #[test]
    fn string_settings_arrive_verbatim() {
        for value in ["007", "1e3", "TRUE", "nan"] {
            let settings: Settings = Sources::with_env(
                None,
                &[
                    ("TRACKER__EDGE__ID", value),
                    ("TRACKER__EDGE__SPOOL_DIR", value),
                    ("TRACKER__HTTPS__CERT_FILE", value),
                    ("TRACKER__HTTPS__KEY_FILE", value),
                ],
            )
            .load()
            .unwrap();
            assert_eq!(settings.edge.id, value);
            assert_eq!(settings.topic(), format!("tracker/visits/{value}"));
            for path in [
                settings.edge.spool_dir,
                settings.https.cert_file,
                settings.https.key_file,
            ] {
                assert_eq!(path, Some(PathBuf::from(value)));
            }
        }
    }

    #[test]
    fn the_default_edge_id_is_the_host_name_below_the_broker_user() {
        let host = hostname::get().unwrap().to_string_lossy().into_owned();
        assert_eq!(load(&[]).unwrap().edge.id, host);
        let settings = load(&[("TRACKER__MQTT__USERNAME", "paris")]).unwrap();
        assert_eq!(settings.edge.id, format!("paris/{host}"));
        assert_eq!(settings.topic(), format!("tracker/visits/paris/{host}"));
    }

    #[test]
    fn an_edge_id_outside_the_users_topic_is_refused() {
        let site = [("TRACKER__MQTT__USERNAME", "paris")];
        for id in ["paris", "paris/edge-1"] {
            let settings = load(&[site[0], ("TRACKER__EDGE__ID", id)]).unwrap();
            assert_eq!(settings.edge.id, id);
        }
        for id in ["lyon", "parisian/edge-1", "lyon/paris"] {
            let err = load(&[site[0], ("TRACKER__EDGE__ID", id)]).unwrap_err();
            assert!(err.to_string().contains("`edge.id`"), "{id}: {err}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("TRACKER__HTTP__LISTEN", "localhost", "http.listen"),
            ("TRACKER__EDGE__ID", "a//b", "edge.id"),
            (
                "TRACKER__HTTP__TRUSTED_PROXIES",
                "10.0.0.0/8,10.0.0.0/33",
                "http.trusted_proxies",
            ),
            (
                "TRACKER__HTTP__FORWARDED_HEADER",
                "X-Real-IP",
                "http.forwarded_header",
            ),
            ("TRACKER__EDGE__ID", "a/+", "edge.id"),
            ("TRACKER__EDGE__QUEUE_CAPACITY", "0", "edge.queue_capacity"),
            (
                "TRACKER__EDGE__ORPHAN_AFTER_SECS",
                "0",
                "edge.orphan_after_secs",
            ),
            (
                "TRACKER__EDGE__MAX_IN_FLIGHT_BYTES",
                "100000",
                "edge.max_in_flight_bytes",
            ),
            (
                "TRACKER__EDGE__QUEUE_CAPACITY",
                "lots",
                "edge.queue_capacity",
            ),
            ("TRACKER__MQTT__PORT", "0", "mqtt.port"),
            ("TRACKER__MQTT__PROTOCOL", "3.1", "mqtt.protocol"),
            ("TRACKER__LOG__FORMAT", "xml", "log.format"),
            (
                "TRACKER__HTTP__MAX_HEADER_BYTES",
                "100",
                "http.max_header_bytes",
            ),
            (
                "TRACKER__HTTP__MAX_URI_BYTES",
                "100000",
                "http.max_uri_bytes",
            ),
            (
                "TRACKER__HTTP__MAX_CONNECTIONS",
                "0",
                "http.max_connections",
            ),
            (
                "TRACKER__HTTP__HEADER_READ_TIMEOUT_SECS",
                "0",
                "http.header_read_timeout_secs",
            ),
            ("TRACKER__HTTP__WORKERS", "0", "http.workers"),
            (
                "TRACKER__HTTP__IDLE_TIMEOUT_SECS",
                "0",
                "http.idle_timeout_secs",
            ),
            (
                "TRACKER__HTTP__HTTP2_KEEP_ALIVE_INTERVAL_SECS",
                "0",
                "http.http2_keep_alive_interval_secs",
            ),
            (
                "TRACKER__HTTP__HTTP2_KEEP_ALIVE_TIMEOUT_SECS",
                "0",
                "http.http2_keep_alive_timeout_secs",
            ),
            (
                "TRACKER__HTTPS__RELOAD_CHECK_SECS",
                "0",
                "https.reload_check_secs",
            ),
            ("TRACKER__EDGE__QUEUE_CAPACITY", "0", "edge.queue_capacity"),
            (
                "TRACKER__EDGE__MAX_FIELD_BYTES",
                "0",
                "edge.max_field_bytes",
            ),
            (
                "TRACKER__EDGE__SPOOL_MAX_BYTES",
                "1000",
                "edge.spool_max_bytes",
            ),
            (
                "TRACKER__EDGE__RECEIPT_TIMEOUT_SECS",
                "0",
                "edge.receipt_timeout_secs",
            ),
            ("TRACKER__PRIVACY__IP", "masked", "privacy.ip"),
            ("TRACKER__PRIVACY__REFERRER", "none", "privacy.referrer"),
            ("TRACKER__PRIVACY__OPT_OUT", "yes", "privacy.opt_out"),
            ("TRACKER__PRIVACY__IPV4_PREFIX", "33", "privacy.ipv4_prefix"),
            (
                "TRACKER__PRIVACY__IPV6_PREFIX",
                "129",
                "privacy.ipv6_prefix",
            ),
            ("TRACKER__PRIVACY__IPV6_PREFIX", "-1", "privacy.ipv6_prefix"),
            (
                "TRACKER__PRIVACY__HONOUR_DNT",
                "sometimes",
                "privacy.honour_dnt",
            ),
            (
                "TRACKER__PRIVACY__HASH_KEY_FILE",
                "/etc/key",
                "privacy.hash_key_file",
            ),
            (
                "TRACKER__EDGE__QUEUE_MAX_BYTES",
                "1000",
                "edge.queue_max_bytes",
            ),
        ];
        for (var, value, key) in cases {
            let err = load(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn privacy_defaults_keep_everything_and_modes_load() {
        let defaults = load(&[]).unwrap().privacy;
        assert_eq!(
            (defaults.ip, defaults.referrer, defaults.opt_out),
            (IpMode::Full, ReferrerMode::Full, OptOutMode::Ignore)
        );
        assert_eq!((defaults.ipv4_prefix, defaults.ipv6_prefix), (24, 48));
        let privacy = load(&[
            ("TRACKER__PRIVACY__IP", "hash"),
            ("TRACKER__PRIVACY__HASH_KEY_FILE", "/etc/key"),
            ("TRACKER__PRIVACY__REFERRER", "strip_query"),
            ("TRACKER__PRIVACY__OPT_OUT", "skip"),
            ("TRACKER__PRIVACY__HONOUR_GPC", "false"),
            ("TRACKER__PRIVACY__IPV6_PREFIX", "0"),
        ])
        .unwrap()
        .privacy;
        assert_eq!(
            (privacy.ip, privacy.referrer, privacy.opt_out),
            (IpMode::Hash, ReferrerMode::StripQuery, OptOutMode::Skip)
        );
        assert!(!privacy.honour_gpc && privacy.honour_dnt);
        assert_eq!(privacy.ipv6_prefix, 0);
        let err = load(&[
            ("TRACKER__PRIVACY__OPT_OUT", "anonymize"),
            ("TRACKER__PRIVACY__HONOUR_GPC", "false"),
            ("TRACKER__PRIVACY__HONOUR_DNT", "false"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("privacy.opt_out"), "{err}");
    }

    #[test]
    fn https_needs_its_files_and_something_must_serve() {
        let https = ("TRACKER__HTTPS__LISTEN", "127.0.0.1:8443");
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("TRACKER__HTTP__ENABLED", "false")], "http.enabled"),
            (&[https], "https.cert_file"),
            (
                &[
                    https,
                    ("TRACKER__HTTPS__CERT_FILE", "/nonexistent/https.crt"),
                ],
                "https.key_file",
            ),
            (
                &[https, ("TRACKER__HTTPS__RELOAD_CHECK_SECS", "0")],
                "https.reload_check_secs",
            ),
        ];
        for (pairs, key) in cases {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn the_shipped_settings_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("appsettings.json");
        let settings = Settings::load(Sources::with_env(Some(path), &[])).unwrap();
        assert_eq!(settings.mqtt.topic, "tracker/visits");
        assert_eq!(settings.edge.queue_capacity.get(), 100_000);
    }
}
