//! The server side of TLS: a PEM certificate chain and key loaded into a
//! [`rustls::ServerConfig`] (TLS 1.2 and 1.3, ALPN `http/1.1`), and a certificate that is
//! reloaded from its files without a restart.
//!
//! [`Reloadable`] answers every handshake with the certificate it holds now; [`watch`]
//! reloads it on SIGHUP and when either file's modification time changes (polled every
//! [`POLL_EVERY`]). A reload that fails (a file missing, half written, not PEM, a key that
//! does not match) is logged at warn naming the file, never its content, and the
//! certificate in use stays. Connections already open keep the session they have: only
//! new handshakes see the new certificate. Without TLS, [`ignore_hangup`] takes SIGHUP so
//! that a reload asked for by a service manager does not stop the gateway.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::stop::Stop;

/// How often the files' modification times are looked at.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(2);

/// A certificate or key file that cannot be used. Names the file and why, never its
/// content.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct CertError {
    /// The file.
    pub file: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
}

impl CertError {
    fn new(file: &Path, reason: impl Into<String>) -> Self {
        CertError {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The one crypto provider: ring (pure Rust and assembly: no cmake or clang to build, unlike
/// aws-lc-rs). rustls deprecates it for lacking post-quantum key exchange; the classical
/// groups (X25519, P-256, P-384) are what it offers.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a PEM file could not be read, without its content (a key file's lines are secret).
fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => "no such file".into(),
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        pem::Error::NoItemsFound => "no PEM section of the expected kind in it".into(),
        _ => "not a valid PEM file".into(),
    }
}

/// The certificates of a PEM file, in order: at least one.
pub(crate) fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CertError::new(file, pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(CertError::new(
            file,
            "no certificate in it (expected PEM `-----BEGIN CERTIFICATE-----` sections)",
        ));
    }
    Ok(certs)
}

/// A certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1), checked
/// to belong together.
pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, CertError> {
    let certs = load_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound => {
                "no private key in it (expected a PEM `PRIVATE KEY` section)".into()
            }
            other => pem_reason(&other),
        };
        CertError::new(key_file, reason)
    })?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| CertError::new(key_file, "unsupported or malformed private key"))?;
    let certified = CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertError::new(
                key_file,
                format!(
                    "the key does not match the certificate in {}",
                    cert_file.display()
                ),
            ))
        }
        // The key's type cannot say its public key: nothing to compare, taken as it is.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(CertError::new(
            cert_file,
            format!("the first certificate cannot be used: {e}"),
        )),
    }
}

/// A certificate read from two files, swapped when they change.
#[derive(Debug)]
pub(crate) struct Reloadable {
    /// Which listener, for the log.
    listener: &'static str,
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times at the last load attempt.
    seen: Mutex<Option<Stamp>>,
}

/// The modification times of the certificate and key files.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().clone())
    }
}

impl Reloadable {
    /// Loads the certificate; fails naming the file when it cannot be used.
    pub fn load(
        listener: &'static str,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<Arc<Self>, CertError> {
        let seen = stamp(cert_file, key_file);
        let certified = load(cert_file, key_file)?;
        Ok(Arc::new(Reloadable {
            listener,
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(Some(seen)),
        }))
    }

    /// The certificate in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Loads the files again: `true` if the certificate was replaced. A failure is logged
    /// and keeps the certificate in use.
    pub fn reload(&self) -> bool {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(stamp(&self.cert_file, &self.key_file));
        match load(&self.cert_file, &self.key_file) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
                info!(
                    listener = self.listener,
                    cert_file = %self.cert_file.display(),
                    "TLS certificate reloaded"
                );
                true
            }
            Err(e) => {
                warn!(
                    listener = self.listener,
                    cause = %e,
                    "TLS certificate not reloaded: the one in use stays"
                );
                false
            }
        }
    }

    /// Whether either file changed since the last load attempt.
    fn changed(&self) -> bool {
        let now = stamp(&self.cert_file, &self.key_file);
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        *seen != Some(now)
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let modified = |file: &Path| std::fs::metadata(file).and_then(|m| m.modified()).ok();
    (modified(cert_file), modified(key_file))
}

/// Reloads `cert` on SIGHUP and when its files change, until `stop`.
pub(crate) async fn watch(cert: Arc<Reloadable>, stop: Arc<Stop>) {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            warn!(cause = %e, "no SIGHUP handler: TLS certificates reload on file changes only");
            None
        }
    };
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup => {
                info!(listener = cert.listener, "SIGHUP: reloading the TLS certificate");
                cert.reload();
            }
            _ = poll.tick() => {
                if cert.changed() {
                    cert.reload();
                }
            }
        }
    }
}

/// With no certificate to reload, takes SIGHUP (`systemctl reload`) from this call on, so
/// that it does not end the process as its default action would; the future logs each one
/// until `stop`. The handler stays installed after `stop` (tokio never removes one): a
/// SIGHUP while draining is ignored too.
pub(crate) fn ignore_hangup(stop: Arc<Stop>) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hangup = match hangup {
                Ok(signal) => signal,
                Err(e) => {
                    warn!(cause = %e, "no SIGHUP handler: a SIGHUP would stop the gateway");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = hangup.recv() => info!("SIGHUP: no TLS certificate to reload"),
                }
            }
        }
        #[cfg(not(unix))]
        stop.cancelled().await;
    }
}

/// A server config answering with `cert`: TLS 1.3 and 1.2, ALPN `http/1.1`, no client
/// certificates.
pub(crate) fn server_config(cert: Arc<Reloadable>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
