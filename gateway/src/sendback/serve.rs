//! The send-back API: how functions and backends reach connections. Served on its own
//! listener (loopback by default), every request authenticated by the bearer token.
//! Routes and bodies are documented in `wire::api`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use wire::codes;

use http::{Request, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::dialect::aws::management::ManagementApi;
use crate::dialect::native::sendback::NativeApi;
use crate::dialect::tencent::sendback::TencentApi;
use crate::listener;
use crate::request::{self, RequestBody};
use crate::respond::{self, Body};
use crate::stop::Stop;

/// The send-back listener's routes: each dialect's adapter under its own path.
#[derive(Debug)]
pub(crate) struct Router {
    /// The bearer token of the native API (`None`: `insecure_no_auth`, loopback only).
    pub token: Option<String>,
    /// The AWS stage: the management API is under `/{stage}/@connections/`.
    pub stage: String,
    pub native: NativeApi,
    pub aws: ManagementApi,
    pub tencent: TencentApi,
}

/// Serves the send-back API until `stop`.
pub(crate) async fn serve(
    router: Arc<Router>,
    listener: TcpListener,
    stop: Arc<Stop>,
    tracker: TaskTracker,
) {
    let conn_stop = stop.clone();
    listener::accept_loop(
        &stop,
        &tracker,
        listener,
        "send-back",
        move |stream, remote| serve_connection(router.clone(), conn_stop.clone(), stream, remote),
    )
    .await;
}

/// Serves one HTTP/1.1 connection of the send-back API (keep-alive).
async fn serve_connection(
    router: Arc<Router>,
    stop: Arc<Stop>,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let service = service_fn(move |req| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
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
        debug!(%remote, cause = %e, "send-back connection ended with an error");
    }
}

impl Router {
    /// One send-back request, to the adapter its path names. Generic over the body so
    /// that `crate::fuzzing` drives it with bodies it made; served, it is hyper's.
    pub(crate) async fn handle<B: RequestBody>(&self, req: Request<B>) -> Response<Body> {
        if req.uri().path() == "/healthz" {
            return respond::text(StatusCode::OK, "ok\n");
        }
        let path = req.uri().path().to_owned();
        if let Some(rest) = path.strip_prefix("/@tencent") {
            let token = rest.strip_prefix('/').filter(|t| !t.is_empty());
            return self.tencent.handle(req, token).await;
        }
        if let Some(rest) = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.stage.as_str()))
            .and_then(|p| p.strip_prefix("/@connections/"))
        {
            return self.aws.handle(req, &request::decode_segment(rest)).await;
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
