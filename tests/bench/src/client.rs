//! The load generator's clients: WebSocket connections (`ws://`, or `wss://` through a
//! [`Dialer`] holding the run's TLS client config) bound to one of several 127.0.0.x source
//! addresses, and a bare HTTP/1.1 keep-alive connection.
//!
//! One source address gives one ephemeral port range (about 28,000 ports) towards a
//! server; binding clients to 127.0.0.2, 127.0.0.3, … (all loopback on Linux) before
//! connecting multiplies that, so 100k+ connections fit.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;

/// A client connection: plain TCP, or TLS over it (boxed: a plain client does not carry
/// the TLS state's size).
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// A client WebSocket, `ws://` or `wss://`.
pub type Ws = WebSocketStream<Stream>;

/// How long one connection attempt (TCP + TLS + upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The client side's tungstenite buffers: small, like the servers', so that 15,000 client
/// connections do not cost gigabytes in the load generator.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

/// The source addresses 127.0.0.2 ..= 127.0.0.(1 + n).
pub fn source_addrs(n: usize) -> Vec<Ipv4Addr> {
    (0..n.clamp(1, 250))
        .map(|i| Ipv4Addr::new(127, 0, 0, u8::try_from(i + 2).unwrap_or(252)))
        .collect()
}

/// Hands out source addresses round-robin.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Sources {
    /// Round-robin over `addrs` (127.0.0.1 if empty), starting at `offset`.
    pub fn new(addrs: Vec<Ipv4Addr>, offset: usize) -> Self {
        let addrs = if addrs.is_empty() {
            vec![Ipv4Addr::LOCALHOST]
        } else {
            addrs
        };
        Sources {
            addrs,
            next: AtomicUsize::new(offset),
        }
    }

    /// The next address.
    pub fn next(&self) -> Ipv4Addr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.addrs[i % self.addrs.len()]
    }
}

/// The `host:port` of a `ws://` or `http://` URL, as a socket address.
pub fn url_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .with_context(|| format!("not a URL: {url}"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .parse()
        .with_context(|| format!("URL {url} does not name an IP:port"))
}

/// A TCP connection to `server` from `source` (any free port).
pub async fn tcp_from(source: Ipv4Addr, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Lets a port whose previous connection is in TIME_WAIT be bound again.
    socket.set_reuseaddr(true)?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("binding a client socket to {source}"))?;
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting {source} -> {server}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How clients open WebSockets: `ws://` URLs always, `wss://` URLs when made with a CA to
/// trust (the run's, [`crate::tls`]). Cheap to clone.
#[derive(Clone, Default)]
pub struct Dialer {
    /// The CA, PEM, and the connector trusting it.
    tls: Option<(Arc<str>, TlsConnector)>,
}

impl Dialer {
    /// `ws://` only.
    pub fn plain() -> Self {
        Dialer::default()
    }

    /// `wss://` too, trusting the CA certificates in `ca_pem` (if given).
    pub fn new(ca_pem: Option<&str>) -> anyhow::Result<Self> {
        let tls = match ca_pem {
            Some(pem) => Some((Arc::from(pem), crate::tls::connector(pem)?)),
            None => None,
        };
        Ok(Dialer { tls })
    }

    /// The CA it trusts, for a worker process to make the same dialer.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|(pem, _)| &**pem)
    }

    /// A TLS connection to `server` from `source`, verifying the server's certificate for
    /// its IP address (no timeout of its own).
    pub async fn tls(
        &self,
        source: Ipv4Addr,
        server: SocketAddr,
    ) -> anyhow::Result<TlsStream<TcpStream>> {
        let (_, connector) = self
            .tls
            .as_ref()
            .with_context(|| format!("TLS to {server} without a CA to trust"))?;
        let tcp = tcp_from(source, server).await?;
        connector
            .connect(ServerName::from(server.ip()), tcp)
            .await
            .with_context(|| format!("TLS handshake with {server}"))
    }

    /// Opens a WebSocket to `url` (`ws://` or `wss://`, an IP address and a port) from
    /// `source`, the TLS handshake included; an upgrade refused is an error naming the
    /// status.
    pub async fn ws(&self, url: &str, source: Ipv4Addr) -> anyhow::Result<Ws> {
        let attempt = async {
            let addr = url_addr(url)?;
            let stream = if url.starts_with("wss://") {
                Either::Right(Box::new(self.tls(source, addr).await?))
            } else {
                Either::Left(tcp_from(source, addr).await?)
            };
            let (ws, _response) =
                tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
                    .await
                    .map_err(|e| match e {
                        tokio_tungstenite::tungstenite::Error::Http(resp) => {
                            anyhow::anyhow!("upgrade refused with {}", resp.status())
                        }
                        other => anyhow::anyhow!("handshake: {other}"),
                    })?;
            Ok(ws)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => bail!("connect timed out after {CONNECT_TIMEOUT:?}"),
        }
    }
}

/// One HTTP/1.1 keep-alive connection sending POSTs one after another (the bare HTTP
/// round-trip floor).
pub struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
    uri: hyper::Uri,
    host: String,
}

impl HttpConn {
    /// Connects to `url` (`http://ip:port/path`) from `source`.
    pub async fn connect(url: &str, source: Ipv4Addr) -> anyhow::Result<Self> {
        let addr = url_addr(url)?;
        let stream = tcp_from(source, addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            uri: url.parse()?,
            host: addr.to_string(),
        })
    }

    /// POSTs `body` and returns the reply body (an error unless 200).
    pub async fn post(&mut self, body: Bytes) -> anyhow::Result<Bytes> {
        self.sender.ready().await?;
        let req = hyper::Request::post(self.uri.clone())
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "text/plain")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status == hyper::StatusCode::OK, "HTTP {status}");
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin() {
        let s = Sources::new(source_addrs(3), 1);
        assert_eq!(s.next(), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(s.next(), Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(s.next(), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(Sources::new(vec![], 0).next(), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn url_addresses() {
        assert_eq!(
            url_addr("ws://127.0.0.1:8080/x?room=a").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            url_addr("http://127.0.0.1:9/").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(url_addr("localhost:80").is_err());
    }
}
