//! The send-back API: how functions and backends reach connections. Served on its own
//! listener (loopback by default), every request authenticated by the bearer token; over
//! TLS when `sendback.tls` is set (the handshake within [`listener::HEAD_TIMEOUT`], then hyper serves
//! the TLS stream as it serves TCP). Routes and bodies are documented in `wire::api`.
//! `/healthz`, `/readyz` and, unless `metrics.listen` gives them a listener of their own,
//! the metrics (`/metrics`) answer without the token. Every request is counted by route
//! and status (routes from `route::route`), runs in a span and its end is logged
//! (`route::traced`). While the node drains, connections accepted then are answered one
//! request each, until the listener closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use wire::codes;

use http::{Request, Response, StatusCode, header};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::cluster::readiness::Readiness;
use crate::dialect::aws::management::ManagementApi;
use crate::dialect::native::sendback::NativeApi;
use crate::dialect::tencent::sendback::TencentApi;
use crate::listener;
use crate::metrics::registry::Metrics;
use crate::metrics::serve::Exporter;
use crate::request::{self, RequestBody};
use crate::respond::{self, Body};
use crate::sendback::route::{self, Route};
use crate::stop::Stop;

/// The send-back listener's routes: each dialect's adapter under its own path.
#[derive(Debug)]
pub(crate) struct Router {
    /// The bearer token of the native API (`None`: `insecure_no_auth`, loopback only).
    pub token: Option<String>,
    /// The AWS stage: the management API is under `/{stage}/@connections/`.
    pub stage: String,
    pub native: NativeApi,
    /// Shared with the public listener under `aws.management_api_on_public`.
    pub aws: Arc<ManagementApi>,
    pub tencent: TencentApi,
    /// Counts every request by route and status.
    pub metrics: Arc<Metrics>,
    /// Serves `/metrics` here; `None` when `metrics.listen` serves them elsewhere.
    pub exporter: Option<Arc<Exporter>>,
    /// What `/readyz` answers.
    pub readiness: Readiness,
}

/// Serves the send-back API until `closed` (after the drain that `stop` starts); with
/// `tls`, over TLS.
pub(crate) async fn serve(
    router: Arc<Router>,
    listener: TcpListener,
    stop: Arc<Stop>,
    closed: Arc<Stop>,
    tracker: TaskTracker,
    tls: Option<TlsAcceptor>,
) {
    let (conn_stop, conn_closed) = (stop.clone(), closed.clone());
    listener::accept_loop(
        &stop,
        &closed,
        &tracker,
        listener,
        "send-back",
        move |stream, remote, draining| {
            // What ends the connection: shutdown, or for one accepted while draining (a
            // probe, a relay), the listener's close.
            let stop = if draining { &conn_closed } else { &conn_stop }.clone();
            let (router, tls) = (router.clone(), tls.clone());
            async move {
                match tls {
                    None => serve_connection(router, stop, stream, remote, !draining).await,
                    Some(acceptor) => {
                        if let Some(tls) = tls_handshake(&stop, acceptor, stream, remote).await {
                            serve_connection(router, stop, tls, remote, !draining).await;
                        }
                    }
                }
            }
        },
    )
    .await;
}

/// The TLS handshake of a send-back connection: `None` if it failed, took longer than
/// [`listener::HEAD_TIMEOUT`] or shutdown started first.
async fn tls_handshake(
    stop: &Stop,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = tokio::select! {
        _ = stop.cancelled() => return None,
        handshake = tokio::time::timeout(listener::HEAD_TIMEOUT, acceptor.accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            debug!(%remote, cause = %e, "send-back TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%remote, "send-back TLS handshake timed out");
            None
        }
    }
}

/// Serves one HTTP/1.1 connection of the send-back API (keep-alive unless `keep_alive` is
/// false), until `stop`.
async fn serve_connection<S>(
    router: Arc<Router>,
    stop: Arc<Stop>,
    stream: S,
    remote: SocketAddr,
    keep_alive: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.handle(req).await) }
    });
    listener::serve_http1(stream, service, &stop, keep_alive, remote, "send-back").await;
}

impl Router {
    /// One send-back request, to the adapter its path names: its route found once, run
    /// in its span (`route::traced`), counted by route and status. Generic over the body so that `crate::fuzzing` drives it with bodies it
    /// made; served, it is hyper's.
    pub(crate) async fn handle<B: RequestBody>(&self, req: Request<B>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let route = route::route(&path, &self.stage);
        let handled = self.dispatch(route, req);
        let (reply, elapsed) = route::traced(&method, &path, route, &self.stage, handled).await;
        self.metrics
            .sendback_request(route, reply.status().as_u16(), elapsed);
        reply
    }

    /// Serves a request on the route `route::route` found for it.
    async fn dispatch<B: RequestBody>(&self, route: Route, req: Request<B>) -> Response<Body> {
        match route {
            Route::Healthz => return respond::text(StatusCode::OK, "ok\n"),
            Route::Readyz => return self.readiness.reply(),
            Route::Metrics => {
                return match &self.exporter {
                    Some(exporter) => exporter.answer(req.method()).await,
                    None => respond::error(
                        StatusCode::NOT_FOUND,
                        codes::NOT_FOUND,
                        "the metrics are served on their own listener (metrics.listen)",
                    ),
                };
            }
            _ => {}
        }
        let path = req.uri().path().to_owned();
        if let Some(rest) = path.strip_prefix("/@tencent") {
            let token = rest.strip_prefix('/').filter(|t| !t.is_empty());
            return self.tencent.handle(req, token).await;
        }
        if let Some(id) = request::management_id(&path, &self.stage) {
            return self.aws.handle(req, &id).await;
        }
        let authorized = self
            .token
            .as_deref()
            .is_none_or(|token| request::bearer_matches(req.headers(), token));
        if !authorized {
            let mut response = respond::error(
                StatusCode::UNAUTHORIZED,
                codes::UNAUTHORIZED,
                "missing or wrong bearer token",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        self.native.handle(req).await
    }
}
