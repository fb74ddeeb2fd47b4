//! The public listener: plain HTTP/1.1 until a client asks to upgrade. Upgrade requests are
//! checked (`handshake`), then admitted or refused (`admit`); other requests get the
//! configured page, a health answer, or 426.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::respond::{self, Body};
use crate::{Shared, admit, handshake, listener};

/// Accepts clients until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    listener::accept_loop(shared, listener, "public", serve_connection).await;
}

/// Serves one client's HTTP/1.1 connection, through its upgrade if it asks for one.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let service_shared = shared.clone();
    let service = service_fn(move |req| handle(service_shared.clone(), req, remote));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.limits.handshake_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Garbage, a slow or abandoned handshake, a client gone: normal traffic.
        debug!(%remote, cause = %e, "public connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    if !handshake::wants_websocket(&req) {
        return Ok(plain(&shared, &req));
    }
    let accept = match handshake::check(&req) {
        Ok(accept) => accept,
        Err(rejection) => {
            debug!(%remote, message = rejection.message, "bad upgrade request");
            let mut response = respond::error(rejection.status, "bad_handshake", rejection.message);
            if rejection.status == StatusCode::UPGRADE_REQUIRED {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return Ok(response);
        }
    };
    if shared.shutdown.is_cancelled() {
        return Ok(respond::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down",
        ));
    }
    let Some(slot) = shared.try_slot() else {
        warn!(%remote, max = shared.config.limits.max_connections, "refusing connection: at capacity");
        return Ok(respond::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "at_capacity",
            "the gateway holds its maximum number of connections",
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    // Admission runs in its own tracked task: if the client goes away mid-register, the
    // decision still completes, so nothing is left half-registered.
    let admission = shared.tracker.spawn(admit::admit(
        shared.clone(),
        parts,
        remote,
        accept,
        on_upgrade,
        slot,
    ));
    Ok(admission.await.unwrap_or_else(|e| {
        warn!(cause = %e, "admission task failed");
        respond::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error while admitting the connection",
        )
    }))
}

fn plain(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/healthz") => respond::text(StatusCode::OK, "ok\n"),
        (&http::Method::GET, "/" | "/index.html") if shared.page.is_some() => {
            let mut response = Response::new(Body::new(shared.page.clone().unwrap_or_default()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        _ => {
            let mut response = respond::error(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "this endpoint accepts WebSocket connections",
            );
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            response
        }
    }
}
