//! `GET /metrics`: real gateways, real clients and functions, and what the scrape says
//! after each thing they do: connections held, upgrades accepted and refused by reason,
//! messages, function calls and their durations, send-back requests by route and status
//! (401s and 429s included), throttled sends, group sends, relays between two nodes on a
//! real Redis, store operations, the process figures; `metrics.listen`; and that no label
//! value is ever a connection id.

use std::time::Duration;

use functions::event::EventKind;
use reqwest::Method;
use tests::gateway::{
    Client, TestGateway, group_send, next_message, post_to_connection, send_text, sendback_request,
};
use tests::metrics::{Scrape, scrape};
use tests::scripted::{Scripted, ScriptedFunction};
use tests::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A function that accepts every register but those to `/refuse` (403) and `/broken`
/// (an unusable reply), and echoes every transport message as `echo:<data>`.
async fn echo_function() -> ScriptedFunction {
    ScriptedFunction::start(|e| match &e.kind {
        EventKind::Register { request } if request.path == "/refuse" => {
            Scripted::text("no").with_status(403)
        }
        EventKind::Register { request } if request.path == "/broken" => {
            Scripted::json_text("{not json")
        }
        EventKind::Transport { data, .. } => Scripted::text(format!("echo:{data}")),
        _ => Scripted::ok(),
    })
    .await
}

async fn gateway_for(
    function: &ScriptedFunction,
    configure: impl FnOnce(&mut gateway::Config),
) -> TestGateway {
    let url = function.url();
    TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        configure(c);
    })
    .await
}

/// Scrapes until `done` holds for the scrape (bounded), then returns it.
async fn scrape_until(gw: &TestGateway, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let url = gw.metrics_url();
    let done = &done;
    eventually(what, WAIT, || {
        let url = url.clone();
        async move { done(&scrape(&url).await) }
    })
    .await;
    scrape(&url).await
}

/// Asserts that no label value of the scrape names one of `ids` (nor does any other text).
fn names_no_connection(scrape: &Scrape, ids: &[String]) {
    for id in ids {
        assert!(
            scrape.label_values().all(|v| v != id) && !scrape.text.contains(id.as_str()),
            "connection id {id} in the metrics:\n{}",
            scrape.text
        );
    }
}

#[tokio::test]
async fn connections_messages_function_calls_and_cleanups_are_counted() {
    let function = echo_function().await;
    let gw = gateway_for(&function, |c| c.limits.max_connections = 1234).await;
    let first = scrape(&gw.metrics_url()).await;
    assert_eq!(first.get("switchboard_connections", &[]), Some(0.0));
    assert_eq!(
        first.get("switchboard_connections_limit", &[]),
        Some(1234.0)
    );
    // Ready once the first heartbeat reached the store (`/readyz` says the same).
    let url = gw.metrics_url();
    tests::wait::eventually("switchboard_ready 1", Duration::from_secs(10), || async {
        scrape(&url).await.get("switchboard_ready", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        first.get("switchboard_handshakes_in_progress", &[]),
        Some(0.0)
    );
    assert_eq!(first.get("switchboard_cleanups_pending", &[]), Some(0.0));
    assert_eq!(
        first.get("switchboard_messages_total", &[("direction", "in")]),
        Some(0.0),
        "series at zero are listed from the start"
    );

    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..3 {
        clients.push(gw.connect("/").await);
    }
    let held = scrape(&gw.metrics_url()).await;
    assert_eq!(held.get("switchboard_connections", &[]), Some(3.0));
    assert_eq!(
        held.get("switchboard_connects_total", &[("outcome", "accepted")]),
        Some(3.0)
    );
    let register_ok = [
        ("event", "register"),
        ("dialect", "native"),
        ("outcome", "ok"),
    ];
    assert_eq!(
        held.get("switchboard_function_calls_total", &register_ok),
        Some(3.0)
    );

    for client in &mut clients {
        for text in ["hello", "world!"] {
            send_text(client, text).await;
            assert_eq!(
                next_message(client).await,
                Some(Message::text(format!("echo:{text}")))
            );
        }
    }
    let busy = scrape(&gw.metrics_url()).await;
    let transport_ok = [
        ("event", "transport"),
        ("dialect", "native"),
        ("outcome", "ok"),
    ];
    assert_eq!(
        busy.get("switchboard_function_calls_total", &transport_ok),
        Some(6.0)
    );
    let transport = [("event", "transport"), ("dialect", "native")];
    assert_eq!(
        busy.get(
            "switchboard_function_call_duration_seconds_count",
            &transport
        ),
        Some(6.0)
    );
    assert_eq!(
        busy.get(
            "switchboard_function_call_duration_seconds_bucket",
            &[
                ("event", "transport"),
                ("dialect", "native"),
                ("le", "+Inf")
            ]
        ),
        Some(6.0)
    );
    assert!(busy.value("switchboard_function_call_duration_seconds_sum", &transport) > 0.0);
    assert_eq!(
        busy.get("switchboard_messages_total", &[("direction", "in")]),
        Some(6.0)
    );
    assert_eq!(
        busy.get("switchboard_messages_total", &[("direction", "out")]),
        Some(6.0)
    );
    // "hello" and "world!" from each client; "echo:" + each back.
    assert_eq!(
        busy.get("switchboard_message_bytes_total", &[("direction", "in")]),
        Some(3.0 * 11.0)
    );
    assert_eq!(
        busy.get("switchboard_message_bytes_total", &[("direction", "out")]),
        Some(3.0 * (11.0 + 2.0 * 5.0))
    );
    assert_eq!(
        busy.get(
            "switchboard_function_retries_total",
            &[("event", "transport")]
        ),
        Some(0.0)
    );

    let ids: Vec<String> = function
        .events()
        .into_iter()
        .map(|e| e.connection_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 3);
    for mut client in clients {
        client.close(None).await.expect("close");
        while next_message(&mut client).await.is_some() {}
    }
    let cleanup_ok = [
        ("event", "cleanup"),
        ("dialect", "native"),
        ("outcome", "ok"),
    ];
    let done = scrape_until(&gw, "three cleanups delivered", |s| {
        s.value("switchboard_cleanups_total", &[("outcome", "delivered")]) == 3.0
    })
    .await;
    assert_eq!(done.get("switchboard_connections", &[]), Some(0.0));
    assert_eq!(
        done.get("switchboard_function_calls_total", &cleanup_ok),
        Some(3.0)
    );
    assert_eq!(
        done.get("switchboard_cleanups_total", &[("outcome", "expired")]),
        Some(0.0)
    );
    // The store as the gateway used it: each connection registered, then removed.
    let op = |op, outcome| {
        done.value(
            "switchboard_store_operations_total",
            &[("op", op), ("outcome", outcome)],
        )
    };
    assert!(op("register", "ok") >= 3.0, "{}", done.text);
    assert!(op("queue_cleanup", "ok") >= 3.0, "{}", done.text);
    assert_eq!(op("register", "unavailable"), 0.0);
    assert!(
        done.value(
            "switchboard_store_operation_duration_seconds_count",
            &[("op", "register")]
        ) >= 3.0
    );
    // The scrapes themselves: counted on the send-back listener's `metrics` route.
    assert!(
        done.value(
            "switchboard_sendback_requests_total",
            &[("route", "metrics"), ("status", "200")]
        ) >= 3.0
    );
    // The process.
    assert!(done.value("process_open_fds", &[]) > 0.0, "{}", done.text);
    assert!(done.value("process_max_fds", &[]) >= done.value("process_open_fds", &[]));
    assert!(done.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(done.value("process_cpu_seconds_total", &[]) >= 0.0);
    assert!(done.value("process_start_time_seconds", &[]) > 1.0e9);
    names_no_connection(&done, &ids);
    gw.shutdown().await;
}

#[tokio::test]
async fn refused_upgrades_are_counted_by_reason() {
    let function = echo_function().await;
    let gw = gateway_for(&function, |c| c.limits.max_connections = 1).await;
    assert_eq!(gw.try_connect("/refuse").await.err(), Some(403));
    assert_eq!(gw.try_connect("/broken").await.err(), Some(502));
    let _held = gw.connect("/").await;
    assert_eq!(gw.try_connect("/").await.err(), Some(503), "at capacity");
    // An upgrade with a version the gateway does not speak.
    let mut raw = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.to_ascii_lowercase().starts_with("http/1.1 426"),
        "{reply}"
    );

    let s = scrape(&gw.metrics_url()).await;
    let refused = |reason| {
        s.get(
            "switchboard_connects_total",
            &[("outcome", "refused"), ("reason", reason)],
        )
    };
    assert_eq!(refused("register_refused"), Some(1.0), "{}", s.text);
    assert_eq!(refused("function_failed"), Some(1.0));
    assert_eq!(refused("at_capacity"), Some(1.0));
    assert_eq!(refused("bad_handshake"), Some(1.0));
    assert_eq!(refused("function_timeout"), Some(0.0));
    assert_eq!(refused("store_unavailable"), Some(0.0));
    assert_eq!(
        s.get("switchboard_connects_total", &[("outcome", "accepted")]),
        Some(1.0)
    );
    assert_eq!(s.get("switchboard_connections", &[]), Some(1.0));
    // The register calls as HTTP calls: the refusal was a 403, the broken reply a 200.
    let register = |outcome| {
        s.value(
            "switchboard_function_calls_total",
            &[
                ("event", "register"),
                ("dialect", "native"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!((register("status_4xx"), register("ok")), (1.0, 2.0));
    gw.shutdown().await;
}

#[tokio::test]
async fn sendback_requests_are_counted_by_route_and_status_with_401s_and_429s() {
    let function = echo_function().await;
    let gw = gateway_for(&function, |c| {
        c.limits.outbound_queue_messages = 4;
        c.limits.outbound_queue_bytes = 256 * 1024;
    })
    .await;
    let base = gw.sendback_url();
    // A client that reads, in a group, and one that never reads.
    let mut reader = gw.connect("/").await;
    let reader_id = function.wait_register().await;
    gw.store.join("room", &reader_id).await.unwrap();
    let _stalled = gw.connect("/").await;
    let stalled_id = function
        .wait_registers(2)
        .await
        .into_iter()
        .find(|id| *id != reader_id)
        .expect("the stalled client's id");

    // Without the token: 401.
    let r = reqwest::Client::new()
        .post(format!("{base}/@connections/{reader_id}"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        post_to_connection(&base, &reader_id, "one").await.status(),
        200
    );
    assert_eq!(next_message(&mut reader).await, Some(Message::text("one")));
    // The stalled client's queue fills: 429.
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    loop {
        let r = post_to_connection(&base, &stalled_id, chunk.clone()).await;
        match r.status().as_u16() {
            200 => sent += 1,
            429 => break,
            other => panic!("unexpected status {other}"),
        }
        assert!(sent < 2000, "never throttled");
    }
    let result = group_send(&base, "room", "to the room").await;
    assert_eq!(result.delivered, 1);
    assert_eq!(
        next_message(&mut reader).await,
        Some(Message::text("to the room"))
    );
    let batch = sendback_request(Method::POST, format!("{base}/@connections"))
        .json(&serde_json::json!({"connectionIds": [reader_id], "data": "batch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let nowhere = sendback_request(Method::GET, format!("{base}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);

    let s = scrape(&gw.metrics_url()).await;
    let requests = |route, status| {
        s.value(
            "switchboard_sendback_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("native_connection", "401"), 1.0, "{}", s.text);
    assert_eq!(requests("native_connection", "429"), 1.0);
    assert_eq!(requests("native_connection", "200"), f64::from(sent + 1));
    assert_eq!(requests("native_group", "200"), 1.0);
    assert_eq!(requests("native_batch", "200"), 1.0);
    assert_eq!(requests("healthz", "200"), 1.0);
    assert_eq!(requests("other", "404"), 1.0);
    assert_eq!(
        s.value(
            "switchboard_sendback_request_duration_seconds_count",
            &[("route", "native_connection")]
        ),
        f64::from(sent + 3)
    );
    assert_eq!(s.get("switchboard_throttled_sends_total", &[]), Some(1.0));
    assert_eq!(s.get("switchboard_group_sends_total", &[]), Some(1.0));
    assert_eq!(s.get("switchboard_group_send_fanout_count", &[]), Some(1.0));
    assert_eq!(s.get("switchboard_group_send_fanout_sum", &[]), Some(1.0));
    // No relay on a node alone.
    assert_eq!(s.sum("switchboard_relays_total", &[]), 0.0);
    names_no_connection(&s, &[reader_id, stalled_id]);
    assert!(
        !s.text.contains("room"),
        "a group name in the metrics:\n{}",
        s.text
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn relays_between_nodes_on_redis_are_counted_on_both() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = format!("it-metrics-{}", uuid::Uuid::new_v4().simple());
    let store = store::open(&redis.url(), &prefix).await.unwrap();
    let function = echo_function().await;
    let node = |name: &'static str| {
        let url = function.url();
        let options = gateway::Options {
            store: Some(store.clone()),
            ..gateway::Options::default()
        };
        TestGateway::start_with(
            move |c| {
                c.node_id = name.to_owned();
                tests::gateway::route_all(c, &url);
            },
            options,
        )
    };
    let a = node("metrics-a").await;
    let b = node("metrics-b").await;
    let mut on_b = b.connect("/").await;
    let id = function.wait_register().await;
    store.join("room", &id).await.unwrap();

    // Sent to node a, for a connection node b holds.
    assert_eq!(
        post_to_connection(&a.sendback_url(), &id, "via a")
            .await
            .status(),
        200
    );
    assert_eq!(next_message(&mut on_b).await, Some(Message::text("via a")));
    let result = group_send(&a.sendback_url(), "room", "room via a").await;
    assert_eq!(result.delivered, 1);
    assert_eq!(
        next_message(&mut on_b).await,
        Some(Message::text("room via a"))
    );

    let on_a = scrape(&a.metrics_url()).await;
    assert_eq!(
        on_a.get("switchboard_relays_total", &[("outcome", "answered")]),
        Some(2.0),
        "{}",
        on_a.text
    );
    assert_eq!(
        on_a.get("switchboard_relay_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(on_a.get("switchboard_connections", &[]), Some(0.0));
    // The group send counted where it was asked for, with every node's members.
    assert_eq!(on_a.get("switchboard_group_sends_total", &[]), Some(1.0));
    assert_eq!(
        on_a.get("switchboard_group_send_fanout_sum", &[]),
        Some(1.0)
    );
    // Node a looked the connection up in Redis.
    let ops = |s: &Scrape, op| {
        s.value(
            "switchboard_store_operations_total",
            &[("op", op), ("outcome", "ok")],
        )
    };
    assert!(ops(&on_a, "get") >= 1.0, "{}", on_a.text);
    assert!(ops(&on_a, "node_address") >= 1.0);
    assert!(ops(&on_a, "nodes") >= 1.0);
    assert!(ops(&on_a, "heartbeat") >= 1.0);

    let on_b_scrape = scrape(&b.metrics_url()).await;
    assert_eq!(on_b_scrape.get("switchboard_connections", &[]), Some(1.0));
    let requests = |route| {
        on_b_scrape.value(
            "switchboard_sendback_requests_total",
            &[("route", route), ("status", "200")],
        )
    };
    assert_eq!(
        (requests("native_connection"), requests("native_group")),
        (1.0, 1.0),
        "the relayed requests, answered by the node holding the connection"
    );
    assert_eq!(on_b_scrape.sum("switchboard_relays_total", &[]), 0.0);
    assert_eq!(
        on_b_scrape.get("switchboard_group_sends_total", &[]),
        Some(0.0),
        "a relayed part of a group send is not another group send"
    );
    assert!(ops(&on_b_scrape, "register") >= 1.0);
    names_no_connection(&on_a, std::slice::from_ref(&id));
    names_no_connection(&on_b_scrape, std::slice::from_ref(&id));
    drop(on_b);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn metrics_listen_serves_them_alone_and_the_sendback_listener_no_more() {
    let function = echo_function().await;
    let gw = gateway_for(&function, |c| {
        c.metrics.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let own = gw.metrics.expect("a metrics listener");
    assert_ne!(own, gw.sendback);
    let mut client = gw.connect("/").await;
    send_text(&mut client, "hi").await;
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("echo:hi"))
    );
    let s = scrape(&format!("http://{own}/metrics")).await;
    assert_eq!(s.get("switchboard_connections", &[]), Some(1.0));
    assert_eq!(
        s.get("switchboard_messages_total", &[("direction", "in")]),
        Some(1.0)
    );
    // That listener serves nothing else.
    let other = reqwest::get(format!("http://{own}/healthz")).await.unwrap();
    assert_eq!(other.status(), 404);
    let post = reqwest::Client::new()
        .post(format!("http://{own}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    // The send-back listener: 404 for /metrics, with the token or without.
    let base = gw.sendback_url();
    let without = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(without.status(), 404);
    let with = sendback_request(Method::GET, format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 404);
    // Still counted as the send-back listener's `metrics` route.
    let s = scrape(&format!("http://{own}/metrics")).await;
    assert_eq!(
        s.get(
            "switchboard_sendback_requests_total",
            &[("route", "metrics"), ("status", "404")]
        ),
        Some(2.0)
    );
    drop(client);
    gw.shutdown().await;
}

/// Each cleanup costs one claim of the durable queue: the hand-over's wake-up claims it, and
/// the worker finishing does not claim again while the last claim left workers free (that
/// claim finds nothing, and on Redis costs a round trip per connection).
#[tokio::test]
async fn one_queue_claim_per_cleanup() {
    const N: usize = 10;
    let function = echo_function().await;
    // No poll within the test: every claim comes from a hand-over or a worker finishing.
    let gw = gateway_for(&function, |c| {
        c.cleanup.poll_interval = Duration::from_secs(3600);
    })
    .await;
    let claims = |s: &Scrape| {
        s.value(
            "switchboard_store_operations_total",
            &[("op", "claim_cleanups"), ("outcome", "ok")],
        )
    };
    for i in 1..=N {
        let mut client = gw.connect("/ws").await;
        client.close(None).await.expect("close");
        while next_message(&mut client).await.is_some() {}
        scrape_until(&gw, "the cleanup delivered", |s| {
            s.value("switchboard_cleanups_total", &[("outcome", "delivered")]) == i as f64
        })
        .await;
    }
    // Let a claim that a worker's end would make be made (or not).
    let last = function.wait_registers(N).await.pop().expect("N registers");
    function.wait_cleanup(&last).await;
    let done = scrape_until(&gw, "the last cleanup's worker gone", |s| {
        s.value(
            "switchboard_store_operations_total",
            &[("op", "finish_cleanup"), ("outcome", "ok")],
        ) == N as f64
    })
    .await;
    // One claim at start, one per cleanup (a wake-up more at most).
    assert!(
        claims(&done) <= (N + 2) as f64,
        "{} claims for {N} cleanups",
        claims(&done)
    );
}
