//! A real HTTP function that records every event the gateway posts to it as raw JSON,
//! with the path it was posted to, and answers what its script says: for the dialect
//! tests, whose events are the platforms' shapes rather than the native [`Event`].
//!
//! [`Event`]: functions::event::Event

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;

use crate::function_server::FunctionServer;
use crate::scripted::Scripted;

/// One event a [`RecordingFunction`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The path it was posted to, e.g. `/connect`.
    pub path: String,
    /// The event, as posted.
    pub event: Value,
}

/// A running recording function. One serves any number of routes, each at its own path
/// ([`RecordingFunction::url`]); a body that is not JSON gets 400 and is not recorded.
#[derive(Debug)]
pub struct RecordingFunction {
    server: FunctionServer<Recorded>,
}

impl RecordingFunction {
    /// Starts one on 127.0.0.1:0 that answers every event with `script(path, event)`.
    pub async fn start(script: impl Fn(&str, &Value) -> Scripted + Send + Sync + 'static) -> Self {
        let script = Arc::new(script);
        let server = FunctionServer::start(move |request, log| {
            let script = script.clone();
            async move {
                let path = request.uri().path().to_owned();
                let body = request.into_body().collect().await.map(|b| b.to_bytes());
                let reply = match body.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                    Some(event) => {
                        let reply = script(&path, &event);
                        log.push(Recorded { path, event });
                        reply
                    }
                    None => Scripted::json_text("not JSON").with_status(400),
                };
                reply.into_response().await
            }
        })
        .await;
        RecordingFunction { server }
    }

    /// The URL of one path (`route` without its leading `/`).
    pub fn url(&self, route: &str) -> String {
        format!("http://{}/{route}", self.server.addr())
    }

    /// Every event received so far, with its path, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.server.events().snapshot()
    }

    /// Every event received so far, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.recorded().into_iter().map(|r| r.event).collect()
    }

    /// Waits until `done(recorded)` holds (bounded), then returns what was recorded.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        self.server.events().wait_until(what, timeout, done).await
    }

    /// Waits (bounded) for the first event that satisfies `matches` and returns it.
    pub async fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_until(what, timeout, |recorded| {
            recorded.iter().any(|r| matches(&r.event))
        })
        .await
        .into_iter()
        .map(|r| r.event)
        .find(|e| matches(e))
        .unwrap()
    }
}
