//! The client side of TLS, for https functions and relays to nodes that advertise
//! `https://`: the system's roots (`rustls-native-certs`: on Debian the `ca-certificates`
//! bundle) plus `functions.ca_file`, a PEM bundle of private CAs.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, version};
use tracing::debug;

use crate::tls::server::{CertError, load_certs, provider};

/// A client config trusting the system's roots and the certificates in `ca_file`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, CertError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    debug!(
        added,
        ignored,
        errors = native.errors.len(),
        "system TLS roots loaded"
    );
    if let Some(file) = ca_file {
        for cert in load_certs(file)? {
            roots.add(cert).map_err(|e| CertError {
                file: file.to_owned(),
                reason: format!("a certificate in it cannot be a trust anchor: {e}"),
            })?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| CertError {
            file: ca_file.map(Path::to_owned).unwrap_or_default(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
