//! The Switchboard gateway: holds WebSocket connections and turns what happens on them
//! into HTTP calls to stateless functions (register, transport, cleanup), and serves the
//! send-back API through which functions and backends push messages to connections.
//!
//! The binary (`src/main.rs`) only reads config, starts tracing and waits for a signal;
//! everything else is here, so tests start the same gateway on port 0:
//!
//! ```no_run
//! # async fn start() -> Result<(), gateway::GatewayError> {
//! let config = gateway::Config::load(None, &Default::default(), &[])?;
//! let gateway = gateway::Gateway::bind(config, gateway::Options::default()).await?;
//! println!("clients connect to ws://{}", gateway.public_addr());
//! gateway.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod admit;
mod aws_management;
mod clock;
pub mod config;
mod connection;
mod dialect;
mod error;
mod forward;
mod group_cache;
mod handshake;
mod http_client;
mod invoke;
mod listener;
mod liveness;
mod outbox;
mod public;
mod registry;
mod respond;
mod sendback;
mod sigv4;
mod sockio;
mod stop;
mod tencent_sendback;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::stop::Stop;
use bytes::Bytes;
use store::SharedStore;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
pub use error::{ConfigError, GatewayError};

use crate::group_cache::GroupCache;
use crate::http_client::HttpClient;
use crate::invoke::Invoker;
use crate::registry::Registry;

/// What a caller may hand the gateway besides its config.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Use this store instead of opening the one `config.store` names (to share an
    /// embedded store with functions in the same process).
    pub store: Option<SharedStore>,
    /// Serve this HTML at `GET /` (overrides `public.page`).
    pub page: Option<Bytes>,
}

/// A gateway with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    public: TcpListener,
    sendback: TcpListener,
}

/// State shared by every task of one gateway.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub node: Arc<str>,
    pub store: SharedStore,
    pub registry: Registry,
    /// Group members kept between group sends, by the store's version of each group.
    pub groups: GroupCache,
    pub invoker: Invoker,
    /// Where the other nodes reach this node's send-back API (empty: they cannot).
    pub advertise: String,
    /// Keep-alive connections to the other nodes' send-back APIs.
    pub peers: HttpClient,
    /// Cancelled when shutdown starts: listeners stop accepting, sockets close with 1001.
    pub shutdown: Stop,
    /// Every task that must finish before the gateway exits: one per TCP connection on
    /// either listener (a public client's admission, socket loop and cleanup call).
    pub tracker: TaskTracker,
    /// Connections held or being admitted; bounded by `limits.max_connections`.
    slots: AtomicUsize,
    pub page: Option<Bytes>,
    pub ws_config: WebSocketConfig,
    /// Connection ids whose store removal failed (store down), retried by `liveness`.
    unregister_backlog: std::sync::Mutex<Vec<String>>,
}

/// A claim on one of `limits.max_connections`, released on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// The ids whose store removal must be retried.
    pub fn backlog(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.unregister_backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Claims a connection slot, or `None` at capacity.
    pub fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        let max = self.config.limits.max_connections;
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Gateway {
    /// Opens the store and binds both listeners; nothing is accepted until [`Gateway::run`].
    pub async fn bind(config: Config, options: Options) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let store = match options.store {
            Some(store) => store,
            None => store::open(&config.store, &config.store_prefix).await?,
        };
        let page = match (options.page, &config.public.page) {
            (Some(page), _) => Some(page),
            (None, Some(path)) => Some(Bytes::from(tokio::fs::read(path).await?)),
            (None, None) => None,
        };
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { what, addr, source })
        };
        let public = bind("public", config.public.listen).await?;
        let sendback = bind("send-back", config.sendback.listen).await?;
        let l = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(l.read_buffer_bytes)
            .write_buffer_size(l.write_buffer_bytes)
            .max_write_buffer_size(l.outbound_queue_bytes.saturating_add(l.write_buffer_bytes))
            .max_message_size(Some(l.max_message_bytes))
            .max_frame_size(Some(l.max_message_bytes));
        let advertise = match &config.sendback.advertise {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let addr = sendback.local_addr()?;
                if addr.ip().is_unspecified() {
                    String::new()
                } else {
                    format!("http://{addr}")
                }
            }
        };
        let shared = Arc::new(Shared {
            node: Arc::from(config.node_id.as_str()),
            advertise,
            peers: HttpClient::new(64, Duration::from_secs(30)),
            invoker: Invoker::new(&config.functions)?,
            config,
            store,
            registry: Registry::default(),
            groups: GroupCache::default(),
            shutdown: Stop::default(),
            tracker: TaskTracker::new(),
            slots: AtomicUsize::new(0),
            page,
            ws_config,
            unregister_backlog: std::sync::Mutex::default(),
        });
        Ok(Gateway {
            shared,
            public,
            sendback,
        })
    }

    /// Where WebSocket clients connect.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where the send-back API listens.
    pub fn sendback_addr(&self) -> SocketAddr {
        self.sendback
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The store this gateway uses.
    pub fn store(&self) -> SharedStore {
        self.shared.store.clone()
    }

    /// The node id this gateway records with its connections.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stop accepting, close
    /// every socket with 1001, send every cleanup, and wait for all of it up to
    /// `shutdown.grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Gateway {
            shared,
            public,
            sendback,
        } = self;
        info!(
            public = %public.local_addr()?,
            sendback = %sendback.local_addr()?,
            node = %shared.node,
            "gateway listening"
        );
        // Announce this node before it takes connections, so the other nodes can reach
        // them from the start.
        if let Err(e) = liveness::beat(&shared).await {
            warn!(cause = %e, "store heartbeat failed");
        }
        let listeners = TaskTracker::new();
        listeners.spawn(public::serve(shared.clone(), public));
        listeners.spawn(sendback::serve(shared.clone(), sendback));
        listeners.spawn(liveness::run(shared.clone()));
        listeners.close();
        shutdown.await;
        let open = shared.registry.len();
        info!(connections = open, "shutting down: closing connections");
        shared.shutdown.cancel();
        listeners.wait().await;
        shared.tracker.close();
        let grace = shared.config.shutdown.grace;
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                still_open = shared.registry.len(),
                ?grace,
                "shutdown grace period ended with tasks still running"
            );
        }
        let left = liveness::retry_backlog(&shared).await;
        if left > 0 {
            warn!(
                left,
                "store unreachable at shutdown: records of closed connections remain"
            );
        }
        info!("shutdown complete");
        Ok(())
    }
}
