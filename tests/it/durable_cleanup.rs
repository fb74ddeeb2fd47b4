//! Durable cleanup: a cleanup outlives an outage of its function, a wave of disconnects,
//! and a restart of the gateway; it expires after `cleanup.max_age`; at most
//! `cleanup.workers` cleanup calls run at once; every event carries its stable event id
//! (native `eventId`, AWS `requestId`, Tencent `websocket.eventId`), the same on a retry.
//! Real gateways (in-process and the binary), real Redis, real function servers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use functions::event::{Event, EventKind};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use store::SharedStore;
use tests::function_server::{EventLog, FunctionServer};
use tests::gateway::{Client, TestGateway};
use tests::process::GatewayProcess;
use tests::recorder::RecordingFunction;
use tests::redis::RedisServer;
use tests::scripted::Scripted;

use crate::store_suite::{keys_with_prefix, unique_prefix};

/// What the test function does, and what it saw.
#[derive(Debug, Default)]
struct Control {
    /// Cleanup events get 503 while set.
    down: AtomicBool,
    /// How long a cleanup call takes, in ms.
    delay_ms: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Cleanups answered 200.
    delivered: Mutex<Vec<Event>>,
}

/// A native function: accepts every register and transport; answers cleanup 200, or 503
/// while `down`, counting how many cleanup calls it serves at once.
struct CleanupFunction {
    server: FunctionServer<Event>,
    control: Arc<Control>,
}

impl CleanupFunction {
    async fn start(down: bool) -> Self {
        let control = Arc::new(Control::default());
        control.down.store(down, Ordering::SeqCst);
        let c = control.clone();
        let server = FunctionServer::start(move |request, log: EventLog<Event>| {
            let c = c.clone();
            async move {
                let body = request.into_body().collect().await.map(|b| b.to_bytes());
                let Some(event) = body
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Event>(&b).ok())
                else {
                    return status(400);
                };
                if !matches!(event.kind, EventKind::Cleanup { .. }) {
                    log.push(event);
                    return status(200);
                }
                let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                c.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let delay = c.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await; // a slow function
                }
                c.in_flight.fetch_sub(1, Ordering::SeqCst);
                let down = c.down.load(Ordering::SeqCst);
                if !down {
                    c.delivered.lock().unwrap().push(event.clone());
                }
                log.push(event);
                status(if down { 503 } else { 200 })
            }
        })
        .await;
        CleanupFunction { server, control }
    }

    fn url(&self) -> String {
        format!("http://{}/fn", self.server.addr())
    }

    fn set_down(&self, down: bool) {
        self.control.down.store(down, Ordering::SeqCst);
    }

    fn events(&self) -> Vec<Event> {
        self.server.events().snapshot()
    }

    /// The ids of the first `n` registers, waiting for them.
    async fn registered(&self, n: usize) -> Vec<String> {
        self.server
            .events()
            .wait_until("registers", Duration::from_secs(60), |e| {
                e.iter().filter(|e| e.kind.name() == "register").count() >= n
            })
            .await
            .into_iter()
            .filter(|e| e.kind.name() == "register")
            .map(|e| e.connection_id)
            .collect()
    }

    /// Cleanup attempts (any answer) per connection.
    fn attempts(&self) -> HashMap<String, Vec<Event>> {
        let mut out: HashMap<String, Vec<Event>> = HashMap::new();
        for e in self.events() {
            if e.kind.name() == "cleanup" {
                out.entry(e.connection_id.clone()).or_default().push(e);
            }
        }
        out
    }

    fn delivered(&self) -> Vec<Event> {
        self.control.delivered.lock().unwrap().clone()
    }

    /// Waits until every one of `ids` has had a cleanup delivered; then checks that each
    /// was delivered once and that every attempt carried `<id>:cleanup`.
    async fn wait_delivered(&self, ids: &[String], timeout: Duration) {
        let control = self.control.clone();
        let want: HashSet<String> = ids.iter().cloned().collect();
        tests::wait::eventually("every cleanup delivered", timeout, move || {
            let got: HashSet<String> = control
                .delivered
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.connection_id.clone())
                .collect();
            let done = want.is_subset(&got);
            async move { done }
        })
        .await;
        let delivered = self.delivered();
        for id in ids {
            let n = delivered.iter().filter(|e| e.connection_id == *id).count();
            assert_eq!(n, 1, "cleanup of {id} delivered {n} times");
        }
        for (id, attempts) in self.attempts() {
            for e in &attempts {
                assert_eq!(e.event_id, format!("{id}:cleanup"), "{e:?}");
            }
            let seqs: HashSet<u64> = attempts.iter().map(|e| e.seq).collect();
            assert_eq!(seqs.len(), 1, "a retry changed the seq: {attempts:?}");
        }
    }
}

fn status(code: u16) -> tests::function_server::Response {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
    response
}

/// Short cleanup settings: backoff in ms, no in-call retries (every retry comes from the
/// durable queue), a fast poll.
fn quick_cleanup(config: &mut gateway::Config) {
    config.functions.retries = 0;
    config.cleanup.backoff_initial = Duration::from_millis(50);
    config.cleanup.backoff_max = Duration::from_millis(200);
    config.cleanup.poll_interval = Duration::from_millis(50);
}

/// The same, as TOML for the gateway binary.
const QUICK_CLEANUP_TOML: &str =
    "[cleanup]\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\npoll_interval = \"50ms\"\n";

/// Keys of connections, groups or cleanups left under `prefix` (node heartbeats aside).
fn connection_keys(redis: &RedisServer, prefix: &str) -> Vec<String> {
    keys_with_prefix(redis, prefix)
        .into_iter()
        .filter(|k| {
            !k.contains(":node:") && !k.ends_with(":{nodes}") && !k.ends_with(":{nodes}:seen")
        })
        .collect()
}

async fn wait_store_clean(redis: &RedisServer, prefix: &str) {
    tests::wait::eventually(
        "no key of a closed connection left",
        Duration::from_secs(10),
        || {
            let left = connection_keys(redis, prefix);
            async move { left.is_empty() }
        },
    )
    .await;
}

async fn redis_store(redis: &RedisServer, prefix: &str) -> SharedStore {
    store::open(&redis.url(), prefix).await.unwrap()
}

/// Connects `n` clients to `ws://{public}/`, up to 100 at a time.
async fn connect_many(public: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = (n - clients.len()).min(100);
        let connects = (0..batch).map(|_| async {
            tokio_tungstenite::connect_async(format!("ws://{public}/"))
                .await
                .expect("connects")
                .0
        });
        clients.extend(futures_util::future::join_all(connects).await);
    }
    clients
}

#[tokio::test]
async fn cleanups_survive_a_function_outage() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix();
    let store = redis_store(&redis, &prefix).await;
    let function = CleanupFunction::start(true).await;
    let url = function.url();
    let gw = TestGateway::start_with(
        |c| {
            tests::gateway::route_all(c, &url);
            quick_cleanup(c);
        },
        gateway::Options {
            store: Some(store.clone()),
            ..Default::default()
        },
    )
    .await;
    let clients = connect_many(&gw.public.to_string(), 50).await;
    let ids = function.registered(50).await;
    for id in &ids {
        store.join("room", id).await.unwrap();
    }
    let gone = tokio::time::Instant::now();
    drop(clients);
    // Down for well past the old retry window (~0.3 s): every cleanup fails again and again.
    tests::wait::eventually(
        "three failed attempts for each cleanup, for over a second",
        Duration::from_secs(20),
        || {
            let attempts = function.attempts();
            let done = gone.elapsed() > Duration::from_secs(1)
                && ids
                    .iter()
                    .all(|id| attempts.get(id).is_some_and(|a| a.len() >= 3));
            async move { done }
        },
    )
    .await;
    assert!(function.delivered().is_empty());
    // Undelivered: still queued, and the connections still in the store (and their groups).
    assert_eq!(store.pending_cleanups().await.unwrap(), 50);
    assert_eq!(store.count("room").await.unwrap(), 50);
    function.set_down(false);
    function.wait_delivered(&ids, Duration::from_secs(20)).await;
    wait_store_clean(&redis, &prefix).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_expired_cleanup_is_dropped_logged_and_the_store_left_clean() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix();
    let function = CleanupFunction::start(true).await; // never back
    let gw = GatewayProcess::start(
        &crate::switchboard_bin(),
        &format!(
            "store = \"{redis}\"\nstore_prefix = \"{prefix}\"\n\
             [public]\nlisten = \"127.0.0.1:0\"\n\
             [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
             [functions]\nregister = \"{u}\"\ncleanup = \"{u}\"\nretries = 0\n\
             {QUICK_CLEANUP_TOML}max_age = \"700ms\"\n",
            redis = redis.url(),
            token = tests::gateway::TOKEN,
            u = function.url(),
        ),
    )
    .await;
    let clients = connect_many(gw.public(), 3).await;
    let ids = function.registered(3).await;
    drop(clients);
    for id in &ids {
        let line = gw
            .log()
            .line_with(&["cleanup expired", id], Duration::from_secs(10))
            .await;
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&format!("{id}:cleanup")), "{line}");
    }
    let attempts = function.attempts();
    for id in &ids {
        assert!(
            attempts.get(id).is_some_and(|a| a.len() >= 2),
            "{id} was not retried before it expired: {attempts:?}"
        );
    }
    assert!(function.delivered().is_empty());
    wait_store_clean(&redis, &prefix).await;
    gw.terminate().await;
}

/// A native retried cleanup keeps its id; register and transport carry theirs.
#[tokio::test]
async fn native_events_carry_stable_ids() {
    let function = CleanupFunction::start(true).await;
    let url = function.url();
    let gw = TestGateway::start(|c| {
        tests::gateway::route_all(c, &url);
        quick_cleanup(c);
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = function.registered(1).await.remove(0);
    tests::gateway::send_text(&mut client, "one").await;
    tests::gateway::send_text(&mut client, "two").await;
    drop(client);
    tests::wait::eventually("two failed cleanups", Duration::from_secs(10), || {
        let n = function.attempts().get(&id).map_or(0, Vec::len);
        async move { n >= 2 }
    })
    .await;
    function.set_down(false);
    function
        .wait_delivered(std::slice::from_ref(&id), Duration::from_secs(10))
        .await;
    let ids: Vec<(String, String)> = function
        .events()
        .into_iter()
        .map(|e| (e.kind.name().to_owned(), e.event_id))
        .collect();
    assert_eq!(ids[0], ("register".into(), format!("{id}:register")));
    assert_eq!(ids[1], ("transport".into(), format!("{id}:1")));
    assert_eq!(ids[2], ("transport".into(), format!("{id}:2")));
    assert!(ids[3..].len() >= 3, "{ids:?}");
    assert!(
        ids[3..]
            .iter()
            .all(|e| *e == ("cleanup".to_owned(), format!("{id}:cleanup"))),
        "{ids:?}"
    );
    gw.shutdown().await;
}

/// A recording function whose cleanup route fails twice (503), then answers 200.
async fn flaky_cleanup(connect_reply: Scripted) -> RecordingFunction {
    let failures = Arc::new(AtomicUsize::new(0));
    RecordingFunction::start(move |path, _| {
        if path == "/cleanup" && failures.fetch_add(1, Ordering::SeqCst) < 2 {
            Scripted::status(503)
        } else if path == "/connect" {
            connect_reply.clone()
        } else {
            Scripted::ok()
        }
    })
    .await
}

async fn three_cleanups(function: &RecordingFunction) -> Vec<Value> {
    function
        .wait_until("three cleanup attempts", Duration::from_secs(10), |r| {
            r.iter().filter(|r| r.path == "/cleanup").count() >= 3
        })
        .await
        .into_iter()
        .filter(|r| r.path == "/cleanup")
        .map(|r| r.event)
        .collect()
}

fn path_events(function: &RecordingFunction, path: &str) -> Vec<Value> {
    function
        .recorded()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| r.event)
        .collect()
}

#[tokio::test]
async fn aws_events_carry_the_id_as_request_id() {
    let function = flaky_cleanup(Scripted::ok()).await;
    let (connect, message, cleanup) = (
        function.url("connect"),
        function.url("message"),
        function.url("cleanup"),
    );
    let gw = TestGateway::start(|c| {
        c.functions.dialect = gateway::config::Dialect::Aws;
        c.functions.register = Some(connect.as_str().into());
        c.functions.transport = Some(message.as_str().into());
        c.functions.cleanup = Some(cleanup.as_str().into());
        quick_cleanup(c);
    })
    .await;
    let mut client = gw.connect("/").await;
    tests::gateway::send_text(&mut client, "hello").await;
    function
        .wait_until("a message", Duration::from_secs(10), |r| {
            r.iter().any(|r| r.path == "/message")
        })
        .await;
    drop(client);
    let cleanups = three_cleanups(&function).await;
    let connect = &path_events(&function, "/connect")[0]["requestContext"];
    let id = connect["connectionId"].as_str().unwrap().to_owned();
    assert_eq!(connect["requestId"], format!("{id}:register"));
    assert_eq!(connect["extendedRequestId"], format!("{id}:register"));
    let message = &path_events(&function, "/message")[0]["requestContext"];
    assert_eq!(message["requestId"], format!("{id}:1"));
    assert_eq!(message["messageId"], format!("{id}:1"));
    for cleanup in &cleanups {
        let rc = &cleanup["requestContext"];
        assert_eq!(rc["eventType"], "DISCONNECT");
        assert_eq!(rc["requestId"], format!("{id}:cleanup"), "{cleanup}");
        assert_eq!(
            rc["extendedRequestId"],
            format!("{id}:cleanup"),
            "{cleanup}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn tencent_events_carry_the_id_in_websocket() {
    let function = flaky_cleanup(Scripted::json(serde_json::json!({"errNo": 0}))).await;
    let (connect, message, cleanup) = (
        function.url("connect"),
        function.url("message"),
        function.url("cleanup"),
    );
    let gw = TestGateway::start(|c| {
        c.functions.dialect = gateway::config::Dialect::Tencent;
        c.functions.register = Some(connect.as_str().into());
        c.functions.transport = Some(message.as_str().into());
        c.functions.cleanup = Some(cleanup.as_str().into());
        quick_cleanup(c);
    })
    .await;
    let mut client = gw.connect("/").await;
    tests::gateway::send_text(&mut client, "hello").await;
    function
        .wait_until("a message", Duration::from_secs(10), |r| {
            r.iter().any(|r| r.path == "/message")
        })
        .await;
    drop(client);
    let cleanups = three_cleanups(&function).await;
    let connect = &path_events(&function, "/connect")[0];
    let id = connect["websocket"]["secConnectionID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(connect["websocket"]["eventId"], format!("{id}:register"));
    assert_eq!(
        connect["requestContext"]["requestId"],
        format!("{id}:register")
    );
    let message = &path_events(&function, "/message")[0];
    assert_eq!(message["websocket"]["eventId"], format!("{id}:1"));
    assert!(message.get("requestContext").is_none(), "{message}");
    for cleanup in &cleanups {
        assert_eq!(cleanup["websocket"]["action"], "closing");
        assert_eq!(cleanup["websocket"]["eventId"], format!("{id}:cleanup"));
        assert!(cleanup.get("requestContext").is_none(), "{cleanup}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_mass_disconnect_drains_through_the_bounded_workers() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    const CLIENTS: usize = 2000;
    const WORKERS: usize = 4;
    let prefix = unique_prefix();
    let store = redis_store(&redis, &prefix).await;
    let function = CleanupFunction::start(false).await;
    function.control.delay_ms.store(2, Ordering::SeqCst);
    let url = function.url();
    let gw = TestGateway::start_with(
        |c| {
            tests::gateway::route_all(c, &url);
            c.functions.transport = None;
            c.cleanup.workers = WORKERS;
        },
        gateway::Options {
            store: Some(store.clone()),
            ..Default::default()
        },
    )
    .await;
    let clients = connect_many(&gw.public.to_string(), CLIENTS).await;
    let ids = function.registered(CLIENTS).await;
    drop(clients);
    function.wait_delivered(&ids, Duration::from_secs(90)).await;
    let max = function.control.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max <= WORKERS,
        "{max} cleanup calls at once with cleanup.workers = {WORKERS}"
    );
    wait_store_clean(&redis, &prefix).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn queued_cleanups_survive_a_gateway_restart() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix();
    let store = redis_store(&redis, &prefix).await;
    let function = CleanupFunction::start(true).await;
    let config = |node: &str| {
        format!(
            "node_id = \"{node}\"\nstore = \"{redis}\"\nstore_prefix = \"{prefix}\"\n\
             [public]\nlisten = \"127.0.0.1:0\"\n\
             [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
             [functions]\nregister = \"{u}\"\ncleanup = \"{u}\"\nretries = 0\n\
             {QUICK_CLEANUP_TOML}",
            redis = redis.url(),
            token = tests::gateway::TOKEN,
            u = function.url(),
        )
    };
    let a = GatewayProcess::start(&crate::switchboard_bin(), &config("gw-a")).await;
    let clients = connect_many(a.public(), 5).await;
    let ids = function.registered(5).await;
    drop(clients);
    tests::wait::eventually(
        "a failed attempt for each cleanup",
        Duration::from_secs(10),
        || {
            let attempts = function.attempts();
            let done = ids.iter().all(|id| attempts.contains_key(id));
            async move { done }
        },
    )
    .await;
    a.terminate().await; // SIGTERM; asserts a clean exit
    assert!(function.delivered().is_empty());
    assert_eq!(store.pending_cleanups().await.unwrap(), 5, "queued durably");
    for id in &ids {
        assert!(store.get(id).await.unwrap().is_some(), "{id} forgotten");
    }
    function.set_down(false);
    let b = GatewayProcess::start(&crate::switchboard_bin(), &config("gw-b")).await;
    function.wait_delivered(&ids, Duration::from_secs(20)).await;
    for e in function.delivered() {
        assert_eq!(e.node, "gw-a", "the node that held the connection: {e:?}");
    }
    wait_store_clean(&redis, &prefix).await;
    b.terminate().await;
}
