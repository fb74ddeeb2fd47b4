//! The accept loop both listeners share: accept until the listeners close, back off on
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

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::warn;

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
