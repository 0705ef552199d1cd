//! TLS at the edge (optional): HTTPS and `wss://` from a PEM certificate chain and key
//! (`http.tls_cert_file`, `http.tls_key_file`), served by the loop of [`crate::serve`].
//!
//! The files are read again without a restart when they change: a new connection's handshake
//! looks at their modification time and size at most once per [`RELOAD_CHECK`], and a changed
//! pair is loaded and used from that handshake on. Connections open before keep the certificate
//! they were made with. A pair that does not load (a half-written renewal, a key that does not
//! match the certificate) is reported once and the certificate in force is kept, so a renewal
//! can never take the edge down; a later change is tried again.
//!
//! The default is plain HTTP behind a load balancer that terminates TLS (see
//! `deploy/chorus.cluster.toml`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::HttpSection;

/// How often at most a handshake looks whether the files changed.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    path: String,
    reason: String,
}

impl TlsError {
    fn new(path: &Path, reason: impl fmt::Display) -> Self {
        TlsError {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// What identifies a version of the files: modification time and size of each.
type Stamp = [(Option<SystemTime>, u64); 2];

/// The acceptor of the edge's TLS connections, if `[http]` names a certificate.
pub fn acceptor(settings: &HttpSection) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsError> {
    if settings.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let resolver = ReloadingCertificate::load(
        PathBuf::from(&settings.tls_cert_file),
        PathBuf::from(&settings.tls_key_file),
    )?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::new(Path::new(&settings.tls_cert_file), error))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // HTTP/1.1 only: the serving loop speaks it (and WebSocket upgrades need it)
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate in force, read again when its files change (see the module docs).
pub struct ReloadingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' stamp when last looked at (loaded, or found unusable).
    stamp: Stamp,
    checked_at: Instant,
}

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ReloadingCertificate")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    /// Loads the pair; fails when it cannot be used.
    pub fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<Self, TlsError> {
        let stamp = stamp(&cert_file, &key_file);
        let key = Arc::new(load_pair(&cert_file, &key_file)?);
        Ok(ReloadingCertificate {
            cert_file,
            key_file,
            state: Mutex::new(Loaded {
                key,
                stamp,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The certificate in force, after loading a changed pair if it is time to look.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> Arc<CertifiedKey> {
        let mut state = self.state.lock();
        if now.saturating_duration_since(state.checked_at) < RELOAD_CHECK {
            return state.key.clone();
        }
        state.checked_at = now;
        let now = stamp(&self.cert_file, &self.key_file);
        if now != state.stamp {
            state.stamp = now;
            match load_pair(&self.cert_file, &self.key_file) {
                Ok(key) => {
                    state.key = Arc::new(key);
                    tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    tracing::warn!(%error, "TLS certificate not reloaded; the previous one stays in force");
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    [cert_file, key_file].map(|path| {
        std::fs::metadata(path)
            .map(|metadata| (metadata.modified().ok(), metadata.len()))
            .unwrap_or((None, 0))
    })
}

/// Reads a PEM chain (leaf first) and its private key, and checks that they belong together.
fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|error| TlsError::new(cert_file, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::new(cert_file, error))?;
    if chain.is_empty() {
        return Err(TlsError::new(cert_file, "no certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|error| TlsError::new(key_file, error))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|error| TlsError::new(key_file, error))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    /// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
    fn pair() -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().expect("a key");
        let certificate = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("signed");
        (
            certificate.pem(),
            key.serialize_pem(),
            certificate.der().to_vec(),
        )
    }

    fn leaf(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].to_vec()
    }

    #[test]
    fn a_changed_pair_is_loaded_at_the_next_check_and_a_broken_one_leaves_the_one_in_force() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let write = |cert: &str, key: &str| {
            std::fs::write(&cert_file, cert).expect("written");
            std::fs::write(&key_file, key).expect("written");
        };
        let first = pair();
        write(&first.0, &first.1);
        let certificate =
            ReloadingCertificate::load(cert_file.clone(), key_file.clone()).expect("loads");
        let start = Instant::now();
        assert_eq!(leaf(&certificate.current_at(start)), first.2);

        let second = pair();
        write(&second.0, &second.1);
        assert_eq!(
            leaf(&certificate.current_at(start)),
            first.2,
            "not looked at again within RELOAD_CHECK"
        );
        let later = start + RELOAD_CHECK;
        assert_eq!(leaf(&certificate.current_at(later)), second.2, "reloaded");

        // a renewal caught half way: the new certificate with the old key
        let third = pair();
        write(&third.0, &second.1);
        let later = later + RELOAD_CHECK;
        assert_eq!(
            leaf(&certificate.current_at(later)),
            second.2,
            "a key that does not match keeps the certificate in force"
        );
        write(&third.0, &third.1);
        let later = later + RELOAD_CHECK;
        assert_eq!(
            leaf(&certificate.current_at(later)),
            third.2,
            "the completed renewal is taken"
        );

        std::fs::write(&key_file, "not a key").expect("written");
        assert!(ReloadingCertificate::load(cert_file, key_file).is_err());
    }
}
