//! The register decision: acceptance with context and subprotocol, refusal by status,
//! and the statuses a failing register function produces.

use std::time::{Duration, Instant};

use functions::event::EventKind;
use tests::gateway::{TestGateway, next_message, send_text};
use tests::scripted::{Scripted, ScriptedFunction};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn register_only(url: String) -> impl FnOnce(&mut gateway::Config) {
    move |c| c.functions.register = Some(url.into())
}

#[tokio::test]
async fn refusal_status_reaches_the_client_and_nothing_stays_registered() {
    let function = ScriptedFunction::start(|e| match e.kind {
        EventKind::Register { .. } => Scripted::text("go away")
            .with_status(403)
            .after(Duration::from_millis(300)),
        _ => Scripted::ok(),
    })
    .await;
    let gw = TestGateway::start(register_only(function.url())).await;
    let attempt = tokio::spawn({
        let url = gw.ws_url("/x");
        async move { tokio_tungstenite::connect_async(url).await }
    });
    // While register runs, the record exists, so a function may join groups with it.
    let id = function.wait_register().await;
    assert!(gw.store.get(&id).await.unwrap().is_some());
    gw.store.join("room", &id).await.unwrap();
    match attempt.await.unwrap() {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
            let body = response.body().as_deref().map(String::from_utf8_lossy);
            assert_eq!(body.as_deref(), Some("go away"));
        }
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    assert!(
        gw.store.get(&id).await.unwrap().is_none(),
        "record left after refusal"
    );
    assert_eq!(
        gw.store.count("room").await.unwrap(),
        0,
        "group membership left after refusal"
    );
    // A refused connection gets no cleanup: it never existed.
    assert!(function.events_of("cleanup", &id).is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn function_down_is_502() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(register_only(format!("http://{dead}/register"))).await;
    assert_eq!(gw.try_connect("/").await.err(), Some(502));
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_function_is_504_within_the_timeout() {
    let function = ScriptedFunction::start(|_| Scripted::ok().after(Duration::from_secs(5))).await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        c.functions.register = Some(url.into());
        c.functions.timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    assert_eq!(gw.try_connect("/").await.err(), Some(504));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn garbage_or_oversized_register_replies_are_502() {
    let function = ScriptedFunction::start(|e| match &e.kind {
        EventKind::Register { request } if request.path == "/garbage" => {
            Scripted::text("{not json")
        }
        EventKind::Register { request } if request.path == "/huge-context" => {
            Scripted::json(serde_json::json!({"context": {"blob": "x".repeat(10_000)}}))
        }
        EventKind::Register { request } if request.path == "/bad-protocol" => {
            Scripted::json(serde_json::json!({"subprotocol": "never-offered"}))
        }
        _ => Scripted::ok(),
    })
    .await;
    let gw = TestGateway::start(register_only(function.url())).await;
    assert_eq!(gw.try_connect("/garbage").await.err(), Some(502));
    assert_eq!(gw.try_connect("/huge-context").await.err(), Some(502));
    assert_eq!(gw.try_connect("/bad-protocol").await.err(), Some(502));
    // The gateway still serves.
    assert!(gw.try_connect("/fine").await.is_ok());
    gw.shutdown().await;
}

#[tokio::test]
async fn accepted_context_and_subprotocol_reach_later_events() {
    let function = ScriptedFunction::start(|e| match &e.kind {
        EventKind::Register { request } => {
            assert_eq!(request.query_param("user").as_deref(), Some("ann"));
            Scripted::json(
                serde_json::json!({"subprotocol": "chat.v2", "context": {"user": "ann"}}),
            )
        }
        EventKind::Transport { .. } => Scripted::text("echo"),
        EventKind::Cleanup { .. } => Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
    })
    .await;
    let mut request = gw.ws_url("/app?user=ann").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v2".parse().unwrap(),
    );
    request
        .headers_mut()
        .insert("user-agent", "itest/1".parse().unwrap());
    let (mut client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
    send_text(&mut client, "hi").await;
    let reply = next_message(&mut client).await.unwrap();
    assert_eq!(
        reply.to_text().unwrap(),
        "echo",
        "two-way reply reaches the client"
    );
    let id = function.wait_register().await;
    let register = &function.events_of("register", &id)[0];
    assert_eq!(register.seq, 0);
    match &register.kind {
        EventKind::Register { request } => {
            assert_eq!(request.path, "/app");
            assert_eq!(request.subprotocols, ["chat.v1", "chat.v2"]);
            assert_eq!(request.header("user-agent"), Some("itest/1"));
            assert_eq!(request.source_ip, "127.0.0.1");
        }
        other => panic!("{other:?}"),
    }
    let transport = &function.events_of("transport", &id)[0];
    assert_eq!(transport.seq, 1);
    assert_eq!(transport.context, serde_json::json!({"user": "ann"}));
    let record = gw.store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.context, serde_json::json!({"user": "ann"}));
    drop(client);
    let cleanup = function.wait_cleanup(&id).await;
    assert_eq!(cleanup.seq, 2);
    assert_eq!(cleanup.context, serde_json::json!({"user": "ann"}));
    gw.shutdown().await;
}
