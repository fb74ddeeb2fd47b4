//! A real HTTP function server whose replies a test scripts: it records every event the
//! gateway sends and answers each with what the script says (status, body, delay), so
//! tests can make a function refuse, stall, break or flood.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use functions::event::{Event, EventKind};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
}

type Script = Arc<dyn Fn(&Event) -> Scripted + Send + Sync>;

/// A running scripted function.
pub struct ScriptedFunction {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    arrived: Arc<Notify>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for ScriptedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedFunction")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ScriptedFunction {
    /// Starts one on 127.0.0.1:0 that answers every event with `script(event)`.
    pub async fn start(script: impl Fn(&Event) -> Scripted + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let script: Script = Arc::new(script);
        let (ev, ar, sd) = (events.clone(), arrived.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = sd.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let (ev, ar, script, sd) = (ev.clone(), ar.clone(), script.clone(), sd.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (ev, ar, script) = (ev.clone(), ar.clone(), script.clone());
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let reply = match body
                                .ok()
                                .and_then(|b| serde_json::from_slice::<Event>(&b).ok())
                            {
                                Some(event) => {
                                    let reply = script(&event);
                                    ev.lock().unwrap().push(event);
                                    ar.notify_waiters();
                                    reply
                                }
                                None => Scripted::status(400),
                            };
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut response = hyper::Response::new(Full::new(reply.body));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(reply.status).unwrap();
                            if let Some(ct) = reply.content_type {
                                response.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    hyper::header::HeaderValue::from_static(ct),
                                );
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let conn =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = sd.cancelled() => {}
                    }
                });
            }
        });
        ScriptedFunction {
            addr,
            events,
            arrived,
            shutdown,
        }
    }

    /// A function that accepts every register and answers every other event with 204.
    pub async fn accepting() -> Self {
        ScriptedFunction::start(|_| Scripted::ok()).await
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/fn", self.addr)
    }

    /// Every event received so far, in arrival order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
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
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            {
                let events = self.events.lock().unwrap();
                if done(&events) {
                    return events.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let events = self.events();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; events so far: {events:#?}"
                );
            }
        }
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

impl Drop for ScriptedFunction {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
