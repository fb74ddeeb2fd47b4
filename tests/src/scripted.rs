//! A real HTTP function server whose replies a test scripts: it records every event the
//! gateway sends and answers each with what the script says (status, body, delay), so
//! tests can make a function refuse, stall, break or flood.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use functions::event::{Event, EventKind};
use http_body_util::{BodyExt, Full};

use crate::function_server::{FunctionServer, Response};

/// What the function answers to one event.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: Bytes,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Scripted {
    /// 200 with an empty body (accepts a register, sends nothing back).
    pub fn ok() -> Self {
        Scripted::status(200)
    }

    /// This status, empty body.
    pub fn status(status: u16) -> Self {
        Scripted {
            status,
            content_type: None,
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with a JSON body.
    pub fn json(value: serde_json::Value) -> Self {
        Scripted {
            content_type: Some("application/json"),
            body: Bytes::from(value.to_string()),
            ..Scripted::ok()
        }
    }

    /// 200 with a text body.
    pub fn text(text: impl Into<String>) -> Self {
        Scripted {
            content_type: Some("text/plain"),
            body: Bytes::from(text.into()),
            ..Scripted::ok()
        }
    }

    /// The same reply after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The same reply with another status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// 200 with `body` as it is, labelled `application/json` whatever it holds (for
    /// replies that are broken on purpose).
    pub fn json_text(body: impl Into<String>) -> Self {
        Scripted {
            content_type: Some("application/json"),
            body: Bytes::from(body.into()),
            ..Scripted::ok()
        }
    }

    /// The HTTP response, after the delay.
    pub(crate) async fn into_response(self) -> Response {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await; // a slow function, not a wait
        }
        let mut response = hyper::Response::new(Full::new(self.body));
        *response.status_mut() = hyper::StatusCode::from_u16(self.status).unwrap();
        if let Some(ct) = self.content_type {
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(ct),
            );
        }
        response
    }
}

/// A running scripted function.
#[derive(Debug)]
pub struct ScriptedFunction {
    server: FunctionServer<Event>,
    /// Served over TLS.
    https: bool,
}

impl ScriptedFunction {
    /// Starts one on 127.0.0.1:0 that answers every event with `script(event)`.
    pub async fn start(script: impl Fn(&Event) -> Scripted + Send + Sync + 'static) -> Self {
        Self::start_tls(None, script).await
    }

    /// [`ScriptedFunction::start`], serving https with `tls` when given (its URL is then
    /// `https://localhost:<port>/fn`, for a certificate made for `localhost`).
    pub async fn start_tls(
        tls: Option<Arc<rustls::ServerConfig>>,
        script: impl Fn(&Event) -> Scripted + Send + Sync + 'static,
    ) -> Self {
        let https = tls.is_some();
        let script = Arc::new(script);
        let server = FunctionServer::start_tls(tls, move |request, log| {
            let script = script.clone();
            async move {
                let body = request.into_body().collect().await.map(|b| b.to_bytes());
                let reply = match body
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Event>(&b).ok())
                {
                    Some(event) => {
                        let reply = script(&event);
                        log.push(event);
                        reply
                    }
                    None => Scripted::status(400),
                };
                reply.into_response().await
            }
        })
        .await;
        ScriptedFunction { server, https }
    }

    /// A function that accepts every register and answers every other event with 204.
    pub async fn accepting() -> Self {
        ScriptedFunction::start(|_| Scripted::ok()).await
    }

    /// Its URL.
    pub fn url(&self) -> String {
        if self.https {
            format!("https://localhost:{}/fn", self.server.addr().port())
        } else {
            format!("http://{}/fn", self.server.addr())
        }
    }

    /// Every event received so far, in arrival order.
    pub fn events(&self) -> Vec<Event> {
        self.server.events().snapshot()
    }

    /// Events of one type (`register`, `transport`, `cleanup`) for one connection.
    pub fn events_of(&self, kind: &str, connection_id: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.kind.name() == kind && e.connection_id == connection_id)
            .collect()
    }

    /// Waits until `done(events)` holds (bounded), then returns the events.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        self.server.events().wait_until(what, timeout, done).await
    }

    /// Waits for the first register event and returns its connection id.
    pub async fn wait_register(&self) -> String {
        self.wait_until("a register event", Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| matches!(e.kind, EventKind::Register { .. }))
        })
        .await
        .into_iter()
        .find(|e| matches!(e.kind, EventKind::Register { .. }))
        .map(|e| e.connection_id)
        .unwrap()
    }

    /// Waits for `n` register events and returns their connection ids, in order.
    pub async fn wait_registers(&self, n: usize) -> Vec<String> {
        let registers = |e: &[Event]| -> Vec<String> {
            e.iter()
                .filter(|e| matches!(e.kind, EventKind::Register { .. }))
                .map(|e| e.connection_id.clone())
                .collect()
        };
        let events = self
            .wait_until("register events", Duration::from_secs(10), move |e| {
                registers(e).len() >= n
            })
            .await;
        registers(&events)
    }

    /// Waits for the cleanup event of a connection and returns it.
    pub async fn wait_cleanup(&self, connection_id: &str) -> Event {
        let id = connection_id.to_owned();
        self.wait_until("a cleanup event", Duration::from_secs(10), move |e| {
            e.iter()
                .any(|e| e.connection_id == id && e.kind.name() == "cleanup")
        })
        .await;
        self.events_of("cleanup", connection_id).remove(0)
    }
}
