//! TLS for the tests: server and client configs from PEM text (the certificates are made
//! by the tests themselves), a `wss://` client that reports the certificate it was shown,
//! and a small https client for the send-back API.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket client over TLS.
pub type WssClient = WebSocketStream<TlsStream<TcpStream>>;

/// The gateway's provider: ring.
fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config presenting `cert_pem` (chain, leaf first) with `key_pem`.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Arc<ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    Arc::new(config)
}

/// A client config trusting only the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("a CA certificate");
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr`, verifying the certificate for `host` against `ca_pem`.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    ca_pem: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(client_config(ca_pem))
        .connect(name, tcp)
        .await
}

/// The certificate the server presented (the leaf), DER.
pub fn peer_certificate(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| cert.as_ref().to_vec())
        .expect("the server presented a certificate")
}

/// A `wss://localhost:<port>/<path>` client of the listener at `addr`, trusting `ca_pem`;
/// also returns the certificate the gateway presented.
pub async fn connect_wss(
    addr: SocketAddr,
    path_and_query: &str,
    ca_pem: &str,
) -> Result<(WssClient, Vec<u8>), tokio_tungstenite::tungstenite::Error> {
    let tls = connect(addr, "localhost", ca_pem).await?;
    let presented = peer_certificate(&tls);
    let url = format!(
        "wss://localhost:{}/{}",
        addr.port(),
        path_and_query.trim_start_matches('/')
    );
    let request = url.into_client_request()?;
    let (client, _) = tokio_tungstenite::client_async(request, tls).await?;
    Ok((client, presented))
}

/// One HTTP/1.1 request over TLS to `https://localhost:<port>` (the connection closed
/// after it): the status and the body.
pub async fn https_request(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut tls = connect(addr, "localhost", ca_pem).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost:{}\r\nconnection: close\r\ncontent-length: {}\r\n",
        addr.port(),
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut reply = Vec::new();
    // A peer that closes without close_notify still gave its whole reply (connection: close).
    if let Err(e) = tls.read_to_end(&mut reply).await
        && e.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {text}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.as_bytes().to_vec())
        .unwrap_or_default();
    Ok((status, body))
}
