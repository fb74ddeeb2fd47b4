//! A WebSocket backend for passthrough tests: a real tokio-tungstenite server on a free
//! port (plain, or TLS with a test certificate) that records each upgrade request it saw
//! (path and query, headers, subprotocol chosen) and the close frame each connection got,
//! and echoes messages. A text message `close:<code>:<reason>` makes it close with that
//! code; `drop` makes it drop the TCP connection; `stream:<n>:<bytes>` makes it send `n`
//! binary messages of `bytes` bytes as fast as the connection takes them, counting each one
//! sent (`streamed`); `big:<bytes>` sends one binary message of that size.
//! It can instead answer every upgrade with a status (`Options::status`) or never answer
//! at all (`Options::silent`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How the backend behaves.
#[derive(Clone, Default)]
pub struct Options {
    /// The subprotocols it speaks: it picks the first the client offered that is here.
    pub subprotocols: Vec<String>,
    /// Answer every upgrade with this status instead of 101.
    pub status: Option<u16>,
    /// Accept TCP connections and never answer.
    pub silent: bool,
    /// Serve TLS with this config (`wss://`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One upgrade request as the backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The path and query.
    pub uri: String,
    pub headers: HeaderMap,
    /// The subprotocol it chose.
    pub subprotocol: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    /// The close frame each connection got (`None`: none, the TCP connection ended).
    closes: Mutex<Vec<Option<(u16, String)>>>,
    /// Messages sent by `stream:` so far.
    streamed: AtomicU64,
    /// Messages received.
    received: AtomicU64,
}

/// A running backend; stops when dropped.
pub struct WsBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsBackend {
    /// An echoing backend on a free port.
    pub async fn start(options: Options) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                if options.silent {
                    held.push(tcp);
                    continue;
                }
                let (options, state) = (options.clone(), shared.clone());
                tokio::spawn(async move {
                    match options.tls.clone() {
                        Some(tls) => {
                            if let Ok(stream) = TlsAcceptor::from(tls).accept(tcp).await {
                                serve(stream, &options, &state).await;
                            }
                        }
                        None => serve(tcp, &options, &state).await,
                    }
                });
            }
        });
        WsBackend { addr, state, task }
    }

    /// `ws://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Every upgrade request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The close frames received so far, one per ended connection.
    pub fn closes(&self) -> Vec<Option<(u16, String)>> {
        self.state.closes.lock().unwrap().clone()
    }

    /// Messages sent by `stream:` so far.
    pub fn streamed(&self) -> u64 {
        self.state.streamed.load(Ordering::SeqCst)
    }

    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Waits (bounded) for a connection's end and returns its close frame.
    pub async fn wait_close(&self) -> Option<(u16, String)> {
        crate::wait::eventually_some(
            "the backend's connection ends",
            Duration::from_secs(10),
            || async { self.closes().first().cloned() },
        )
        .await
    }
}

// tungstenite's callback signature returns its response type as the error.
#[allow(clippy::result_large_err)]
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, options: &Options, state: &State) {
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let offered: Vec<String> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .collect();
        let chosen = offered
            .into_iter()
            .find(|p| options.subprotocols.contains(p));
        state.seen.lock().unwrap().push(Seen {
            uri: request.uri().to_string(),
            headers: request.headers().clone(),
            subprotocol: chosen.clone(),
        });
        if let Some(status) = options.status {
            let mut refusal = ErrorResponse::new(Some("no".into()));
            *refusal.status_mut() = http::StatusCode::from_u16(status).unwrap();
            return Err(refusal);
        }
        if let Some(p) = chosen {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let close = loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(_)) | None => break None,
        };
        match message {
            Message::Close(frame) => {
                let _ = ws.close(None).await;
                break Some(
                    frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new())),
                );
            }
            Message::Text(text) => {
                state.received.fetch_add(1, Ordering::SeqCst);
                let text = text.as_str();
                if let Some(rest) = text.strip_prefix("close:") {
                    let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                    let frame = CloseFrame {
                        code: CloseCode::from(code.parse::<u16>().unwrap_or(1000)),
                        reason: reason.to_owned().into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    // Wait for the answer, then end.
                    while let Some(Ok(m)) = ws.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                    break None;
                } else if text == "drop" {
                    return;
                } else if let Some(rest) = text.strip_prefix("stream:") {
                    let (n, bytes) = rest.split_once(':').unwrap_or((rest, "1024"));
                    let (n, bytes): (u64, usize) = (n.parse().unwrap(), bytes.parse().unwrap());
                    for _ in 0..n {
                        if ws.send(Message::binary(vec![7u8; bytes])).await.is_err() {
                            return;
                        }
                        state.streamed.fetch_add(1, Ordering::SeqCst);
                    }
                } else if let Some(bytes) = text.strip_prefix("big:") {
                    let bytes: usize = bytes.parse().unwrap();
                    if ws.send(Message::binary(vec![1u8; bytes])).await.is_err() {
                        break None;
                    }
                } else if ws.send(Message::text(text)).await.is_err() {
                    break None;
                }
            }
            Message::Binary(bytes) => {
                state.received.fetch_add(1, Ordering::SeqCst);
                if ws.send(Message::Binary(bytes)).await.is_err() {
                    break None;
                }
            }
            _ => {}
        }
    };
    state.closes.lock().unwrap().push(close);
}
