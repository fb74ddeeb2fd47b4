//! `GET /metrics`: [`Exporter`] refreshes what is read at scrape time (the gauges sampled
//! from their owners, the cleanup queue's length from the store) and encodes every metric
//! in the Prometheus text format. It answers on the send-back listener (internal, no token,
//! like `/healthz`), or, with `metrics.listen`, on a listener of its own ([`serve`]), which
//! answers nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use prometheus_client::metrics::gauge::Gauge;
use store::SharedStore;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::listener;
use crate::metrics::registry::Metrics;
use crate::respond::{self, Body};
use crate::stop::Stop;

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The longest a scrape waits for the store's count of queued cleanups; past it the gauge
/// keeps its last value, and the scrape goes on.
const STORE_WAIT: Duration = Duration::from_secs(1);

/// A gauge's reading, taken at each scrape.
type Sample = Box<dyn Fn() -> i64 + Send + Sync>;

/// Answers scrapes.
pub(crate) struct Exporter {
    metrics: Arc<Metrics>,
    store: SharedStore,
    samples: Vec<(Gauge, Sample)>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("samples", &self.samples.len())
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Exports `metrics`; `store` gives the cleanup queue's length at each scrape.
    pub fn new(metrics: Arc<Metrics>, store: SharedStore) -> Self {
        Exporter {
            metrics,
            store,
            samples: Vec::new(),
        }
    }

    /// Sets `gauge` to `read()` at each scrape.
    pub fn sample(mut self, gauge: &Gauge, read: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.samples.push((gauge.clone(), Box::new(read)));
        self
    }

    /// The reply to a request for `/metrics`: the metrics to `GET` and `HEAD`, 405 to
    /// anything else.
    pub async fn answer(&self, method: &Method) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut reply = respond::text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
            reply
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return reply;
        }
        self.scrape().await
    }

    /// Every metric, refreshed.
    async fn scrape(&self) -> Response<Body> {
        for (gauge, read) in &self.samples {
            gauge.set(read());
        }
        match tokio::time::timeout(STORE_WAIT, self.store.pending_cleanups()).await {
            Ok(Ok(queued)) => {
                self.metrics
                    .cleanups_pending
                    .set(i64::try_from(queued).unwrap_or(i64::MAX));
            }
            Ok(Err(e)) => debug!(cause = %e, "scrape: cannot count the queued cleanups"),
            Err(_) => debug!("scrape: the store did not count the queued cleanups in time"),
        }
        match self.metrics.encode() {
            Ok(text) => {
                let mut reply = respond::text(StatusCode::OK, text);
                reply
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                reply
            }
            Err(e) => {
                warn!(cause = %e, "could not encode the metrics");
                respond::text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
            }
        }
    }
}

/// Serves `/metrics` on a listener of its own (`metrics.listen`) until `stop`.
pub(crate) async fn serve(
    exporter: Arc<Exporter>,
    listener: TcpListener,
    stop: Arc<Stop>,
    closed: Arc<Stop>,
    tracker: TaskTracker,
) {
    let (conn_stop, conn_closed) = (stop.clone(), closed.clone());
    listener::accept_loop(
        &stop,
        &closed,
        &tracker,
        listener,
        "metrics",
        move |stream, remote, draining| {
            // A scrape during the drain is answered (the figures of a draining node are
            // worth having) until the listeners close.
            let stop = if draining { &conn_closed } else { &conn_stop }.clone();
            serve_connection(exporter.clone(), stop, stream, remote, !draining)
        },
    )
    .await;
}

/// One HTTP/1.1 connection of the metrics listener (keep-alive, as scrapers use).
async fn serve_connection(
    exporter: Arc<Exporter>,
    stop: Arc<Stop>,
    stream: TcpStream,
    remote: SocketAddr,
    keep_alive: bool,
) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let exporter = exporter.clone();
        async move {
            let reply = if req.uri().path() == "/metrics" {
                exporter.answer(req.method()).await
            } else {
                respond::text(StatusCode::NOT_FOUND, "not found: try /metrics\n")
            };
            Ok::<_, Infallible>(reply)
        }
    });
    listener::serve_http1(stream, service, &stop, keep_alive, remote, "metrics").await;
}
