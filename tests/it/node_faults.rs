//! Gateway nodes failing for real: `switchboard-under-test` processes on one real
//! redis-server, SIGKILLed, SIGSTOPped and SIGCONTed, or cut off from Redis by a TCP relay
//! the test controls. Short settings (heartbeat 100-200 ms, TTL about a second, relay
//! timeout 300 ms) keep each test to a few seconds.
//!
//! Every test ends with an audit: each admitted connection got exactly one cleanup (no
//! event ids yet, so no duplicate is acceptable), and Redis holds no key of a closed
//! connection (no record, groups set, group or node connection set).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use functions::event::{DisconnectReason, EventKind};
use reqwest::Method;
use tests::gateway::{
    Client, TOKEN, group_send, next_message, post_to_connection, sendback_request,
};
use tests::process::GatewayProcess;
use tests::proxy::TcpProxy;
use tests::redis::RedisServer;
use tests::scripted::ScriptedFunction;
use tokio_tungstenite::tungstenite::Message;

use crate::store_suite::{keys_with_prefix, unique_prefix};

/// The relay timeout every node gets.
const RELAY_TIMEOUT: Duration = Duration::from_millis(300);

/// Timing of one test's nodes.
#[derive(Clone, Copy)]
struct Timing {
    heartbeat: Duration,
    ttl: Duration,
}

/// A node's config: on `store`, every function at `function`.
fn node_config(node: &str, store: &str, prefix: &str, function: &str, t: Timing) -> String {
    format!(
        "node_id = \"{node}\"\nstore = \"{store}\"\nstore_prefix = \"{prefix}\"\n\
         node_heartbeat = \"{hb}ms\"\nnode_heartbeat_ttl = \"{ttl}ms\"\nrelay_timeout = \"{relay}ms\"\n\
         [public]\nlisten = \"127.0.0.1:0\"\n\
         [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [functions]\nregister = \"{function}\"\ntransport = \"{function}\"\ncleanup = \"{function}\"\n\
         retry_backoff = \"20ms\"\n",
        hb = t.heartbeat.as_millis(),
        ttl = t.ttl.as_millis(),
        relay = RELAY_TIMEOUT.as_millis(),
    )
}

async fn start(
    node: &str,
    store: &str,
    prefix: &str,
    function: &ScriptedFunction,
    t: Timing,
) -> GatewayProcess {
    GatewayProcess::start(
        &crate::switchboard_bin(),
        &node_config(node, store, prefix, &function.url(), t),
    )
    .await
}

fn base(node: &GatewayProcess) -> String {
    format!("http://{}", node.sendback())
}

/// Connects `n` clients to `node`, each joined to group `room`: the clients and their ids.
async fn connect(
    node: &GatewayProcess,
    n: usize,
    function: &ScriptedFunction,
) -> Vec<(Client, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let before = registers(function).len();
        let url = format!("ws://{}/", node.public());
        let (client, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        // Register comes before the 101: its event is in by now.
        let ids = registers(function);
        assert_eq!(ids.len(), before + 1, "one register per connection");
        let id = ids.last().unwrap().clone();
        let joined = sendback_request(
            Method::PUT,
            format!("{}/@groups/room/connections/{id}", base(node)),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(joined.status(), 204, "join");
        out.push((client, id));
    }
    out
}

/// Every registered connection id, in order.
fn registers(function: &ScriptedFunction) -> Vec<String> {
    function
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Register { .. }))
        .map(|e| e.connection_id)
        .collect()
}

/// The cleanup reasons each connection got.
fn cleanups(function: &ScriptedFunction) -> HashMap<String, Vec<DisconnectReason>> {
    let mut out: HashMap<String, Vec<DisconnectReason>> = HashMap::new();
    for event in function.events() {
        if let EventKind::Cleanup { reason, .. } = event.kind {
            out.entry(event.connection_id).or_default().push(reason);
        }
    }
    out
}

/// Waits until every one of `ids` has a cleanup, within `timeout`.
async fn wait_cleanups(function: &ScriptedFunction, ids: &[String], timeout: Duration) {
    let ids = ids.to_vec();
    function
        .wait_until("a cleanup for each connection", timeout, move |events| {
            ids.iter().all(|id| {
                events
                    .iter()
                    .any(|e| e.connection_id == *id && e.kind.name() == "cleanup")
            })
        })
        .await;
}

/// Keys under `prefix` that belong to connections: records, groups sets, groups, node
/// connection sets.
fn connection_keys(redis: &RedisServer, prefix: &str) -> Vec<String> {
    keys_with_prefix(redis, prefix)
        .into_iter()
        .filter(|k| k.contains(":conn:") || k.contains(":group:") || k.ends_with(":conns"))
        .collect()
}

/// The audit every test ends with (all its clients closed): exactly one cleanup per
/// admitted connection, and no key of a closed connection left.
async fn audit(function: &ScriptedFunction, redis: &RedisServer, prefix: &str) {
    let admitted = registers(function);
    wait_cleanups(function, &admitted, Duration::from_secs(10)).await;
    let cleanups = cleanups(function);
    for id in &admitted {
        assert_eq!(
            cleanups[id].len(),
            1,
            "cleanups of {id}: {:?}",
            cleanups[id]
        );
    }
    tests::wait::eventually(
        "no key of a closed connection",
        Duration::from_secs(5),
        || async { connection_keys(redis, prefix).is_empty() },
    )
    .await;
}

/// Reads `client` until a text message equal to `text`.
async fn receive(client: &mut Client, text: &str) {
    loop {
        match next_message(client).await {
            Some(Message::Text(t)) if t.as_str() == text => return,
            Some(_) => continue,
            None => panic!("closed while waiting for {text:?}"),
        }
    }
}

async fn close_all(clients: Vec<(Client, String)>) {
    for (mut client, _) in clients {
        client.close(None).await.ok();
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut client).await {}
    }
}

#[tokio::test]
async fn a_killed_node_is_reaped_once_by_a_survivor() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let t = Timing {
        heartbeat: Duration::from_millis(200),
        ttl: Duration::from_millis(1000),
    };
    let prefix = unique_prefix();
    let function = ScriptedFunction::accepting().await;
    let url = redis.url();
    let a = start("gw-a", &url, &prefix, &function, t).await;
    let b = start("gw-b", &url, &prefix, &function, t).await;
    let mut c = start("gw-c", &url, &prefix, &function, t).await;
    let on_a = connect(&a, 1, &function).await;
    let on_c = connect(&c, 50, &function).await;
    let lost: Vec<String> = on_c.iter().map(|(_, id)| id.clone()).collect();

    c.process().kill().await;
    let killed = Instant::now();
    // Before the reap: its node is silent, not its connection gone.
    let r = post_to_connection(&base(&a), &lost[0], "hello").await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert!(
        killed.elapsed() < t.ttl,
        "the probe came too late to be before the reap"
    );

    wait_cleanups(
        &function,
        &lost,
        (t.ttl * 2).saturating_sub(killed.elapsed()),
    )
    .await;
    let cleanups = cleanups(&function);
    for id in &lost {
        assert_eq!(cleanups[id], [DisconnectReason::NodeLost], "{id}");
    }
    // After the reap: gone, and out of the group.
    tests::wait::eventually(
        "410 for a reaped connection",
        Duration::from_secs(5),
        || async {
            post_to_connection(&base(&b), &lost[0], "hello")
                .await
                .status()
                == 410
        },
    )
    .await;
    let result = group_send(&base(&a), "room", "after").await;
    assert_eq!(result.delivered, 1, "{result:?}");
    assert_eq!(result.gone, 0, "{result:?}");
    assert!(result.unreachable_nodes.is_empty(), "{result:?}");
    let keys = keys_with_prefix(&redis, &prefix);
    for id in &lost {
        assert!(
            keys.iter().all(|k| !k.contains(id.as_str())),
            "{id} in {keys:?}"
        );
    }
    assert!(!keys.iter().any(|k| k.contains("{gw-c}:conns")), "{keys:?}");

    close_all(on_a).await;
    audit(&function, &redis, &prefix).await;
    // A clean shutdown takes the node's heartbeat with it at once (its TTL is 1 s).
    let heartbeat = format!("{prefix}:node:{{gw-a}}");
    assert!(keys_with_prefix(&redis, &prefix).contains(&heartbeat));
    a.terminate().await;
    let keys = keys_with_prefix(&redis, &prefix);
    assert!(!keys.contains(&heartbeat), "{keys:?}");
    b.terminate().await;
}

#[tokio::test]
async fn a_node_paused_shorter_than_its_ttl_is_unavailable_not_gone() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let t = Timing {
        heartbeat: Duration::from_millis(200),
        ttl: Duration::from_millis(2500),
    };
    let prefix = unique_prefix();
    let function = ScriptedFunction::accepting().await;
    let url = redis.url();
    let a = start("gw-a", &url, &prefix, &function, t).await;
    let mut b = start("gw-b", &url, &prefix, &function, t).await;
    let mut on_a = connect(&a, 1, &function).await;
    let mut on_b = connect(&b, 5, &function).await;
    let silent = on_b[0].1.clone();

    b.process().signal("STOP");
    let stopped = Instant::now();
    let started = Instant::now();
    let result = group_send(&base(&a), "room", "during").await;
    let took = started.elapsed();
    assert!(
        took < RELAY_TIMEOUT + Duration::from_millis(700),
        "group send took {took:?}"
    );
    assert_eq!(result.unreachable_nodes, ["gw-b"], "{result:?}");
    assert_eq!(result.delivered, 1, "{result:?}");
    let r = post_to_connection(&base(&a), &silent, "hello").await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert!(
        stopped.elapsed() < t.ttl,
        "paused for longer than the TTL: inconclusive"
    );
    b.process().signal("CONT");

    tests::wait::eventually(
        "the paused node answers again",
        Duration::from_secs(5),
        || async {
            post_to_connection(&base(&a), &silent, "again")
                .await
                .status()
                == 200
        },
    )
    .await;
    receive(&mut on_b[0].0, "again").await;
    let result = group_send(&base(&a), "room", "after").await;
    assert_eq!(result.delivered, 6, "{result:?}");
    assert!(result.unreachable_nodes.is_empty(), "{result:?}");
    receive(&mut on_a[0].0, "after").await;
    for (client, _) in &mut on_b {
        receive(client, "after").await;
    }
    assert!(cleanups(&function).is_empty(), "no cleanup while paused");

    close_all(on_a).await;
    close_all(on_b).await;
    audit(&function, &redis, &prefix).await;
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test]
async fn a_node_paused_past_its_ttl_is_reaped_and_closes_its_connections_on_resume() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let t = Timing {
        heartbeat: Duration::from_millis(100),
        ttl: Duration::from_millis(600),
    };
    let prefix = unique_prefix();
    let function = ScriptedFunction::accepting().await;
    let url = redis.url();
    let a = start("gw-a", &url, &prefix, &function, t).await;
    let mut b = start("gw-b", &url, &prefix, &function, t).await;
    let on_b = connect(&b, 10, &function).await;
    let lost: Vec<String> = on_b.iter().map(|(_, id)| id.clone()).collect();

    b.process().signal("STOP");
    wait_cleanups(&function, &lost, Duration::from_secs(5)).await;
    tests::wait::eventually("410 once reaped", Duration::from_secs(5), || async {
        post_to_connection(&base(&a), &lost[0], "hello")
            .await
            .status()
            == 410
    })
    .await;
    b.process().signal("CONT");

    // It finds the mark and closes every connection, without a second cleanup.
    for (mut client, id) in on_b {
        let frame = tests::gateway::expect_close(&mut client).await;
        assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001), "{id}");
    }
    b.log()
        .nth_line_with(
            10,
            &["connection closed", "NodeLost"],
            Duration::from_secs(5),
        )
        .await;
    b.log()
        .line_with(&["this node was reaped"], Duration::from_secs(1))
        .await;
    let cleanups = cleanups(&function);
    for id in &lost {
        assert_eq!(cleanups[id], [DisconnectReason::NodeLost], "{id}");
    }
    audit(&function, &redis, &prefix).await;
    // It serves on.
    let on_b = connect(&b, 1, &function).await;
    close_all(on_b).await;
    audit(&function, &redis, &prefix).await;
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test]
async fn a_node_restarted_with_its_name_reaps_its_leftovers_first() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let t = Timing {
        heartbeat: Duration::from_millis(200),
        ttl: Duration::from_millis(1000),
    };
    let prefix = unique_prefix();
    let function = ScriptedFunction::accepting().await;
    let url = redis.url();
    let mut b = start("gw-b", &url, &prefix, &function, t).await;
    let on_b = connect(&b, 5, &function).await;
    let lost: Vec<String> = on_b.iter().map(|(_, id)| id.clone()).collect();
    b.process().kill().await;
    drop(on_b);

    // Restarted at once (its old heartbeat still alive): it listens only once the
    // leftovers are cleaned up.
    let b = start("gw-b", &url, &prefix, &function, t).await;
    let cleanups = cleanups(&function);
    for id in &lost {
        assert_eq!(
            cleanups.get(id).map(Vec::as_slice),
            Some(&[DisconnectReason::NodeLost][..]),
            "{id}"
        );
    }
    b.log()
        .line_with(
            &["reaping the connections a previous run of this node left"],
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(connection_keys(&redis, &prefix), Vec::<String>::new());
    let on_b = connect(&b, 1, &function).await;
    close_all(on_b).await;
    audit(&function, &redis, &prefix).await;
    b.terminate().await;
}

#[tokio::test]
async fn a_store_outage_every_node_sees_reaps_no_one() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let t = Timing {
        heartbeat: Duration::from_millis(100),
        ttl: Duration::from_millis(600),
    };
    let proxy = TcpProxy::start(redis.addr()).await.unwrap();
    let url = format!("redis://{}", proxy.addr());
    let prefix = unique_prefix();
    let function = ScriptedFunction::accepting().await;
    let a = start("gw-a", &url, &prefix, &function, t).await;
    let b = start("gw-b", &url, &prefix, &function, t).await;
    let mut on_a = connect(&a, 3, &function).await;
    let mut on_b = connect(&b, 3, &function).await;

    proxy.cut();
    for node in [&a, &b] {
        node.log()
            .line_with(&["store heartbeat failed"], Duration::from_secs(5))
            .await;
    }
    // The outage lasts two TTLs: every heartbeat in Redis expires meanwhile.
    tokio::time::sleep(t.ttl * 2).await;
    proxy.restore();
    for node in [&a, &b] {
        node.log()
            .line_with(&["not reaped: carrying on"], Duration::from_secs(10))
            .await;
        node.log()
            .line_with(&["store reachable again"], Duration::from_secs(10))
            .await;
    }
    // Long enough for a reaper to act once its store has worked for a TTL.
    tokio::time::sleep(t.ttl * 3).await;
    assert!(cleanups(&function).is_empty(), "{:?}", cleanups(&function));
    for (client, id) in on_a.iter_mut().chain(on_b.iter_mut()) {
        let r = post_to_connection(&base(&a), id, "still here").await;
        assert_eq!(r.status(), 200, "{id}");
        receive(client, "still here").await;
    }

    close_all(on_a).await;
    close_all(on_b).await;
    audit(&function, &redis, &prefix).await;
    a.terminate().await;
    b.terminate().await;
}
