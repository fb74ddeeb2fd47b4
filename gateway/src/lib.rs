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

mod auth;
mod clock;
mod cluster;
pub mod config;
mod delivery;
mod dialect;
mod edge;
mod error;
mod function;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod listener;
mod metrics;
mod passthrough;
mod request;
mod respond;
mod sendback;
mod socket;
mod stop;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use store::SharedStore;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
pub use error::{ConfigError, GatewayError};

use crate::cluster::cleanup::Cleanups;
use crate::cluster::liveness::{Heartbeat, Removals, StoreHealth};
use crate::cluster::readiness::Readiness;
use crate::cluster::reaper::Fenced;
use crate::cluster::reaper::Reaper;
use crate::cluster::relay::Relay;
use crate::cluster::resync::{Resync, ResyncParts};
use crate::delivery::core::Delivery;
use crate::dialect::aws::management::ManagementApi;
use crate::dialect::native::sendback::NativeApi;
use crate::dialect::tencent::sendback::TencentApi;
use crate::edge::admit::Admitter;
use crate::edge::forwarded::RealIp;
use crate::edge::serve::Edge;
use crate::edge::slots::Slots;
use crate::function::invoke::Invoker;
use crate::metrics::registry::Metrics;
use crate::metrics::serve::Exporter;
use crate::metrics::store::MeasuredStore;
use crate::request::BodyLimits;
use crate::sendback::serve::Router;
use crate::socket::outbox::QueueLimits;
use crate::socket::registry::Registry;
use crate::socket::task::Sockets;
use crate::stop::Stop;
use crate::tls::server::Reloadable;

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
    node: Arc<str>,
    store: SharedStore,
    /// `shutdown.grace`.
    grace: std::time::Duration,
    registry: Arc<Registry>,
    removals: Arc<Removals>,
    cleanups: Arc<Cleanups>,
    heartbeat: Arc<Heartbeat>,
    reaper: Arc<Reaper>,
    /// The function client, whose idle connections a background task sweeps.
    invoker: Invoker,
    /// The write-back of this node's state when the store lost it (Redis only).
    resync: Option<Arc<Resync>>,
    /// Cancelled when shutdown starts: the drain (upgrades refused, `/readyz` 503, sockets
    /// close with 1001).
    stop: Arc<Stop>,
    /// Cancelled at the end of the drain: the listeners close.
    closed: Arc<Stop>,
    /// Every task that must finish before the gateway exits: one per TCP connection on
    /// either listener (a public client's admission, socket loop and cleanup call).
    tracker: TaskTracker,
    edge: Arc<Edge>,
    router: Arc<Router>,
    public: TcpListener,
    /// The `wss://` listener (`public.tls`) and its TLS config.
    public_tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    sendback: TcpListener,
    /// `sendback.tls`.
    sendback_tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificates reloaded on SIGHUP and when their files change.
    certs: Vec<Arc<Reloadable>>,
    /// `metrics.listen`, and what it serves.
    metrics: Option<(TcpListener, Arc<Exporter>)>,
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
        // Certificates first: one that cannot be used stops the gateway before any port
        // is bound.
        let mut certs = Vec::new();
        let mut acceptor =
            |what, files: &config::TlsFiles| -> Result<Arc<rustls::ServerConfig>, GatewayError> {
                let cert = Reloadable::load(what, &files.cert_file, &files.key_file).map_err(
                    |source| ConfigError::Tls {
                        field: format!("{what}.tls"),
                        source,
                    },
                )?;
                certs.push(cert.clone());
                Ok(tls::server::server_config(cert)?)
            };
        let public_acceptor = match &config.public.tls {
            Some(tls) => Some(acceptor("public", &tls.files)?),
            None => None,
        };
        let sendback_tls = match &config.sendback.tls {
            Some(files) => Some(acceptor("sendback", files)?),
            None => None,
        };
        let client_tls =
            tls::client::client_config(config.functions.ca_file.as_deref()).map_err(|source| {
                ConfigError::Tls {
                    field: "functions.ca_file".into(),
                    source,
                }
            })?;
        // The passthrough routes' credential checks load their keys here: a key that
        // cannot be used stops the gateway before any port is bound.
        let passthrough = passthrough::route::Routes::new(&config.passthrough)?;
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { what, addr, source })
        };
        let public = bind("public", config.public.listen).await?;
        let public_tls = match (&config.public.tls, public_acceptor) {
            (Some(tls), Some(acceptor)) => Some((bind("public TLS", tls.listen).await?, acceptor)),
            _ => None,
        };
        let sendback = bind("send-back", config.sendback.listen).await?;
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(bind("metrics", addr).await?),
            None => None,
        };
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
                let scheme = if sendback_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                if addr.ip().is_unspecified() {
                    String::new()
                } else {
                    format!("{scheme}://{addr}")
                }
            }
        };
        let config = Arc::new(config);
        let node: Arc<str> = Arc::from(config.node_id.as_str());
        // Every part counts in this gateway's own metrics, and reaches the store through
        // them (`gateway.store()` stays the store as given).
        let metrics = Arc::new(Metrics::new());
        let measured = MeasuredStore::wrap(store.clone(), metrics.clone());
        let invoker = Invoker::new(&config.functions, client_tls.clone(), metrics.clone())?;
        let backend_tls = client_tls.clone();
        let registry = Arc::new(Registry::default());
        let removals = Arc::new(Removals::new(measured.clone()));
        let stop = Arc::new(Stop::default());
        let closed = Arc::new(Stop::default());
        let health = Arc::new(StoreHealth::default());
        let readiness = Readiness {
            stop: stop.clone(),
            health: health.clone(),
            ttl: config.node_heartbeat_ttl,
        };
        let cleanups = Arc::new(Cleanups::new(
            measured.clone(),
            config.clone(),
            invoker.clone(),
            removals.clone(),
            metrics.clone(),
        ));
        let limits = BodyLimits {
            message: config.limits.max_message_bytes,
            body: config.sendback.max_body_bytes,
        };
        let delivery = Arc::new(Delivery::new(
            registry.clone(),
            measured.clone(),
            Relay::new(
                node.clone(),
                measured.clone(),
                config.relay_timeout,
                client_tls,
                metrics.clone(),
            ),
            QueueLimits {
                messages: config.limits.outbound_queue_messages,
                bytes: config.limits.outbound_queue_bytes,
            },
            metrics.clone(),
        ));
        let management = Arc::new(ManagementApi {
            delivery: delivery.clone(),
            aws: config.aws.clone(),
            check: !(config.sendback.insecure_no_auth && config.aws.credentials.is_empty()),
            max_message: config.limits.max_message_bytes,
        });
        let pending = Arc::new(Slots::new(config.limits.max_pending_connections));
        let exporter = Arc::new(
            Exporter::new(metrics.clone(), measured.clone())
                .sample(&metrics.connections, {
                    let registry = registry.clone();
                    move || i64::try_from(registry.len()).unwrap_or(i64::MAX)
                })
                .sample(&metrics.handshakes_in_progress, {
                    let pending = pending.clone();
                    move || i64::try_from(pending.taken()).unwrap_or(i64::MAX)
                })
                .sample(&metrics.connections_limit, {
                    let limit = i64::try_from(config.limits.max_connections).unwrap_or(i64::MAX);
                    move || limit
                })
                .sample(&metrics.ready, {
                    let readiness = readiness.clone();
                    move || i64::from(readiness.check().is_ok())
                }),
        );
        // With `metrics.listen` the metrics have a listener of their own, and only that.
        let (exporter, metrics_listener) = match metrics_listener {
            Some(listener) => (None, Some((listener, exporter))),
            None => (Some(exporter), None),
        };
        let router = Arc::new(Router {
            token: config.sendback.token.clone(),
            stage: config.aws.stage.clone(),
            native: NativeApi {
                delivery: delivery.clone(),
                store: measured.clone(),
                limits,
                max_batch_ids: config.sendback.max_batch_ids,
                node: node.clone(),
            },
            aws: management.clone(),
            tencent: TencentApi {
                delivery,
                token: config.sendback.token.clone(),
                limits,
            },
            metrics: metrics.clone(),
            exporter,
            readiness: readiness.clone(),
        });
        let edge = Arc::new(Edge {
            stop: stop.clone(),
            closed: closed.clone(),
            readiness,
            slots: Arc::new(Slots::new(config.limits.max_connections)),
            pending,
            handshake_timeout: config.limits.handshake_timeout,
            keepalive_timeout: config.limits.keepalive_timeout,
            write_timeout: config.limits.write_timeout,
            page,
            real_ip: RealIp::new(&config.public),
            // Always checked there: the option needs `aws.credentials` (`validate`).
            management: config
                .aws
                .management_api_on_public
                .then(|| edge::serve::Management {
                    stage: config.aws.stage.clone(),
                    api: management.clone(),
                    max_body: config.limits.max_message_bytes,
                }),
            admitter: Admitter {
                node: node.clone(),
                config: config.clone(),
                store: measured.clone(),
                invoker: invoker.clone(),
                registry: registry.clone(),
                removals: removals.clone(),
            },
            sockets: Arc::new(Sockets {
                node: node.clone(),
                config: config.clone(),
                invoker: invoker.clone(),
                registry: registry.clone(),
                cleanups: cleanups.clone(),
                stop: stop.clone(),
                ws_config,
                metrics: metrics.clone(),
            }),
            passthrough,
            client_tls: backend_tls,
            metrics: metrics.clone(),
        });
        let heartbeat = Arc::new(Heartbeat {
            store: measured.clone(),
            node: node.clone(),
            advertise,
            interval: config.node_heartbeat,
            ttl: config.node_heartbeat_ttl,
            health: health.clone(),
        });
        let resync = Resync::for_store(ResyncParts {
            node: node.clone(),
            store: measured.clone(),
            registry: registry.clone(),
            health: health.clone(),
            removals: removals.clone(),
            interval: config.store_resync.interval,
            ttl: config.node_heartbeat_ttl,
            cleanup: config.functions.cleanup.is_some(),
            // A closing socket task drains its transport calls (within the grace) before
            // it queues its cleanup.
            handover_wait: config.shutdown.grace + config.cleanup.poll_interval,
        });
        let reaper = Arc::new(Reaper {
            node: node.clone(),
            store: measured,
            config: config.clone(),
            cleanups: cleanups.clone(),
            registry: registry.clone(),
            health,
            interval: config.node_heartbeat,
            ttl: config.node_heartbeat_ttl,
        });
        Ok(Gateway {
            node,
            store,
            grace: config.shutdown.grace,
            registry,
            removals,
            cleanups,
            heartbeat,
            reaper,
            invoker,
            resync,
            stop,
            closed,
            tracker: TaskTracker::new(),
            edge,
            router,
            public,
            public_tls,
            sendback,
            sendback_tls,
            certs,
            metrics: metrics_listener,
        })
    }

    /// Where WebSocket clients connect.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where `wss://` clients connect (`public.tls`), if anywhere.
    pub fn public_tls_addr(&self) -> Option<SocketAddr> {
        self.public_tls.as_ref().map(|(listener, _)| {
            listener
                .local_addr()
                .expect("bound listener has an address")
        })
    }

    /// Where the send-back API listens.
    pub fn sendback_addr(&self) -> SocketAddr {
        self.sendback
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where `/metrics` is served when `metrics.listen` gives it a listener of its own
    /// (else it is on the send-back listener).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(listener, _)| {
            listener
                .local_addr()
                .expect("bound listener has an address")
        })
    }

    /// The store this gateway uses.
    pub fn store(&self) -> SharedStore {
        self.store.clone()
    }

    /// The node id this gateway records with its connections.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: drain (refuse new
    /// WebSockets, answer `/readyz` with 503 `draining`), close every socket with 1001,
    /// queue every cleanup, and let the cleanup workers deliver what is due, all within
    /// `shutdown.grace`; then close the listeners. Cleanups not delivered by then (or failing)
    /// stay queued in the store for the next node that drains it (lost with the embedded
    /// memory store).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Gateway {
            node,
            store,
            grace,
            registry,
            removals,
            cleanups,
            heartbeat,
            reaper,
            invoker,
            resync,
            stop,
            closed,
            tracker,
            edge,
            router,
            public,
            public_tls,
            sendback,
            sendback_tls,
            certs,
            metrics: metrics_listener,
            ..
        } = self;
        // The cleanup workers outlive the listeners: they drain what the closing sockets
        // queue, after those are done. They start first: a previous run's leftovers are
        // theirs to deliver.
        let cleanups_done = CancellationToken::new();
        let workers = tokio::spawn(cleanups.clone().run(cleanups_done.clone()));
        // A previous run of this node (same `node_id`) that died left connections: their
        // cleanups first, before this node takes new ones.
        if let Err(e) = reaper.reap_own().await {
            warn!(cause = %e, "could not reap what a previous run of this node left");
        }
        // SIGHUP (`systemctl reload`) must not end a gateway with nothing to reload: taken
        // from here on, before this node says it listens.
        let hangup = certs
            .is_empty()
            .then(|| tls::server::ignore_hangup(stop.clone()));
        let public_tls_addr = match &public_tls {
            Some((listener, _)) => listener.local_addr()?.to_string(),
            None => "none".to_owned(),
        };
        let metrics_addr = match &metrics_listener {
            Some((listener, _)) => listener.local_addr()?.to_string(),
            None => "send-back".to_owned(),
        };
        info!(
            public = %public.local_addr()?,
            public_tls = %public_tls_addr,
            sendback = %sendback.local_addr()?,
            metrics = %metrics_addr,
            sendback_tls = sendback_tls.is_some(),
            node = %node,
            "gateway listening"
        );
        // Announce this node before it takes connections, so the other nodes can reach
        // them from the start.
        if let Err(e) = heartbeat.beat().await {
            warn!(cause = %e, "store heartbeat failed");
        }
        // The accept loops run until the listeners close, after the drain; the background
        // tasks (heartbeat, resync, reaper, certificate reloads) until the drain starts.
        let listeners = TaskTracker::new();
        let background = TaskTracker::new();
        if let Some((listener, tls)) = public_tls {
            listeners.spawn(edge::serve::serve(
                edge.clone(),
                listener,
                tracker.clone(),
                Some(TlsAcceptor::from(tls)),
            ));
        }
        listeners.spawn(edge::serve::serve(edge, public, tracker.clone(), None));
        listeners.spawn(sendback::serve::serve(
            router,
            sendback,
            stop.clone(),
            closed.clone(),
            tracker.clone(),
            sendback_tls.map(TlsAcceptor::from),
        ));
        if let Some((listener, exporter)) = metrics_listener {
            listeners.spawn(metrics::serve::serve(
                exporter,
                listener,
                stop.clone(),
                closed.clone(),
                tracker.clone(),
            ));
        }
        listeners.close();
        if let Some(hangup) = hangup {
            background.spawn(hangup);
        }
        for cert in certs {
            background.spawn(tls::server::watch(cert, stop.clone()));
        }
        let fencing = reaper.clone();
        let reassert = resync.clone();
        background.spawn(
            heartbeat.run(stop.clone(), removals.clone(), move |last_beat_ms| {
                let (fencing, reassert) = (fencing.clone(), reassert.clone());
                async move {
                    if fencing.fence(last_beat_ms).await? == Fenced::NotReaped
                        && let Some(resync) = reassert
                    {
                        resync.reassert();
                    }
                    Ok(())
                }
            }),
        );
        if let Some(resync) = resync {
            background.spawn(resync.run(stop.clone()));
        }
        background.spawn(reaper.run(stop.clone()));
        background.spawn(invoker.sweep_idle_connections(stop.clone()));
        background.close();
        shutdown.await;
        let open = registry.len();
        info!(connections = open, "shutting down: closing connections");
        stop.cancel();
        background.wait().await;
        tracker.close();
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                still_open = registry.len(),
                ?grace,
                "shutdown grace period ended with tasks still running"
            );
        }
        // Deliver the cleanups due now within what is left of the grace period; the rest
        // (and any that fail) stay queued in the store for the next node that drains it.
        cleanups_done.cancel();
        let left = grace.saturating_sub(started.elapsed());
        let abort = workers.abort_handle();
        if tokio::time::timeout(left, workers).await.is_err() {
            abort.abort();
            warn!(
                ?grace,
                "shutdown grace period ended with cleanups in flight: they stay queued"
            );
        }
        if let Ok(queued) = store.pending_cleanups().await
            && queued > 0
        {
            // On Redis the next node that drains the queue delivers them; the embedded
            // memory store ends with this process, and them with it.
            warn!(
                queued,
                "cleanups left queued in the store for the next node to deliver"
            );
        }
        info!(
            delivered = cleanups.delivered(),
            expired = cleanups.expired(),
            "cleanup workers stopped"
        );
        // The drain is over: the listeners, which answered probes and relays meanwhile,
        // close.
        closed.cancel();
        listeners.wait().await;
        let left = removals.retry().await;
        if left > 0 {
            warn!(
                left,
                "store unreachable at shutdown: records of closed connections remain"
            );
        }
        // Gone at once for the other nodes (no relays to a node that stopped); anything
        // left registered is reaped as a dead node's.
        if let Err(e) = store.remove_heartbeat(&node).await {
            warn!(cause = %e, "could not remove this node's heartbeat at shutdown");
        }
        info!("shutdown complete");
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM: the shutdown future the binaries hand to
/// [`Gateway::run`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
