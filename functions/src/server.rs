//! [`serve`]: runs a [`Handler`] as an HTTP/1.1 server the gateway POSTs events to.
//!
//! Any path answers; only `POST` with a JSON [`Event`] body (at most [`MAX_EVENT_BYTES`], or
//! [`ServeConfig::max_event_bytes`] with [`serve_with`]) is accepted. The reply follows the gateway's contract:
//!
//! | event     | handler result      | reply                                              |
//! |-----------|---------------------|----------------------------------------------------|
//! | register  | `Ok(reply)`         | 200 `application/json` [`RegisterReply`] (`{}` if default) |
//! | register  | `Err(refusal)`      | the refusal's status, `text/plain` message         |
//! | transport | `Ok(Some(text))`    | 200 `text/plain; charset=utf-8`                    |
//! | transport | `Ok(Some(binary))`  | 200 `application/octet-stream`                     |
//! | transport | `Ok(None)`          | 204                                                |
//! | cleanup   | `Ok(())`            | 204                                                |
//! | any       | `Err(error)`        | 500 `text/plain` (logged)                          |
//!
//! Malformed requests get 400 (bad JSON or base64), 405 (not `POST`) or 413 (too large).

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

use crate::error::HandlerError;
use crate::event::{Event, EventKind, RegisterReply};
use crate::handler::{Handler, Refusal};
use crate::message::{Message, TEXT_CONTENT_TYPE};

/// The largest event body [`serve`] accepts; larger ones get 413. Binary messages travel
/// as base64, so this fits messages up to about 760 KiB; for a gateway whose
/// `limits.max_message_bytes` is larger, use [`serve_with`].
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// How long [`serve`] waits, after `shutdown`, for requests in flight to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The limits of [`serve_with`]; the default is what [`serve`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// The largest event body accepted; larger ones get 413.
    pub max_event_bytes: usize,
    /// How long to wait, after `shutdown`, for requests in flight to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_event_bytes: MAX_EVENT_BYTES,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// How long a connection may wait for the next request's headers. Longer than usual client
/// pool idle timeouts (reqwest's is 90 s), so the client, not the server, closes idle ones.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The pause after an accept error that is not about one connection (e.g. no file
/// descriptors left), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

type Reply = Response<Full<Bytes>>;

/// Serves `handler` on `listener` until `shutdown` is cancelled.
///
/// Connections are HTTP/1.1 with keep-alive, one task each. On `shutdown` it stops
/// accepting, lets requests in flight finish for up to [`SHUTDOWN_GRACE`], then returns.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, handler, shutdown, ServeConfig::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
    config: ServeConfig,
) -> io::Result<()> {
    // Debug only: the caller bound the listener and announces it in its own words.
    if let Ok(addr) = listener.local_addr() {
        debug!(%addr, "functions server listening");
    }
    let tracker = TaskTracker::new();
    let abandon = CancellationToken::new();
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) if is_per_connection(&err) => continue,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        if let Err(err) = stream.set_nodelay(true) {
            debug!(%peer, error = %err, "could not set TCP_NODELAY");
        }
        let service = {
            let handler = Arc::clone(&handler);
            let tracker = tracker.clone();
            service_fn(move |req| {
                let handler = Arc::clone(&handler);
                let tracker = tracker.clone();
                let limit = config.max_event_bytes;
                async move { Ok::<_, Infallible>(respond(req, handler, &tracker, limit).await) }
            })
        };
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let (shutdown, abandon) = (shutdown.clone(), abandon.clone());
        tracker.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = conn.as_mut() => ended,
                        () = abandon.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(err) = ended {
                debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            in_flight = tracker.len(),
            "requests still running after the shutdown grace period; abandoning them"
        );
        abandon.cancel();
    }
    info!("functions server stopped");
    Ok(())
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers one HTTP request. The handler runs in its own tracked task, so it completes even
/// if the gateway drops the request, and a panic in it becomes a 500.
async fn respond<H: Handler>(
    req: Request<Incoming>,
    handler: Arc<H>,
    tracker: &TaskTracker,
    max_event_bytes: usize,
) -> Reply {
    if req.method() != Method::POST {
        let mut reply = text_reply(StatusCode::METHOD_NOT_ALLOWED, "only POST is accepted");
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return reply;
    }
    let event = match read_event(req, max_event_bytes).await {
        Ok(event) => event,
        Err(reply) => return reply,
    };
    let span = tracing::info_span!(
        "event",
        connection_id = %event.connection_id,
        kind = event.kind.name(),
        seq = event.seq,
    );
    let connection_id = event.connection_id.clone();
    let task = tracker.spawn(dispatch(handler, event).instrument(span));
    match task.await {
        Ok(reply) => reply,
        Err(err) => {
            error!(%connection_id, error = %err, "handler panicked");
            text_reply(StatusCode::INTERNAL_SERVER_ERROR, "handler panicked")
        }
    }
}

/// Reads and parses the body, or says why not.
async fn read_event(req: Request<Incoming>, max_event_bytes: usize) -> Result<Event, Reply> {
    let too_large = || {
        text_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("event body exceeds {max_event_bytes} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_event_bytes as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(req.into_body(), max_event_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(err) => {
            debug!(error = %err, "could not read an event body");
            return Err(text_reply(
                StatusCode::BAD_REQUEST,
                "could not read the request body",
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|err| {
        warn!(error = %err, "event is not valid JSON");
        text_reply(
            StatusCode::BAD_REQUEST,
            format!("invalid event JSON: {err}"),
        )
    })
}

/// Calls the handler method that matches the event and turns its result into the reply.
async fn dispatch<H: Handler>(handler: Arc<H>, event: Event) -> Reply {
    match &event.kind {
        EventKind::Register { request } => match handler.register(&event, request).await {
            Ok(reply) => register_reply(&reply),
            Err(refusal) => refusal_reply(refusal),
        },
        EventKind::Transport { data_type, data } => {
            let message = match Message::from_data(*data_type, data) {
                Ok(message) => message,
                Err(err) => {
                    warn!(error = %err, "transport event data cannot be decoded");
                    return text_reply(StatusCode::BAD_REQUEST, err.to_string());
                }
            };
            match handler.transport(&event, message).await {
                Ok(Some(message)) => message_reply(message),
                Ok(None) => empty_reply(StatusCode::NO_CONTENT),
                Err(err) => failure_reply(&event, err),
            }
        }
        EventKind::Cleanup { reason, .. } => match handler.cleanup(&event, *reason).await {
            Ok(()) => empty_reply(StatusCode::NO_CONTENT),
            Err(err) => failure_reply(&event, err),
        },
    }
}

fn register_reply(reply: &RegisterReply) -> Reply {
    match serde_json::to_vec(reply) {
        Ok(json) => {
            let mut out = Response::new(Full::new(Bytes::from(json)));
            set_content_type(&mut out, "application/json");
            out
        }
        Err(err) => {
            error!(error = %err, "register reply cannot be serialized");
            text_reply(StatusCode::INTERNAL_SERVER_ERROR, "invalid register reply")
        }
    }
}

fn refusal_reply(refusal: Refusal) -> Reply {
    let status = StatusCode::from_u16(refusal.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or_else(|| {
            warn!(
                status = refusal.status,
                "refusal status is not 4xx or 5xx; refusing with 403"
            );
            StatusCode::FORBIDDEN
        });
    info!(status = status.as_u16(), message = %refusal.message, "register refused");
    text_reply(status, refusal.message)
}

fn message_reply(message: Message) -> Reply {
    let content_type = message.content_type();
    let mut out = Response::new(Full::new(message.into_bytes()));
    set_content_type(&mut out, content_type);
    out
}

fn failure_reply(event: &Event, err: HandlerError) -> Reply {
    error!(
        connection_id = %event.connection_id,
        kind = event.kind.name(),
        error = %err,
        "handler failed"
    );
    text_reply(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

fn text_reply(status: StatusCode, text: impl Into<String>) -> Reply {
    let mut out = Response::new(Full::new(Bytes::from(text.into())));
    *out.status_mut() = status;
    set_content_type(&mut out, TEXT_CONTENT_TYPE);
    out
}

fn empty_reply(status: StatusCode) -> Reply {
    let mut out = Response::new(Full::new(Bytes::new()));
    *out.status_mut() = status;
    out
}

fn set_content_type(reply: &mut Reply, content_type: &'static str) {
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;
    use tokio::sync::{Notify, oneshot};

    use super::*;
    use crate::event::{DisconnectReason, HandshakeRequest};

    /// Behaves by the event's content, and records cleanups.
    #[derive(Default)]
    struct TestHandler {
        cleanups: Mutex<Vec<DisconnectReason>>,
        /// Signalled when a `slow` transport starts.
        slow_started: Notify,
        /// Released by the test to let a `slow` transport finish.
        slow_release: Mutex<Option<oneshot::Receiver<()>>>,
    }

    #[async_trait::async_trait]
    impl Handler for TestHandler {
        async fn register(
            &self,
            _event: &Event,
            request: &HandshakeRequest,
        ) -> Result<RegisterReply, Refusal> {
            match request.query_param("mode").as_deref() {
                Some("deny") => Err(Refusal::forbidden("go away")),
                Some("weird") => Err(Refusal::new(200, "not a refusal status")),
                Some("context") => Ok(RegisterReply {
                    subprotocol: Some("chat.v1".into()),
                    context: json!({"user": "ann"}),
                    ..RegisterReply::default()
                }),
                _ => Ok(RegisterReply::default()),
            }
        }

        async fn transport(
            &self,
            _event: &Event,
            message: Message,
        ) -> Result<Option<Message>, HandlerError> {
            match message {
                Message::Binary(bytes) => Ok(Some(Message::binary(bytes))),
                Message::Text(text) => match text.as_str() {
                    "none" => Ok(None),
                    "fail" => Err(HandlerError::msg("it broke")),
                    "panic" => panic!("handler panics on purpose"),
                    "slow" => {
                        let release = self.slow_release.lock().unwrap().take();
                        self.slow_started.notify_one();
                        if let Some(release) = release {
                            let _ = release.await;
                        }
                        Ok(Some(Message::text("finally")))
                    }
                    _ => Ok(Some(Message::text(text.to_uppercase()))),
                },
            }
        }

        async fn cleanup(
            &self,
            _event: &Event,
            reason: DisconnectReason,
        ) -> Result<(), HandlerError> {
            self.cleanups.lock().unwrap().push(reason);
            Ok(())
        }
    }

    struct Running {
        url: String,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<io::Result<()>>,
        client: reqwest::Client,
    }

    async fn start(handler: Arc<TestHandler>) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/fn", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, handler, shutdown.clone()));
        Running {
            url,
            shutdown,
            server,
            client: reqwest::Client::new(),
        }
    }

    /// Sends a raw HTTP/1.1 request and returns the reply's status line.
    async fn raw_status_line(addr: std::net::SocketAddr, request: &[u8]) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.unwrap();
        line.trim_end().to_owned()
    }

    impl Running {
        async fn post(&self, event: serde_json::Value) -> reqwest::Response {
            self.client
                .post(&self.url)
                .json(&event)
                .send()
                .await
                .unwrap()
        }
    }

    fn register_event(query: &str) -> serde_json::Value {
        json!({"type": "register", "connectionId": "c1", "seq": 0, "node": "n1",
            "timestamp": 1, "request": {"path": "/chat", "query": query, "sourceIp": "127.0.0.1"}})
    }

    fn transport_event(data_type: &str, data: &str) -> serde_json::Value {
        json!({"type": "transport", "connectionId": "c1", "seq": 1, "node": "n1",
            "timestamp": 2, "context": {"user": "ann"}, "dataType": data_type, "data": data})
    }

    fn content_type(resp: &reqwest::Response) -> &str {
        resp.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn register_accepts_with_json_reply() {
        let server = start(Arc::default()).await;

        let resp = server.post(register_event("")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(content_type(&resp), "application/json");
        assert_eq!(resp.text().await.unwrap(), "{}");

        let resp = server.post(register_event("mode=context")).await;
        assert_eq!(resp.status(), 200);
        let reply: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            reply,
            json!({"subprotocol": "chat.v1", "context": {"user": "ann"}})
        );
    }

    #[tokio::test]
    async fn register_refusal_sets_status_and_text() {
        let server = start(Arc::default()).await;

        let resp = server.post(register_event("mode=deny")).await;
        assert_eq!(resp.status(), 403);
        assert!(content_type(&resp).starts_with("text/plain"));
        assert_eq!(resp.text().await.unwrap(), "go away");

        // A "refusal" with a 2xx status must not accept the connection.
        let resp = server.post(register_event("mode=weird")).await;
        assert_eq!(resp.status(), 403);
    }

    #[tokio::test]
    async fn transport_replies_by_message_kind() {
        let server = start(Arc::default()).await;

        let resp = server.post(transport_event("text", "hello")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(content_type(&resp), TEXT_CONTENT_TYPE);
        assert_eq!(resp.text().await.unwrap(), "HELLO");

        let resp = server.post(transport_event("binary", "AAH/")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(content_type(&resp), "application/octet-stream");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &[0u8, 1, 255]);

        let resp = server.post(transport_event("text", "none")).await;
        assert_eq!(resp.status(), 204);
        assert!(resp.bytes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn handler_failures_are_500() {
        let server = start(Arc::default()).await;

        let resp = server.post(transport_event("text", "fail")).await;
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.text().await.unwrap(), "it broke");

        let resp = server.post(transport_event("text", "panic")).await;
        assert_eq!(resp.status(), 500);

        // The server keeps serving after a panic.
        let resp = server.post(transport_event("text", "still")).await;
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn cleanup_is_204_and_reaches_the_handler() {
        let handler = Arc::new(TestHandler::default());
        let server = start(Arc::clone(&handler)).await;
        let event = json!({"type": "cleanup", "connectionId": "c1", "seq": 4, "node": "n1",
            "timestamp": 3, "reason": "idle_timeout", "closeReason": ""});

        let resp = server.post(event).await;
        assert_eq!(resp.status(), 204);
        assert_eq!(
            *handler.cleanups.lock().unwrap(),
            vec![DisconnectReason::IdleTimeout]
        );
    }

    #[tokio::test]
    async fn malformed_requests_are_rejected() {
        let server = start(Arc::default()).await;

        let resp = server
            .client
            .post(&server.url)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        assert!(resp.text().await.unwrap().starts_with("invalid event JSON"));

        let resp = server
            .post(json!({"type": "nonsense", "connectionId": "c1"}))
            .await;
        assert_eq!(resp.status(), 400);

        let resp = server.post(transport_event("binary", "not base64!")).await;
        assert_eq!(resp.status(), 400);

        let resp = server.client.get(&server.url).send().await.unwrap();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers().get(header::ALLOW).unwrap(), "POST");

        let resp = server
            .client
            .post(&server.url)
            .body(vec![b' '; MAX_EVENT_BYTES + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
    }

    #[tokio::test]
    async fn configured_limit_applies_to_streamed_bodies() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServeConfig {
            max_event_bytes: 64,
            ..ServeConfig::default()
        };
        let handler = Arc::new(TestHandler::default());
        tokio::spawn(serve_with(
            listener,
            handler,
            CancellationToken::new(),
            config,
        ));

        // No Content-Length: the limit is found while reading the chunks.
        let chunk = "x".repeat(100);
        let chunked = format!(
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        );
        let status = raw_status_line(addr, chunked.as_bytes()).await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large");

        let event = r#"{"type":"cleanup","connectionId":"c","seq":1,"node":"n","timestamp":1,"reason":"shutdown"}"#;
        assert!(event.len() > 64);
        let declared = format!(
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{event}",
            event.len()
        );
        let status = raw_status_line(addr, declared.as_bytes()).await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    }

    #[tokio::test]
    async fn shutdown_waits_for_requests_in_flight() {
        let handler = Arc::new(TestHandler::default());
        let (release, released) = oneshot::channel();
        *handler.slow_release.lock().unwrap() = Some(released);
        let server = start(Arc::clone(&handler)).await;

        let started = handler.slow_started.notified();
        let request = {
            let client = server.client.clone();
            let url = server.url.clone();
            tokio::spawn(async move {
                client
                    .post(&url)
                    .json(&transport_event("text", "slow"))
                    .send()
                    .await
            })
        };
        started.await;
        server.shutdown.cancel();
        release.send(()).unwrap();

        let resp = request.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "finally");
        server.server.await.unwrap().unwrap();
    }
}
