//! The example chat, end to end: the demo's gateway and chat functions over real HTTP,
//! with real WebSocket clients.

use std::net::SocketAddr;

use chat::demo;
use tests::gateway::{Client, next_json, send_text};
use tokio_tungstenite::connect_async;
use tokio_util::sync::CancellationToken;

async fn start_demo() -> (tests::gateway::TestGateway, CancellationToken) {
    let stop_functions = CancellationToken::new();
    let (gw, _addrs, _task) = demo::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        stop_functions.clone(),
    )
    .await
    .expect("demo starts");
    let store = gw.store();
    (tests::gateway::TestGateway::run(gw, store), stop_functions)
}

async fn join(gw: &tests::gateway::TestGateway, room: &str, name: &str) -> Client {
    let (client, _) = connect_async(gw.ws_url(&format!("chat?room={room}&name={name}")))
        .await
        .expect("connect");
    client
}

/// Reads messages until the reply to `/who`, returning the messages before it.
async fn until_who(client: &mut Client) -> Vec<serde_json::Value> {
    send_text(client, "/who").await;
    let mut before = Vec::new();
    loop {
        let m = next_json(client).await;
        if m["type"] == "presence" && m["event"] == "who" {
            return before;
        }
        before.push(m);
    }
}

#[tokio::test]
async fn message_reaches_the_others_in_the_room_only() {
    let (gw, stop) = start_demo().await;
    let mut alice = join(&gw, "r1", "alice").await;
    let mut bob = join(&gw, "r1", "bob").await;
    let mut carol = join(&gw, "r1", "carol").await;
    let mut dave = join(&gw, "r2", "dave").await;
    // Everyone is registered once /who answers with the full room.
    tests::wait::eventually(
        "three members in r1",
        std::time::Duration::from_secs(10),
        || {
            let store = gw.store.clone();
            async move { store.count("r1").await.unwrap() == 3 }
        },
    )
    .await;

    send_text(&mut alice, "hello room").await;
    for (name, client) in [("bob", &mut bob), ("carol", &mut carol)] {
        let got = loop {
            let m = next_json(client).await;
            if m["type"] == "message" {
                break m;
            }
        };
        assert_eq!(got["from"], "alice", "{name} got {got}");
        assert_eq!(got["text"], "hello room");
        assert_eq!(got["online"], 3, "{name} sees the online count");
    }
    // Alice's own stream, up to the /who reply, holds no copy of her message.
    let before = until_who(&mut alice).await;
    assert!(
        before.iter().all(|m| m["type"] != "message"),
        "sender received a message: {before:?}"
    );
    // Dave, in another room, received no chat message.
    let before = until_who(&mut dave).await;
    assert!(
        before.iter().all(|m| m["type"] != "message"),
        "other room received: {before:?}"
    );
    gw.shutdown().await;
    stop.cancel();
}

#[tokio::test]
async fn leaving_updates_the_room() {
    let (gw, stop) = start_demo().await;
    let mut alice = join(&gw, "lobby", "alice").await;
    let bob = join(&gw, "lobby", "bob").await;
    tests::wait::eventually("two members", std::time::Duration::from_secs(10), || {
        let store = gw.store.clone();
        async move { store.count("lobby").await.unwrap() == 2 }
    })
    .await;
    drop(bob);
    let leave = loop {
        let m = next_json(&mut alice).await;
        if m["type"] == "presence" && m["event"] == "leave" {
            break m;
        }
    };
    assert_eq!(leave["name"], "bob");
    assert_eq!(leave["online"], 1);
    assert_eq!(gw.store.count("lobby").await.unwrap(), 1);
    gw.shutdown().await;
    stop.cancel();
}

#[tokio::test]
async fn invalid_room_is_refused_with_400() {
    let (gw, stop) = start_demo().await;
    assert_eq!(
        gw.try_connect("chat?room=no%20spaces").await.err(),
        Some(400)
    );
    gw.shutdown().await;
    stop.cancel();
}
