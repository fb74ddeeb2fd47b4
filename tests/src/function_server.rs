//! What the test function servers ([`crate::scripted::ScriptedFunction`],
//! [`crate::recorder::RecordingFunction`]) share: an HTTP/1 server that answers every
//! request with one handler until it is cancelled ([`serve`]), the log of the events
//! received, which tests wait on ([`EventLog`]), and the two together on a port of its own
//! ([`FunctionServer`]), over plain HTTP or, given a TLS server config, https.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A request to a test function.
pub type Request = hyper::Request<hyper::body::Incoming>;
/// A reply of a test function.
pub type Response = hyper::Response<Full<Bytes>>;

/// Serves HTTP/1 on `listener` in the background, each connection in its own task, every
/// request answered by `handle`, until `shutdown` is cancelled (which also ends the open
/// connections).
pub fn serve<H, Fut>(listener: TcpListener, shutdown: CancellationToken, handle: H)
where
    H: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    serve_tls(listener, None, shutdown, handle);
}

/// [`serve`], over TLS with `tls` when given (a failed handshake ends that connection).
pub fn serve_tls<H, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let (handle, shutdown) = (handle.clone(), shutdown.clone());
            let tls = tls.clone().map(TlsAcceptor::from);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request| {
                    let reply = handle(request);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let http = http1::Builder::new();
                let conn = async {
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = conn => {}
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    });
}

/// The events a test function received, in arrival order; cheap to clone (the clones share
/// the log).
#[derive(Debug)]
pub struct EventLog<T> {
    events: Arc<Mutex<Vec<T>>>,
    arrived: Arc<Notify>,
}

impl<T> Clone for EventLog<T> {
    fn clone(&self) -> Self {
        EventLog {
            events: self.events.clone(),
            arrived: self.arrived.clone(),
        }
    }
}

impl<T> Default for EventLog<T> {
    fn default() -> Self {
        EventLog {
            events: Arc::default(),
            arrived: Arc::new(Notify::new()),
        }
    }
}

impl<T: Clone + Debug> EventLog<T> {
    /// Adds an event and wakes whoever waits.
    pub fn push(&self, event: T) {
        self.events.lock().unwrap().push(event);
        self.arrived.notify_waiters();
    }

    /// Every event so far.
    pub fn snapshot(&self) -> Vec<T> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `done(events)` holds, then returns the events; panics with the events so
    /// far after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[T]) -> bool,
    ) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            {
                let events = self.events.lock().unwrap();
                if done(&events) {
                    return events.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let events = self.snapshot();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; events so far: {events:#?}"
                );
            }
        }
    }
}

/// A function server on 127.0.0.1:0 with the log of what it received; stops when dropped.
pub struct FunctionServer<T> {
    addr: SocketAddr,
    events: EventLog<T>,
    shutdown: CancellationToken,
}

impl<T> Debug for FunctionServer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl<T: Clone + Debug + Send + 'static> FunctionServer<T> {
    /// Starts one that answers every request with `handle(request, log)`; the handler
    /// records what it received in `log`.
    pub async fn start<H, Fut>(handle: H) -> Self
    where
        H: Fn(Request, EventLog<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        Self::start_tls(None, handle).await
    }

    /// [`FunctionServer::start`], serving https with `tls` when given.
    pub async fn start_tls<H, Fut>(tls: Option<Arc<rustls::ServerConfig>>, handle: H) -> Self
    where
        H: Fn(Request, EventLog<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events = EventLog::default();
        let shutdown = CancellationToken::new();
        let log = events.clone();
        serve_tls(listener, tls, shutdown.clone(), move |request| {
            handle(request, log.clone())
        });
        FunctionServer {
            addr,
            events,
            shutdown,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it received.
    pub fn events(&self) -> &EventLog<T> {
        &self.events
    }
}

impl<T> Drop for FunctionServer<T> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
