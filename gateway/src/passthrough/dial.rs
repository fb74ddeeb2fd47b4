//! Dialing a passthrough route's backend before the client gets its 101: TCP, TLS for
//! `wss://` (the gateway's one client config: system roots and `functions.ca_file`), and
//! the WebSocket handshake, all within the route's `connect_timeout`. A backend that
//! refuses or cannot be reached, fails TLS or answers anything but 101 is a 502 for the
//! client (a non-101 names its status); one that takes too long, a 504. The subprotocol
//! the backend chose goes into the client's 101.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::metrics::registry::DialOutcome;
use crate::tls::stream::{ClientStream, MaybeTls};

/// The WebSocket to a backend.
pub(crate) type BackendWs = WebSocketStream<ClientStream>;

/// A backend that answered 101.
pub(crate) struct Dialed {
    pub ws: BackendWs,
    /// The subprotocol the backend chose, if any.
    pub subprotocol: Option<String>,
}

/// Why a backend could not be reached; its messages name the host at most, never the URL
/// (a client's query string is in it) or a header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("the backend could not be reached: {0}")]
    Unreachable(std::io::Error),
    #[error("TLS with the backend failed: {0}")]
    Tls(std::io::Error),
    #[error("the backend answered {0} instead of 101")]
    BadStatus(StatusCode),
    #[error("the backend's WebSocket handshake failed: {0}")]
    Handshake(WsError),
    #[error("the backend did not answer within its connect_timeout")]
    Timeout,
}

impl DialError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            DialError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The metric's outcome.
    pub fn outcome(&self) -> DialOutcome {
        match self {
            DialError::Unreachable(_) | DialError::Tls(_) | DialError::Handshake(_) => {
                DialOutcome::Refused
            }
            DialError::BadStatus(_) => DialOutcome::BadStatus,
            DialError::Timeout => DialOutcome::Timeout,
        }
    }
}

/// Dials `request`'s URL (`ws://` or `wss://`, checked by the config) within `timeout`.
pub(crate) async fn dial(
    request: http::Request<()>,
    tls: &Arc<ClientConfig>,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<Dialed, DialError> {
    tokio::time::timeout(timeout, dial_now(request, tls, config))
        .await
        .unwrap_or(Err(DialError::Timeout))
}

async fn dial_now(
    request: http::Request<()>,
    tls: &Arc<ClientConfig>,
    config: WebSocketConfig,
) -> Result<Dialed, DialError> {
    let uri = request.uri();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(DialError::Unreachable)?;
    let _ = tcp.set_nodelay(true);
    let stream: ClientStream = if secure {
        let name = ServerName::try_from(host.clone()).map_err(|e| {
            DialError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let tls = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(DialError::Tls)?;
        MaybeTls::Tls(Box::new(tls))
    } else {
        MaybeTls::Plain(tcp)
    };
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((ws, response)) => {
            let subprotocol = response
                .headers()
                .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(Dialed { ws, subprotocol })
        }
        Err(WsError::Http(response)) => Err(DialError::BadStatus(response.status())),
        Err(e) => Err(DialError::Handshake(e)),
    }
}
