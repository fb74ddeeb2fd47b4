//! `bench-function`: the one benchmark function, written once, serving the gateway's
//! native events, Pushpin's WebSocket-over-HTTP events and Nchan's requests on the same
//! port with the same logic ([`Logic`]): accept every connection and join it to the room
//! its URL names (`?room=…`), echo every message back to its sender, acknowledge the
//! close.
//!
//! | format | open | message | close |
//! |---|---|---|---|
//! | native JSON event | `register`: join via `PUT /@groups/{room}/connections/{id}`, 200 | `transport`: 200 with the data (two-way reply) | `cleanup`: 204 |
//! | `application/websocket-events` | `OPEN`: `OPEN` + `c:` subscribe control message, grip extension | `TEXT`/`BINARY`: the same event back | `CLOSE`: `CLOSE`; `DISCONNECT`: nothing |
//! | Nchan (`/nchan/…`) | `GET /nchan/open?{query}` (authorize request): 200; Nchan's config subscribes to the room | `POST /nchan/message` (publisher upstream request): 200 with the message, which Nchan publishes to the sender's own channel | `GET /nchan/close` (unsubscribe request): 204 |
//!
//! The gateway writes its store record itself before calling register, so register needs
//! no store write of its own. `GET /stats` returns the [`FunctionStats`] counters, which
//! the harness polls (e.g. to know when every cleanup has arrived). On start it prints
//! `{"port":N}` on stdout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::Parser;
use functions::event::{DataType, Event, EventKind, query_pairs};
use functions::{Message, SendBack};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::wsevents::{self, WsEvent};

/// The largest request body read.
const MAX_BODY: usize = 1 << 20;

/// The path prefix of Nchan's requests (`open`, `message`, `close` follow it).
pub const NCHAN_PREFIX: &str = "/nchan/";

/// `bench-function` flags.
#[derive(Parser, Debug)]
#[command(
    name = "bench-function",
    about = "The benchmark function: native Switchboard events and Pushpin WebSocket-over-HTTP"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The gateway's send-back API (for room joins on native register events).
    #[arg(long)]
    pub sendback: Option<String>,
    /// The send-back bearer token.
    #[arg(long)]
    pub token: Option<String>,
}

/// Events seen so far, every format together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionStats {
    /// Opens (register / OPEN / Nchan's open).
    pub register: u64,
    /// Messages (transport / TEXT / BINARY / Nchan's message).
    pub transport: u64,
    /// Ends (cleanup / CLOSE / DISCONNECT / Nchan's close).
    pub cleanup: u64,
    /// Requests that failed (bad body, a room join refused, an unknown Nchan request).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    register: AtomicU64,
    transport: AtomicU64,
    cleanup: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> FunctionStats {
        FunctionStats {
            register: self.register.load(Ordering::Relaxed),
            transport: self.transport.load(Ordering::Relaxed),
            cleanup: self.cleanup.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// The function's logic, shared by both formats.
pub struct Logic {
    counters: Counters,
    sendback: Option<SendBack>,
}

impl Logic {
    /// A connection opens with the handshake's query string: accepted; returns the room to
    /// join, if it asks for one.
    fn open(&self, query: &str) -> Option<String> {
        self.counters.register.fetch_add(1, Ordering::Relaxed);
        query_pairs(query)
            .find(|(k, _)| k == "room")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }

    /// A message arrives: the reply to its sender is the message itself.
    fn message(&self, message: Message) -> Message {
        self.counters.transport.fetch_add(1, Ordering::Relaxed);
        message
    }

    /// The connection ended.
    fn close(&self) {
        self.counters.cleanup.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Answers one request.
async fn handle(logic: Arc<Logic>, req: Request<Incoming>) -> Reply {
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        let body = serde_json::to_vec(&logic.counters.snapshot()).unwrap_or_default();
        return reply(StatusCode::OK, "application/json", body);
    }
    let nchan = req
        .uri()
        .path()
        .strip_prefix(NCHAN_PREFIX)
        .map(str::to_owned);
    if req.method() != Method::POST && nchan.is_none() {
        return empty(StatusCode::METHOD_NOT_ALLOWED);
    }
    let pushpin = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(wsevents::CONTENT_TYPE));
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            logic.failed();
            return empty(StatusCode::BAD_REQUEST);
        }
    };
    if let Some(event) = nchan {
        nchan_request(&logic, &event, &query, body)
    } else if pushpin {
        over_http(&logic, &query, &body)
    } else {
        native(&logic, &body).await
    }
}

/// The gateway's native JSON events.
async fn native(logic: &Logic, body: &[u8]) -> Reply {
    let Ok(event) = serde_json::from_slice::<Event>(body) else {
        logic.failed();
        return empty(StatusCode::BAD_REQUEST);
    };
    match event.kind {
        EventKind::Register { request } => {
            if let Some(room) = logic.open(&request.query) {
                let joined = match &logic.sendback {
                    Some(sb) => sb.join_group(&room, &event.connection_id).await.is_ok(),
                    None => false,
                };
                if !joined {
                    logic.failed();
                    return reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "could not join the room",
                    );
                }
            }
            empty(StatusCode::OK)
        }
        EventKind::Transport { data_type, data } => {
            let message = match data_type {
                DataType::Text => Message::text(data),
                DataType::Binary => match BASE64.decode(data) {
                    Ok(bytes) => Message::binary(bytes),
                    Err(_) => {
                        logic.failed();
                        return empty(StatusCode::BAD_REQUEST);
                    }
                },
            };
            let echo = logic.message(message);
            let content_type = echo.content_type();
            reply(StatusCode::OK, content_type, echo.into_bytes())
        }
        EventKind::Cleanup { .. } => {
            logic.close();
            empty(StatusCode::NO_CONTENT)
        }
    }
}

/// Pushpin's WebSocket-over-HTTP events.
fn over_http(logic: &Logic, query: &str, body: &[u8]) -> Reply {
    let Ok(events) = wsevents::decode(body) else {
        logic.failed();
        return empty(StatusCode::BAD_REQUEST);
    };
    let mut out = Vec::with_capacity(events.len() + 1);
    let mut opened = false;
    for event in events {
        match event {
            WsEvent::Open => {
                opened = true;
                out.push(WsEvent::Open);
                if let Some(room) = logic.open(query) {
                    out.push(WsEvent::subscribe(&room));
                }
            }
            WsEvent::Text(text) => match String::from_utf8(text.to_vec()) {
                Ok(text) => out.push(WsEvent::Text(
                    logic.message(Message::text(text)).into_bytes(),
                )),
                Err(_) => logic.failed(),
            },
            WsEvent::Binary(bin) => out.push(WsEvent::Binary(
                logic.message(Message::binary(bin)).into_bytes(),
            )),
            WsEvent::Ping => out.push(WsEvent::Pong),
            WsEvent::Pong => {}
            WsEvent::Close(code) => {
                logic.close();
                out.push(WsEvent::Close(code));
            }
            WsEvent::Disconnect => logic.close(),
        }
    }
    let mut r = reply(
        StatusCode::OK,
        wsevents::CONTENT_TYPE,
        wsevents::encode(&out),
    );
    if opened {
        r.headers_mut().insert(
            "sec-websocket-extensions",
            HeaderValue::from_static(wsevents::GRIP_EXTENSION),
        );
    }
    r
}

/// Nchan's requests for a WebSocket connection (`event` is the path after
/// [`NCHAN_PREFIX`]): its authorize request on open (any 2xx admits it; the room is the
/// channel Nchan's config derives from the same query), the publisher upstream request of
/// each message (Nchan publishes the reply body to the connection's channel), and the
/// unsubscribe request on close.
fn nchan_request(logic: &Logic, event: &str, query: &str, body: Bytes) -> Reply {
    match event {
        "open" => {
            logic.open(query);
            empty(StatusCode::OK)
        }
        "message" => {
            let message = match String::from_utf8(body.to_vec()) {
                Ok(text) => Message::text(text),
                Err(_) => Message::binary(body),
            };
            let echo = logic.message(message);
            let content_type = echo.content_type();
            reply(StatusCode::OK, content_type, echo.into_bytes())
        }
        "close" => {
            logic.close();
            empty(StatusCode::NO_CONTENT)
        }
        _ => {
            logic.failed();
            empty(StatusCode::NOT_FOUND)
        }
    }
}

/// Serves the function on `listener` until the process ends.
pub async fn serve(listener: TcpListener, logic: Arc<Logic>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("bench-function: accept failed: {e}");
                // Out of descriptors: back off instead of spinning (pacing, not sync).
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let logic = logic.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let logic = logic.clone();
                async move { Ok::<_, Infallible>(handle(logic, req).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `bench-function`'s main.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let sendback = match &args.sendback {
        Some(url) => Some(SendBack::new(url, args.token.clone())?),
        None => None,
    };
    let logic = Arc::new(Logic {
        counters: Counters::default(),
        sendback,
    });
    let listener = TcpListener::bind(args.listen).await?;
    let port = listener.local_addr()?.port();
    println!("{}", serde_json::json!({ "port": port }));
    serve(listener, logic).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logic() -> Logic {
        Logic {
            counters: Counters::default(),
            sendback: None,
        }
    }

    #[test]
    fn over_http_accepts_subscribes_echoes_and_closes() {
        let l = logic();
        let r = over_http(&l, "room=bench", b"OPEN\r\n");
        assert_eq!(
            r.headers()["sec-websocket-extensions"],
            wsevents::GRIP_EXTENSION
        );
        let r = over_http(&l, "", b"TEXT 5\r\nhello\r\nCLOSE 2\r\n\x03\xe8\r\n");
        assert!(r.headers().get("sec-websocket-extensions").is_none());
        assert_eq!(
            l.counters.snapshot(),
            FunctionStats {
                register: 1,
                transport: 1,
                cleanup: 1,
                errors: 0
            }
        );
        assert_eq!(over_http(&l, "", b"TEXT").status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn nchan_opens_echoes_and_closes() {
        let l = logic();
        assert_eq!(
            nchan_request(&l, "open", "room=bench", Bytes::new()).status(),
            StatusCode::OK
        );
        let r = nchan_request(&l, "message", "", Bytes::from_static(b"hi"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            functions::message::TEXT_CONTENT_TYPE
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
        let r = nchan_request(&l, "message", "", Bytes::from_static(b"\xff\x00"));
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            functions::message::BINARY_CONTENT_TYPE
        );
        assert_eq!(
            nchan_request(&l, "close", "", Bytes::new()).status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            nchan_request(&l, "other", "", Bytes::new()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            l.counters.snapshot(),
            FunctionStats {
                register: 1,
                transport: 2,
                cleanup: 1,
                errors: 1
            }
        );
    }

    #[tokio::test]
    async fn native_echoes_and_counts() {
        let l = logic();
        let event = |kind: &str, extra: &str| {
            format!(
                r#"{{"type":"{kind}","connectionId":"c1","seq":1,"node":"n","timestamp":1{extra}}}"#
            )
        };
        let r = native(
            &l,
            event("transport", r#","dataType":"text","data":"hi""#).as_bytes(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
        let r = native(
            &l,
            event("cleanup", r#","reason":"client_close""#).as_bytes(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        // A room without a send-back API configured cannot be joined: refused.
        let register = event(
            "register",
            r#","request":{"path":"/","query":"room=a","headers":[],"sourceIp":"127.0.0.1","subprotocols":[]}"#,
        );
        let r = native(&l, register.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(l.counters.snapshot().errors, 1);
        assert_eq!(l.counters.snapshot().transport, 1);
    }
}
