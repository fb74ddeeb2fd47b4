//! The HTTP/1.1 client under [`crate::function::invoke`]: keep-alive connections pooled per origin.
//! A call checks a connection out, writes the request and reads the reply on the calling
//! task (no connection task, no channel hand-off, no extra wake-up), then checks the
//! connection back in if the reply was read whole and the function keeps it open.
//!
//! What it speaks: `POST` with a `Content-Length` body to `http://` and `https://` URLs;
//! replies framed by `Content-Length`, `Transfer-Encoding: chunked`, or the end of the
//! connection; interim `1xx` replies are skipped. No redirects, no proxies. Timeouts are
//! the caller's (dropping a call drops its connection).
//!
//! `https://`: TLS through rustls with the client config the gateway built once
//! (`tls::client`: the system's roots and `functions.ca_file`), SNI and verification for
//! the URL's host. A certificate that does not verify is an error naming the host and the
//! reason, never the URL (its path or query may hold a token). Pools are per scheme and
//! origin, so an `http://` and an `https://` URL on one port never share a connection.
//!
//! Reply heads are at most 64 KiB (status line, headers and the blank line), however the
//! bytes arrive. Transfer codings (RFC 9112 §6.1): the codings of every `Transfer-Encoding`
//! header, comma lists included and empty elements ignored, form one list, and the only list
//! taken is exactly `chunked`. This client sends no `TE`, so a function may apply no other
//! coding (RFC 9110 §10.1.4), and one it did apply would reach the caller still encoded:
//! `gzip` + `chunked` (in one header or two), `chunked` + `identity`, `chunked` twice, or
//! `Transfer-Encoding` in an HTTP/1.0 reply (whose framing RFC 9112 calls faulty) are
//! refused as malformed rather than read to the end of the connection. A reply with both
//! `Transfer-Encoding` and `Content-Length` is read by its chunks and its connection is not
//! reused (a smuggling risk).
//!
//! A pooled connection the function has closed is noticed before use when its FIN has
//! arrived (it reads as ready). If it closes at the very moment of reuse and the reply
//! breaks off before its first byte, the request is sent once more on a new connection,
//! as browsers and hyper do: a function that closed an idle connection did not read the
//! request on it.
//!
//! Pools do not outlive their origins: relay peers come and go, each with its own address.
//! [`HttpClient::endpoint`] sweeps the map at most once per idle timeout, dropping each
//! pool no endpoint holds that has not been used for longer than the idle timeout (its idle
//! connections, all stale by then, closed with it), and keeps at most [`MAX_POOLS`] pools:
//! a new origin beyond that evicts the least recently used pool no endpoint holds, or, if
//! every pool is in use, gets a pool of its own outside the map. A poisoned lock is taken
//! over, not a panic: what the pools hold stays consistent whatever panicked.
//!
//! Idle connections go even when no call comes: [`HttpClient::sweep_every`] (a task the
//! gateway runs until shutdown) closes, every [`SURPLUS_IDLE`], each idle connection beyond
//! the [`KEEP_WARM`] most recently used of its pool that has been idle for longer than
//! that, and every one idle for longer than the idle timeout. A burst that opened a
//! thousand connections (a mass disconnect's cleanups) does not leave them open, each
//! holding its socket's buffers here and at the function; steady traffic keeps what it
//! uses, since a pool hands out its most recently used connection first.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsConnector;

use crate::stop::Stop;
use crate::tls::stream::{ClientStream, MaybeTls};

/// The longest reply head (status line and headers) read.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most reply headers read.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size or trailer line of a chunked reply.
const MAX_LINE_BYTES: usize = 4096;
/// Bodies up to this size are copied behind the head and written with one syscall.
const COALESCE_BODY_BYTES: usize = 64 * 1024;
/// The first read of a reply reads up to this much.
const FIRST_READ_BYTES: usize = 4096;
/// The most origins a client keeps a pool for.
const MAX_POOLS: usize = 1024;
/// Idle connections per pool kept for the whole idle timeout, whatever the sweep.
pub const KEEP_WARM: usize = 4;
/// How long an idle connection beyond [`KEEP_WARM`] is kept, and how often the sweep runs
/// (at most the idle timeout).
pub const SURPLUS_IDLE: Duration = Duration::from_secs(5);

/// Why a request got no complete reply.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not an `http://` or `https://` URL with a host.
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    BadUrl(String),
    /// No connection could be made.
    #[error("connect to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The cause.
        source: io::Error,
    },
    /// The server's certificate did not verify against the trusted roots.
    #[error("certificate verify failed for {host}: {reason}")]
    Certificate {
        /// The host the certificate had to be for.
        host: String,
        /// Why it did not verify (e.g. `UnknownIssuer`, expired).
        reason: String,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with {host} failed: {reason}")]
    Handshake {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// Writing the request or reading the reply failed.
    #[error("connection to the function failed: {0}")]
    Io(#[from] io::Error),
    /// The function closed the connection before sending any of its reply.
    #[error("function closed the connection before replying")]
    ClosedBeforeReply,
    /// The function closed the connection in the middle of its reply.
    #[error("function closed the connection in the middle of its reply")]
    ClosedMidReply,
    /// The reply is not HTTP/1.x as RFC 9112 frames it.
    #[error("malformed HTTP reply: {0}")]
    Malformed(String),
    /// The reply body is larger than the caller's cap.
    #[error("reply body larger than {0} bytes")]
    TooLarge(usize),
}

impl HttpError {
    /// Whether part of a reply had arrived when the connection broke.
    pub fn is_partial_reply(&self) -> bool {
        matches!(self, HttpError::ClosedMidReply)
    }
}

/// A complete reply.
#[derive(Debug)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Headers a relayed send-back reply must keep: `x-amzn-*` (AWS error types) and
    /// `www-authenticate`. Usually none.
    pub kept: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Bytes,
}

/// A parsed `http://` or `https://` URL: where to connect and what to put in the request
/// line.
#[derive(Debug)]
pub struct Endpoint {
    /// The host to connect to: a name or an IP literal without brackets.
    connect_host: String,
    port: u16,
    /// `https://`: the client config and the name the certificate must be for (SNI).
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// `Host` header value: `host[:port]`, IPv6 in brackets.
    authority: String,
    /// Path and query.
    target: String,
    pool: Arc<Pool>,
}

/// Keep-alive connections to one origin.
#[derive(Debug)]
struct Pool {
    state: Mutex<PoolState>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct PoolState {
    /// Oldest first.
    idle: Vec<Idle>,
    /// When an endpoint was last made for this origin or a connection came back to it.
    last_used: Instant,
}

#[derive(Debug)]
struct Idle {
    stream: ClientStream,
    since: Instant,
}

/// The client: one pool per origin (`scheme://host:port`), shared by every URL on that
/// origin.
#[derive(Debug)]
pub struct HttpClient {
    pools: Mutex<Pools>,
    max_idle: usize,
    idle_timeout: Duration,
    /// [`SURPLUS_IDLE`], or the idle timeout if shorter.
    surplus_idle: Duration,
    /// For `https://` URLs.
    tls: Arc<ClientConfig>,
}

/// The pools by origin, and when they are next swept.
#[derive(Debug)]
struct Pools {
    by_origin: HashMap<String, Arc<Pool>>,
    next_sweep: Instant,
}

/// Takes a lock whatever panicked while it was held: every critical section here leaves
/// its data whole (a push, a pop, a map insert or removal).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HttpClient {
    /// A client keeping at most `max_idle` idle connections per origin, each for at most
    /// `idle_timeout`; `https://` URLs are called with `tls`.
    pub fn new(max_idle: usize, idle_timeout: Duration, tls: Arc<ClientConfig>) -> Self {
        HttpClient {
            pools: Mutex::new(Pools {
                by_origin: HashMap::new(),
                next_sweep: Instant::now() + idle_timeout,
            }),
            max_idle,
            idle_timeout,
            surplus_idle: SURPLUS_IDLE.min(idle_timeout),
            tls,
        }
    }

    /// The same client with idle connections beyond [`KEEP_WARM`] kept for `surplus_idle`
    /// (tests).
    #[cfg(test)]
    fn with_surplus_idle(mut self, surplus_idle: Duration) -> Self {
        self.surplus_idle = surplus_idle.min(self.idle_timeout);
        self
    }

    /// Sweeps the pools every surplus idle period ([`SURPLUS_IDLE`]) until `stop`:
    /// see [`HttpClient::sweep_idle`].
    pub async fn sweep_every(self: Arc<Self>, stop: Arc<Stop>) {
        let mut tick = tokio::time::interval(self.surplus_idle);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sweep_idle(Instant::now()),
            }
        }
    }

    /// Closes, in every pool, the idle connections beyond the [`KEEP_WARM`] most recently
    /// used that have been idle for longer than the surplus idle period, and every one idle
    /// for longer than the idle timeout; drops the pools gone quiet (as
    /// [`HttpClient::endpoint`] does when a sweep is due). Sockets close after the locks.
    pub fn sweep_idle(&self, now: Instant) {
        let mut evicted = Vec::new();
        let pools: Vec<Arc<Pool>> = {
            let mut pools = lock(&self.pools);
            if now >= pools.next_sweep {
                pools.next_sweep = now + self.idle_timeout;
                self.sweep(&mut pools.by_origin, now, &mut evicted);
            }
            pools.by_origin.values().cloned().collect()
        };
        drop(evicted);
        for pool in pools {
            let stale = pool.close_idle(now, self.surplus_idle);
            drop(stale);
        }
    }

    /// Parses `url` into an endpoint sharing this client's pool for its origin.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, HttpError> {
        self.endpoint_at(url, Instant::now())
    }

    /// How many origins have a pool.
    #[cfg(test)]
    pub(crate) fn pool_count(&self) -> usize {
        lock(&self.pools).by_origin.len()
    }

    /// [`HttpClient::endpoint`] at `now`.
    fn endpoint_at(&self, url: &str, now: Instant) -> Result<Endpoint, HttpError> {
        let bad = || HttpError::BadUrl(url.to_owned());
        let parsed = url::Url::parse(url).map_err(|_| bad())?;
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(bad()),
        };
        let host = parsed.host_str().ok_or_else(bad)?;
        let port = parsed.port_or_known_default().ok_or_else(bad)?;
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let connect_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut target = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            target.push('?');
            target.push_str(q);
        }
        let tls = if https {
            let name = ServerName::try_from(connect_host.clone()).map_err(|_| bad())?;
            Some((self.tls.clone(), name))
        } else {
            None
        };
        let origin = format!("{}://{connect_host}:{port}", parsed.scheme());
        let pool = self.pool(origin, now);
        Ok(Endpoint {
            connect_host,
            port,
            tls,
            authority,
            target,
            pool,
        })
    }
}

impl HttpClient {
    /// The pool for `origin`, made if need be; sweeps the map when a sweep is due or the
    /// map is full. Pools that go are dropped after the map's lock is released.
    fn pool(&self, origin: String, now: Instant) -> Arc<Pool> {
        let mut evicted = Vec::new();
        let mut pools = lock(&self.pools);
        if now >= pools.next_sweep {
            pools.next_sweep = now + self.idle_timeout;
            self.sweep(&mut pools.by_origin, now, &mut evicted);
        }
        if let Some(pool) = pools.by_origin.get(&origin) {
            lock(&pool.state).last_used = now;
            return pool.clone();
        }
        let pool = Arc::new(Pool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                last_used: now,
            }),
            max_idle: self.max_idle,
            idle_timeout: self.idle_timeout,
        });
        if pools.by_origin.len() >= MAX_POOLS {
            self.sweep(&mut pools.by_origin, now, &mut evicted);
        }
        if pools.by_origin.len() >= MAX_POOLS {
            let unused = pools
                .by_origin
                .iter()
                .filter(|(_, pool)| Arc::strong_count(pool) == 1)
                .min_by_key(|(_, pool)| lock(&pool.state).last_used)
                .map(|(origin, _)| origin.clone());
            match unused.and_then(|origin| pools.by_origin.remove(&origin)) {
                Some(old) => evicted.push(old),
                // Every pool is in use: this one lives as long as its endpoints.
                None => return pool,
            }
        }
        pools.by_origin.insert(origin, pool.clone());
        drop(pools);
        drop(evicted);
        pool
    }

    /// Moves to `evicted` each pool no endpoint holds (the map's is its only reference,
    /// and new ones are taken under the map's lock) that has not been used for longer
    /// than the idle timeout.
    fn sweep(
        &self,
        by_origin: &mut HashMap<String, Arc<Pool>>,
        now: Instant,
        evicted: &mut Vec<Arc<Pool>>,
    ) {
        by_origin.retain(|_, pool| {
            let idle_for = now.saturating_duration_since(lock(&pool.state).last_used);
            let keep = Arc::strong_count(pool) > 1 || idle_for <= self.idle_timeout;
            if !keep {
                evicted.push(pool.clone());
            }
            keep
        });
    }
}

impl Endpoint {
    /// POSTs `body` with `headers` (plus `Host` and `Content-Length`) and reads the whole
    /// reply, its body capped at `max_body` bytes.
    pub async fn post(
        &self,
        headers: &[(&str, &str)],
        body: &Bytes,
        max_body: usize,
    ) -> Result<HttpReply, HttpError> {
        self.send("POST", headers, body, max_body).await
    }

    /// Sends a `method` request, otherwise as [`Endpoint::post`]; a `host` among `headers`
    /// replaces the URL's.
    pub async fn send(
        &self,
        method: &str,
        headers: &[(&str, &str)],
        body: &Bytes,
        max_body: usize,
    ) -> Result<HttpReply, HttpError> {
        let request = self.encode(method, headers, body);
        if let Some(stream) = self.pool.take() {
            match self.exchange(stream, &request, body, max_body).await {
                // The function closed the idle connection as we reused it: it never
                // read this request, so send it on a fresh connection.
                Err(HttpError::ClosedBeforeReply) => {}
                Err(HttpError::Io(e)) if is_reset(&e) => {}
                other => return other,
            }
        }
        let stream = self.connect().await?;
        self.exchange(stream, &request, body, max_body).await
    }

    async fn connect(&self) -> Result<ClientStream, HttpError> {
        let stream = TcpStream::connect((self.connect_host.as_str(), self.port))
            .await
            .map_err(|source| HttpError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let Some((config, name)) = &self.tls else {
            return Ok(MaybeTls::Plain(stream));
        };
        let connector = TlsConnector::from(config.clone());
        match Box::pin(connector.connect(name.clone(), stream)).await {
            Ok(tls) => Ok(MaybeTls::Tls(Box::new(tls))),
            Err(e) => Err(self.tls_error(e)),
        }
    }

    /// A failed handshake as an error naming the host (never the URL) and the reason.
    fn tls_error(&self, e: io::Error) -> HttpError {
        let host = self.connect_host.clone();
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(why)) => HttpError::Certificate {
                host,
                reason: why.to_string(),
            },
            Some(other) => HttpError::Handshake {
                host,
                reason: other.to_string(),
            },
            None => HttpError::Handshake {
                host,
                reason: e.to_string(),
            },
        }
    }

    /// The request head, with the body behind it when it is small.
    fn encode(&self, method: &str, headers: &[(&str, &str)], body: &Bytes) -> Vec<u8> {
        let coalesce = body.len() <= COALESCE_BODY_BYTES;
        let extra: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        let mut out = Vec::with_capacity(
            64 + self.target.len()
                + self.authority.len()
                + extra
                + if coalesce { body.len() } else { 0 },
        );
        let host = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map_or(self.authority.as_str(), |(_, value)| value);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("host") {
                continue;
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        if coalesce {
            out.extend_from_slice(body);
        }
        out
    }

    async fn exchange(
        &self,
        mut stream: ClientStream,
        request: &[u8],
        body: &Bytes,
        max_body: usize,
    ) -> Result<HttpReply, HttpError> {
        stream.write_all(request).await?;
        if body.len() > COALESCE_BODY_BYTES {
            stream.write_all(body).await?;
        }
        let (reply, reusable) = read_reply(&mut stream, max_body).await?;
        if reusable {
            self.pool.put(stream);
        }
        Ok(reply)
    }
}

/// Whether a reused connection broke as the function closed it (over TLS, a close
/// without `close_notify` reads as an unexpected end).
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

impl Pool {
    /// The most recently used idle connection that is still open, if any.
    fn take(&self) -> Option<ClientStream> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut state = lock(&self.state);
            let idle = &mut state.idle;
            loop {
                let Some(c) = idle.pop() else { break None };
                if now.duration_since(c.since) > self.idle_timeout {
                    // The rest are older still.
                    stale.push(c);
                    stale.append(idle);
                    break None;
                }
                if is_idle_open(c.stream.tcp()) {
                    break Some(c.stream);
                }
                stale.push(c);
            }
        };
        drop(stale);
        found
    }

    /// Takes out the idle connections the sweep closes (see [`HttpClient::sweep_idle`]),
    /// to be dropped after the lock; gives back the list's memory once it has emptied.
    fn close_idle(&self, now: Instant, surplus_idle: Duration) -> Vec<Idle> {
        let mut state = lock(&self.state);
        let idle = &mut state.idle;
        // Oldest first: a prefix is older than each cut-off.
        let older = |limit: Duration| idle.partition_point(|c| now.duration_since(c.since) > limit);
        let surplus = older(surplus_idle).min(idle.len().saturating_sub(KEEP_WARM));
        let cut = surplus.max(older(self.idle_timeout));
        let stale: Vec<Idle> = idle.drain(..cut).collect();
        if idle.capacity() > 4 * idle.len().max(KEEP_WARM) {
            idle.shrink_to(2 * idle.len().max(KEEP_WARM));
        }
        stale
    }

    fn put(&self, stream: ClientStream) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.last_used = state.last_used.max(now);
        if state.idle.len() < self.max_idle {
            state.idle.push(Idle { stream, since: now });
        }
    }
}

/// Whether an idle connection has neither been closed by the peer nor received stray
/// bytes (over TLS, a `close_notify` is such bytes). Peeks at the TCP stream, so nothing is
/// taken from a TLS session; costs no syscall unless the socket has signalled readiness.
fn is_idle_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    let mut probe = ReadBuf::new(&mut probe);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(stream.poll_peek(&mut cx, &mut probe), Poll::Pending)
}

/// How a reply body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// What the head of a reply says.
#[derive(Debug)]
struct Head {
    status: u16,
    content_type: Option<String>,
    kept: Vec<(String, String)>,
    framing: Framing,
    keep_alive: bool,
}

/// Reads one reply; also says whether the connection may carry another request.
pub(crate) async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_body: usize,
) -> Result<(HttpReply, bool), HttpError> {
    let mut buf = BytesMut::with_capacity(FIRST_READ_BYTES);
    let head = loop {
        let head = read_head(stream, &mut buf).await?;
        if !(100..200).contains(&head.status) {
            break head;
        }
        if head.status == 101 {
            return Err(HttpError::Malformed(
                "101 Switching Protocols to a POST".into(),
            ));
        }
    };
    let body = match head.framing {
        Framing::None => Bytes::new(),
        Framing::Length(len) => {
            if len > max_body {
                return Err(HttpError::TooLarge(max_body));
            }
            fill(stream, &mut buf, len).await?;
            buf.split_to(len).freeze()
        }
        Framing::Chunked => read_chunked(stream, &mut buf, max_body).await?,
        Framing::UntilClose => {
            // The bytes read with the head count too: checked before each read, not
            // after, or a body that came whole with its head would pass the cap.
            loop {
                if buf.len() > max_body {
                    return Err(HttpError::TooLarge(max_body));
                }
                if read_more(stream, &mut buf).await? == 0 {
                    break;
                }
            }
            buf.split().freeze()
        }
    };
    let reusable = head.keep_alive && head.framing != Framing::UntilClose && buf.is_empty();
    Ok((
        HttpReply {
            status: head.status,
            content_type: head.content_type,
            kept: head.kept,
            body,
        },
        reusable,
    ))
}

/// Reads and parses a reply head, leaving what follows it in `buf`. A head longer than
/// [`MAX_HEAD_BYTES`] is an error whether it came in one read or many.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Head, HttpError> {
    let too_long =
        || HttpError::Malformed(format!("reply head longer than {MAX_HEAD_BYTES} bytes"));
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut reply = httparse::Response::new(&mut headers);
            match reply.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    if len > MAX_HEAD_BYTES {
                        return Err(too_long());
                    }
                    let head = interpret(&reply)?;
                    buf.advance(len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(HttpError::Malformed(e.to_string())),
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(too_long());
            }
        }
        let was_empty = buf.is_empty();
        if read_more(stream, buf).await? == 0 {
            return Err(if was_empty {
                HttpError::ClosedBeforeReply
            } else {
                HttpError::ClosedMidReply
            });
        }
    }
}

/// The framing, keep-alive and content type of a parsed head (RFC 9112 §6.3, §9.3).
fn interpret(reply: &httparse::Response<'_, '_>) -> Result<Head, HttpError> {
    let status = reply.code.unwrap_or(0);
    let http11 = reply.version == Some(1);
    let mut content_type = None;
    let mut kept = Vec::new();
    let mut length: Option<usize> = None;
    // Every coding of every Transfer-Encoding header, in order; `None` without the header.
    let mut codings: Option<Vec<&[u8]>> = None;
    let mut close = false;
    let mut keep_alive = false;
    for h in reply.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.get_or_insert_with(Vec::new).extend(
                h.value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty()),
            );
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = std::str::from_utf8(h.value).ok().map(str::to_owned);
        } else if ((name.len() > 7 && name[..7].eq_ignore_ascii_case("x-amzn-"))
            || name.eq_ignore_ascii_case("www-authenticate"))
            && let Ok(value) = std::str::from_utf8(h.value)
        {
            kept.push((name.to_ascii_lowercase(), value.to_owned()));
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if let Some(codings) = &codings {
        chunked_only(codings, http11)?
    } else if let Some(len) = length {
        Framing::Length(len)
    } else {
        Framing::UntilClose
    };
    // A reply with both framings is a smuggling risk: read it, but not the next one.
    let both = codings.is_some() && length.is_some();
    let keep_alive = !close && !both && (http11 || keep_alive);
    Ok(Head {
        status,
        content_type,
        kept,
        framing,
        keep_alive,
    })
}

/// The framing of a reply with `Transfer-Encoding`: chunked if its codings are exactly
/// `chunked` in an HTTP/1.1 reply, an error otherwise (see the module header).
fn chunked_only(codings: &[&[u8]], http11: bool) -> Result<Framing, HttpError> {
    if !http11 {
        return Err(HttpError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 reply".into(),
        ));
    }
    match codings {
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        _ => {
            let list: Vec<_> = codings.iter().map(|c| String::from_utf8_lossy(c)).collect();
            Err(HttpError::Malformed(format!(
                "transfer codings `{}` (only `chunked` is taken)",
                list.join(", ")
            )))
        }
    }
}

/// Reads a chunked body, leaving what follows its trailers in `buf`.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Bytes, HttpError> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 15)
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| HttpError::Malformed("invalid chunk size".into()))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(body.freeze());
        }
        if body.len() + size > max_body {
            return Err(HttpError::TooLarge(max_body));
        }
        fill(stream, buf, size + 2).await?;
        if &buf[size..size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}

/// One CRLF-terminated line from `buf` (reading more as needed), without the CRLF.
async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Bytes, HttpError> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(at).freeze();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_LINE_BYTES {
            return Err(HttpError::Malformed("chunk line too long".into()));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(HttpError::ClosedMidReply);
        }
    }
}

/// Reads until `buf` holds at least `need` bytes.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    need: usize,
) -> Result<(), HttpError> {
    if buf.len() < need {
        buf.reserve(need - buf.len());
    }
    while buf.len() < need {
        if read_more(stream, buf).await? == 0 {
            return Err(HttpError::ClosedMidReply);
        }
    }
    Ok(())
}

/// One read into the spare capacity of `buf` (growing it when full); 0 at EOF.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<usize, HttpError> {
    if buf.capacity() == buf.len() {
        buf.reserve(FIRST_READ_BYTES.max(buf.len()));
    }
    Ok(stream.read_buf(buf).await?)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    /// What the raw server does with the next request.
    #[derive(Clone, Copy)]
    enum Step {
        /// Writes these bytes and keeps the connection.
        Reply(&'static [u8]),
        /// Writes these bytes and closes the connection.
        ReplyAndClose(&'static [u8]),
        /// Closes the connection without a reply.
        Close,
    }
    use Step::*;

    /// A raw TCP server doing the next scripted step for each request it reads (head +
    /// Content-Length body). Returns its URL and how many connections it accepted.
    async fn raw_server(replies: Vec<Step>) -> (String, Arc<Mutex<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/fn?x=1", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        let replies = Arc::new(Mutex::new(replies.into_iter()));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                *count.lock().unwrap() += 1;
                let replies = replies.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    loop {
                        let mut len = 0;
                        let mut first = true;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if first {
                                assert_eq!(line, "POST /fn?x=1 HTTP/1.1\r\n");
                                first = false;
                            }
                            if let Some(v) = line.strip_prefix("content-length: ") {
                                len = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).await.unwrap();
                        let next = replies.lock().unwrap().next().unwrap_or(Close);
                        match next {
                            Reply(reply) => reader.get_mut().write_all(reply).await.unwrap(),
                            ReplyAndClose(reply) => {
                                reader.get_mut().write_all(reply).await.unwrap();
                                return;
                            }
                            Close => return,
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    async fn post(client: &HttpClient, url: &str) -> Result<HttpReply, HttpError> {
        let endpoint = client.endpoint(url).unwrap();
        endpoint
            .post(&[("x-test", "1")], &Bytes::from_static(b"{}"), 1024)
            .await
    }

    fn client() -> HttpClient {
        HttpClient::new(4, Duration::from_secs(60), tls())
    }

    fn tls() -> Arc<ClientConfig> {
        crate::tls::client::client_config(None).unwrap()
    }

    #[tokio::test]
    async fn content_length_replies_reuse_the_connection() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let (url, accepted) = raw_server(vec![Reply(reply), Reply(reply)]).await;
        let c = client();
        for _ in 0..2 {
            let r = post(&c, &url).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.content_type.as_deref(), Some("application/json"));
            assert_eq!(&r.body[..], b"{\"a\":1}");
        }
        assert_eq!(*accepted.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn chunked_replies_with_extensions_and_trailers_are_joined() {
        let reply: &[u8] = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n";
        let (url, accepted) = raw_server(vec![Reply(reply), Reply(reply)]).await;
        let c = client();
        for _ in 0..2 {
            let r = post(&c, &url).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (201, &b"abcde"[..]));
        }
        assert_eq!(*accepted.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn interim_replies_are_skipped_and_204_has_no_body() {
        let reply: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (url, _) = raw_server(vec![Reply(reply)]).await;
        let r = post(&client(), &url).await.unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[tokio::test]
    async fn replies_without_length_end_with_the_connection_and_are_not_reused() {
        let reply: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        let (url, accepted) = raw_server(vec![ReplyAndClose(reply), ReplyAndClose(reply)]).await;
        let c = client();
        // The server closes after writing: the end of the connection frames the body.
        let r = post(&c, &url).await.unwrap();
        assert_eq!(&r.body[..], b"all of it");
        let r = post(&c, &url).await.unwrap();
        assert_eq!(&r.body[..], b"all of it");
        assert_eq!(*accepted.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        let (url, accepted) = raw_server(vec![Reply(reply), Reply(reply)]).await;
        let c = client();
        post(&c, &url).await.unwrap();
        post(&c, &url).await.unwrap();
        assert_eq!(*accepted.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_closed_pooled_connection_is_replaced_without_losing_the_request() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        // First connection: one reply, then the server closes it on the next request.
        let (url, accepted) = raw_server(vec![Reply(reply), Close, Reply(reply)]).await;
        let c = client();
        post(&c, &url).await.unwrap();
        let r = post(&c, &url).await.unwrap();
        assert_eq!(&r.body[..], b"ok");
        assert_eq!(*accepted.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn oversized_and_malformed_replies_are_errors() {
        let (url, _) = raw_server(vec![Reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".as_slice(),
        )])
        .await;
        assert!(matches!(
            post(&client(), &url).await,
            Err(HttpError::TooLarge(1024))
        ));

        let big_chunks: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n";
        let (url, _) = raw_server(vec![ReplyAndClose(big_chunks)]).await;
        // 0x400 = 1024 bytes fits the cap, but the body never comes: a partial reply.
        let err = post(&client(), &url).await.unwrap_err();
        assert!(err.is_partial_reply(), "{err}");

        for garbage in [
            b"SMTP ready\r\n\r\n".as_slice(),
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (url, _) = raw_server(vec![Reply(garbage)]).await;
            let err = post(&client(), &url).await.unwrap_err();
            assert!(matches!(err, HttpError::Malformed(_)), "{err}");
        }
    }

    #[tokio::test]
    async fn a_function_that_closes_without_replying_is_an_error() {
        let (url, accepted) = raw_server(vec![Close, Close]).await;
        let err = post(&client(), &url).await.unwrap_err();
        assert!(matches!(err, HttpError::ClosedBeforeReply), "{err}");
        // A fresh connection is not retried: only a reused one is.
        assert_eq!(*accepted.lock().unwrap(), 1);
    }

    /// A reply whose head (status line to blank line) is `len` bytes, padded by one header.
    fn reply_with_head_of(len: usize) -> &'static [u8] {
        let start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: ";
        let mut reply = start.to_vec();
        reply.resize(len - 4, b'a');
        reply.extend_from_slice(b"\r\n\r\nok");
        Box::leak(reply.into_boxed_slice())
    }

    #[tokio::test]
    async fn a_body_read_to_the_close_is_capped_when_it_came_with_the_head() {
        // Found by the function_reply fuzz target: no length, the whole body in the
        // first read, nothing after it but the close.
        let mut reply = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        reply.extend_from_slice(&[b'x'; 1025]);
        let got = read_reply(&mut &reply[..], 1024).await;
        assert!(matches!(got, Err(HttpError::TooLarge(1024))), "{got:?}");
        reply.pop();
        let (whole, reusable) = read_reply(&mut &reply[..], 1024).await.unwrap();
        assert_eq!((whole.body.len(), reusable), (1024, false));
    }

    #[tokio::test]
    async fn a_reply_head_over_the_limit_is_refused_however_it_arrives() {
        // One write each: the whole head can arrive in one read.
        for (len, fits) in [
            (70_000, false),
            (MAX_HEAD_BYTES + 1, false),
            (MAX_HEAD_BYTES, true),
            (MAX_HEAD_BYTES - 100, true),
        ] {
            let reply = reply_with_head_of(len);
            let (url, _) = raw_server(vec![Reply(reply)]).await;
            let got = post(&client(), &url).await;
            match got {
                Ok(r) if fits => assert_eq!(&r.body[..], b"ok"),
                Err(HttpError::Malformed(m)) if !fits => assert!(m.contains("head"), "{m}"),
                other => panic!("{len}-byte head: {other:?}"),
            }
            // The same bytes from memory, in one read.
            let got = read_reply(&mut &reply[..], 1024).await;
            assert_eq!(got.is_ok(), fits, "{len}-byte head from a slice");
        }
    }

    /// Reads `reply` from memory: the reply, or why not, and whether it may be reused.
    async fn parse(reply: &[u8]) -> Result<(HttpReply, bool), HttpError> {
        read_reply(&mut &reply[..], 1024).await
    }

    #[tokio::test]
    async fn transfer_codings_other_than_chunked_alone_are_refused() {
        for reply in [
            // Two headers make one list: gzip, then chunked.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".as_slice(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            // Chunked not last: RFC 9112 would read to the close; refused instead.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
            // Chunked applied twice.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            // No coding at all.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\nok",
            // HTTP/1.0 has no transfer codings.
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ] {
            let text = String::from_utf8_lossy(reply);
            match parse(reply).await {
                Err(HttpError::Malformed(_)) => {}
                other => panic!("{text}: {other:?}"),
            }
            let (url, _) = raw_server(vec![ReplyAndClose(reply)]).await;
            let err = post(&client(), &url).await.unwrap_err();
            assert!(matches!(err, HttpError::Malformed(_)), "{text}: {err}");
        }
        // Empty list elements do not count, and the name of the coding has no case.
        for reply in [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,CHUNKED,\r\n\r\n2\r\nok\r\n0\r\n\r\n".as_slice(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ] {
            let (r, reusable) = parse(reply).await.unwrap();
            assert_eq!((&r.body[..], reusable), (&b"ok"[..], true));
        }
    }

    #[tokio::test]
    async fn chunked_wins_over_content_length_and_the_connection_is_not_reused() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (r, reusable) = parse(reply).await.unwrap();
        assert_eq!((&r.body[..], reusable), (&b"ok"[..], false));
        let (url, accepted) = raw_server(vec![Reply(reply), Reply(reply)]).await;
        let c = client();
        for _ in 0..2 {
            assert_eq!(&post(&c, &url).await.unwrap().body[..], b"ok");
        }
        assert_eq!(*accepted.lock().unwrap(), 2);
    }

    /// Waits for `cond` to hold, for 10 s at most.
    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A function answering every request with `200 ok` on keep-alive connections; its
    /// URL, how many connections it holds open right now and how many it ever accepted.
    async fn counting_server() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/fn?x=1", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (held, count) = (open.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                held.fetch_add(1, Ordering::SeqCst);
                count.fetch_add(1, Ordering::SeqCst);
                let held = held.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.strip_prefix("content-length: ") {
                            len = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            let mut body = vec![0; len];
                            reader.read_exact(&mut body).await.unwrap();
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            reader.get_mut().write_all(reply).await.unwrap();
                        }
                    }
                    held.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (url, open, accepted)
    }

    #[tokio::test]
    async fn idle_connections_beyond_a_few_are_closed_without_a_new_call() {
        let (url, open, accepted) = counting_server().await;
        let c = Arc::new(
            HttpClient::new(64, Duration::from_secs(60), tls())
                .with_surplus_idle(Duration::from_millis(200)),
        );
        // A burst: 16 calls at once open 16 connections, all kept idle after.
        let burst: Vec<_> = (0..16).map(|_| post(&c, &url)).collect();
        for reply in futures_util::future::join_all(burst).await {
            assert_eq!(&reply.unwrap().body[..], b"ok");
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(opened > KEEP_WARM, "{opened} connections");
        wait_for("the burst's connections", || {
            open.load(Ordering::SeqCst) == opened
        })
        .await;
        // No call comes: the sweep task closes all but the few kept warm.
        let stop = Arc::new(Stop::default());
        let sweeper = tokio::spawn(c.clone().sweep_every(stop.clone()));
        wait_for("the surplus to close", || {
            open.load(Ordering::SeqCst) == KEEP_WARM
        })
        .await;
        // Those stay within the idle timeout, and serve the next calls.
        c.sweep_idle(Instant::now() + Duration::from_secs(30));
        for _ in 0..KEEP_WARM {
            assert_eq!(&post(&c, &url).await.unwrap().body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
        // Past the idle timeout, none stays.
        c.sweep_idle(Instant::now() + Duration::from_secs(61));
        wait_for("every connection to close", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
        // The sweep stops with the gateway.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), sweeper)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn pools_of_origins_gone_quiet_are_swept() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let c = client();
        let mut urls = Vec::new();
        for _ in 0..20 {
            let (url, _) = raw_server(vec![Reply(reply)]).await;
            post(&c, &url).await.unwrap();
            urls.push(url);
        }
        // Each pool holds an idle connection to its origin.
        assert_eq!(c.pool_count(), 20);
        let held = c.endpoint(&urls[0]).unwrap();
        // Within the idle timeout nothing goes.
        c.endpoint_at(&urls[0], Instant::now() + Duration::from_secs(30))
            .unwrap();
        assert_eq!(c.pool_count(), 20);
        // Past it, every pool but the held one goes with its idle connection; the origin
        // asked for gets a fresh pool.
        let later = c
            .endpoint_at(&urls[1], Instant::now() + Duration::from_secs(61))
            .unwrap();
        assert_eq!(c.pool_count(), 2);
        assert!(!Arc::ptr_eq(&later.pool, &held.pool));
        assert!(lock(&later.pool.state).idle.is_empty());
        assert_eq!(lock(&held.pool.state).idle.len(), 1);
    }

    #[test]
    fn the_pool_map_is_bounded() {
        let c = client();
        let url = |port: usize| format!("http://127.0.0.1:{port}/");
        for port in 1..=MAX_POOLS + 100 {
            c.endpoint(&url(port)).unwrap();
        }
        assert_eq!(c.pool_count(), MAX_POOLS);
        // The least recently used goes first: the latest origins are kept.
        let last = c.endpoint(&url(MAX_POOLS + 100)).unwrap();
        let again = c.endpoint(&url(MAX_POOLS + 100)).unwrap();
        assert!(Arc::ptr_eq(&last.pool, &again.pool));
        // Pools in use are not evicted: an origin beyond them gets a pool of its own.
        let held: Vec<_> = (1..=MAX_POOLS + 5)
            .map(|port| c.endpoint(&url(port)).unwrap())
            .collect();
        assert_eq!(c.pool_count(), MAX_POOLS);
        let a = c.endpoint(&url(MAX_POOLS + 5)).unwrap();
        assert!(!Arc::ptr_eq(&a.pool, &held[MAX_POOLS + 4].pool));
        assert_eq!(c.pool_count(), MAX_POOLS);
    }

    #[tokio::test]
    async fn a_poisoned_lock_is_taken_over() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (url, accepted) = raw_server(vec![Reply(reply), Reply(reply)]).await;
        let c = client();
        let endpoint = c.endpoint(&url).unwrap();
        std::thread::scope(|s| {
            let map = s.spawn(|| {
                let _held = c.pools.lock();
                panic!("poisons the pool map");
            });
            let pool = s.spawn(|| {
                let _held = endpoint.pool.state.lock();
                panic!("poisons the pool");
            });
            assert!(map.join().is_err() && pool.join().is_err());
        });
        assert!(c.pools.is_poisoned() && endpoint.pool.state.is_poisoned());
        for _ in 0..2 {
            let r = post(&c, &url).await.unwrap();
            assert_eq!(&r.body[..], b"ok");
        }
        // The connection went back to the poisoned pool and was reused from it.
        assert_eq!(*accepted.lock().unwrap(), 1);
    }

    #[test]
    fn urls_are_parsed_into_authority_and_target() {
        let c = client();
        let e = c.endpoint("http://[::1]:8080/a/b?c=d").unwrap();
        assert_eq!(
            (
                e.connect_host.as_str(),
                e.port,
                e.authority.as_str(),
                e.target.as_str()
            ),
            ("::1", 8080, "[::1]:8080", "/a/b?c=d")
        );
        let e = c.endpoint("http://example.com").unwrap();
        assert_eq!(
            (e.port, e.authority.as_str(), e.target.as_str()),
            (80, "example.com", "/")
        );
        // Two URLs on one origin share a pool.
        let a = c.endpoint("http://127.0.0.1:9/a").unwrap();
        let b = c.endpoint("http://127.0.0.1:9/b").unwrap();
        assert!(Arc::ptr_eq(&a.pool, &b.pool));
        // The scheme is part of the origin.
        let plain = c.endpoint("http://localhost:9/a").unwrap();
        let tls = c.endpoint("https://localhost:9/a").unwrap();
        assert!(!Arc::ptr_eq(&plain.pool, &tls.pool));
        assert!(plain.tls.is_none() && tls.tls.is_some());
        assert_eq!(c.endpoint("https://example.com/").unwrap().port, 443);
        assert!(c.endpoint("ftp://example.com/").is_err());
        assert!(c.endpoint("not a url").is_err());
    }
}
