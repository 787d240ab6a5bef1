//! Layered settings shared by both services: built-in defaults (serde defaults on each settings type)
//! → `appsettings.json` (working directory, or the path in `TRACKER_CONFIG`) → `TRACKER__SECTION__KEY`
//! environment variables. Every error names the key it is about.
//!
//! Values are taken as written: an environment variable stays a string until the settings type asks
//! for a number or a boolean, so `TRACKER__EDGE__ID=007` is the id `007`, not `7`.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::mqtt_protocol::MqttProtocol;

/// Names the settings file when set; the file must then exist.
pub const CONFIG_PATH_VAR: &str = "TRACKER_CONFIG";
const DEFAULT_FILE: &str = "appsettings.json";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Unreadable file, or a value of the wrong type; the message from `config` names the key.
    /// Not a `#[source]`: its text is already in ours, and error reports would print it twice.
    #[error("configuration: {0}")]
    Load(config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl From<config::ConfigError> for SettingsError {
    fn from(err: config::ConfigError) -> Self {
        Self::Load(err)
    }
}

impl SettingsError {
    pub fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// Where settings are read from. Tests pass their own file and environment instead of the process's.
#[derive(Debug, Default)]
pub struct Sources {
    /// `Some` when a file was named explicitly: then it must exist.
    pub file: Option<PathBuf>,
    /// `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
}

impl Sources {
    /// The process's own: `TRACKER_CONFIG` or `./appsettings.json`, and the real environment.
    pub fn from_process() -> Self {
        Self {
            file: std::env::var_os(CONFIG_PATH_VAR).map(PathBuf::from),
            env: None,
        }
    }

    /// `file` (if any) and exactly these variables instead of the process environment: for tests, which
    /// must not share the process-wide environment.
    pub fn with_env(file: Option<PathBuf>, pairs: &[(&str, &str)]) -> Self {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            file,
            env: Some(env),
        }
    }

    /// Merges the layers and deserialises them into `T`, whose serde defaults are the first layer.
    pub fn load<T: DeserializeOwned>(self) -> Result<T, SettingsError> {
        let file = match &self.file {
            Some(path) => File::from(path.as_path())
                .format(FileFormat::Json)
                .required(true),
            None => File::new(DEFAULT_FILE, FileFormat::Json).required(false),
        };
        let env = Environment::with_prefix("TRACKER")
            .prefix_separator("__")
            .separator("__")
            // Off: it would turn `007`, `1e3`, `TRUE` or `nan` into numbers and booleans before a string
            // setting sees them. Typed keys still parse, as `config` converts strings on demand.
            .try_parsing(false)
            .source(self.env);
        Ok(Config::builder()
            .add_source(file)
            .add_source(env)
            .build()?
            .try_deserialize()?)
    }
}

/// `mqtt.*`: how a service reaches the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    /// Several brokers (the nodes of a cluster), `host` or `host:port` (`[v6]:port`; the port defaults
    /// to `port`), a list in the file or comma-separated in the environment. A client tries them in
    /// turn, with the usual backoff between attempts, and moves to the next one whenever a connection
    /// fails or is lost. Set, it replaces `host`.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub hosts: Vec<String>,
    /// Each service derives its own default; the sink's must stay the same across restarts.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// The password read from this file instead (a Docker secret, say) at start-up; surrounding
    /// whitespace is ignored.
    pub password_file: Option<PathBuf>,
    /// Connect over TLS (the broker's 8883 listener).
    pub tls: bool,
    /// PEM CA certificate(s) the broker's certificate must chain to; unset, the public web PKI.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and its key, for a broker that asks for one (both or neither).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Base topic; edges publish to `{topic}/{edge.id}`, the sink reads `{topic}/#`.
    pub topic: String,
    /// A PINGREQ goes out this often, busy or not; a link on which nothing at all comes back is given
    /// up after twice this (the edge's own watchdog makes that hold while publishes are stuck too).
    /// Shorter notices a dead link sooner, at one small round trip per interval; at least 5 (rumqttc's
    /// floor), and well above the round-trip time.
    pub keep_alive_secs: u64,
    /// Each connection attempt (TCP, TLS and the CONNACK) is given up after this long; it must cover
    /// a few round trips (TLS alone takes two).
    pub connect_timeout_secs: NonZeroU64,
    /// Base topic of the sink's receipts: `{receipt_topic}/{edge.id}` says up to which sequence number
    /// that edge's visits are durably in the log (retained, so an edge reads it on every connect).
    pub receipt_topic: String,
    /// The MQTT version: unset, the service's own (the edge 5, the sink 3.1.1, the only one it speaks).
    pub protocol: Option<MqttProtocol>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 1883,
            hosts: Vec::new(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            tls: false,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            topic: "tracker/visits".into(),
            keep_alive_secs: 15,
            connect_timeout_secs: NonZeroU64::new(5).unwrap(),
            receipt_topic: "tracker/receipts".into(),
            protocol: None,
        }
    }
}

impl MqttSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.hosts.is_empty() && self.host.trim().is_empty() {
            return Err(SettingsError::invalid("mqtt.host", "must not be empty"));
        }
        if self.port == 0 {
            return Err(SettingsError::invalid(
                "mqtt.port",
                "must be between 1 and 65535",
            ));
        }
        self.brokers()?;
        if self
            .client_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(SettingsError::invalid(
                "mqtt.client_id",
                "must not be empty when set",
            ));
        }
        for (key, topic) in [
            ("mqtt.topic", &self.topic),
            ("mqtt.receipt_topic", &self.receipt_topic),
        ] {
            if topic.is_empty() || topic.ends_with('/') || topic.contains(['+', '#', '\0']) {
                return Err(SettingsError::invalid(
                    key,
                    format!(
                        "{topic:?} must be a non-empty topic without wildcards or a trailing '/'"
                    ),
                ));
            }
        }
        let below =
            |topic: &str, base: &str| topic == base || topic.starts_with(&format!("{base}/"));
        if below(&self.receipt_topic, &self.topic) || below(&self.topic, &self.receipt_topic) {
            return Err(SettingsError::invalid(
                "mqtt.receipt_topic",
                "must lie outside mqtt.topic (and mqtt.topic outside it): the sink reads all of mqtt.topic",
            ));
        }
        if !(5..=u64::from(u16::MAX)).contains(&self.keep_alive_secs) {
            return Err(SettingsError::invalid(
                "mqtt.keep_alive_secs",
                "must be between 5 and 65535",
            ));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.user().is_none() {
            return Err(SettingsError::invalid(
                "mqtt.username",
                "must be set when mqtt.password or mqtt.password_file is",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(SettingsError::invalid(
                "mqtt.password_file",
                "set either mqtt.password or mqtt.password_file, not both",
            ));
        }
        if !self.tls
            && (self.ca_file.is_some()
                || self.client_cert_file.is_some()
                || self.client_key_file.is_some())
        {
            return Err(SettingsError::invalid(
                "mqtt.tls",
                "must be true when mqtt.ca_file or a client certificate is set",
            ));
        }
        // Read the files now, so that a wrong path stops start-up instead of every connection attempt.
        self.credentials()?;
        self.transport()?;
        Ok(())
    }

    /// The brokers to try in turn, as (host, port): `mqtt.hosts`, or else `mqtt.host` and `mqtt.port`.
    pub fn brokers(&self) -> Result<Vec<(String, u16)>, SettingsError> {
        if self.hosts.is_empty() {
            return Ok(vec![(self.host.clone(), self.port)]);
        }
        self.hosts
            .iter()
            .map(|entry| {
                parse_broker(entry, self.port).ok_or_else(|| {
                    SettingsError::invalid(
                        "mqtt.hosts",
                        format!("{entry:?} is not `host`, `host:port` or `[v6 address]:port` with a port from 1 to 65535"),
                    )
                })
            })
            .collect()
    }

    pub fn keep_alive(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.keep_alive_secs)
    }

    /// The broker user name; an empty value counts as unset.
    pub fn user(&self) -> Option<&str> {
        self.username.as_deref().filter(|u| !u.is_empty())
    }

    /// User name and password, when a user name is set.
    pub fn credentials(&self) -> Result<Option<(String, String)>, SettingsError> {
        use secrecy::ExposeSecret;
        let Some(user) = self.user() else {
            return Ok(None);
        };
        let password = match (&self.password, &self.password_file) {
            (Some(password), _) => password.expose_secret().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|err| {
                    SettingsError::invalid(
                        "mqtt.password_file",
                        format!("{}: {err}", path.display()),
                    )
                })?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        Ok(Some((user.to_owned(), password)))
    }

    /// Plain TCP, or TLS as `mqtt.tls`, `mqtt.ca_file` and the client certificate say.
    pub fn transport(&self) -> Result<rumqttc::Transport, SettingsError> {
        if !self.tls {
            return Ok(rumqttc::Transport::Tcp);
        }
        let client_cert = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(SettingsError::invalid(
                    "mqtt.client_key_file",
                    "must be set when mqtt.client_cert_file is",
                ))
            }
            (None, Some(_)) => {
                return Err(SettingsError::invalid(
                    "mqtt.client_cert_file",
                    "must be set when mqtt.client_key_file is",
                ))
            }
        };
        let config = crate::tls::client_config(self.ca_file.as_deref(), client_cert)?;
        Ok(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
        ))
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address (several colons) is a host alone.
fn parse_broker(entry: &str, default_port: u16) -> Option<(String, u16)> {
    let entry = entry.trim();
    let port = |text: &str| text.parse::<u16>().ok().filter(|&port| port != 0);
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, default_port),
            _ => (host, port(after.strip_prefix(':')?)?),
        }
    } else {
        match entry.split_once(':') {
            Some((host, text)) if !text.contains(':') => (host, port(text)?),
            _ => (entry, default_port),
        }
    };
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| (host.to_owned(), port))
}

/// A list as written in `appsettings.json`, or one string split at commas (how an environment
/// variable carries a list); blank entries are dropped, so an empty string is an empty list.
fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    let entries = match ListOrText::deserialize(deserializer)? {
        ListOrText::List(entries) => entries,
        ListOrText::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(entries
        .into_iter()
        .map(|entry| entry.trim().to_owned())
        .filter(|entry| !entry.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Probe {
        mqtt: MqttSettings,
    }

    fn load(file: Option<PathBuf>, pairs: &[(&str, &str)]) -> Result<Probe, SettingsError> {
        Sources::with_env(file, pairs).load()
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        let probe = load(None, &[]).unwrap();
        assert_eq!(probe.mqtt.host, "localhost");
        assert_eq!(probe.mqtt.port, 1883);
        assert_eq!(probe.mqtt.topic, "tracker/visits");
        probe.mqtt.validate().unwrap();
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let mut file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
        write!(
            file,
            r#"{{"mqtt": {{"host": "broker.internal", "port": 1999, "username": "edge"}}}}"#
        )
        .unwrap();
        let probe = load(Some(file.path().into()), &[("TRACKER__MQTT__PORT", "1884")]).unwrap();
        assert_eq!(probe.mqtt.host, "broker.internal");
        assert_eq!(probe.mqtt.port, 1884);
        assert_eq!(
            probe.mqtt.credentials().unwrap(),
            Some(("edge".into(), String::new()))
        );
    }

    /// Values that look like numbers or booleans, which a string setting must keep as written.
    const NUMBER_LIKE: [&str; 7] = ["007", "1e3", "TRUE", "nan", "0x1f", "-0", "1.50"];

    #[test]
    fn string_settings_arrive_verbatim_from_the_environment_and_the_file() {
        let keys = [
            "host",
            "client_id",
            "username",
            "password",
            "password_file",
            "ca_file",
            "client_cert_file",
            "client_key_file",
            "topic",
        ];
        for value in NUMBER_LIKE {
            let vars: Vec<(String, String)> = keys
                .iter()
                .map(|key| {
                    (
                        format!("TRACKER__MQTT__{}", key.to_uppercase()),
                        value.into(),
                    )
                })
                .collect();
            let pairs: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
            let fields: Vec<String> = keys.iter().map(|k| format!("{k:?}: {value:?}")).collect();
            write!(file, r#"{{"mqtt": {{{}}}}}"#, fields.join(", ")).unwrap();
            for probe in [
                load(None, &pairs).unwrap(),
                load(Some(file.path().into()), &[]).unwrap(),
            ] {
                let mqtt = probe.mqtt;
                let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
                assert_eq!(mqtt.host, value);
                assert_eq!(mqtt.topic, value);
                assert_eq!(mqtt.client_id.as_deref(), Some(value));
                assert_eq!(mqtt.username.as_deref(), Some(value));
                use secrecy::ExposeSecret;
                assert_eq!(
                    mqtt.password.as_ref().map(|p| p.expose_secret()),
                    Some(value)
                );
                for file in [
                    mqtt.password_file,
                    mqtt.ca_file,
                    mqtt.client_cert_file,
                    mqtt.client_key_file,
                ] {
                    assert_eq!(path(file).as_deref(), Some(value));
                }
            }
        }
    }

    #[test]
    fn numbers_and_booleans_still_parse_for_typed_keys() {
        let probe = load(
            None,
            &[
                ("TRACKER__MQTT__PORT", "1884"),
                ("TRACKER__MQTT__TLS", "TRUE"),
            ],
        )
        .unwrap();
        assert_eq!(probe.mqtt.port, 1884);
        assert!(probe.mqtt.tls);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = load(None, &[("TRACKER__MQTT__PORT", "not-a-port")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.port"), "{err}");
        let err = load(None, &[("TRACKER__MQTT__PORT", "70000")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.port"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let err = load(None, &[("TRACKER__MQTT__TOPIC", "tracker/#")])
            .unwrap()
            .mqtt
            .validate();
        assert!(err.unwrap_err().to_string().contains("`mqtt.topic`"));
        let err = load(None, &[("TRACKER__MQTT__PASSWORD", "secret")])
            .unwrap()
            .mqtt
            .validate();
        assert!(err.unwrap_err().to_string().contains("`mqtt.username`"));
        for (var, value, key) in [
            (
                "TRACKER__MQTT__KEEP_ALIVE_SECS",
                "4",
                "`mqtt.keep_alive_secs`",
            ),
            (
                "TRACKER__MQTT__KEEP_ALIVE_SECS",
                "65536",
                "`mqtt.keep_alive_secs`",
            ),
        ] {
            let err = load(None, &[(var, value)]).unwrap().mqtt.validate();
            assert!(err.unwrap_err().to_string().contains(key), "{var}={value}");
        }
        // A NonZero type: refused while loading, naming the key.
        let Err(err) = load(None, &[("TRACKER__MQTT__CONNECT_TIMEOUT_SECS", "0")]) else {
            panic!("a zero connect timeout loaded");
        };
        assert!(
            err.to_string().contains("mqtt.connect_timeout_secs"),
            "{err}"
        );
        let probe = load(None, &[("TRACKER__MQTT__KEEP_ALIVE_SECS", "5")]).unwrap();
        probe.mqtt.validate().unwrap();
        assert_eq!(probe.mqtt.keep_alive(), std::time::Duration::from_secs(5));
    }

    #[test]
    fn hosts_come_as_a_list_from_the_file_or_comma_separated_from_the_environment() {
        let probe = load(None, &[]).unwrap();
        assert_eq!(
            probe.mqtt.brokers().unwrap(),
            [("localhost".to_owned(), 1883)]
        );
        let mut file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
        write!(
            file,
            r#"{{"mqtt": {{"port": 1999, "hosts": ["rabbit-1", "rabbit-2:1884"]}}}}"#
        )
        .unwrap();
        let from_file = load(Some(file.path().into()), &[]).unwrap().mqtt;
        let from_env = load(
            None,
            &[
                ("TRACKER__MQTT__PORT", "1999"),
                ("TRACKER__MQTT__HOSTS", " rabbit-1 , rabbit-2:1884,"),
            ],
        )
        .unwrap()
        .mqtt;
        for mqtt in [from_file, from_env] {
            mqtt.validate().unwrap();
            assert_eq!(
                mqtt.brokers().unwrap(),
                [("rabbit-1".to_owned(), 1999), ("rabbit-2".to_owned(), 1884)]
            );
        }
        let blank = load(None, &[("TRACKER__MQTT__HOSTS", "")]).unwrap().mqtt;
        assert_eq!(blank.brokers().unwrap(), [("localhost".to_owned(), 1883)]);
    }

    #[test]
    fn broker_addresses_parse_names_ports_and_ipv6() {
        for (entry, expected) in [
            ("node-1", Some(("node-1", 1883))),
            ("node-1:8883", Some(("node-1", 8883))),
            ("10.0.0.7:1884", Some(("10.0.0.7", 1884))),
            ("[::1]:1884", Some(("::1", 1884))),
            ("[fd00::7]", Some(("fd00::7", 1883))),
            ("fd00::7", Some(("fd00::7", 1883))),
            ("node-1:0", None),
            ("node-1:70000", None),
            ("node-1:", None),
            (":1884", None),
            ("[::1]1884", None),
            ("no de", None),
        ] {
            let parsed = parse_broker(entry, 1883);
            assert_eq!(
                parsed,
                expected.map(|(host, port)| (host.to_owned(), port)),
                "{entry}"
            );
        }
        let err = load(None, &[("TRACKER__MQTT__HOSTS", "a:1,b:0")])
            .unwrap()
            .mqtt
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`mqtt.hosts`"), "{err}");
        assert!(err.to_string().contains("b:0"), "{err}");
    }

    #[test]
    fn a_named_file_must_exist_and_the_password_is_not_printed() {
        let err = load(Some("/nonexistent/appsettings.json".into()), &[]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/appsettings.json"),
            "{err}"
        );
        let probe = load(
            None,
            &[
                ("TRACKER__MQTT__USERNAME", "u"),
                ("TRACKER__MQTT__PASSWORD", "hunter2"),
            ],
        )
        .unwrap();
        assert!(!format!("{probe:?}").contains("hunter2"));
        assert_eq!(probe.mqtt.credentials().unwrap().unwrap().1, "hunter2");
    }

    #[test]
    fn the_password_file_is_read_and_trimmed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  s3cret ").unwrap();
        let path = file.path().display().to_string();
        let probe = load(
            None,
            &[
                ("TRACKER__MQTT__USERNAME", "edge"),
                ("TRACKER__MQTT__PASSWORD_FILE", &path),
            ],
        )
        .unwrap();
        probe.mqtt.validate().unwrap();
        assert_eq!(
            probe.mqtt.credentials().unwrap(),
            Some(("edge".into(), "s3cret".into()))
        );
    }

    #[test]
    fn secret_and_tls_mistakes_name_their_key() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[
                    ("TRACKER__MQTT__USERNAME", "edge"),
                    ("TRACKER__MQTT__PASSWORD_FILE", "/nonexistent/edge.password"),
                ],
                "`mqtt.password_file`",
            ),
            (
                &[
                    ("TRACKER__MQTT__USERNAME", "edge"),
                    ("TRACKER__MQTT__PASSWORD", "x"),
                    ("TRACKER__MQTT__PASSWORD_FILE", "/etc/hostname"),
                ],
                "`mqtt.password_file`",
            ),
            (&[("TRACKER__MQTT__CA_FILE", "/etc/hostname")], "`mqtt.tls`"),
            (
                &[
                    ("TRACKER__MQTT__TLS", "true"),
                    ("TRACKER__MQTT__CA_FILE", "/nonexistent/ca.crt"),
                ],
                "`mqtt.ca_file`",
            ),
            (
                &[
                    ("TRACKER__MQTT__TLS", "true"),
                    ("TRACKER__MQTT__CLIENT_CERT_FILE", "/etc/hostname"),
                ],
                "`mqtt.client_key_file`",
            ),
        ];
        for (pairs, key) in cases {
            let err = load(None, pairs).unwrap().mqtt.validate().unwrap_err();
            assert!(err.to_string().contains(key), "{pairs:?}: {err}");
        }
    }
}
