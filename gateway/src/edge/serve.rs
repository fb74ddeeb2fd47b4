//! The public listener: a small HTTP/1.1 server of its own, since all it ever answers is an
//! upgrade, the page, `/healthz`, `/readyz` or a short error. Request heads are parsed with `httparse`
//! (at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers, within
//! `limits.handshake_timeout`). Upgrade requests are checked (`handshake`), then admitted
//! or refused (`admit`); once the 101 is written, the same task becomes the connection's
//! socket task (`socket::task::run`) on the bare stream (TCP, or TLS over it), with any
//! bytes the client sent after its request. Other requests get the page, a health answer
//! or 426, on a keep-alive connection when the request allows it.
//!
//! The TLS listener (`public.tls`) serves the same way once its TLS handshake is done: the
//! handshake is part of the first request's `limits.handshake_timeout`, and of the
//! connection's pending slot.
//!
//! Until it is admitted, a connection holds a pending slot (`limits.max_pending_connections`,
//! claimed at accept: beyond it a connection gets a 503 at once and is closed; a TLS one is
//! just closed), and every wait is bounded: the PROXY header, the TLS handshake and the
//! first request head by `limits.handshake_timeout` from the accept, a later request head
//! by it from its first byte, the wait for a keep-alive connection's next request by
//! `limits.keepalive_timeout`, each reply's write by `limits.write_timeout`.
//!
//! Where a connection comes from: with `public.proxy_protocol`, the PROXY protocol header
//! that starts it (`proxy_protocol`, read first, before any TLS handshake, within the same
//! handshake timeout as the first request head; a peer outside `public.trusted_proxies` is
//! closed at once), else its peer; then, for an upgrade request, the client that
//! `public.real_ip_header` names (`forwarded`). That address is the connection's source
//! address from admission on.
//!
//! While the node drains (shutdown started), the listener still accepts until it closes at
//! the end of the drain: upgrades are refused (503 `shutting_down`), `/readyz` says
//! `draining`, and every reply closes its connection. A connection accepted before the
//! drain stops waiting for its client when the drain starts; one accepted during it, when
//! the listener closes.

use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;
use wire::codes;

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, warn};

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use crate::cluster::readiness::Readiness;
use crate::dialect::aws::management::ManagementApi;
use crate::edge::admit::{self, Admission, Admitter, Decider};
use crate::edge::forwarded::{RealIp, Remote};
use crate::edge::handshake;
use crate::edge::proxy_protocol;
use crate::edge::slots::{Slot, Slots};
use crate::listener;
use crate::metrics::registry::{DialOutcome, Metrics, Refusal};
use crate::passthrough::dial::{self, DialError};
use crate::passthrough::pump::{self, Pump};
use crate::passthrough::route::{Route, Routes};
use crate::request;
use crate::respond::{self, Body};
use crate::socket::registry::Connection;
use crate::socket::sockio::SocketIo;
use crate::socket::task::{self, NoSocket, Sockets};
use crate::stop::Stop;
use crate::tls::stream::{MaybeTls, ServerStream};

/// What the public listener uses.
#[derive(Debug)]
pub(crate) struct Edge {
    /// Shutdown started: the drain.
    pub stop: Arc<Stop>,
    /// The listeners close, at the end of the drain.
    pub closed: Arc<Stop>,
    /// What `/readyz` answers.
    pub readiness: Readiness,
    /// `limits.max_connections`.
    pub slots: Arc<Slots>,
    /// `limits.max_pending_connections`: connections not admitted yet.
    pub pending: Arc<Slots>,
    /// `limits.handshake_timeout`.
    pub handshake_timeout: Duration,
    /// `limits.keepalive_timeout`.
    pub keepalive_timeout: Duration,
    /// `limits.write_timeout`, for the replies written here.
    pub write_timeout: Duration,
    /// The page served at `/`.
    pub page: Option<Bytes>,
    /// `public.proxy_protocol`, `public.trusted_proxies`, `public.real_ip_header`.
    pub real_ip: RealIp,
    /// The AWS management API, when `aws.management_api_on_public`.
    pub management: Option<Management>,
    pub admitter: Admitter,
    pub sockets: Arc<Sockets>,
    /// `[[passthrough]]` routes.
    pub passthrough: Routes,
    /// The TLS client config for `wss://` backends (system roots and `functions.ca_file`).
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Counts upgrades accepted and refused.
    pub metrics: Arc<Metrics>,
}

/// One connection's view of the listener: what it shares, and what ends its waits for the
/// client (shutdown, or for a connection accepted while draining, the listener's close).
struct Conn<'a> {
    edge: &'a Edge,
    cut: &'a Stop,
}

impl Deref for Conn<'_> {
    type Target = Edge;

    fn deref(&self) -> &Edge {
        self.edge
    }
}

/// The AWS management API as the public listener serves it (`aws.management_api_on_public`).
#[derive(Debug)]
pub(crate) struct Management {
    /// `aws.stage`: the API is under `/{stage}/@connections/`.
    pub stage: String,
    pub api: Arc<ManagementApi>,
    /// `limits.max_message_bytes`: a longer body is refused (413) without being read.
    pub max_body: usize,
}

/// The largest request head accepted (request line, headers and the blank line after
/// them): one byte more is refused with 431, however the bytes arrive.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers a request may have.
pub const MAX_HEADERS: usize = 100;

/// Accepts clients until shutdown; with `tls`, each connection's TLS handshake first.
pub(crate) async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    tracker: TaskTracker,
    tls: Option<TlsAcceptor>,
) {
    let (stop, closed) = (edge.stop.clone(), edge.closed.clone());
    listener::accept_loop(
        &stop,
        &closed,
        &tracker,
        listener,
        if tls.is_some() {
            "public-tls"
        } else {
            "public"
        },
        move |stream, remote, draining| {
            // Claimed here, in the order connections are accepted, not when their tasks
            // first run.
            let pending = edge.pending.try_claim();
            let accepted_at = Instant::now();
            serve_connection(
                edge.clone(),
                stream,
                remote,
                pending,
                tls.clone(),
                accepted_at,
                draining,
            )
        },
    )
    .await;
}

/// Serves one client's TCP connection: the TLS handshake on the TLS listener, then HTTP
/// requests until one is admitted as a WebSocket, then that WebSocket. Without a pending
/// slot, refuses it. `draining`: accepted after shutdown started.
///
/// Not an `async fn`: an async fn's arguments stay in its state for its whole life, and
/// this future is the connection's task for as long as the WebSocket is open. What comes
/// before the WebSocket (its arguments, PROXY header, TLS, HTTP) is a boxed future of its
/// own, made here and gone once the socket runs; the task keeps only the socket's state.
fn serve_connection(
    edge: Arc<Edge>,
    stream: TcpStream,
    peer: SocketAddr,
    pending: Option<Slot>,
    tls: Option<TlsAcceptor>,
    accepted_at: Instant,
    draining: bool,
) -> impl Future<Output = ()> + Send + 'static {
    let sockets = edge.sockets.clone();
    let before = Box::pin(before_socket(
        edge,
        stream,
        peer,
        pending,
        tls,
        accepted_at,
        draining,
    ));
    // Not an `async` block either: its captures, and the admitted connection it took
    // apart (a value moved out of piecemeal keeps its place), would stay beside the socket
    // task. Chained, the prelude's place is reused by the socket task.
    before
        .then(move |accepted| OptionFuture::from(accepted.map(|a| a.socket_task(sockets))))
        .map(drop)
}

/// A connection up to its WebSocket: the PROXY header, the TLS handshake, the HTTP
/// requests; the admitted connection, or `None` when it ended before.
async fn before_socket(
    edge: Arc<Edge>,
    mut stream: TcpStream,
    peer: SocketAddr,
    pending: Option<Slot>,
    tls: Option<TlsAcceptor>,
    accepted_at: Instant,
    draining: bool,
) -> Option<Accepted> {
    let Some(pending) = pending else {
        refuse_pending(&edge, &stream, peer, tls.is_none());
        return None;
    };
    let cut = if draining { &edge.closed } else { &edge.stop };
    let shared = &Conn { edge: &edge, cut };
    // A PROXY header (it comes before the TLS handshake) counts against the handshake
    // timeout, like the handshake and the request after it.
    let deadline = accepted_at + shared.handshake_timeout;
    let real_ip = &shared.real_ip;
    let ip = proxy_protocol::connection_ip(real_ip, cut, &mut stream, peer, deadline).await?;
    let remote = Remote { peer, ip };
    let stream = match tls {
        None => MaybeTls::Plain(stream),
        // Boxed: the handshake's state is large and short-lived.
        Some(acceptor) => {
            MaybeTls::Tls(Box::pin(tls_handshake(shared, acceptor, stream, accepted_at)).await?)
        }
    };
    // Boxed: the HTTP phase's state is larger than the rest of this future's.
    Box::pin(http_phase(shared, stream, remote, pending, accepted_at)).await
}

/// An admitted connection: its socket once the 101 went out (else why not), its slot and
/// its tracing span.
struct Accepted {
    conn: Arc<Connection>,
    slot: Slot,
    socket: Result<SocketIo, NoSocket>,
    span: tracing::Span,
    /// A passthrough route's backend, dialed.
    backend: Option<Box<Pump>>,
}

impl Accepted {
    /// The connection's socket task, in its span.
    fn socket_task(self, sockets: Arc<Sockets>) -> impl Future<Output = ()> + Send + 'static {
        let Accepted {
            conn,
            slot,
            socket,
            span,
            backend,
        } = self;
        task::run(sockets, conn, socket, slot, backend).instrument(span)
    }
}

/// The TLS handshake of a connection accepted at `accepted_at`, within
/// `limits.handshake_timeout` of it (the first request head shares that time); `None` if
/// it failed, timed out or shutdown started first.
async fn tls_handshake(
    shared: &Conn<'_>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    accepted_at: Instant,
) -> Option<Box<tokio_rustls::server::TlsStream<TcpStream>>> {
    let deadline = accepted_at + shared.handshake_timeout;
    let handshake = tokio::select! {
        _ = shared.cut.cancelled() => return None,
        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            debug!(cause = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            None
        }
    }
}

/// Refuses a connection accepted beyond `limits.max_pending_connections`: a 503 in one
/// write that never waits (a new connection's send buffer is empty), without reading its
/// request, then closed. A client that sent its request already may see a reset instead.
/// A TLS connection (`plain` false) is closed without a word: a reply would need the
/// handshake the limit is there to spare.
fn refuse_pending(shared: &Edge, stream: &TcpStream, remote: SocketAddr, plain: bool) {
    debug!(%remote, "refusing connection: too many connections not yet WebSockets");
    shared.metrics.refused(Refusal::TooManyPending);
    if let Some(refused) = shared.pending.refused() {
        warn!(
            refused,
            max = shared.pending.max(),
            "refusing connections: at limits.max_pending_connections (connections not \
             WebSockets yet)"
        );
    }
    if !plain {
        return;
    }
    let reply = respond::error(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::AT_CAPACITY,
        "the gateway holds its maximum number of connections not yet upgraded",
    );
    let _ = stream.try_write(&encode_reply(reply, Framing::close()));
}

/// Answers requests until one is admitted (`Some`) or the connection ends (`None`). The
/// pending slot is held until admission is done. The first request head must be complete
/// within the handshake timeout from `accepted_at`.
async fn http_phase(
    shared: &Conn<'_>,
    mut stream: ServerStream,
    remote: Remote,
    pending: Slot,
    accepted_at: Instant,
) -> Option<Accepted> {
    // Bytes read and not yet parsed: the head being read, then what follows it.
    let mut buf: Vec<u8> = Vec::new();
    let mut first = Some(accepted_at);
    loop {
        let read = read_request(shared, &mut stream, &mut buf, first.take()).await;
        let (req, head_len) = match read {
            Ok(Some(request)) => request,
            Ok(None) => return None,
            Err(rejection) => {
                debug!(%remote, message = rejection.message, "bad request");
                let reply = respond::error(rejection.status, codes::BAD_REQUEST, rejection.message);
                let _ = write_reply(shared, &mut stream, reply, Framing::close()).await;
                return None;
            }
        };
        buf.drain(..head_len);
        if !handshake::wants_websocket(&req) {
            let management = shared.management.as_ref().and_then(|m| {
                let id = request::management_id(req.uri().path(), &m.stage)?;
                Some((m, id))
            });
            let (reply, framing) = match management {
                Some((management, id)) => {
                    management_request(shared, management, &mut stream, &mut buf, req, &id).await?
                }
                None => {
                    let framing = Framing {
                        keep_alive: keeps_alive(&req),
                        head_only: req.method() == http::Method::HEAD,
                    };
                    (plain(shared, &req), framing)
                }
            };
            // While draining, every reply is the connection's last.
            let framing = Framing {
                keep_alive: framing.keep_alive && !shared.stop.is_cancelled(),
                ..framing
            };
            if write_reply(shared, &mut stream, reply, framing)
                .await
                .is_err()
                || !framing.keep_alive
            {
                return None;
            }
            if buf.is_empty() {
                // A keep-alive connection waiting for its next request holds no buffer.
                buf = Vec::new();
            }
            continue;
        }
        let route = shared.passthrough.find(req.uri().path()).cloned();
        let upgraded = match upgrade(shared, req, remote, stream.is_tls(), route).await {
            Ok(upgraded) => upgraded,
            Err(refusal) => {
                let _ = write_reply(shared, &mut stream, refusal, Framing::close()).await;
                return None;
            }
        };
        // Admitted: from here on the connection counts in `limits.max_connections` instead.
        drop(pending);
        let Upgraded {
            admitted,
            backend,
            dial_failed,
        } = upgraded;
        let admit::Admitted {
            conn,
            slot,
            span,
            reply,
            ..
        } = admitted;
        let socket = match reply {
            Ok(switching) => {
                match write_reply(shared, &mut stream, switching, Framing::upgrade()).await {
                    Ok(()) => {
                        shared.metrics.accepted();
                        // Send-back writes go straight to a plain socket, unless writes wait
                        // for `limits.write_delay` to batch.
                        let direct = shared.edge.sockets.config.limits.write_delay.is_zero();
                        if !direct {
                            conn.outbox.hold_pushes();
                        }
                        Ok(SocketIo::new(
                            stream,
                            std::mem::take(&mut buf),
                            conn.clone(),
                            direct,
                        ))
                    }
                    Err(e) => {
                        shared.metrics.refused(Refusal::UpgradeFailed);
                        Err(NoSocket::Upgrade(e))
                    }
                }
            }
            Err(failure) => {
                let (reason, why) = match dial_failed {
                    Some(e) => (Refusal::BackendFailed, NoSocket::Backend(e.to_string())),
                    None => (Refusal::StoreUnavailable, NoSocket::StoreUnavailable),
                };
                shared.metrics.refused(reason);
                let _ = write_reply(shared, &mut stream, failure, Framing::close()).await;
                Err(why)
            }
        };
        // Without a socket, the backend is dropped here (its TCP connection closes).
        let backend = backend.filter(|_| socket.is_ok());
        return Some(Accepted {
            conn,
            slot,
            socket,
            span,
            backend,
        });
    }
}

/// Serves one management API request on the public listener: reads its body (framed by
/// `Content-Length`, within the handshake timeout; a longer one than the API takes is not
/// read and the connection closes after the 413) and hands it to the API. The reply and
/// its framing, or `None` if the client went away.
async fn management_request(
    shared: &Conn<'_>,
    management: &Management,
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    req: Request<()>,
    id: &str,
) -> Option<(Response<Body>, Framing)> {
    let head_only = req.method() == http::Method::HEAD;
    if req.headers().contains_key(header::TRANSFER_ENCODING) {
        let reply = respond::error(
            StatusCode::LENGTH_REQUIRED,
            codes::BAD_REQUEST,
            "the management API takes bodies with a Content-Length",
        );
        return Some((reply, Framing::close()));
    }
    let length = match req.headers().get(header::CONTENT_LENGTH) {
        None => 0,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            Some(length) => length,
            None => {
                let reply = respond::error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "invalid Content-Length",
                );
                return Some((reply, Framing::close()));
            }
        },
    };
    let mut framing = Framing {
        keep_alive: wants_keep_alive(&req),
        head_only,
    };
    let deadline = Instant::now() + shared.handshake_timeout;
    let body = if length > management.max_body {
        // The API answers 413 from the header. A client sends its whole body before it
        // reads the reply, so a body up to a few times the limit is read and dropped
        // (closing on it would cut the client off before it sees the 413); a larger one
        // is left unread and the connection closes after the reply.
        if length > management.max_body.saturating_mul(4) {
            framing.keep_alive = false;
        } else if !discard(shared, stream, buf, length, deadline).await {
            return None;
        }
        Bytes::new()
    } else {
        while buf.len() < length {
            if !read_more(shared, stream, buf, deadline, "a request body").await {
                return None;
            }
        }
        Bytes::from(buf.drain(..length).collect::<Vec<u8>>())
    };
    let reply = management
        .api
        .handle(req.map(|()| http_body_util::Full::new(body)), id)
        .await;
    Some((reply, framing))
}

/// Reads and drops `length` bytes of body (what `buf` holds first) by `deadline`: `false`
/// if the client went away, stalled or shutdown started first.
async fn discard(
    shared: &Conn<'_>,
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    mut length: usize,
    deadline: Instant,
) -> bool {
    loop {
        let take = length.min(buf.len());
        buf.drain(..take);
        length -= take;
        if length == 0 {
            return true;
        }
        if !read_more(shared, stream, buf, deadline, "a request body").await {
            return false;
        }
    }
}

/// An admitted connection, and on a passthrough route its backend (or why dialing it
/// failed after the register function accepted: the connection still gets its cleanup).
struct Upgraded {
    admitted: admit::Admitted,
    backend: Option<Box<Pump>>,
    dial_failed: Option<DialError>,
}

/// Checks an upgrade request and runs admission (and on a passthrough `route`, its check
/// and the backend's dial): the admitted connection, or the reply refusing it (counted
/// here).
async fn upgrade(
    shared: &Edge,
    req: Request<()>,
    remote: Remote,
    tls: bool,
    route: Option<Arc<Route>>,
) -> Result<Upgraded, Response<Body>> {
    let admitted = admission(shared, req, remote, tls, route).await;
    admitted.map_err(|(reason, reply)| {
        shared.metrics.refused(reason);
        reply
    })
}

/// [`upgrade`], uncounted: the admitted connection, or why not and the reply.
async fn admission(
    shared: &Edge,
    req: Request<()>,
    remote: Remote,
    tls: bool,
    route: Option<Arc<Route>>,
) -> Result<Upgraded, (Refusal, Response<Body>)> {
    let accept = match handshake::check(&req) {
        Ok(accept) => accept,
        Err(rejection) => {
            debug!(%remote, message = rejection.message, "bad upgrade request");
            let mut response = respond::error(rejection.status, "bad_handshake", rejection.message);
            if rejection.status == StatusCode::UPGRADE_REQUIRED {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return Err((Refusal::BadHandshake, response));
        }
    };
    if shared.stop.is_cancelled() {
        let reply = respond::error(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::SHUTTING_DOWN,
            "the gateway is shutting down",
        );
        return Err((Refusal::ShuttingDown, reply));
    }
    let (parts, ()) = req.into_parts();
    // A passthrough route's own check comes first: a refused client costs no slot, no
    // store write and no backend.
    let decider = match route.as_ref().and_then(|r| r.auth.as_ref()) {
        None => Decider::Register,
        Some(check) => match check.check(&parts) {
            Ok(claims) => Decider::Decided(claims.unwrap_or_default()),
            Err(failure) => {
                debug!(%remote, reason = failure.code(), "passthrough client refused");
                return Err((Refusal::Unauthorized, check.reply(failure)));
            }
        },
    };
    let Some(slot) = shared.slots.try_claim() else {
        debug!(%remote, "refusing connection: at capacity");
        if let Some(refused) = shared.slots.refused() {
            warn!(
                refused,
                max = shared.slots.max(),
                "refusing connections: at capacity (limits.max_connections)"
            );
        }
        let reply = respond::error(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::AT_CAPACITY,
            "the gateway holds its maximum number of connections",
        );
        return Err((Refusal::AtCapacity, reply));
    };
    let source_ip = shared.real_ip.client_ip(remote.ip, &parts.headers);
    let backend_request = match &route {
        None => None,
        Some(route) => match route.backend_request(&parts, source_ip) {
            Ok(request) => Some((route.clone(), request)),
            Err(e) => {
                let reply =
                    respond::error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e.to_string());
                return Err((Refusal::BadHandshake, reply));
            }
        },
    };
    // This task is tracked and nothing cancels it: if the client goes away mid-register,
    // the decision still completes, so nothing is left half-registered.
    match shared
        .admitter
        .admit(
            parts,
            admit::Origin {
                source_ip,
                peer: remote.peer,
                tls,
            },
            accept,
            slot,
            decider,
        )
        .await
    {
        Admission::Refused(reason, reply) => Err((reason, reply)),
        Admission::Accepted(admitted) => match backend_request {
            None => Ok(Upgraded {
                admitted,
                backend: None,
                dial_failed: None,
            }),
            Some((route, request)) => connect_backend(shared, &route, request, admitted).await,
        },
    }
}

/// Dials an admitted passthrough connection's backend (within the connection's span):
/// the 101 then carries the backend's subprotocol. On failure the client gets 502 or 504;
/// a connection the register function accepted still runs (without a socket) to send its
/// cleanup, any other is undone as if refused (record and registry entry removed).
async fn connect_backend(
    shared: &Edge,
    route: &Route,
    mut request: http::Request<()>,
    mut admitted: admit::Admitted,
) -> Result<Upgraded, (Refusal, Response<Body>)> {
    if admitted.reply.is_err() {
        // The store failed after register accepted: no backend for a connection that ends.
        return Ok(Upgraded {
            admitted,
            backend: None,
            dial_failed: None,
        });
    }
    let span = admitted.span.clone();
    let host = route.backend_host().to_owned();
    let started = Instant::now();
    let dialed = async {
        if let Err(e) = route.add_headers(&mut request, &admitted.backend_headers) {
            warn!(cause = %e, "register reply asked for a header that cannot be sent");
        }
        let config = pump::ws_config(shared.sockets.ws_config, route.config.max_message_bytes);
        let dialed = dial::dial(
            request,
            &shared.client_tls,
            config,
            route.config.connect_timeout,
        )
        .await;
        match &dialed {
            Ok(_) => info!(backend = %host, "backend connected"),
            Err(e) => warn!(backend = %host, cause = %e, "backend dial failed"),
        }
        dialed
    }
    .instrument(span)
    .await;
    let outcome = dialed
        .as_ref()
        .map_or_else(DialError::outcome, |_| DialOutcome::Ok);
    shared.metrics.dialed(outcome, started.elapsed());
    match dialed {
        Ok(dialed) => {
            admitted.reply = Ok(handshake::switching_protocols(
                &admitted.accept,
                dialed.subprotocol.as_deref(),
            ));
            Ok(Upgraded {
                admitted,
                backend: Some(Box::new(Pump::new(
                    dialed.ws,
                    host,
                    route.config.max_message_bytes,
                ))),
                dial_failed: None,
            })
        }
        Err(e) => {
            let reply = respond::error(e.status(), "backend_unavailable", e.to_string());
            if admitted.registered {
                admitted.reply = Err(reply);
                return Ok(Upgraded {
                    admitted,
                    backend: None,
                    dial_failed: Some(e),
                });
            }
            let admitter = &shared.admitter;
            admitter.registry.remove(&admitted.conn.id);
            admitted.conn.outbox.mark_closed();
            admitter.removals.forget(admitted.conn.id.to_string()).await;
            Err((Refusal::BackendFailed, reply))
        }
    }
}

/// Reads and parses the next request head: `(request, head length)`, `None` when the
/// client closed, stalled past a timeout or shutdown started first. The head must be
/// complete within the handshake timeout: from the accept (`first`, for a connection's
/// first request), else from its first byte, which a keep-alive connection must send
/// within the keep-alive timeout.
async fn read_request(
    shared: &Conn<'_>,
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    first: Option<Instant>,
) -> Result<Option<(Request<()>, usize)>, handshake::Rejection> {
    if first.is_none() && buf.is_empty() {
        let idle_until = Instant::now() + shared.keepalive_timeout;
        if !read_more(shared, stream, buf, idle_until, "the next request").await {
            return Ok(None);
        }
    }
    let deadline = first.unwrap_or_else(Instant::now) + shared.handshake_timeout;
    loop {
        if !buf.is_empty()
            && let Some(parsed) = parse_head(buf)?
        {
            return Ok(Some(parsed));
        }
        if !read_more(shared, stream, buf, deadline, "a complete request head").await {
            return Ok(None);
        }
    }
}

/// Reads what the client sent into `buf`: `false` if it closed, failed, sent nothing by
/// `deadline` (`waiting_for` says for what, in the log) or its waits were cut first.
async fn read_more(
    shared: &Conn<'_>,
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    waiting_for: &'static str,
) -> bool {
    buf.reserve(if buf.capacity() == 0 { 1024 } else { 4096 });
    let read = tokio::select! {
        _ = shared.cut.cancelled() => return false,
        read = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => read,
    };
    match read {
        Ok(Ok(0)) => false,
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            debug!(cause = %e, "public connection failed");
            false
        }
        Err(_) => {
            debug!(waiting_for, "public connection timed out");
            false
        }
    }
}

fn too_large() -> handshake::Rejection {
    handshake::Rejection {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        message: "the request head is too large",
    }
}

/// Parses a complete request head at the start of `buf`; `None` if it is not complete yet.
/// Enforces [`MAX_HEAD`]: only that much of `buf` is parsed, and a head not complete within
/// it is refused (431), whether `buf` holds more bytes or not.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Request<()>, usize)>, handshake::Rejection> {
    let bad = |message| handshake::Rejection {
        status: StatusCode::BAD_REQUEST,
        message,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(&buf[..buf.len().min(MAX_HEAD)]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(_) => return Err(bad("malformed HTTP request")),
    };
    let mut request = Request::builder()
        .method(parsed.method.unwrap_or_default())
        .uri(parsed.path.unwrap_or_default())
        .version(match parsed.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    // RFC 9112 section 6.3: differing lengths are an error, never "the first one wins"
    // (what a request smuggled behind this one relies on).
    let mut length: Option<&[u8]> = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            for value in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if length.is_some_and(|seen| seen != value) {
                    return Err(bad("differing Content-Length headers"));
                }
                length = Some(value);
            }
        }
        request = request.header(h.name, h.value);
    }
    match request.body(()) {
        Ok(request) => Ok(Some((request, head_len))),
        Err(_) => Err(bad("malformed request line or header")),
    }
}

/// Whether the connection may carry another request after this one: HTTP/1.1 unless
/// `Connection: close` (HTTP/1.0 only with `keep-alive`), and no request body (the gateway
/// reads none; a connection with one is closed after the reply).
pub(crate) fn keeps_alive(req: &Request<()>) -> bool {
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    wants_keep_alive(req) && !has_body
}

/// Whether the client asks for the connection to stay open: HTTP/1.1 unless
/// `Connection: close`, HTTP/1.0 only with `keep-alive`.
fn wants_keep_alive(req: &Request<()>) -> bool {
    let connection = |token| handshake::header_has_token(req.headers(), header::CONNECTION, token);
    match req.version() {
        http::Version::HTTP_10 => connection("keep-alive"),
        _ => !connection("close"),
    }
}

/// How a reply is framed on the wire.
#[derive(Clone, Copy, Debug)]
struct Framing {
    /// Another request may follow (else `Connection: close`, and the gateway closes).
    keep_alive: bool,
    /// A reply to HEAD: the headers only.
    head_only: bool,
}

impl Framing {
    fn close() -> Self {
        Framing {
            keep_alive: false,
            head_only: false,
        }
    }

    /// The 101: no length, the connection goes on as a WebSocket.
    fn upgrade() -> Self {
        Framing {
            keep_alive: true,
            head_only: true,
        }
    }
}

/// Writes `reply` in one write; closes the sending side after it unless kept alive. A
/// client that takes none of it for `limits.write_timeout` gets `TimedOut` (a client
/// that pipelines requests and reads no reply cannot hold its connection that way).
async fn write_reply(
    shared: &Edge,
    stream: &mut ServerStream,
    reply: Response<Body>,
    framing: Framing,
) -> io::Result<()> {
    let bytes = encode_reply(reply, framing);
    let write = async {
        stream.write_all(&bytes).await?;
        if !framing.keep_alive {
            stream.shutdown().await?;
        }
        Ok(())
    };
    tokio::time::timeout(shared.write_timeout, write)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// The reply as HTTP/1.1 bytes.
fn encode_reply(reply: Response<Body>, framing: Framing) -> Vec<u8> {
    let (parts, body) = reply.into_parts();
    // A `Full` body is ready at once.
    let body = body
        .collect()
        .now_or_never()
        .and_then(Result::ok)
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let status = parts.status;
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        if !framing.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    if !framing.head_only {
        out.extend_from_slice(&body);
    }
    out
}

fn plain(shared: &Edge, req: &Request<()>) -> Response<Body> {
    let get = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    match req.uri().path() {
        "/healthz" if get => respond::text(StatusCode::OK, "ok\n"),
        "/readyz" if get => shared.readiness.reply(),
        "/" | "/index.html" if get && shared.page.is_some() => {
            let mut response = Response::new(Body::new(shared.page.clone().unwrap_or_default()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        _ => {
            let mut response = respond::error(
                StatusCode::UPGRADE_REQUIRED,
                codes::UPGRADE_REQUIRED,
                "this endpoint accepts WebSocket connections",
            );
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open WebSocket's task holds the socket task's state and little more: what came
    /// before it (the arguments, the PROXY header, TLS, HTTP) is not kept in it for the
    /// connection's whole life (every byte here is paid per idle connection).
    #[test]
    fn the_connection_task_is_the_socket_task_and_little_more() {
        fn task<F, R>(_: F) -> usize
        where
            F: FnOnce(
                Arc<Edge>,
                TcpStream,
                SocketAddr,
                Option<Slot>,
                Option<TlsAcceptor>,
                Instant,
                bool,
            ) -> R,
        {
            std::mem::size_of::<R>()
        }
        fn socket<F, R>(_: F) -> usize
        where
            F: FnOnce(
                Arc<task::Sockets>,
                Arc<Connection>,
                Result<SocketIo, NoSocket>,
                Slot,
                Option<Box<Pump>>,
            ) -> R,
        {
            std::mem::size_of::<R>()
        }
        let task = task(serve_connection);
        let socket = socket(task::run);
        // The span it runs in and the chain's state; not the prelude's box, nor the
        // admitted connection it took apart (120 bytes), nor its captures.
        let allowed = std::mem::size_of::<tracing::Span>() + 32;
        assert!(
            task <= socket + allowed,
            "the connection's task is {task} bytes, its socket task {socket}"
        );
    }

    #[test]
    fn heads_parse_when_complete_and_not_before() {
        let head = b"GET /chat?room=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nextra";
        assert!(parse_head(&head[..20]).unwrap().is_none());
        let (req, len) = parse_head(head).unwrap().unwrap();
        assert_eq!(&head[len..], b"extra");
        assert_eq!(req.uri().path(), "/chat");
        assert_eq!(req.uri().query(), Some("room=a"));
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.version(), http::Version::HTTP_11);
    }

    #[test]
    fn bad_heads_are_refused_with_a_status() {
        let status = |head: &[u8]| parse_head(head).unwrap_err().status;
        assert_eq!(
            status(b"\x16\x03\x01 junk\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(
                b"GET /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 46\r\n\r\n"
            ),
            StatusCode::BAD_REQUEST,
            "two lengths"
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"),
            StatusCode::BAD_REQUEST,
            "a list of two lengths"
        );
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .is_some(),
            "the same length twice is one length"
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    /// A complete head of exactly `len` bytes.
    fn head_of(len: usize) -> Vec<u8> {
        let mut head = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        head.resize(len - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        head
    }

    #[test]
    fn the_head_bound_is_exact_whatever_the_buffer_holds() {
        let status = |buf: &[u8]| parse_head(buf).map(|p| p.map(|(_, len)| len));
        assert_eq!(status(&head_of(MAX_HEAD)).unwrap(), Some(MAX_HEAD));
        let mut followed = head_of(MAX_HEAD);
        followed.extend_from_slice(&[b'x'; 10_000]);
        assert_eq!(
            status(&followed).unwrap(),
            Some(MAX_HEAD),
            "what follows is not head"
        );
        let mut small = head_of(100);
        small.extend_from_slice(&head_of(2 * MAX_HEAD));
        assert_eq!(
            status(&small).unwrap(),
            Some(100),
            "the next head is parsed later"
        );
        for len in [MAX_HEAD + 1, 70_000, 2 * MAX_HEAD] {
            assert_eq!(
                status(&head_of(len)).unwrap_err().status,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "a complete head of {len} bytes"
            );
        }
        let unfinished = head_of(2 * MAX_HEAD);
        assert_eq!(status(&unfinished[..MAX_HEAD - 1]).unwrap(), None);
        assert_eq!(
            status(&unfinished[..MAX_HEAD]).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the bound reached without the end of the head"
        );
    }

    #[test]
    fn keep_alive_follows_version_connection_and_body() {
        let req = |version, headers: &[(&str, &str)]| {
            let mut b = Request::get("/").version(version);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        const HTTP_10: http::Version = http::Version::HTTP_10;
        const HTTP_11: http::Version = http::Version::HTTP_11;
        assert!(keeps_alive(&req(HTTP_11, &[])));
        assert!(!keeps_alive(&req(HTTP_11, &[("connection", "close")])));
        assert!(!keeps_alive(&req(HTTP_10, &[])));
        assert!(keeps_alive(&req(HTTP_10, &[("connection", "Keep-Alive")])));
        assert!(!keeps_alive(&req(HTTP_11, &[("content-length", "5")])));
        assert!(keeps_alive(&req(HTTP_11, &[("content-length", "0")])));
        assert!(!keeps_alive(&req(
            HTTP_11,
            &[("transfer-encoding", "chunked")]
        )));
    }

    #[test]
    fn replies_are_framed() {
        let reply = respond::text(StatusCode::OK, "ok\n");
        let bytes = encode_reply(reply, Framing::close());
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nok\n"), "{text}");
        let head = Framing {
            keep_alive: true,
            head_only: true,
        };
        let text =
            String::from_utf8(encode_reply(respond::text(StatusCode::OK, "ok\n"), head)).unwrap();
        assert!(text.ends_with("content-length: 3\r\n\r\n"), "{text}");
        let switching = handshake::switching_protocols("abc", Some("chat"));
        let text = String::from_utf8(encode_reply(switching, Framing::upgrade())).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("sec-websocket-accept: abc\r\n"), "{text}");
        assert!(text.contains("sec-websocket-protocol: chat\r\n"), "{text}");
    }
}
