//! One connection's socket task: reads client frames, calls transport (one call in flight,
//! so events reach the function in order), writes queued messages, answers the
//! application heartbeat, enforces idle, ping and duration limits, and when the connection
//! ends for any reason hands its cleanup over to the durable queue (`cluster::cleanup`),
//! whose workers deliver it and then unregister the connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use wire::codes;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, error, info, warn};
use wire::event::{DataType, DisconnectReason, Event, EventKind};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clock;
use crate::cluster::cleanup::{Cleanups, Ended};
use crate::config::{Config, Dialect};
use crate::dialect::{self, model::Facts, model::FailureAction};
use crate::function::invoke::{Call, CallError, Invoker, Reply};
use crate::socket::outbox::Outbox;
use crate::socket::registry::{Connection, Registry};
use crate::socket::sockio::SocketIo;
use crate::stop::Stop;

type Ws = WebSocketStream<SocketIo<TcpStream>>;
type TransportCall = Pin<Box<dyn Future<Output = TransportResult> + Send>>;

/// A finished transport call and how to read it.
struct TransportResult {
    dialect: Dialect,
    two_way: bool,
    result: Result<Reply, CallError>,
}

/// What every connection's socket task uses.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// This node's name (in events).
    pub node: Arc<str>,
    /// `functions` (targets, dialect), `limits`, `heartbeat`, `shutdown.grace`, and what
    /// the dialects' encoders read.
    pub config: Arc<Config>,
    pub invoker: Invoker,
    pub registry: Arc<Registry>,
    /// Where a connection's cleanup goes when it ends.
    pub cleanups: Arc<Cleanups>,
    pub stop: Arc<Stop>,
    pub ws_config: WebSocketConfig,
}

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

/// Runs an accepted connection to its end, then cleans up. `socket` is the client's socket
/// once the 101 went out, or why the connection cannot proceed (cleanup still runs).
pub(crate) async fn run(
    shared: Arc<Sockets>,
    conn: Arc<Connection>,
    socket: Result<SocketIo<TcpStream>, NoSocket>,
    slot: impl Send,
) {
    let mut session = Session::new(shared.clone(), conn.clone());
    let end = match socket {
        Err(why) => {
            debug!(cause = %why, "upgrade did not complete");
            End::new(DisconnectReason::UpgradeFailed, None, why.to_string())
        }
        Ok(socket) => {
            // On the heap, borrowed by the socket loop: passed by value, it would be
            // stored twice in the loop's future (argument and local).
            // (The setup future is boxed too: it is large, short-lived, and would
            // otherwise size this task's state for the connection's whole life.)
            let mut ws = Box::new(
                Box::pin(WebSocketStream::from_raw_socket(
                    socket,
                    Role::Server,
                    Some(shared.ws_config),
                ))
                .await,
            );
            // Boxed, like `finish` below: this task's state is the union of every
            // await point, and an idle connection should pay only for the socket loop.
            Box::pin(session.run(&mut ws)).await
        }
    };
    Box::pin(session.finish(end)).await;
    drop(slot);
}

/// Why an admitted connection has no socket to run: its cleanup still runs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoSocket {
    /// Writing the 101 failed.
    #[error("the 101 could not be sent: {0}")]
    Upgrade(std::io::Error),
    /// The store failed after register accepted the connection.
    #[error("store unavailable")]
    StoreUnavailable,
}

struct Session {
    shared: Arc<Sockets>,
    conn: Arc<Connection>,
    /// The next event's sequence number (register was 0).
    seq: u64,
    /// Client messages read but not yet handed to transport.
    pending: VecDeque<Message>,
    /// The transport call in flight, if any.
    inflight: Option<TransportCall>,
    /// The client's address as text (for events).
    source_ip: String,
}

impl Session {
    fn new(shared: Arc<Sockets>, conn: Arc<Connection>) -> Self {
        Session {
            shared,
            source_ip: conn.source_ip.to_string(),
            conn,
            seq: 1,
            pending: VecDeque::new(),
            inflight: None,
        }
    }

    fn event(&mut self, kind: EventKind) -> Event {
        let seq = self.seq;
        self.seq += 1;
        let connection_id = self.conn.id.to_string();
        Event {
            event_id: kind.event_id(&connection_id, seq),
            connection_id,
            seq,
            node: self.shared.node.to_string(),
            timestamp: clock::now_ms(),
            context: self.conn.context.clone(),
            kind,
        }
    }

    /// What encoders need to know about this connection.
    fn facts(&self) -> Facts<'_> {
        Facts {
            connected_at_ms: self.conn.connected_at_ms,
            source_ip: &self.source_ip,
            user_agent: self.conn.user_agent.as_deref(),
            host: self.conn.host.as_deref(),
        }
    }

    /// Encodes the next event of this connection for a target of `dialect`; returns the
    /// event's name and body.
    fn encode(
        &mut self,
        kind: EventKind,
        dialect: Dialect,
        route_key: &str,
    ) -> (&'static str, Bytes) {
        let name = kind.name();
        let event = self.event(kind);
        let body = dialect::encode(
            dialect,
            &self.shared.config,
            &event,
            self.facts(),
            route_key,
        );
        (name, body.into())
    }

    /// Starts the next transport call if none is in flight and a message waits.
    fn start_next_transport(&mut self) {
        if self.inflight.is_some() {
            return;
        }
        let Some(message) = self.pending.pop_front() else {
            return;
        };
        let shared = self.shared.clone();
        let functions = &shared.config.functions;
        let Some((route_key, target)) = dialect::select_route(functions, &message) else {
            return; // checked on arrival: a message with no route never gets here
        };
        let dialect = target.dialect(functions.dialect);
        let two_way = target.two_way(functions.dialect);
        let (data_type, data) = match message {
            Message::Text(text) => (DataType::Text, text.as_str().to_owned()),
            Message::Binary(bytes) => (DataType::Binary, BASE64.encode(&bytes)),
            _ => return,
        };
        let (event, body) =
            self.encode(EventKind::Transport { data_type, data }, dialect, route_key);
        let url = target.url().to_owned();
        let id = self.conn.id.to_string();
        self.inflight = Some(Box::pin(async move {
            let call = Call {
                event,
                connection_id: &id,
                body,
            };
            let result = shared.invoker.call_with_retries(&url, &call).await;
            TransportResult {
                dialect,
                two_way,
                result,
            }
        }));
    }

    /// The socket loop. Returns how the connection ended.
    async fn run(&mut self, ws: &mut Ws) -> End {
        // Borrowed through an Arc of our own, not cloned: this future lives as long as
        // the connection, so every byte of its state is paid per idle connection.
        let shared = Arc::clone(&self.shared);
        let limits = &shared.config.limits;
        let heartbeat = &shared.config.heartbeat;
        let started = Instant::now();
        let mut last_rx = started;
        let mut last_activity = started;
        let mut ping_sent: Option<Instant> = None;
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(started));
        let mut batch = Vec::new();
        // With `limits.write_delay`: when the queued messages are due to be written.
        let mut flush_at: Option<Instant> = None;
        // Made once: a fresh one on every wake-up would take locks every connection of
        // the node shares.
        let shutdown = shared.stop.watch();
        tokio::pin!(shutdown);
        loop {
            let ping_due = match ping_sent {
                Some(sent) => sent + limits.ping_interval,
                None => last_rx + limits.ping_interval,
            };
            let mut deadline = (started + limits.max_duration)
                .min(last_activity + limits.idle_timeout)
                .min(ping_due);
            if let Some(at) = flush_at {
                deadline = deadline.min(at);
            }
            // Unchanged on most wake-ups (an outbound message moves no deadline).
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let read_more = self.pending.len() < limits.inbound_queue_messages;
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    Box::pin(close(ws, &self.conn.outbox, codes::CLOSE_GOING_AWAY, "server shutting down")).await;
                    return End::new(DisconnectReason::Shutdown, Some(codes::CLOSE_GOING_AWAY), "server shutting down");
                }
                _ = self.conn.outbox.wait(), if flush_at.is_none() => {
                    if !limits.write_delay.is_zero() {
                        flush_at = Some(Instant::now() + limits.write_delay);
                        continue;
                    }
                    if let Some(end) = flush_outbox(ws, &self.conn.outbox, &mut batch).await {
                        return end;
                    }
                }
                done = in_flight(&mut self.inflight), if self.inflight.is_some() => {
                    self.inflight = None;
                    let outcome = done.result.and_then(|reply| {
                        dialect::transport_reply(done.dialect, done.two_way, &reply)
                    });
                    match outcome {
                        Ok(Some(message)) if message.len() > limits.max_message_bytes => {
                            warn!(len = message.len(), "transport reply larger than limits.max_message_bytes; not sent");
                        }
                        Ok(Some(message)) => {
                            if let Err(e) = ws.send(message).await {
                                return lost(e);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => match dialect::transport_failure(done.dialect, &self.conn.id.to_string()) {
                            FailureAction::Notify(message) => {
                                error!(cause = %e, "transport function failed; the client is told");
                                if let Err(e) = ws.send(message).await {
                                    return lost(e);
                                }
                            }
                            FailureAction::Close(code, reason) => {
                                error!(cause = %e, code, "transport function failed; closing the connection");
                                Box::pin(close(ws, &self.conn.outbox, code, reason)).await;
                                let dropped = self.pending.len();
                                if dropped > 0 {
                                    warn!(dropped, "client messages not delivered after transport failure");
                                }
                                self.pending.clear();
                                return End::new(DisconnectReason::FunctionFailed, Some(code), reason);
                            }
                        },
                    }
                    self.start_next_transport();
                }
                frame = ws.next(), if read_more => {
                    let message = match frame {
                        None => return End::new(DisconnectReason::ConnectionLost, None, "connection closed without a close frame"),
                        Some(Err(e)) => return Box::pin(protocol_end(ws, &self.conn.outbox, e)).await,
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
                            // With a `$default` route every message has a route; otherwise
                            // one that matches no custom route is refused.
                            let functions = &self.shared.config.functions;
                            if functions.transport.is_none()
                                && dialect::select_route(functions, &message).is_none()
                            {
                                Box::pin(close(ws, &self.conn.outbox, codes::CLOSE_UNSUPPORTED_DATA, "this gateway accepts no messages")).await;
                                return End::new(DisconnectReason::ProtocolError, Some(codes::CLOSE_UNSUPPORTED_DATA), "this gateway accepts no messages");
                            }
                            self.pending.push_back(message);
                            self.start_next_transport();
                        }
                        Message::Close(frame) => {
                            let (code, text) = frame
                                .map(|f| (Some(u16::from(f.code)), f.reason.as_str().to_owned()))
                                .unwrap_or((None, String::new()));
                            self.conn.outbox.mark_closed();
                            // tungstenite queued the close reply; let it reach the client.
                            // (SinkExt::close flushes it; the inherent `close` would try to
                            // send a second close frame and fail with SendAfterClosing.)
                            let _ = tokio::time::timeout(CLOSE_WAIT, SinkExt::close(ws)).await;
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
                    if flush_at.is_some_and(|at| now >= at) {
                        flush_at = None;
                        if let Some(end) = flush_outbox(ws, &self.conn.outbox, &mut batch).await {
                            return end;
                        }
                    }
                    if now >= started + limits.max_duration {
                        Box::pin(close(ws, &self.conn.outbox, codes::CLOSE_GOING_AWAY, "maximum connection duration reached")).await;
                        return End::new(DisconnectReason::MaxDuration, Some(codes::CLOSE_GOING_AWAY), "maximum connection duration reached");
                    }
                    if now >= last_activity + limits.idle_timeout {
                        Box::pin(close(ws, &self.conn.outbox, codes::CLOSE_GOING_AWAY, "idle timeout")).await;
                        return End::new(DisconnectReason::IdleTimeout, Some(codes::CLOSE_GOING_AWAY), "idle timeout");
                    }
                    match ping_sent {
                        Some(sent) if now >= sent + limits.ping_interval => {
                            Box::pin(close(ws, &self.conn.outbox, codes::CLOSE_GOING_AWAY, "ping timeout")).await;
                            return End::new(DisconnectReason::PingTimeout, Some(codes::CLOSE_GOING_AWAY), "ping timeout");
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
                    if let Err(e) = call.await.result {
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
        // Handed over to the durable queue: a cleanup worker delivers it (retrying through
        // an outage of the function) and then removes the connection from the store.
        let id = self.conn.id.to_string();
        let ended = Ended {
            connection_id: &id,
            node: &self.shared.node,
            seq: self.seq,
            facts: self.facts(),
            context: &self.conn.context,
            reason: end.reason,
            close_code: end.code,
            close_reason: &end.text,
        };
        // `NodeLost` ends only a connection whose cleanup a reaper already queued.
        if end.reason != DisconnectReason::NodeLost {
            self.shared.cleanups.hand_over(ended).await;
        }
        info!(reason = ?end.reason, code = ?end.code, "connection closed");
    }
}

/// The transport call in flight; never completes when there is none.
async fn in_flight(call: &mut Option<TransportCall>) -> TransportResult {
    match call {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

/// Writes everything queued in `outbox` with one flush, then performs a requested close.
/// Returns how the connection ended, if it did.
async fn flush_outbox(ws: &mut Ws, outbox: &Outbox, batch: &mut Vec<Message>) -> Option<End> {
    let close_request = outbox.drain(batch);
    if let Err(e) = write_all(ws, batch).await {
        return Some(lost(e));
    }
    let request = close_request?;
    Box::pin(close(ws, outbox, request.code, &request.reason)).await;
    // Reaped: another node sent this connection's `node_lost` cleanup already.
    let reason = if request.reaped {
        DisconnectReason::NodeLost
    } else {
        DisconnectReason::ServerDisconnect
    };
    Some(End::new(reason, Some(request.code), request.reason))
}

async fn write_all(ws: &mut Ws, batch: &mut Vec<Message>) -> Result<(), WsError> {
    for message in batch.drain(..) {
        ws.feed(message).await?;
    }
    ws.flush().await
}

/// Sends a close frame and waits (briefly) for the client's answer. The outbox is closed
/// first: a send-back during the close handshake gets 410, not a 200 for a message that
/// would never be written.
async fn close(ws: &mut Ws, outbox: &Outbox, code: u16, reason: &str) {
    outbox.mark_closed();
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
async fn protocol_end(ws: &mut Ws, outbox: &Outbox, e: WsError) -> End {
    let (code, text) = match &e {
        // The TCP connection ended without a close frame: lost, not a protocol violation.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return lost(e),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (codes::CLOSE_MESSAGE_TOO_BIG, "message too big")
        }
        WsError::Capacity(_) => (codes::CLOSE_MESSAGE_TOO_BIG, "frame too big"),
        WsError::Utf8(_) => (
            codes::CLOSE_INVALID_PAYLOAD,
            "invalid UTF-8 in text message",
        ),
        WsError::Protocol(_) => (codes::CLOSE_PROTOCOL_ERROR, "protocol error"),
        _ => return lost(e),
    };
    info!(cause = %e, code, "closing connection: client broke the protocol");
    close(ws, outbox, code, text).await;
    End::new(DisconnectReason::ProtocolError, Some(code), text)
}
