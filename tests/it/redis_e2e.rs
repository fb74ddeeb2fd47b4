//! The gateway and functions on a real Redis: separate processes sharing it, a group send
//! to thousands of members, and a Redis restart under live connections. Every test ends by
//! checking that no key of a closed connection is left in Redis.

use std::sync::Arc;
use std::time::Duration;

use chat::Chat;
use functions::SendBack;
use gateway::Options;
use reqwest::Method;
use tests::gateway::{
    Client, TestGateway, expect_close, next_json, next_message, post_to_connection, route_all,
    send_text, sendback_request,
};
use tests::process::{GatewayProcess, Process};
use tests::redis::{RedisServer, Resp};
use tests::scripted::ScriptedFunction;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Every key under `prefix` except node heartbeats and the live node set (which outlive
/// connections by design).
fn connection_keys(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let pattern = format!("{prefix}:*");
    let Ok(Resp::Array(Some(keys))) = redis.command(&["KEYS", &pattern]) else {
        panic!("KEYS failed");
    };
    let heartbeat = format!("{prefix}:node:");
    let live_nodes = format!("{prefix}:{{nodes}}");
    let seen_nodes = format!("{prefix}:{{nodes}}:seen");
    keys.into_iter()
        .filter_map(|k| match k {
            Resp::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => None,
        })
        .filter(|k| {
            // Node keys (a live node's heartbeat and its resync mark) are not a connection's.
            let node_key = k.starts_with(&heartbeat) && (k.ends_with('}') || k.ends_with("}:mark"));
            !node_key && *k != live_nodes && *k != seen_nodes
        })
        .collect()
}

/// Waits until Redis holds no key of any connection under `prefix`.
async fn assert_no_connection_keys(redis: &RedisServer, prefix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys = connection_keys(redis, prefix);
        if keys.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keys of closed connections left in Redis: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling interval
    }
}

/// Reads messages until one satisfies `wanted` (earlier ones, e.g. presence, are skipped).
async fn skip_until(client: &mut Client, wanted: impl Fn(&Message) -> bool) {
    loop {
        match next_message(client).await {
            Some(m) if wanted(&m) => return,
            Some(_) => continue,
            None => panic!("connection closed while waiting"),
        }
    }
}

fn unique_prefix(name: &str) -> String {
    format!(
        "it-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[tokio::test]
async fn separate_processes_share_redis_rooms_stay_isolated() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix("chat");
    let token = tests::gateway::TOKEN;
    // The gateway first (on free ports), then two chat replicas pointing at its send-back.
    let replica_ports: Vec<u16> = (0..2).map(|_| tests::redis::free_port().unwrap()).collect();
    let config = format!(
        "store = \"{url}\"\nstore_prefix = \"{prefix}\"\n[public]\nlisten = \"127.0.0.1:0\"\n\
         [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[functions]\n\
         register = \"http://127.0.0.1:{a}/\"\ncleanup = \"http://127.0.0.1:{a}/\"\n\
         transport = \"http://127.0.0.1:{b}/\"\n",
        url = redis.url(),
        a = replica_ports[0],
        b = replica_ports[1],
    );
    let gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let (public, sendback) = (gateway.public(), gateway.sendback());
    let mut replicas = Vec::new();
    for port in &replica_ports {
        let mut cmd = Command::new(crate::chat_functions_bin());
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &redis.url(),
            "--store-prefix",
            &prefix,
            "--sendback-url",
            &format!("http://{sendback}"),
            "--sendback-token",
            token,
        ]);
        let replica = Process::spawn(&mut cmd);
        replica
            .output()
            .line_with(&["listening"], Duration::from_secs(20))
            .await;
        replicas.push(replica);
    }

    // Three rooms, twenty clients.
    let rooms = ["red", "green", "blue"];
    let mut clients: Vec<(usize, Client)> = Vec::new();
    for i in 0..20 {
        let room = i % 3;
        let url = format!("ws://{public}/chat?room={}&name=p{i}", rooms[room]);
        let (client, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        clients.push((room, client));
    }
    let members = |room: usize| clients.iter().filter(|(r, _)| *r == room).count();
    let sizes: Vec<usize> = (0..3).map(members).collect();
    // Everyone has registered once each room's count is right.
    for (room, size) in rooms.iter().zip(&sizes) {
        let base = format!("http://{sendback}");
        tests::wait::eventually("room sizes", Duration::from_secs(10), || async {
            tests::gateway::group_count(&base, room).await == *size as u64
        })
        .await;
    }
    // The first client of each room speaks.
    for (room, name) in rooms.iter().enumerate() {
        let speaker = clients.iter().position(|(r, _)| *r == room).unwrap();
        send_text(&mut clients[speaker].1, &format!("hello {name}")).await;
    }
    // Each client gets exactly the messages of its room, from the others.
    for (index, (room, client)) in clients.iter_mut().enumerate() {
        // Client i is in room i % 3, so clients 0, 1 and 2 are the first of their rooms.
        let speaker_index = index < 3;
        let mut chat = Vec::new();
        send_text(client, "/who").await;
        loop {
            let m = next_json(client).await;
            if m["type"] == "presence" && m["event"] == "who" {
                break;
            }
            if m["type"] == "message" {
                chat.push(m);
            }
        }
        if speaker_index {
            assert!(chat.is_empty(), "speaker {index} got {chat:?}");
        } else {
            assert_eq!(chat.len(), 1, "client {index} got {chat:?}");
            assert_eq!(chat[0]["text"], format!("hello {}", rooms[*room]));
            assert_eq!(chat[0]["online"], sizes[*room]);
        }
    }
    for (_, mut client) in clients {
        client.close(None).await.ok();
    }
    assert_no_connection_keys(&redis, &prefix).await;
    gateway.terminate().await;
    for replica in replicas {
        replica.terminate().await;
    }
}

/// The chat on two gateway processes sharing Redis, its functions sending through one of
/// them only: a room with members on both nodes hears every message, whichever node the
/// speaker is on.
#[tokio::test]
async fn a_room_spans_two_gateway_nodes() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix("nodes");
    let token = tests::gateway::TOKEN;
    let chat_port = tests::redis::free_port().unwrap();
    let config = |node: &str| {
        format!(
            "node_id = \"{node}\"\nstore = \"{url}\"\nstore_prefix = \"{prefix}\"\n\
             [public]\nlisten = \"127.0.0.1:0\"\n\
             [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[functions]\n\
             register = \"http://127.0.0.1:{chat_port}/\"\ncleanup = \"http://127.0.0.1:{chat_port}/\"\n\
             transport = \"http://127.0.0.1:{chat_port}/\"\n",
            url = redis.url(),
        )
    };
    let first = GatewayProcess::start(&crate::switchboard_bin(), &config("gw-1")).await;
    let second = GatewayProcess::start(&crate::switchboard_bin(), &config("gw-2")).await;
    let mut cmd = Command::new(crate::chat_functions_bin());
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{chat_port}"),
        "--store",
        &redis.url(),
        "--store-prefix",
        &prefix,
        "--sendback-url",
        &format!("http://{}", first.sendback()),
        "--sendback-token",
        token,
    ]);
    let chat = Process::spawn(&mut cmd);
    chat.output()
        .line_with(&["listening"], Duration::from_secs(20))
        .await;

    let connect = |public: String, name: &'static str| async move {
        let url = format!("ws://{public}/chat?room=lobby&name={name}");
        tokio_tungstenite::connect_async(url)
            .await
            .expect("connect")
            .0
    };
    let mut ann = connect(first.public().to_owned(), "ann").await;
    let mut bob = connect(second.public().to_owned(), "bob").await;
    let base = format!("http://{}", first.sendback());
    tests::wait::eventually("both in the lobby", Duration::from_secs(10), || async {
        tests::gateway::group_count(&base, "lobby").await == 2
    })
    .await;
    // Bob is held by gw-2; the functions send through gw-1.
    send_text(&mut ann, "hi bob").await;
    skip_until(
        &mut bob,
        |m| matches!(m, Message::Text(t) if t.contains("hi bob") && t.contains("\"message\"")),
    )
    .await;
    send_text(&mut bob, "hi ann").await;
    skip_until(
        &mut ann,
        |m| matches!(m, Message::Text(t) if t.contains("hi ann") && t.contains("\"message\"")),
    )
    .await;
    ann.close(None).await.ok();
    bob.close(None).await.ok();
    assert_no_connection_keys(&redis, &prefix).await;
    first.terminate().await;
    second.terminate().await;
    chat.terminate().await;
}

#[tokio::test]
async fn group_send_reaches_five_thousand_members() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    const MEMBERS: usize = 5000;
    let prefix = unique_prefix("fanout");
    let function = ScriptedFunction::accepting().await;
    let config = format!(
        "store = \"{url}\"\nstore_prefix = \"{prefix}\"\n[public]\nlisten = \"127.0.0.1:0\"\n\
         [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[functions]\nregister = \"{f}\"\n\
         [limits]\nmax_connections = 10000\n",
        url = redis.url(),
        token = tests::gateway::TOKEN,
        f = function.url(),
    );
    let gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let (public, sendback) = (gateway.public(), gateway.sendback());
    let mut clients = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let (client, _) = tokio_tungstenite::connect_async(format!("ws://{public}/"))
            .await
            .expect("connect");
        clients.push(client);
    }
    let ids: Vec<String> = function
        .wait_until("all registers", Duration::from_secs(60), |e| {
            e.len() >= MEMBERS
        })
        .await
        .into_iter()
        .map(|e| e.connection_id)
        .collect();
    let http = reqwest::Client::new();
    for chunk in ids.chunks(250) {
        let joins = chunk.iter().map(|id| {
            http.put(format!("http://{sendback}/@groups/big/connections/{id}"))
                .bearer_auth(tests::gateway::TOKEN)
                .send()
        });
        for r in futures_util::future::join_all(joins).await {
            assert_eq!(r.unwrap().status(), 204);
        }
    }
    let result: functions::api::GroupSendResult =
        sendback_request(Method::POST, format!("http://{sendback}/@groups/big"))
            .body("to everyone")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(result.delivered, MEMBERS, "{result:?}");
    assert_eq!(result.gone, 0);
    let received = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| async move { next_message(c).await }),
    )
    .await;
    let got = received
        .iter()
        .filter(|m| **m == Some(Message::text("to everyone")))
        .count();
    assert_eq!(got, MEMBERS);
    drop(clients);
    assert_no_connection_keys(&redis, &prefix).await;
    gateway.terminate().await;
}

#[tokio::test]
async fn redis_restart_under_live_connections() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix("restart");
    let store = store::open(&redis.url(), &prefix).await.expect("store");
    // Chat functions in this process, on the same Redis, over real HTTP.
    let functions_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let functions_url = format!("http://{}/", functions_listener.local_addr().unwrap());
    let gw = TestGateway::start_with(
        |c| {
            route_all(c, &functions_url);
            c.store = redis.url();
            c.store_prefix = prefix.clone();
            c.node_heartbeat = Duration::from_millis(200);
            c.functions.retries = 0;
        },
        Options {
            store: Some(store.clone()),
            page: None,
        },
    )
    .await;
    let sendback = SendBack::new(&gw.sendback_url(), Some(tests::gateway::TOKEN.into())).unwrap();
    let stop_functions = CancellationToken::new();
    let functions_task = tokio::spawn(functions::serve(
        functions_listener,
        Arc::new(Chat::new(store.clone(), sendback)),
        stop_functions.clone(),
    ));
    let mut alice = gw.connect("chat?room=r&name=alice").await;
    let mut bob = gw.connect("chat?room=r&name=bob").await;
    tests::wait::eventually("both in the room", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.count("r").await.unwrap_or(0) == 2 }
    })
    .await;
    let member_ids = store.all_members("r").await.unwrap();

    redis.stop();
    // A connection this node does not hold cannot be looked up: 503, retryable, never
    // 410 (its node may well hold it), alone or in a batch.
    let elsewhere = uuid::Uuid::new_v4().to_string();
    let r = post_to_connection(&gw.sendback_url(), &elsewhere, "x").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");
    let batch: functions::api::BatchResult =
        sendback_request(Method::POST, format!("{}/@connections", gw.sendback_url()))
            .json(&serde_json::json!({"connectionIds": [member_ids[0], elsewhere], "data": "b"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        (batch.delivered, batch.unavailable, batch.gone),
        (1, 1, 0),
        "{batch:?}"
    );
    // Connections the gateway holds are still served.
    send_text(&mut alice, "ping").await;
    skip_until(&mut alice, |m| *m == Message::text("pong")).await;
    // A send to a connection by id needs no store.
    for id in &member_ids {
        let r = post_to_connection(&gw.sendback_url(), id, "direct").await;
        assert_eq!(r.status(), 200);
    }
    // Operations that need the store fail clearly.
    let r = sendback_request(Method::POST, format!("{}/@groups/r", gw.sendback_url()))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(
        gw.try_connect("chat?room=r&name=carol").await.err(),
        Some(503)
    );
    // A chat message cannot reach the room: the sender is told, not disconnected.
    send_text(&mut alice, "lost?").await;
    skip_until(&mut alice, |m| *m == Message::text("direct")).await;
    let m = next_json(&mut alice).await;
    assert_eq!(m["type"], "error", "{m}");
    // Bob leaves during the outage.
    bob.close(None).await.ok();

    redis.restart().expect("redis restarts");
    // Everything works again, without restarting the gateway or the functions.
    let mut carol =
        tests::wait::eventually_some("a new connection", Duration::from_secs(15), || {
            let url = gw.ws_url("chat?room=r&name=carol");
            async move {
                tokio_tungstenite::connect_async(url)
                    .await
                    .ok()
                    .map(|(c, _)| c)
            }
        })
        .await;
    // Alice rejoins (the restarted Redis lost the room): a new connection.
    alice.close(None).await.ok();
    let mut alice = gw.connect("chat?room=r&name=alice").await;
    tests::wait::eventually("both in the room", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.count("r").await.unwrap_or(0) == 2 }
    })
    .await;
    send_text(&mut alice, "back again").await;
    let got = loop {
        let m = next_json(&mut carol).await;
        if m["type"] == "message" {
            break m;
        }
    };
    assert_eq!(got["text"], "back again");
    carol.close(None).await.ok();
    alice.close(None).await.ok();
    let _ = expect_close(&mut bob).await;
    gw.shutdown().await;
    stop_functions.cancel();
    functions_task.await.unwrap().unwrap();
    assert_no_connection_keys(&redis, &prefix).await;
}

#[tokio::test]
async fn unreachable_redis_at_start_is_a_clear_error() {
    let port = tests::redis::free_port().unwrap();
    let out = std::process::Command::new(crate::switchboard_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--sendback-listen",
            "127.0.0.1:0",
        ])
        .args(["--store", &format!("redis://127.0.0.1:{port}")])
        .env("SWITCHBOARD_SENDBACK__TOKEN", tests::gateway::TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
