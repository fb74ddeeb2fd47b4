//! The accept loop both listeners share: accept until shutdown, back off on accept
//! errors (out of file descriptors), and serve each TCP connection in a tracked task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::Shared;

/// Accepts on `listener` until shutdown starts; `serve` handles one connection.
pub(crate) async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    name: &'static str,
    serve: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
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
        shared.tracker.spawn(serve(shared.clone(), stream, remote));
    }
}
