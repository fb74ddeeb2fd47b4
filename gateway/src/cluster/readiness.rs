//! Readiness, apart from liveness: `GET /healthz` says the process runs, `GET /readyz` (on
//! the public listeners and the send-back listener) whether a load balancer should send
//! this node new clients. Not while it drains (shutdown started: upgrades are refused),
//! not while its heartbeats do not reach the store (admission writes the record there
//! first, and the other nodes soon count it dead), and not before the first heartbeat
//! reached the store.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use wire::api::{NotReady, Readiness as Answer};

use crate::cluster::liveness::{StoreHealth, StoreState};
use crate::respond::{self, Body};
use crate::stop::Stop;

/// What readiness is read from.
#[derive(Debug, Clone)]
pub(crate) struct Readiness {
    pub stop: Arc<Stop>,
    pub health: Arc<StoreHealth>,
    /// `node_heartbeat_ttl`: a last beat older than this does not count.
    pub ttl: Duration,
}

impl Readiness {
    /// Ready, or why not.
    pub fn check(&self) -> Result<(), NotReady> {
        state(self.stop.is_cancelled(), self.health.state(self.ttl))
    }

    /// The reply to `GET /readyz`: 200 `{"ready":true}`, else 503 with the reason.
    pub fn reply(&self) -> Response<Body> {
        reply(self.check())
    }
}

/// Readiness from its two inputs: whether shutdown started, and the store as the
/// heartbeats see it. Draining wins: a node shutting down takes no client, whatever its
/// store does.
pub(crate) fn state(draining: bool, store: StoreState) -> Result<(), NotReady> {
    if draining {
        return Err(NotReady::Draining);
    }
    match store {
        StoreState::Up => Ok(()),
        StoreState::Down => Err(NotReady::StoreUnreachable),
        StoreState::Never => Err(NotReady::Starting),
    }
}

/// The reply for a readiness state, never cached.
pub(crate) fn reply(state: Result<(), NotReady>) -> Response<Body> {
    let (status, answer) = match state {
        Ok(()) => (
            StatusCode::OK,
            Answer {
                ready: true,
                reason: None,
                message: None,
            },
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Answer {
                ready: false,
                reason: Some(reason),
                message: Some(message(reason).to_owned()),
            },
        ),
    };
    let mut response = respond::json(status, &answer);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn message(reason: NotReady) -> &'static str {
    match reason {
        NotReady::Draining => "the gateway is shutting down: it admits no new connection",
        NotReady::StoreUnreachable => {
            "the gateway's heartbeats do not reach its store: it cannot admit connections"
        }
        NotReady::Starting => "the gateway is starting: no heartbeat has reached its store yet",
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn draining_wins_then_the_store_decides() {
        for store in [StoreState::Up, StoreState::Down, StoreState::Never] {
            assert_eq!(state(true, store), Err(NotReady::Draining), "{store:?}");
        }
        assert_eq!(state(false, StoreState::Up), Ok(()));
        assert_eq!(
            state(false, StoreState::Down),
            Err(NotReady::StoreUnreachable)
        );
        assert_eq!(state(false, StoreState::Never), Err(NotReady::Starting));
    }

    async fn body_of(response: Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn replies_say_why_and_are_never_cached() {
        let ok = reply(Ok(()));
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(body_of(ok).await, serde_json::json!({"ready": true}));
        for (reason, name) in [
            (NotReady::Draining, "draining"),
            (NotReady::StoreUnreachable, "store_unreachable"),
            (NotReady::Starting, "starting"),
        ] {
            let not = reply(Err(reason));
            assert_eq!(not.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(not.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(not.headers()[header::CONTENT_TYPE], "application/json");
            let body = body_of(not).await;
            assert_eq!(body["ready"], false);
            assert_eq!(body["reason"], name);
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn a_fresh_node_is_starting_until_a_beat_reaches_the_store() {
        let readiness = Readiness {
            stop: Arc::new(Stop::default()),
            health: Arc::new(StoreHealth::default()),
            ttl: Duration::from_secs(60),
        };
        assert_eq!(readiness.check(), Err(NotReady::Starting));
        readiness.stop.cancel();
        assert_eq!(readiness.check(), Err(NotReady::Draining));
    }
}
