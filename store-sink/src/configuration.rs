//! The sink's settings: `mqtt.*`, `storage.*` and `admin.*`, layered as described in [`common::configuration`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use common::configuration::{MqttSettings, SettingsError, Sources};
use common::mqtt_protocol::MqttProtocol;
use common::telemetry::LogSettings;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub log: LogSettings,
    pub mqtt: MqttSettings,
    pub storage: StorageSettings,
    /// Formerly `metrics.*`, still read under that name.
    #[serde(alias = "metrics")]
    pub admin: AdminSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StorageSettings {
    /// The visits log; created if missing, only ever appended to.
    pub path: PathBuf,
    /// Where messages that are not visits are set aside; `<path>.rejected` when unset.
    pub rejected_path: Option<PathBuf>,
    /// `fdatasync` each flush before acking (the default). `false` acks once the OS has the bytes:
    /// faster, but a power cut can then lose acknowledged visits.
    pub fsync: bool,
    /// Referrer and user-agent are cut to this many bytes (before escaping).
    pub max_field_bytes: NonZeroUsize,
    /// A dead-letter record keeps this many bytes of a rejected message's content (before escaping).
    pub max_rejected_bytes: usize,
    /// How many of the most recently written visit ids are remembered (in memory and in
    /// `<path>.ids`) to drop redelivered duplicates.
    pub dedup_window: NonZeroUsize,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/tmp/visits.log"),
            rejected_path: None,
            fsync: true,
            max_field_bytes: NonZeroUsize::new(4096).unwrap(),
            max_rejected_bytes: 64 * 1024,
            dedup_window: NonZeroUsize::new(250_000).unwrap(),
        }
    }
}

impl StorageSettings {
    pub fn rejected_path(&self) -> PathBuf {
        self.rejected_path.clone().unwrap_or_else(|| {
            let mut path = self.path.clone().into_os_string();
            path.push(".rejected");
            path.into()
        })
    }
}

impl Settings {
    pub fn load(sources: Sources) -> Result<Self, SettingsError> {
        let settings: Self = sources.load()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        self.mqtt.validate()?;
        if self.mqtt.protocol == Some(MqttProtocol::V5) {
            return Err(SettingsError::invalid(
                "mqtt.protocol",
                "the sink speaks MQTT 3.1.1 only: leave it unset or set 3.1.1",
            ));
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(SettingsError::invalid("storage.path", "must not be empty"));
        }
        if self.storage.rejected_path() == self.storage.path {
            return Err(SettingsError::invalid(
                "storage.rejected_path",
                "must differ from storage.path",
            ));
        }
        Ok(())
    }

    /// The broker client id: `mqtt.client_id`, or `store-sink`. It names the persistent session, so it
    /// must stay the same across restarts.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| "store-sink".into())
    }

    /// The subscription: every edge's topic under the base topic.
    pub fn topic_filter(&self) -> String {
        format!("{}/#", self.mqtt.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load(Sources::with_env(None, pairs))
    }

    #[test]
    fn defaults_and_the_documented_overrides() {
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults.storage.path, PathBuf::from("/tmp/visits.log"));
        assert_eq!(
            defaults.storage.rejected_path(),
            PathBuf::from("/tmp/visits.log.rejected")
        );
        assert!(defaults.storage.fsync);
        assert_eq!(defaults.topic_filter(), "tracker/visits/#");
        assert_eq!(defaults.client_id(), "store-sink");

        let settings = load(&[
            ("TRACKER__STORAGE__PATH", "/data/visits.log"),
            ("TRACKER__STORAGE__FSYNC", "false"),
            ("TRACKER__STORAGE__REJECTED_PATH", "/data/bad.log"),
            ("TRACKER__MQTT__PORT", "1884"),
        ])
        .unwrap();
        assert_eq!(settings.storage.path, PathBuf::from("/data/visits.log"));
        assert_eq!(
            settings.storage.rejected_path(),
            PathBuf::from("/data/bad.log")
        );
        assert!(!settings.storage.fsync);
        assert_eq!(settings.mqtt.port, 1884);
    }

    #[test]
    fn string_settings_arrive_verbatim() {
        for value in ["007", "1e3", "TRUE", "nan"] {
            let settings = load(&[
                ("TRACKER__STORAGE__PATH", value),
                ("TRACKER__STORAGE__REJECTED_PATH", &format!("{value}.bad")),
            ])
            .unwrap();
            assert_eq!(settings.storage.path, PathBuf::from(value));
            assert_eq!(
                settings.storage.rejected_path(),
                PathBuf::from(format!("{value}.bad"))
            );
        }
    }

    #[test]
    fn the_admin_listener_is_still_read_under_its_former_name() {
        let settings = load(&[("TRACKER__METRICS__LISTEN", "127.0.0.1:9999")]).unwrap();
        assert_eq!(settings.admin.listen, "127.0.0.1:9999".parse().unwrap());
        let settings = load(&[("TRACKER__ADMIN__LISTEN", "127.0.0.1:9998")]).unwrap();
        assert_eq!(settings.admin.listen, "127.0.0.1:9998".parse().unwrap());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("TRACKER__STORAGE__FSYNC", "sometimes", "storage.fsync"),
            (
                "TRACKER__STORAGE__MAX_FIELD_BYTES",
                "0",
                "storage.max_field_bytes",
            ),
            (
                "TRACKER__STORAGE__MAX_FIELD_BYTES",
                "-5",
                "storage.max_field_bytes",
            ),
            (
                "TRACKER__STORAGE__REJECTED_PATH",
                "/tmp/visits.log",
                "storage.rejected_path",
            ),
            ("TRACKER__MQTT__TOPIC", "a/+/b", "mqtt.topic"),
            ("TRACKER__MQTT__PROTOCOL", "5", "mqtt.protocol"),
            ("TRACKER__MQTT__PROTOCOL", "4", "mqtt.protocol"),
            ("TRACKER__LOG__FORMAT", "xml", "log.format"),
            ("TRACKER__ADMIN__LISTEN", "nowhere", "admin.listen"),
            (
                "TRACKER__STORAGE__DEDUP_WINDOW",
                "0",
                "storage.dedup_window",
            ),
            (
                "TRACKER__STORAGE__MAX_FIELD_BYTES",
                "0",
                "storage.max_field_bytes",
            ),
        ];
        for (var, value, key) in cases {
            let err = load(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn the_shipped_settings_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("appsettings.json");
        let settings = Settings::load(Sources::with_env(Some(path), &[])).unwrap();
        assert_eq!(settings.client_id(), "store-sink");
        assert_eq!(settings.storage.max_field_bytes.get(), 4096);
    }
}
