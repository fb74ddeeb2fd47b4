//! One connection's socket task: reads client frames, calls transport (one call in flight,
//! so events reach the function in order), writes queued messages, answers the
//! application heartbeat, enforces idle, ping and duration limits, and when the connection
//! ends for any reason hands its cleanup over to the durable queue (`cluster::cleanup`),
//! whose workers deliver it and then unregister the connection.
//!
//! No write waits forever: each runs under `limits.write_timeout`, and while one is
//! pending (only then: an idle connection's task pays nothing for it) shutdown and the
//! idle / duration deadlines end the connection at once, socket dropped, and a close
//! requested through the send-back API gives the write [`CLOSE_WAIT`] more. After a close
//! frame the task reads what the client still sends until it closes, so no TCP reset hides
//! the close code.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use wire::codes;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, info, warn};
use wire::event::{DataType, DisconnectReason, Event, EventKind};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clock;
use crate::cluster::cleanup::{Cleanups, Ended};
use crate::config::{Config, Dialect};
use crate::dialect::{self, model::Facts, model::FailureAction};
use crate::function::invoke::{Call, CallError, Invoker, Reply};
use crate::metrics::registry::{FunctionEvent, Metrics};
use crate::passthrough::pump::{self, FromBackend, Pump};
use crate::socket::outbox::Outbox;
use crate::socket::registry::{Connection, Registry};
use crate::socket::sockio::SocketIo;
use crate::stop::Stop;

type Ws = WebSocketStream<SocketIo>;
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
    /// Counts the messages in and out.
    pub metrics: Arc<Metrics>,
}

impl Sockets {
    /// Counts a message of `len` payload bytes handed to a client's socket. (The send-back
    /// API's messages are counted where they are queued: `delivery`.)
    fn sent(&self, len: usize) {
        self.metrics.messages_out.inc();
        self.metrics.bytes_out.inc_by(len as u64);
    }
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
/// With `backend` (a passthrough route), the client's messages go to the backend and the
/// backend's to the client, instead of transport calls.
///
/// Not an `async fn`: its arguments would stay in the task's state for the connection's
/// whole life, the socket twice (as the argument and inside the stream).
pub(crate) fn run(
    shared: Arc<Sockets>,
    conn: Arc<Connection>,
    socket: Result<SocketIo, NoSocket>,
    slot: impl Send,
    backend: Option<Box<Pump>>,
) -> impl Future<Output = ()> + Send {
    let ws_config = match &backend {
        Some(pump) => pump::ws_config(shared.ws_config, pump.max_message_bytes),
        None => shared.ws_config,
    };
    // Boxed, and made here: the socket moves into it, and the setup's state is short-lived.
    // (Why there is no socket is boxed too: it is kept in the task's state beside the socket.)
    let setup = socket.map_err(Box::new).map(|socket| {
        Box::pin(WebSocketStream::from_raw_socket(
            socket,
            Role::Server,
            Some(ws_config),
        ))
    });
    // Made here, not in the async block: what the block captures keeps its place in the
    // task's state for the connection's whole life, moved out of or not.
    let mut session = Session::new(shared, conn);
    session.backend = backend;
    async move {
        let end = match setup {
            Err(why) => {
                debug!(cause = %why, "upgrade did not complete");
                End::new(DisconnectReason::UpgradeFailed, None, why.to_string())
            }
            Ok(setup) => {
                // The stream and the socket loop live in this task's own state, not in
                // boxes of their own: an idle connection then costs one allocation (the
                // task) instead of three, each rounded up to its allocator size class.
                // The loop borrows the stream, so it is stored once.
                let mut ws = setup.await;
                let end = session.run(&mut ws).await;
                if let Some(pump) = session.backend.as_deref_mut() {
                    Box::pin(close_backend(pump, &end)).await;
                }
                end
            }
        };
        // Boxed: its state is needed only once the socket loop is done.
        Box::pin(session.finish(end)).await;
        drop(slot);
    }
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
    /// A passthrough route's backend could not be reached after register accepted.
    #[error("{0}")]
    Backend(String),
}

/// Closes a passthrough backend at the connection's end, unless it ended it: with the
/// client's close code and reason when the client closed, else 1001 and why.
async fn close_backend(pump: &mut Pump, end: &End) {
    if !pump.is_open() {
        return;
    }
    match end.reason {
        DisconnectReason::ClientClose => pump.close(end.code, &end.text).await,
        DisconnectReason::ConnectionLost => {
            pump.close(Some(codes::CLOSE_GOING_AWAY), "client went away")
                .await;
        }
        _ => pump.close(Some(codes::CLOSE_GOING_AWAY), &end.text).await,
    }
    debug!(backend = %pump.host, stats = ?pump.stats, "backend closed");
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
    /// The connection's id as text (for events and call headers), made once.
    id: Arc<str>,
    /// A passthrough route's backend.
    backend: Option<Box<Pump>>,
}

impl Session {
    fn new(shared: Arc<Sockets>, conn: Arc<Connection>) -> Self {
        Session {
            shared,
            source_ip: conn.source_ip.to_string(),
            id: conn.id.to_string().into(),
            conn,
            seq: 1,
            pending: VecDeque::new(),
            inflight: None,
            backend: None,
        }
    }

    fn event(&mut self, kind: EventKind) -> Event {
        let seq = self.seq;
        self.seq += 1;
        // `String::from(&str)`: `to_string` on an `Arc<str>` goes through `Display`.
        let connection_id = String::from(&*self.id);
        Event {
            event_id: kind.event_id(&connection_id, seq),
            connection_id,
            seq,
            node: String::from(&*self.shared.node),
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

    /// Encodes the next event of this connection for a target of `dialect`.
    fn encode(&mut self, kind: EventKind, dialect: Dialect, route_key: &str) -> Bytes {
        let event = self.event(kind);
        let body = dialect::encode(
            dialect,
            &self.shared.config,
            &event,
            self.facts(),
            route_key,
        );
        body.into()
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
        let body = self.encode(EventKind::Transport { data_type, data }, dialect, route_key);
        let url = target.url().to_owned();
        let id = Arc::clone(&self.id);
        self.inflight = Some(Box::pin(async move {
            let call = Call {
                event: FunctionEvent::Transport,
                dialect,
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
        let max_at = started + limits.max_duration;
        // What may cut a write in this loop short, with the idle deadline as it is now.
        let cuts = |last_activity: Instant| Cuts {
            shutdown: true,
            close_request: true,
            close_requested: false,
            idle_at: Some(last_activity + limits.idle_timeout),
            max_at: Some(max_at),
        };
        let mut last_rx = started;
        let mut last_activity = started;
        let mut ping_sent: Option<Instant> = None;
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(started));
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
            let mut deadline = max_at
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
                    Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::SHUTTING_DOWN, codes::CLOSE_GOING_AWAY, "server shutting down")).await;
                    return End::new(DisconnectReason::Shutdown, Some(codes::CLOSE_GOING_AWAY), "server shutting down");
                }
                _ = self.conn.outbox.wait(), if flush_at.is_none() => {
                    if !limits.write_delay.is_zero() {
                        flush_at = Some(Instant::now() + limits.write_delay);
                        continue;
                    }
                    if let Some(end) = Box::pin(flush_outbox(&shared, ws, &self.conn.outbox, cuts(last_activity))).await {
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
                            shared.sent(message.len());
                            let write = ws.send(message);
                            if let Err(cut) = Box::pin(guarded(&shared, &self.conn.outbox, cuts(last_activity), write)).await {
                                return cut.end();
                            }
                        }
                        Ok(None) => {}
                        Err(e) => match dialect::transport_failure(done.dialect, &self.conn.id.to_string()) {
                            FailureAction::Notify(message) => {
                                warn!(cause = %e, "transport function failed; the client is told");
                                shared.sent(message.len());
                                let write = ws.send(message);
                                if let Err(cut) = Box::pin(guarded(&shared, &self.conn.outbox, cuts(last_activity), write)).await {
                                    return cut.end();
                                }
                            }
                            FailureAction::Close(code, reason) => {
                                warn!(cause = %e, code, "transport function failed; closing the connection");
                                Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, code, reason)).await;
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
                from = from_backend(&mut self.backend), if self.backend.is_some() => {
                    match from {
                        FromBackend::Message(message) => {
                            // Traffic either way keeps a passthrough connection alive.
                            last_activity = Instant::now();
                            shared.sent(message.len());
                            // The backend is not read again until the client took this.
                            let write = ws.send(message);
                            if let Err(cut) = Box::pin(guarded(&shared, &self.conn.outbox, cuts(last_activity), write)).await {
                                return cut.end();
                            }
                        }
                        FromBackend::Closed(code, reason) => {
                            debug!(code, "the backend closed");
                            Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, code, &reason)).await;
                            return End::new(DisconnectReason::ServerDisconnect, Some(code), reason);
                        }
                        FromBackend::Lost(why) => {
                            info!(cause = %why, "the backend went away");
                            Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, codes::CLOSE_INTERNAL_ERROR, BACKEND_GONE)).await;
                            return End::new(DisconnectReason::ConnectionLost, Some(codes::CLOSE_INTERNAL_ERROR), BACKEND_GONE);
                        }
                        FromBackend::TooBig => {
                            if let Some(pump) = self.backend.as_deref_mut() {
                                info!(max = pump.max_message_bytes, "the backend sent a message over max_message_bytes");
                                Box::pin(pump.close(Some(codes::CLOSE_MESSAGE_TOO_BIG), "message too big")).await;
                            }
                            let text = "the backend sent a message over the limit";
                            Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, codes::CLOSE_INTERNAL_ERROR, text)).await;
                            return End::new(DisconnectReason::ConnectionLost, Some(codes::CLOSE_INTERNAL_ERROR), text);
                        }
                    }
                }
                frame = ws.next(), if read_more => {
                    let message = match frame {
                        None => return End::new(DisconnectReason::ConnectionLost, None, "connection closed without a close frame"),
                        Some(Err(e)) => return Box::pin(protocol_end(&shared, ws, &self.conn.outbox, e)).await,
                        Some(Ok(message)) => message,
                    };
                    last_rx = Instant::now();
                    ping_sent = None;
                    match message {
                        Message::Text(_) | Message::Binary(_) => {
                            shared.metrics.messages_in.inc();
                            shared.metrics.bytes_in.inc_by(message.len() as u64);
                            last_activity = last_rx;
                            self.conn.touch();
                            if let Some(pump) = self.backend.as_deref_mut() {
                                if let Err(end) = Box::pin(to_backend(&shared, ws, &self.conn.outbox, pump, message)).await {
                                    return end;
                                }
                                continue;
                            }
                            if !heartbeat.request.is_empty()
                                && matches!(&message, Message::Text(t) if t.as_str() == heartbeat.request)
                            {
                                shared.sent(heartbeat.reply.len());
                                let write = ws.send(Message::text(heartbeat.reply.as_str()));
                                if let Err(cut) = Box::pin(guarded(&shared, &self.conn.outbox, cuts(last_activity), write)).await {
                                    return cut.end();
                                }
                                continue;
                            }
                            // With a `$default` route every message has a route; otherwise
                            // one that matches no custom route is refused.
                            let functions = &self.shared.config.functions;
                            if functions.transport.is_none()
                                && dialect::select_route(functions, &message).is_none()
                            {
                                Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, codes::CLOSE_UNSUPPORTED_DATA, "this gateway accepts no messages")).await;
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
                            // Boxed like the other rare paths: the loop's state is kept
                            // for the connection's whole life.
                            let _ = Box::pin(tokio::time::timeout(CLOSE_WAIT, SinkExt::close(ws))).await;
                            return End::new(DisconnectReason::ClientClose, code, text);
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                            // tungstenite answers pings itself; flush that answer.
                            if let Err(cut) = Box::pin(guarded(&shared, &self.conn.outbox, cuts(last_activity), ws.flush())).await {
                                return cut.end();
                            }
                        }
                    }
                }
                _ = timer.as_mut() => {
                    let now = Instant::now();
                    if flush_at.is_some_and(|at| now >= at) {
                        flush_at = None;
                        if let Some(end) = Box::pin(flush_outbox(&shared, ws, &self.conn.outbox, cuts(last_activity))).await {
                            return end;
                        }
                    }
                    if now >= max_at {
                        Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, codes::CLOSE_GOING_AWAY, "maximum connection duration reached")).await;
                        return End::new(DisconnectReason::MaxDuration, Some(codes::CLOSE_GOING_AWAY), "maximum connection duration reached");
                    }
                    if now >= last_activity + limits.idle_timeout {
                        Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, codes::CLOSE_GOING_AWAY, "idle timeout")).await;
                        return End::new(DisconnectReason::IdleTimeout, Some(codes::CLOSE_GOING_AWAY), "idle timeout");
                    }
                    match ping_sent {
                        Some(sent) if now >= sent + limits.ping_interval => {
                            Box::pin(close(&shared, ws, &self.conn.outbox, Cuts::CLOSING, codes::CLOSE_GOING_AWAY, "ping timeout")).await;
                            return End::new(DisconnectReason::PingTimeout, Some(codes::CLOSE_GOING_AWAY), "ping timeout");
                        }
                        Some(_) => {}
                        None if now >= last_rx + limits.ping_interval => {
                            let write = ws.send(Message::Ping(Bytes::new()));
                            if let Err(cut) = Box::pin(guarded(&shared, &self.conn.outbox, cuts(last_activity), write)).await {
                                return cut.end();
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
                if let Some(call) = self.inflight.take()
                    && let Err(e) = call.await.result {
                        warn!(cause = %e, "transport function failed for a message sent before disconnect");
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
        let id = Arc::clone(&self.id);
        let ended = Ended {
            connection_id: &id,
            node: &self.shared.node,
            seq: self.seq,
            facts: self.facts(),
            context: &self.conn.context,
            reason: end.reason,
            close_code: end.code,
            close_reason: &end.text,
            stats: self.backend.as_ref().map(|pump| pump.stats),
        };
        // `NodeLost` ends only a connection whose cleanup a reaper already queued.
        if end.reason != DisconnectReason::NodeLost {
            self.shared.cleanups.hand_over(ended).await;
        }
        info!(reason = ?end.reason, code = ?end.code, "connection closed");
    }
}

/// What ends a passthrough connection whose backend went away.
const BACKEND_GONE: &str = "backend went away";

/// The backend's next message; never completes without a backend.
async fn from_backend(backend: &mut Option<Box<Pump>>) -> FromBackend {
    match backend {
        Some(pump) => pump.next().await,
        None => std::future::pending().await,
    }
}

/// Writes a client's message to the backend, within `limits.write_timeout` and until
/// shutdown: the client is not read meanwhile. A backend that fails or takes nothing
/// that long ends the connection (the client gets 1011).
async fn to_backend(
    shared: &Sockets,
    ws: &mut Ws,
    outbox: &Outbox,
    pump: &mut Pump,
    message: Message,
) -> Result<(), End> {
    let write = tokio::time::timeout(shared.config.limits.write_timeout, pump.send(message));
    let failure = tokio::select! {
        biased;
        written = write => match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the backend read nothing for limits.write_timeout".to_owned(),
        },
        _ = shared.stop.cancelled() => {
            return Err(End::new(DisconnectReason::Shutdown, None, "server shutting down; the backend was not reading"));
        }
    };
    info!(cause = %failure, "writing to the backend failed");
    close(
        shared,
        ws,
        outbox,
        Cuts::CLOSING,
        codes::CLOSE_INTERNAL_ERROR,
        BACKEND_GONE,
    )
    .await;
    Err(End::new(
        DisconnectReason::ConnectionLost,
        Some(codes::CLOSE_INTERNAL_ERROR),
        BACKEND_GONE,
    ))
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
async fn flush_outbox(shared: &Sockets, ws: &mut Ws, outbox: &Outbox, cuts: Cuts) -> Option<End> {
    let cuts = Cuts {
        close_requested: outbox.close_requested(),
        ..cuts
    };
    outbox.release();
    // tungstenite holds no frame of its own here (its writes always complete into the
    // outbox): its flush is the outbox's, until the queue is empty.
    let written = guarded(shared, outbox, cuts, ws.flush()).await;
    if let Err(cut) = written {
        // Cut short: what was not written is dropped with the connection.
        return Some(cut.end());
    }
    // Nothing can be queued after a close request: the queue just written was all of it.
    let request = outbox.take_close()?;
    close(
        shared,
        ws,
        outbox,
        Cuts::CLOSING,
        request.code,
        &request.reason,
    )
    .await;
    // Reaped: another node queued this connection's `node_lost` cleanup already.
    let reason = if request.reaped {
        DisconnectReason::NodeLost
    } else {
        DisconnectReason::ServerDisconnect
    };
    Some(End::new(reason, Some(request.code), request.reason))
}

/// What, besides its own deadline (`limits.write_timeout`), ends a write the client does
/// not take.
#[derive(Debug, Clone, Copy)]
struct Cuts {
    /// Shutdown.
    shutdown: bool,
    /// A close requested through the send-back API (and not yet taken from the outbox):
    /// the write then gets [`CLOSE_WAIT`] more at most (a client that catches up still
    /// gets the messages queued before the close, and the close frame).
    close_request: bool,
    /// Such a close was already requested, before this write started.
    close_requested: bool,
    /// The idle deadline.
    idle_at: Option<Instant>,
    /// The connection's maximum duration.
    max_at: Option<Instant>,
}

impl Cuts {
    /// While sending a close frame: the end is decided, only shutdown cuts the wait short.
    const CLOSING: Cuts = Cuts {
        shutdown: true,
        close_request: false,
        close_requested: false,
        idle_at: None,
        max_at: None,
    };
    /// While sending shutdown's own close frame: only the deadlines.
    const SHUTTING_DOWN: Cuts = Cuts {
        shutdown: false,
        ..Cuts::CLOSING
    };
}

/// Why a write did not complete.
#[derive(Debug)]
enum WriteCut {
    /// The socket failed.
    Failed(WsError),
    /// The client took nothing for `limits.write_timeout`.
    TimedOut,
    Shutdown,
    CloseRequested,
    IdleTimeout,
    MaxDuration,
}

impl WriteCut {
    /// How the connection ends: at once, without a close frame (the client is not taking
    /// what we write), hence with no close code.
    fn end(self) -> End {
        let (reason, text) = match self {
            WriteCut::Failed(e) => return lost(e),
            WriteCut::TimedOut => (
                DisconnectReason::ConnectionLost,
                "the client read nothing for limits.write_timeout",
            ),
            WriteCut::Shutdown => (
                DisconnectReason::Shutdown,
                "server shutting down; the client was not reading",
            ),
            WriteCut::CloseRequested => (
                DisconnectReason::ServerDisconnect,
                "closed through the send-back API; the client was not reading",
            ),
            WriteCut::IdleTimeout => (
                DisconnectReason::IdleTimeout,
                "idle timeout; the client was not reading",
            ),
            WriteCut::MaxDuration => (
                DisconnectReason::MaxDuration,
                "maximum connection duration reached; the client was not reading",
            ),
        };
        info!(reason = ?reason, "dropping the connection: a write to it was pending");
        End::new(reason, None, text)
    }
}

/// Runs one socket write under `limits.write_timeout`, cut short by what `cuts` names.
/// The write is polled first: a write the socket takes at once never looks at the rest.
async fn guarded<W>(shared: &Sockets, outbox: &Outbox, cuts: Cuts, write: W) -> Result<(), WriteCut>
where
    W: Future<Output = Result<(), WsError>>,
{
    let now = Instant::now();
    let mut write_by = now + shared.config.limits.write_timeout;
    let mut closing = cuts.close_requested;
    if closing {
        write_by = write_by.min(now + CLOSE_WAIT);
    }
    let wake_at = |write_by: Instant| {
        [cuts.idle_at, cuts.max_at]
            .into_iter()
            .flatten()
            .fold(write_by, Instant::min)
    };
    let mut write = std::pin::pin!(write);
    let mut shutdown = std::pin::pin!(shared.stop.cancelled());
    let mut timer = std::pin::pin!(tokio::time::sleep_until(wake_at(write_by)));
    loop {
        tokio::select! {
            biased;
            written = &mut write => return written.map_err(WriteCut::Failed),
            _ = &mut shutdown, if cuts.shutdown => return Err(WriteCut::Shutdown),
            _ = outbox.wait_close_request(), if cuts.close_request && !closing => {
                closing = true;
                write_by = write_by.min(Instant::now() + CLOSE_WAIT);
                timer.as_mut().reset(wake_at(write_by));
            }
            _ = timer.as_mut() => {
                let now = Instant::now();
                return Err(if cuts.max_at.is_some_and(|at| now >= at) {
                    WriteCut::MaxDuration
                } else if cuts.idle_at.is_some_and(|at| now >= at) {
                    WriteCut::IdleTimeout
                } else if closing {
                    WriteCut::CloseRequested
                } else {
                    WriteCut::TimedOut
                });
            }
        }
    }
}

/// Sends a close frame, then reads and discards what the client still sends until it
/// closes too (or [`CLOSE_WAIT`] passes), then shuts the write side down. The outbox is
/// closed first: a send-back during the close handshake gets 410, not a 200 for a message
/// that would never be written.
///
/// The reading matters: a socket closed with unread bytes in its receive buffer sends a
/// TCP reset, and a client that gets the reset before it read our close frame (it was
/// still sending, say the rest of an oversize message) reports 1006, not our code.
async fn close(
    shared: &Sockets,
    ws: &mut Ws,
    outbox: &Outbox,
    cuts: Cuts,
    code: u16,
    reason: &str,
) {
    outbox.mark_closed();
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let sent = tokio::time::timeout(CLOSE_WAIT, async {
        let write = ws.send(Message::Close(Some(frame)));
        if guarded(shared, outbox, cuts, write).await.is_err() {
            return false;
        }
        drain_after_close(ws).await;
        true
    })
    .await;
    if sent != Ok(false) {
        // The close frame went out (and the client closed, or the wait ran out): FIN. A
        // cut write is not retried: the socket is dropped as it is.
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.get_mut().shutdown()).await;
    }
}

/// Reads until the client ends the connection: its close frame, or EOF. Through
/// tungstenite while it reads frames, then straight from the socket (after an error, such
/// as an oversize message, tungstenite reads nothing more).
async fn drain_after_close<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            // The client's answer: the close handshake is done.
            Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => {}
            // An error (EOF before the client's close frame is one), or a stream that
            // already failed: tokio-tungstenite reads nothing after its first error.
            Some(Err(_)) | None => break,
        }
    }
    discard_until_eof(ws.get_mut()).await;
}

/// Reads and drops bytes until EOF or an error.
async fn discard_until_eof(socket: &mut (impl AsyncRead + Unpin)) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = socket.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

fn lost(e: WsError) -> End {
    debug!(cause = %e, "connection lost");
    End::new(DisconnectReason::ConnectionLost, None, e.to_string())
}

/// The end of a connection whose read failed: protocol violations get the close code
/// RFC 6455 names for them; broken transport is just lost.
async fn protocol_end(shared: &Sockets, ws: &mut Ws, outbox: &Outbox, e: WsError) -> End {
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
    close(shared, ws, outbox, Cuts::CLOSING, code, text).await;
    End::new(DisconnectReason::ProtocolError, Some(code), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of loopback sockets: (client, gateway side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    fn close_frame(code: u16) -> Message {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }))
    }

    /// The oversize case: tungstenite refused a frame, the client is still sending it. The
    /// gateway's close frame must reach the client followed by a FIN, not a reset.
    #[tokio::test]
    async fn after_a_refused_frame_the_rest_is_drained_and_the_close_frame_arrives() {
        let (mut client, server) = pair().await;
        let config = WebSocketConfig::default()
            .max_frame_size(Some(1024))
            .max_message_size(Some(1024));
        let mut ws = WebSocketStream::from_raw_socket(server, Role::Server, Some(config)).await;
        let sender = tokio::spawn(async move {
            // A masked binary frame announcing 4 MiB, then the 4 MiB.
            let len: u64 = 4 << 20;
            let mut head = vec![0x82, 0x80 | 127];
            head.extend_from_slice(&len.to_be_bytes());
            head.extend_from_slice(&[1, 2, 3, 4]);
            client.write_all(&head).await.unwrap();
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..(len / chunk.len() as u64) {
                client.write_all(&chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            let read = client.read_to_end(&mut got).await;
            (read.map(|_| got), client)
        });
        let refused = ws.next().await;
        assert!(
            matches!(refused, Some(Err(WsError::Capacity(_)))),
            "{refused:?}"
        );
        ws.send(close_frame(codes::CLOSE_MESSAGE_TOO_BIG))
            .await
            .unwrap();
        tokio::time::timeout(CLOSE_WAIT, drain_after_close(&mut ws))
            .await
            .expect("the drain ends at the client's EOF");
        ws.get_mut().shutdown().await.unwrap();
        drop(ws);
        let (read, _client) = sender.await.unwrap();
        let got = read.expect("the client reads to a FIN, not a reset");
        assert_eq!(&got[..4], &[0x88, 2, 0x03, 0xF1], "a close frame with 1009");
    }

    /// A client that answers the close frame and waits for the server to close TCP (as
    /// RFC 6455 asks): the drain ends at its answer, not after the close wait.
    #[tokio::test]
    async fn the_drain_ends_at_the_clients_close_frame() {
        let (client, server) = pair().await;
        let mut ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let answered = tokio::spawn(async move {
            // Reading the close frame queues the answer; the next read sends it and then
            // waits for the server's FIN.
            let first = client.next().await;
            let rest = client.next().await;
            (first, rest)
        });
        ws.send(close_frame(1000)).await.unwrap();
        let started = Instant::now();
        tokio::time::timeout(CLOSE_WAIT, drain_after_close(&mut ws))
            .await
            .expect("the drain ends at the client's close frame");
        assert!(started.elapsed() < CLOSE_WAIT / 2);
        ws.get_mut().shutdown().await.unwrap();
        drop(ws);
        let (first, rest) = answered.await.unwrap();
        assert!(
            matches!(first, Some(Ok(Message::Close(Some(ref f)))) if u16::from(f.code) == 1000),
            "{first:?}"
        );
        assert!(rest.is_none(), "a clean end after the handshake: {rest:?}");
    }
}
