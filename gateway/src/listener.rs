//! The accept loop every listener shares, and the HTTP/1.1 connection of those hyper serves: accept until the listeners close, back off on
//! accept errors (out of file descriptors), and serve each TCP connection in a task.
//!
//! Shutdown comes in two steps. When it starts (`stop`), the node drains: the listeners
//! keep accepting, so that a load balancer polling `/readyz` hears `draining` instead of a
//! refused connection, and a relay from another node is still answered; upgrades are
//! refused. A connection accepted then runs untracked: it holds nothing the drain waits
//! for, and its waits end when the listeners close (`closed`), at the end of the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::respond::Body;

use crate::stop::Stop;

/// Accepts on `listener` until `closed`; `serve` handles one connection (told whether it
/// came while draining), in a task on `tracker` until `stop`, in an untracked one after.
pub(crate) async fn accept_loop<F, Fut>(
    stop: &Stop,
    closed: &Stop,
    tracker: &TaskTracker,
    listener: TcpListener,
    name: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, bool) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, remote) = tokio::select! {
            _ = closed.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(listener = name, cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let draining = stop.is_cancelled();
        let task = serve(stream, remote, draining);
        if draining {
            tokio::spawn(task);
        } else {
            tracker.spawn(task);
        }
    }
}

/// How long a request head may take on a listener hyper serves (and, over TLS, the
/// handshake before the first).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one HTTP/1.1 connection with hyper (keep-alive unless `keep_alive` is false,
/// request heads within [`HEAD_TIMEOUT`]) until it ends, or until `stop`: then the request
/// in progress is answered and the connection closed.
pub(crate) async fn serve_http1<S, Svc>(
    stream: S,
    service: Svc,
    stop: &Stop,
    keep_alive: bool,
    remote: SocketAddr,
    name: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = Body>,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .keep_alive(keep_alive)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(listener = name, %remote, cause = %e, "connection ended with an error");
    }
}
