//! rustls set-up shared by both services: the one crypto provider (ring), PEM files read into
//! certificates and keys, the client configuration for MQTT over TLS and the edge's HTTPS certificate. Every error names the
//! settings key whose file is at fault.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

use crate::configuration::SettingsError;

/// Chosen explicitly, so that no process-wide default has to be installed and no second provider
/// pulled in by a dependency can make rustls ambiguous.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PEM certificates in `path` (a chain: leaf first).
pub fn load_certs(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| SettingsError::invalid(key, format!("{}: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(SettingsError::invalid(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// The PEM private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, key: &'static str) -> Result<PrivateKeyDer<'static>, SettingsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|err| SettingsError::invalid(key, format!("{}: {err}", path.display())))
}

/// Trusts the CA certificates in `ca_file`, or, without one, the public web PKI (Mozilla's roots,
/// built in so that a slim image needs no system store). Presents the client certificate if given.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<ClientConfig, SettingsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path, "mqtt.ca_file")? {
                roots.add(cert).map_err(|err| {
                    SettingsError::invalid("mqtt.ca_file", format!("{}: {err}", path.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                load_certs(cert, "mqtt.client_cert_file")?,
                load_key(key, "mqtt.client_key_file")?,
            )
            .map_err(|err| SettingsError::invalid("mqtt.client_key_file", err.to_string())),
    }
}

/// The HTTPS certificate chain in `cert_file` with the key in `key_file`, checked to belong together.
pub fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, SettingsError> {
    CertifiedKey::from_der(
        load_certs(cert_file, "https.cert_file")?,
        load_key(key_file, "https.key_file")?,
        &provider(),
    )
    .map_err(|err| {
        SettingsError::invalid("https.key_file", format!("{}: {err}", key_file.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_names_its_key() {
        let err = client_config(Some(Path::new("/nonexistent/ca.crt")), None).unwrap_err();
        assert!(err.to_string().contains("`mqtt.ca_file`"), "{err}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let err = client_config(Some(empty.path()), None).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = certified_key(empty.path(), empty.path()).unwrap_err();
        assert!(err.to_string().contains("`https.cert_file`"), "{err}");
    }
}
