//! One connection's socket task: reads client frames, calls transport (one call in flight,
//! so events reach the function in order), writes queued messages, answers the
//! application heartbeat, enforces idle, ping and duration limits, and when the connection
//! ends for any reason sends cleanup exactly once and unregisters it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use functions::event::{DataType, DisconnectReason, Event, EventKind};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, error, info, warn};

use crate::invoke::{CallError, Reply};
use crate::registry::Connection;
use crate::{Shared, Slot, clock, liveness};

type Ws = WebSocketStream<TokioIo<Upgraded>>;
type TransportCall = Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send>>;

/// How long to wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a connection ended.
#[derive(Debug)]
struct End {
    reason: DisconnectReason,
    code: Option<u16>,
    text: String,
}

impl End {
    fn new(reason: DisconnectReason, code: Option<u16>, text: impl Into<String>) -> Self {
        End {
            reason,
            code,
            text: text.into(),
        }
    }
}

/// Runs an accepted connection to its end, then cleans up. `upgrade` is `None` when the
/// connection was accepted but cannot proceed (cleanup still runs).
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    upgrade: Option<OnUpgrade>,
    slot: Slot,
) {
    let mut session = Session::new(shared.clone(), conn.clone());
    let end = match upgrade {
        None => End::new(DisconnectReason::UpgradeFailed, None, "store unavailable"),
        Some(upgrade) => match upgrade.await {
            Err(e) => {
                debug!(cause = %e, "upgrade did not complete");
                End::new(DisconnectReason::UpgradeFailed, None, e.to_string())
            }
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(shared.ws_config),
                )
                .await;
                session.run(ws).await
            }
        },
    };
    session.finish(end).await;
    drop(slot);
}

struct Session {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    /// The next event's sequence number (register was 0).
    seq: u64,
    /// Client messages read but not yet handed to transport.
    pending: VecDeque<Message>,
    /// The transport call in flight, if any.
    inflight: Option<TransportCall>,
}

impl Session {
    fn new(shared: Arc<Shared>, conn: Arc<Connection>) -> Self {
        Session {
            shared,
            conn,
            seq: 1,
            pending: VecDeque::new(),
            inflight: None,
        }
    }

    fn event(&mut self, kind: EventKind) -> Event {
        let seq = self.seq;
        self.seq += 1;
        Event {
            connection_id: self.conn.id.to_string(),
            seq,
            node: self.shared.node.to_string(),
            timestamp: clock::now_ms(),
            context: self.conn.context.clone(),
            kind,
        }
    }

    /// Starts the next transport call if none is in flight and a message waits.
    fn start_next_transport(&mut self) {
        if self.inflight.is_some() {
            return;
        }
        let Some(message) = self.pending.pop_front() else {
            return;
        };
        let (data_type, data) = match message {
            Message::Text(text) => (DataType::Text, text.as_str().to_owned()),
            Message::Binary(bytes) => (DataType::Binary, BASE64.encode(&bytes)),
            _ => return,
        };
        let event = self.event(EventKind::Transport { data_type, data });
        let shared = self.shared.clone();
        self.inflight = Some(Box::pin(async move {
            let url = shared
                .config
                .functions
                .transport
                .as_deref()
                .unwrap_or_default();
            shared.invoker.call_with_retries(url, &event).await
        }));
    }

    /// The socket loop. Returns how the connection ended.
    async fn run(&mut self, mut ws: Ws) -> End {
        let limits = self.shared.config.limits.clone();
        let heartbeat = self.shared.config.heartbeat.clone();
        let has_transport = self.shared.config.functions.transport.is_some();
        let started = Instant::now();
        let mut last_rx = started;
        let mut last_activity = started;
        let mut ping_sent: Option<Instant> = None;
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(started));
        let mut batch = Vec::new();
        loop {
            let ping_due = match ping_sent {
                Some(sent) => sent + limits.ping_interval,
                None => last_rx + limits.ping_interval,
            };
            let deadline = (started + limits.max_duration)
                .min(last_activity + limits.idle_timeout)
                .min(ping_due);
            timer.as_mut().reset(deadline);
            let read_more = self.pending.len() < limits.inbound_queue_messages;
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    close(&mut ws, 1001, "server shutting down").await;
                    return End::new(DisconnectReason::Shutdown, Some(1001), "server shutting down");
                }
                _ = self.conn.outbox.wait() => {
                    let close_request = self.conn.outbox.drain(&mut batch);
                    if let Err(e) = write_all(&mut ws, &mut batch).await {
                        return lost(e);
                    }
                    if let Some(request) = close_request {
                        close(&mut ws, request.code, &request.reason).await;
                        return End::new(DisconnectReason::ServerDisconnect, Some(request.code), request.reason);
                    }
                }
                result = in_flight(&mut self.inflight), if self.inflight.is_some() => {
                    self.inflight = None;
                    match result {
                        Ok(reply) => {
                            if let Some(message) = reply_message(&reply, limits.max_message_bytes) {
                                if let Err(e) = ws.send(message).await {
                                    return lost(e);
                                }
                            }
                        }
                        Err(e) => {
                            error!(cause = %e, "transport function failed; closing the connection with 1011");
                            close(&mut ws, 1011, "transport function failed").await;
                            let dropped = self.pending.len();
                            if dropped > 0 {
                                warn!(dropped, "client messages not delivered after transport failure");
                            }
                            self.pending.clear();
                            return End::new(DisconnectReason::FunctionFailed, Some(1011), "transport function failed");
                        }
                    }
                    self.start_next_transport();
                }
                frame = ws.next(), if read_more => {
                    let message = match frame {
                        None => return End::new(DisconnectReason::ConnectionLost, None, "connection closed without a close frame"),
                        Some(Err(e)) => return protocol_end(&mut ws, e).await,
                        Some(Ok(message)) => message,
                    };
                    last_rx = Instant::now();
                    ping_sent = None;
                    match message {
                        Message::Text(_) | Message::Binary(_) => {
                            last_activity = last_rx;
                            self.conn.touch();
                            if !heartbeat.request.is_empty()
                                && matches!(&message, Message::Text(t) if t.as_str() == heartbeat.request)
                            {
                                if let Err(e) = ws.send(Message::text(heartbeat.reply.as_str())).await {
                                    return lost(e);
                                }
                                continue;
                            }
                            if !has_transport {
                                close(&mut ws, 1003, "this gateway accepts no messages").await;
                                return End::new(DisconnectReason::ProtocolError, Some(1003), "this gateway accepts no messages");
                            }
                            self.pending.push_back(message);
                            self.start_next_transport();
                        }
                        Message::Close(frame) => {
                            let (code, text) = frame
                                .map(|f| (Some(u16::from(f.code)), f.reason.as_str().to_owned()))
                                .unwrap_or((None, String::new()));
                            // tungstenite queued the close reply; let it reach the client.
                            let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(None)).await;
                            return End::new(DisconnectReason::ClientClose, code, text);
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                            // tungstenite answers pings itself; flush that answer.
                            if let Err(e) = ws.flush().await {
                                return lost(e);
                            }
                        }
                    }
                }
                _ = timer.as_mut() => {
                    let now = Instant::now();
                    if now >= started + limits.max_duration {
                        close(&mut ws, 1001, "maximum connection duration reached").await;
                        return End::new(DisconnectReason::MaxDuration, Some(1001), "maximum connection duration reached");
                    }
                    if now >= last_activity + limits.idle_timeout {
                        close(&mut ws, 1001, "idle timeout").await;
                        return End::new(DisconnectReason::IdleTimeout, Some(1001), "idle timeout");
                    }
                    match ping_sent {
                        Some(sent) if now >= sent + limits.ping_interval => {
                            close(&mut ws, 1001, "ping timeout").await;
                            return End::new(DisconnectReason::PingTimeout, Some(1001), "ping timeout");
                        }
                        Some(_) => {}
                        None if now >= last_rx + limits.ping_interval => {
                            if let Err(e) = ws.send(Message::Ping(Bytes::new())).await {
                                return lost(e);
                            }
                            ping_sent = Some(now);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// After the socket loop: deliver what the client sent before it left, send cleanup
    /// once, and forget the connection everywhere.
    async fn finish(mut self, end: End) {
        self.shared.registry.remove(&self.conn.id);
        let dropped = self.conn.outbox.mark_closed();
        if dropped > 0 {
            debug!(dropped, "queued messages not written: the connection ended");
        }
        let grace = self.shared.config.shutdown.grace;
        let drained = tokio::time::timeout(grace, async {
            loop {
                if let Some(call) = self.inflight.take() {
                    if let Err(e) = call.await {
                        error!(cause = %e, "transport function failed for a message sent before disconnect");
                    }
                }
                self.start_next_transport();
                if self.inflight.is_none() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                undelivered = self.pending.len() + 1,
                "gave up delivering messages sent before disconnect"
            );
        }
        if let Some(url) = self.shared.config.functions.cleanup.clone() {
            let event = self.event(EventKind::Cleanup {
                reason: end.reason,
                close_code: end.code,
                close_reason: end.text.clone(),
            });
            if let Err(e) = self.shared.invoker.call_with_retries(&url, &event).await {
                error!(cause = %e, "cleanup function failed");
            }
        }
        liveness::forget(&self.shared, self.conn.id.to_string()).await;
        info!(reason = ?end.reason, code = ?end.code, "connection closed");
    }
}

/// The transport call in flight; never completes when there is none.
async fn in_flight(call: &mut Option<TransportCall>) -> Result<Reply, CallError> {
    match call {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

/// The message a transport reply sends back to the client, if any.
fn reply_message(reply: &Reply, max: usize) -> Option<Message> {
    if reply.body.is_empty() {
        return None;
    }
    if reply.body.len() > max {
        warn!(
            len = reply.body.len(),
            max, "transport reply larger than limits.max_message_bytes; not sent"
        );
        return None;
    }
    let binary = reply
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    if binary {
        return Some(Message::Binary(reply.body.clone()));
    }
    match std::str::from_utf8(&reply.body) {
        Ok(text) => Some(Message::text(text)),
        Err(_) => Some(Message::Binary(reply.body.clone())),
    }
}

async fn write_all(ws: &mut Ws, batch: &mut Vec<Message>) -> Result<(), WsError> {
    for message in batch.drain(..) {
        ws.feed(message).await?;
    }
    ws.flush().await
}

/// Sends a close frame and waits (briefly) for the client's answer.
async fn close(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn lost(e: WsError) -> End {
    debug!(cause = %e, "connection lost");
    End::new(DisconnectReason::ConnectionLost, None, e.to_string())
}

/// The end of a connection whose read failed: protocol violations get the close code
/// RFC 6455 names for them; broken transport is just lost.
async fn protocol_end(ws: &mut Ws, e: WsError) -> End {
    let (code, text) = match &e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => (1009, "message too big"),
        WsError::Capacity(_) => (1009, "frame too big"),
        WsError::Utf8(_) => (1007, "invalid UTF-8 in text message"),
        WsError::Protocol(_) => (1002, "protocol error"),
        _ => return lost(e),
    };
    info!(cause = %e, code, "closing connection: client broke the protocol");
    close(ws, code, text).await;
    End::new(DisconnectReason::ProtocolError, Some(code), text)
}
