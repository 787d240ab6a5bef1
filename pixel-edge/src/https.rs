//! The edge's TLS identity: a rustls server configuration (HTTP/2 and HTTP/1.1 offered by ALPN) whose
//! certificate is swapped while the edge runs, on SIGHUP or when the certificate files change, so a
//! renewal needs no restart. A renewal that fails to load keeps the certificate being served.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use common::configuration::SettingsError;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::configuration::HttpsSettings;

/// The certificate being served and where it comes from.
#[derive(Debug)]
pub struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<Current>,
}

/// What each handshake picks up: the latest certificate that loaded.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("never poisoned").clone())
    }
}

/// What tells a renewed file from the one loaded: a renewal rewrites it or renames a new one over it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

impl Certificate {
    /// Loads `https.cert_file` and `https.key_file`; errors name the key at fault.
    pub fn load(settings: &HttpsSettings) -> Result<Self, SettingsError> {
        let required = |path: &Option<PathBuf>, key| {
            path.clone()
                .ok_or_else(|| SettingsError::invalid(key, "must be set when https.listen is"))
        };
        let cert_file = required(&settings.cert_file, "https.cert_file")?;
        let key_file = required(&settings.key_file, "https.key_file")?;
        let key = common::tls::certified_key(&cert_file, &key_file)?;
        Ok(Self {
            cert_file,
            key_file,
            current: Arc::new(Current(RwLock::new(Arc::new(key)))),
        })
    }

    /// The configuration for the TLS listener; it serves whatever certificate is current.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(common::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Reloads the certificate when `reload` is notified (SIGHUP) or when either file has changed at a
    /// check every `check_every`, until `stop` is cancelled.
    pub async fn keep_fresh(
        self,
        check_every: Duration,
        reload: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let stamps = || (stamp(&self.cert_file), stamp(&self.key_file));
        let mut loaded = stamps();
        let mut checks = tokio::time::interval(check_every);
        loop {
            tokio::select! {
                _ = reload.notified() => {}
                _ = checks.tick() => {
                    if stamps() == loaded {
                        continue;
                    }
                }
                _ = stop.cancelled() => return,
            }
            // Taken before loading: a renewal caught half-written changes the files again when it is
            // complete, and a broken one is not retried (and logged) at every check.
            loaded = stamps();
            self.reload();
        }
    }

    fn reload(&self) {
        match common::tls::certified_key(&self.cert_file, &self.key_file) {
            Ok(key) => {
                *self.current.0.write().expect("never poisoned") = Arc::new(key);
                tracing::info!(cert_file = %self.cert_file.display(), "HTTPS certificate reloaded");
            }
            Err(err) => {
                tracing::error!(
                    "HTTPS certificate not reloaded, still serving the previous one: {err}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_files_are_required() {
        let settings = HttpsSettings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            cert_file: Some("/nonexistent/https.crt".into()),
            ..Default::default()
        };
        let err = Certificate::load(&settings).unwrap_err();
        assert!(err.to_string().contains("`https.key_file`"), "{err}");
        let settings = HttpsSettings {
            key_file: Some("/nonexistent/https.key".into()),
            ..settings
        };
        let err = Certificate::load(&settings).unwrap_err();
        assert!(err.to_string().contains("`https.cert_file`"), "{err}");
    }
}
