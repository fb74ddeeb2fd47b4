//! The accept loop both listeners share: accept until shutdown, back off on accept
//! errors (out of file descriptors), and serve each TCP connection in a tracked task.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::stop::Stop;

/// Accepts on `listener` until `stop`; `serve` handles one connection, in a task on
/// `tracker`.
pub(crate) async fn accept_loop<F, Fut>(
    stop: &Stop,
    tracker: &TaskTracker,
    listener: TcpListener,
    name: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => return,
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
        tracker.spawn(serve(stream, remote));
    }
}
