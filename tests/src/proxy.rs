//! A TCP relay in front of a server (Redis) that a test can cut and restore, to take a
//! server away from its clients while both keep running: [`TcpProxy::cut`] drops every
//! relayed connection and refuses new ones (accepted, then closed at once, as a dead
//! link looks), [`TcpProxy::restore`] relays again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running relay on 127.0.0.1:0; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    /// Cancelled by a cut: every connection relayed before it ends.
    links: Mutex<CancellationToken>,
}

impl TcpProxy {
    /// Relays every connection it accepts to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accepting = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if accepting.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = accepting.links.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Ok(TcpProxy { addr, state, task })
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every relayed connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        let mut links = self.state.links.lock().unwrap();
        links.cancel();
        *links = CancellationToken::new();
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.links.lock().unwrap().cancel();
    }
}
