//! What a send-back request is for, from its path alone: one of a small fixed set of
//! routes ([`Route`], named by [`Route::as_str`]) and the connection id the path names, if
//! any. The request's span and its end-of-request log line ([`traced`]) use them; so can
//! anything else that counts requests by route. Never the path itself: a Tencent path
//! carries a token.

use std::future::Future;
use std::time::{Duration, Instant};

use http::{Method, Response};
use tracing::{Instrument, debug, debug_span, warn};

use crate::respond::Body;

/// The routes of the send-back listener, as logs and counters name them (one enum for
/// both: the metrics' label set).
pub(crate) use crate::metrics::registry::Route;

/// The route of `path`, matched in the order the router tries them (`stage`: `aws.stage`).
pub(crate) fn route(path: &str, stage: &str) -> Route {
    match path {
        "/healthz" => return Route::Healthz,
        "/readyz" => return Route::Readyz,
        "/metrics" => return Route::Metrics,
        "/@connections" => return Route::NativeBatch,
        _ => {}
    }
    if path.starts_with("/@tencent") {
        return Route::Tencent;
    }
    if aws_id(path, stage).is_some() {
        return Route::AwsConnection;
    }
    if native_id(path).is_some() {
        return Route::NativeConnection;
    }
    if path.starts_with("/@groups/") {
        return Route::NativeGroup;
    }
    Route::Other
}

/// The connection id a path names, as written in it (not percent-decoded): the native and
/// AWS connection routes, and a group's member (`/@groups/{group}/connections/{id}`).
pub(crate) fn connection_id<'a>(route: Route, path: &'a str, stage: &str) -> Option<&'a str> {
    match route {
        Route::NativeConnection => native_id(path),
        Route::AwsConnection => aws_id(path, stage),
        Route::NativeGroup => {
            let mut parts = path.strip_prefix("/@groups/")?.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(_), Some("connections"), Some(id), None) if !id.is_empty() => Some(id),
                _ => None,
            }
        }
        _ => None,
    }
}

fn native_id(path: &str) -> Option<&str> {
    path.strip_prefix("/@connections/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

fn aws_id<'a>(path: &'a str, stage: &str) -> Option<&'a str> {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(stage))
        .and_then(|p| p.strip_prefix("/@connections/"))
}

/// Runs `handle`, the answer to one send-back request, in a span naming its method, route
/// and connection, and logs its end with the status and duration: at debug (the API is
/// hot), at warn for a 5xx. The warn line carries every field itself, since the span is
/// not recorded below debug.
pub(crate) async fn traced<F>(
    method: &Method,
    path: &str,
    route: Route,
    stage: &str,
    handle: F,
) -> (Response<Body>, Duration)
where
    F: Future<Output = Response<Body>>,
{
    let connection = connection_id(route, path, stage);
    let span = debug_span!("sendback", %method, route = route.as_str(), connection);
    let started = Instant::now();
    let response = handle.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    if response.status().is_server_error() {
        warn!(
            parent: &span,
            %method,
            route = route.as_str(),
            connection,
            status,
            duration_ms,
            "send-back request failed"
        );
    } else {
        debug!(parent: &span, status, duration_ms, "send-back request");
    }
    (response, elapsed)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};

    use futures_util::FutureExt;
    use http::StatusCode;
    use tracing::Level;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;
    use crate::respond;

    /// The events logged: level and fields as `name=value ` text.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<(Level, String)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            struct Text(String);
            impl Visit for Text {
                fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                    let _ = write!(self.0, "{}={:?} ", field.name(), value);
                }
            }
            let mut text = Text(String::new());
            event.record(&mut text);
            let level = *event.metadata().level();
            self.0.lock().unwrap().push((level, text.0));
        }
    }

    /// What one request answered with `status` logs under a `level` filter.
    fn logged(level: LevelFilter, path: &str, status: StatusCode) -> Vec<(Level, String)> {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(level)
            .with(seen.clone());
        let _guard = tracing::subscriber::set_default(subscriber);
        let answer = async { respond::empty(status) };
        let (response, _) = traced(&Method::POST, path, route(path, "prod"), "prod", answer)
            .now_or_never()
            .unwrap();
        assert_eq!(response.status(), status);
        seen.0.lock().unwrap().clone()
    }

    #[test]
    fn a_request_ends_at_debug_and_a_failed_one_at_warn_with_every_field() {
        let path = "/@connections/abc";
        assert!(logged(LevelFilter::INFO, path, StatusCode::OK).is_empty());
        let ok = logged(LevelFilter::DEBUG, path, StatusCode::OK);
        assert_eq!(ok.len(), 1, "{ok:?}");
        assert_eq!(ok[0].0, Level::DEBUG);
        assert!(ok[0].1.contains("status=200 "), "{ok:?}");
        assert!(ok[0].1.contains("duration_ms="), "{ok:?}");
        let failed = logged(LevelFilter::INFO, path, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, Level::WARN);
        for field in [
            "method=POST ",
            "route=\"native_connection\" ",
            "connection=\"abc\" ",
            "status=503 ",
            "duration_ms=",
        ] {
            assert!(failed[0].1.contains(field), "{field}: {failed:?}");
        }
        // A Tencent path's token is never logged.
        let tencent = logged(
            LevelFilter::DEBUG,
            "/@tencent/s3cret",
            StatusCode::BAD_GATEWAY,
        );
        assert!(!format!("{tencent:?}").contains("s3cret"), "{tencent:?}");
    }

    #[test]
    fn paths_map_to_routes_and_ids() {
        let cases = [
            ("/healthz", Route::Healthz, None),
            ("/readyz", Route::Readyz, None),
            ("/@connections", Route::NativeBatch, None),
            ("/@connections/abc", Route::NativeConnection, Some("abc")),
            ("/@connections/", Route::Other, None),
            ("/@connections/a/b", Route::Other, None),
            ("/@groups/room", Route::NativeGroup, None),
            (
                "/@groups/room/connections/abc",
                Route::NativeGroup,
                Some("abc"),
            ),
            ("/@groups/room/connections/", Route::NativeGroup, None),
            ("/prod/@connections/abc", Route::AwsConnection, Some("abc")),
            ("/dev/@connections/abc", Route::Other, None),
            ("/@tencent/secret-token", Route::Tencent, None),
            ("/@tencent", Route::Tencent, None),
            ("/", Route::Other, None),
            ("/metricsx", Route::Other, None),
        ];
        for (path, expected, id) in cases {
            let got = route(path, "prod");
            assert_eq!(got, expected, "{path}");
            assert_eq!(connection_id(got, path, "prod"), id, "{path}");
        }
    }

    #[test]
    fn route_names_are_distinct_snake_case() {
        let all = [
            Route::NativeConnection,
            Route::NativeBatch,
            Route::NativeGroup,
            Route::AwsConnection,
            Route::Tencent,
            Route::Healthz,
            Route::Readyz,
            Route::Other,
        ];
        for (i, r) in all.iter().enumerate() {
            let name = r.as_str();
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert!(all[..i].iter().all(|o| o.as_str() != name), "{name} twice");
        }
    }
}
