//! Redis loses its data (a real redis-server killed and started again on the same port,
//! empty) while gateway nodes hold connections: every node writes back the records,
//! node-set entries and group memberships of what it holds, so held connections stay
//! reachable from every node and from group sends, and a connection that closed meanwhile
//! is not brought back.

use std::time::{Duration, Instant};

use gateway::Options;
use store::SharedStore;
use tests::gateway::{Client, TestGateway, group_send, next_message, post_to_connection};
use tests::process::{GatewayProcess, log_field};
use tests::redis::{RedisServer, Resp};
use tests::scripted::ScriptedFunction;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "room";

fn unique_prefix(name: &str) -> String {
    format!(
        "it-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A node on `store` with short heartbeats and a short resync interval.
async fn node(name: &str, function: &ScriptedFunction, store: SharedStore) -> TestGateway {
    let (url, name) = (function.url(), name.to_owned());
    TestGateway::start_with(
        move |c| {
            c.node_id = name;
            c.functions.register = Some(url.clone().into());
            c.functions.cleanup = Some(url.into());
            c.node_heartbeat = Duration::from_millis(100);
            c.node_heartbeat_ttl = Duration::from_millis(1000);
            c.store_resync.interval = Duration::from_millis(100);
            c.cleanup.poll_interval = Duration::from_millis(100);
            c.cleanup.backoff_initial = Duration::from_millis(100);
        },
        Options {
            store: Some(store),
            page: None,
        },
    )
    .await
}

/// How many `SMEMBERS` Redis has run since it started (each resync sweep runs one per held
/// connection, and nothing else in these tests does).
fn smembers_calls(redis: &RedisServer) -> u64 {
    let Ok(Resp::Bulk(Some(info))) = redis.command(&["INFO", "commandstats"]) else {
        panic!("INFO commandstats failed");
    };
    let info = String::from_utf8_lossy(&info);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_smembers:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Waits until the node holding `held` connections has swept their groups twice more
/// (so a whole sweep began after this call, and ended, its mirror kept).
async fn wait_for_sweeps(redis: &RedisServer, held: usize) {
    let start = smembers_calls(redis);
    let wanted = start + 3 * held as u64;
    tests::wait::eventually("two more sweeps", Duration::from_secs(10), || async move {
        smembers_calls(redis) >= wanted
    })
    .await;
}

fn int(redis: &RedisServer, args: &[&str]) -> i64 {
    match redis.command(args).unwrap() {
        Resp::Integer(n) => n,
        other => panic!("{args:?}: {other:?}"),
    }
}

async fn expect_text(client: &mut Client, text: &str) {
    assert_eq!(next_message(client).await, Some(Message::text(text)));
}

/// Connects `n` clients to `gw` and returns them with their ids (in order).
async fn connect_n(
    gw: &TestGateway,
    function: &ScriptedFunction,
    n: usize,
) -> Vec<(String, Client)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let before = function.events().len();
        let client = gw.connect("/").await;
        let events = function
            .wait_until("a register", Duration::from_secs(10), |e| e.len() > before)
            .await;
        out.push((events[before].connection_id.clone(), client));
    }
    out
}

#[tokio::test]
async fn held_connections_are_written_back_after_redis_loses_its_data() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    const N: usize = 30;
    let prefix = unique_prefix("resync");
    let url = redis.url();
    let open = || store::open(&url, &prefix);
    let store = open().await.unwrap();
    let function = ScriptedFunction::accepting().await;
    let a = node("node-a", &function, open().await.unwrap()).await;
    let b = node("node-b", &function, open().await.unwrap()).await;
    let mut clients = connect_n(&a, &function, N).await;
    let http = reqwest::Client::new();
    for (i, (id, _)) in clients.iter().enumerate() {
        // Half through the send-back API (as a function does), half by the store.
        if i % 2 == 0 {
            let r = http
                .put(format!(
                    "{}/@groups/{ROOM}/connections/{id}",
                    a.sendback_url()
                ))
                .bearer_auth(tests::gateway::TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        } else {
            store.join(ROOM, id).await.unwrap();
        }
    }
    let mut records = Vec::new();
    for (id, _) in &clients {
        records.push(store.get(id).await.unwrap().expect("a record"));
    }
    wait_for_sweeps(&redis, N).await;

    redis.restart().expect("redis restarts");
    tests::wait::eventually(
        "records and memberships written back",
        Duration::from_secs(10),
        || {
            let (store, clients) = (store.clone(), &clients);
            async move {
                let mut back = store.count(ROOM).await.unwrap_or(0) == N as u64
                    && store.node_alive("node-a").await.unwrap_or(false);
                for (id, _) in clients {
                    back &= matches!(store.get(id).await, Ok(Some(_)));
                }
                back
            }
        },
    )
    .await;
    for ((id, _), before) in clients.iter().zip(&records) {
        assert_eq!(store.get(id).await.unwrap().as_ref(), Some(before));
        assert_eq!(store.groups_of(id).await.unwrap(), [ROOM]);
    }
    let conns = format!("{prefix}:node:{{node-a}}:conns");
    assert_eq!(int(&redis, &["SCARD", &conns]), N as i64);
    // Node B reaches a connection node A holds, by id and through the group.
    let (first, client) = &mut clients[0];
    let r = post_to_connection(&b.sendback_url(), first, "via b").await;
    assert_eq!(r.status(), 200);
    expect_text(client, "via b").await;
    let sent = group_send(&b.sendback_url(), ROOM, "to all").await;
    assert_eq!((sent.delivered, sent.gone), (N, 0), "{sent:?}");
    for (_, client) in &mut clients {
        expect_text(client, "to all").await;
    }
    for (_, client) in &mut clients {
        client.close(None).await.ok();
    }
    for (id, _) in &clients {
        function.wait_cleanup(id).await;
    }
    tests::wait::eventually("the records removed", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.count(ROOM).await.unwrap_or(1) == 0 }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_connection_closed_while_redis_is_down_is_not_written_back() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix("resync-closed");
    let store = store::open(&redis.url(), &prefix).await.unwrap();
    let function = ScriptedFunction::accepting().await;
    let a = node(
        "node-a",
        &function,
        store::open(&redis.url(), &prefix).await.unwrap(),
    )
    .await;
    let mut clients = connect_n(&a, &function, 2).await;
    let (gone_id, mut gone) = clients.pop().unwrap();
    let (kept_id, mut kept) = clients.pop().unwrap();
    store.join(ROOM, &kept_id).await.unwrap();
    store.join(ROOM, &gone_id).await.unwrap();
    wait_for_sweeps(&redis, 2).await;

    redis.stop();
    gone.close(None).await.unwrap();
    // The gateway has seen the close once the socket ends.
    while next_message(&mut gone).await.is_some() {}
    redis.restart().expect("redis restarts");

    tests::wait::eventually("the held one written back", Duration::from_secs(10), || {
        let store = store.clone();
        let id = kept_id.clone();
        async move {
            matches!(store.get(&id).await, Ok(Some(_))) && store.count(ROOM).await.ok() == Some(1)
        }
    })
    .await;
    let cleanup = function.wait_cleanup(&gone_id).await;
    assert_eq!(cleanup.connection_id, gone_id);
    assert_eq!(function.events_of("cleanup", &gone_id).len(), 1);
    assert_eq!(store.get(&gone_id).await.unwrap(), None);
    assert!(store.groups_of(&gone_id).await.unwrap().is_empty());
    assert_eq!(
        store.all_members(ROOM).await.unwrap(),
        std::slice::from_ref(&kept_id)
    );
    let conns = format!("{prefix}:node:{{node-a}}:conns");
    assert_eq!(int(&redis, &["SISMEMBER", &conns, &gone_id]), 0);
    assert_eq!(int(&redis, &["SISMEMBER", &conns, &kept_id]), 1);
    // The held one is served as before.
    let r = post_to_connection(&a.sendback_url(), &kept_id, "still here").await;
    assert_eq!(r.status(), 200);
    expect_text(&mut kept, "still here").await;
    kept.close(None).await.ok();
    function.wait_cleanup(&kept_id).await;
    a.shutdown().await;
}

/// The write-back's speed for 10,000 connections (a benchmark figure, not a CI test):
/// `cargo test -p tests --test it -- --ignored resync_speed --nocapture`. The gateway runs as
/// its own process (the clients and the gateway would not fit one process's descriptors).
#[tokio::test]
#[ignore = "benchmark: 10,000 connections"]
async fn resync_speed_ten_thousand() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    let n: usize = std::env::var("RESYNC_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let prefix = unique_prefix("resync-bench");
    let store = store::open(&redis.url(), &prefix).await.unwrap();
    let function = ScriptedFunction::accepting().await;
    let config = format!(
        "node_id = \"bench-a\"\nstore = \"{url}\"\nstore_prefix = \"{prefix}\"\n\
         node_heartbeat = \"200ms\"\nnode_heartbeat_ttl = \"2s\"\n\
         [store_resync]\ninterval = \"1s\"\n\
         [public]\nlisten = \"127.0.0.1:0\"\n\
         [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[functions]\nregister = \"{f}\"\n\
         [limits]\nmax_connections = 20000\n",
        url = redis.url(),
        token = tests::gateway::TOKEN,
        f = function.url(),
    );
    let gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let public = gateway.public().to_owned();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, _) = tokio_tungstenite::connect_async(format!("ws://{public}/"))
            .await
            .expect("connect");
        clients.push(client);
    }
    let ids: Vec<String> = function
        .wait_until("all registers", Duration::from_secs(120), |e| e.len() >= n)
        .await
        .into_iter()
        .map(|e| e.connection_id)
        .collect();
    for chunk in ids.chunks(500) {
        let joins = chunk.iter().map(|id| store.join(ROOM, id));
        for r in futures_util::future::join_all(joins).await {
            r.unwrap();
        }
    }
    wait_for_sweeps(&redis, n).await;
    redis.restart().expect("redis restarts");
    let restarted = Instant::now();
    tests::wait::eventually("all written back", Duration::from_secs(120), || {
        let store = store.clone();
        async move { store.count(ROOM).await.ok() == Some(n as u64) }
    })
    .await;
    let seen = restarted.elapsed();
    let line = gateway
        .log()
        .line_with(
            &["wrote this node's connections back"],
            Duration::from_secs(10),
        )
        .await;
    println!(
        "resync of {n} connections: restored={} memberships={} write-back {} ms; \
         restart to all memberships back: {} ms (includes detection, interval 1s)",
        log_field(&line, "restored"),
        log_field(&line, "memberships"),
        log_field(&line, "elapsed_ms"),
        seen.as_millis()
    );
    assert_eq!(log_field(&line, "restored"), n.to_string());
    drop(clients);
    gateway.terminate().await;
}
