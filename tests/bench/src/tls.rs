//! TLS for the `wss://` systems: a certificate authority made with rcgen when a run starts,
//! one server certificate it signs for 127.0.0.1 and `localhost` (ECDSA P-256), written as
//! PEM files to a scratch directory under /tmp (removed when the run ends) for the gateway's
//! `[public.tls]` and nginx's `ssl_certificate` alike, and the clients' rustls config.
//!
//! Clients trust only that CA and never resume a session: every benchmark client is a new
//! client, so each connect pays a full handshake, as a browser's first visit does (with
//! resumption on, one load-generator process would resume its own sessions, against a
//! server-side cache of a few hundred on the gateway and stateless tickets on nginx: the
//! figures would measure the caches). They speak TLS 1.3 and offer what browsers offer
//! first: X25519 (then P-256, P-384) and AES-128-GCM with SHA-256 (then AES-256-GCM,
//! ChaCha20-Poly1305); both servers follow the client's order. rustls' ring provider lists
//! P-384 and AES-256-GCM-SHA384 first, and a client sends its key share for its first group
//! only: every handshake was then a P-384 one, which cost the gateway about 1.1 ms of CPU
//! per connection, and nginx with the gateway about 3 ms, against 0.2-0.3 ms with X25519.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite, version};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio_rustls::TlsConnector;

/// The run's CA and the server certificate it signed, as files.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    /// Makes the CA and the server certificate, and writes `ca.pem`, `cert.pem` and
    /// `key.pem` to a fresh directory under the system's temp dir.
    pub fn make() -> anyhow::Result<Pki> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Switchboard bench CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "switchboard bench");
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &issuer)?;

        let dir = std::env::temp_dir().join(format!(
            "sbtls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = Pki {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ca_pem: issuer.pem(),
            dir,
        };
        for (path, text) in [
            (pki.dir.join("ca.pem"), pki.ca_pem.clone()),
            (pki.cert_file.clone(), cert.pem()),
            (pki.key_file.clone(), key.serialize_pem()),
        ] {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(pki)
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate (PEM).
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// The server certificate's private key (PEM, PKCS#8).
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The key exchange groups clients offer, in order (see the module header).
const CLIENT_KX_GROUPS: [&dyn SupportedKxGroup; 3] =
    [kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];

/// The cipher suites clients offer, in order (see the module header).
const CLIENT_SUITES: [SupportedCipherSuite; 3] = [
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// A client connector trusting only the CA certificates in `ca_pem` (see [`client_config`]).
pub fn connector(ca_pem: &str) -> anyhow::Result<TlsConnector> {
    Ok(TlsConnector::from(client_config(ca_pem)?))
}

/// The clients' config: trusting only the CA certificates in `ca_pem`, with no session
/// resumption, offering TLS 1.3 as browsers do (see the module header); ring, as on the
/// gateway.
pub fn client_config(ca_pem: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("the CA PEM")?)
            .context("the CA certificate")?;
    }
    anyhow::ensure!(!roots.is_empty(), "no CA certificate in the PEM");
    #[allow(deprecated)] // ring lacks post-quantum key exchange; the gateway uses it too.
    let provider = rustls::crypto::ring::default_provider();
    let provider = Arc::new(CryptoProvider {
        cipher_suites: CLIENT_SUITES.to_vec(),
        kx_groups: CLIENT_KX_GROUPS.to_vec(),
        ..provider
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use rustls::{
        CipherSuite, ClientConnection, Connection, HandshakeKind, NamedGroup, ServerConnection,
    };
    use rustls_pki_types::ServerName;

    use super::*;

    #[test]
    fn files_are_written_and_removed() {
        let pki = Pki::make().unwrap();
        let dir = pki.dir.clone();
        let cert = std::fs::read_to_string(pki.cert_file()).unwrap();
        let key = std::fs::read_to_string(pki.key_file()).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        assert!(dir.join("ca.pem").is_file());
        assert!(connector(pki.ca_pem()).is_ok());
        assert!(connector("not a certificate").is_err());
        drop(pki);
        assert!(!dir.exists());
    }

    /// Moves what `from` has to send into `to`.
    fn deliver(from: &mut Connection, to: &mut Connection) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    #[test]
    fn clients_get_x25519_and_aes_128_from_a_server_on_ring_defaults() {
        let pki = Pki::make().unwrap();
        let cert = std::fs::read_to_string(pki.cert_file()).unwrap();
        let key = std::fs::read_to_string(pki.key_file()).unwrap();
        // The gateway's choice of provider, ring with its defaults (P-384 listed first).
        let mut server = Connection::from(
            ServerConnection::new(harness::tls::server_config(&cert, &key)).unwrap(),
        );
        let name = ServerName::from(IpAddr::from(Ipv4Addr::LOCALHOST));
        let config = client_config(pki.ca_pem()).unwrap();
        let mut client = Connection::from(ClientConnection::new(config, name).unwrap());
        while client.is_handshaking() || server.is_handshaking() {
            deliver(&mut client, &mut server);
            deliver(&mut server, &mut client);
        }
        assert_eq!(
            server.negotiated_key_exchange_group().map(|g| g.name()),
            Some(NamedGroup::X25519)
        );
        assert_eq!(
            server.negotiated_cipher_suite().map(|s| s.suite()),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        // One round trip: the client's key share was the one the server took.
        assert_eq!(server.handshake_kind(), Some(HandshakeKind::Full));
    }
}
