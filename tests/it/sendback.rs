//! The send-back API: every route, authentication, and its error statuses.

use std::time::Duration;

use functions::api::{ApiError, BatchResult, DeliveryStatus};
use reqwest::Method;
use tests::gateway::{
    TestGateway, connection_info, next_message, post_to_connection, sendback_request,
};
use tests::scripted::ScriptedFunction;
use tokio_tungstenite::tungstenite::Message;

async fn setup(configure: impl FnOnce(&mut gateway::Config)) -> (ScriptedFunction, TestGateway) {
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        c.functions.register = Some(url.clone().into());
        c.functions.cleanup = Some(url.into());
        configure(c);
    })
    .await;
    (function, gw)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn post_get_and_batch() {
    let (function, gw) = setup(|_| {}).await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    let base = gw.sendback_url();

    // Text, then binary (by content type), arrive in order.
    let r = post_to_connection(&base, &id, "hello").await;
    assert_eq!(r.status(), 200);
    let r = sendback_request(Method::POST, format!("{base}/@connections/{id}"))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 159, 255])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("hello"))
    );
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0u8, 159, 255]))
    );

    // GET: what the gateway knows.
    let info = connection_info(&base, &id).await;
    assert_eq!(info.connection_id, id);
    assert_eq!(info.source_ip, "127.0.0.1");
    assert!(info.connected_at.ends_with('Z'), "{}", info.connected_at);
    assert!(info.last_active_at >= info.connected_at);

    // Batch: a live id, a gone (well-formed) id and a garbage id.
    let gone = uuid::Uuid::new_v4().to_string();
    let result: BatchResult = sendback_request(Method::POST, format!("{base}/@connections"))
        .json(&serde_json::json!({"connectionIds": [id, gone, "nope"], "data": "to many"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((result.delivered, result.gone, result.throttled), (1, 2, 0));
    assert_eq!(result.results[0].status, DeliveryStatus::Delivered);
    assert_eq!(result.results[1].status, DeliveryStatus::Gone);
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("to many"))
    );

    // Binary batch, base64.
    let result: BatchResult = sendback_request(Method::POST, format!("{base}/@connections"))
        .json(&serde_json::json!({"connectionIds": [id], "data": "AAEC", "dataType": "binary"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result.delivered, 1);
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0u8, 1, 2]))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn errors_have_statuses_and_json_bodies() {
    let (function, gw) = setup(|c| c.limits.max_message_bytes = 1024).await;
    let _client = gw.connect("/").await;
    let id = function.wait_register().await;
    let base = gw.sendback_url();
    let url = format!("{base}/@connections/{id}");

    let no_token = http().post(&url).body("x").send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = http()
        .post(&url)
        .bearer_auth("wrong-token-0123456789")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    for gone in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_owned()] {
        let r = post_to_connection(&base, &gone, "x").await;
        assert_eq!(r.status(), 410);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "gone");
        let r = sendback_request(Method::GET, format!("{base}/@connections/{gone}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 410);
        let r = sendback_request(Method::DELETE, format!("{base}/@connections/{gone}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 410);
    }

    let r = sendback_request(Method::POST, &url)
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = sendback_request(Method::POST, format!("{base}/@connections"))
        .json(&serde_json::json!({"connectionIds": [id], "data": "x".repeat(1025)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = sendback_request(Method::POST, &url)
        .body(vec![0xffu8, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "invalid UTF-8 as text");
    let r = sendback_request(Method::POST, format!("{base}/@connections"))
        .body("{\"connectionIds\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = sendback_request(Method::DELETE, format!("{url}?code=1006"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "1006 may not be sent");
    let r = sendback_request(Method::PUT, &url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = sendback_request(Method::GET, format!("{base}/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_batch_over_max_batch_ids_is_refused_whole() {
    let (function, gw) = setup(|c| c.sendback.max_batch_ids = 5).await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    let base = gw.sendback_url();
    // The live connection first, then ids of no connection.
    let batch = |n: usize, data: &str| {
        let ids: Vec<String> = std::iter::once(id.clone())
            .chain(std::iter::repeat_with(|| uuid::Uuid::new_v4().to_string()))
            .take(n)
            .collect();
        sendback_request(Method::POST, format!("{base}/@connections"))
            .json(&serde_json::json!({"connectionIds": ids, "data": data}))
            .send()
    };

    // Six ids: refused whole, with the limit named.
    let r = batch(6, "refused").await.unwrap();
    assert_eq!(r.status(), 413);
    let error: ApiError = r.json().await.unwrap();
    assert_eq!(error.error, "payload_too_large");
    assert!(
        error.message.contains("at most 5") && error.message.contains("sendback.max_batch_ids"),
        "{}",
        error.message
    );
    // Nothing reached the live connection: the next message it gets is this one.
    assert_eq!(post_to_connection(&base, &id, "first").await.status(), 200);
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("first"))
    );

    // Five ids: sent.
    let r = batch(5, "accepted").await.unwrap();
    assert_eq!(r.status(), 200);
    let result: BatchResult = r.json().await.unwrap();
    assert_eq!(
        (result.delivered, result.gone, result.results.len()),
        (1, 4, 5)
    );
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("accepted"))
    );

    // No ids: nothing to do, an empty result.
    let r = batch(0, "none").await.unwrap();
    assert_eq!(r.status(), 200);
    let result: BatchResult = r.json().await.unwrap();
    assert_eq!(result, BatchResult::default());
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_client_gets_429_not_unbounded_memory() {
    let (function, gw) = setup(|c| {
        c.limits.outbound_queue_messages = 4;
        c.limits.outbound_queue_bytes = 256 * 1024;
    })
    .await;
    // A client that never reads: the kernel buffers fill, then the outbound queue.
    let client = gw.connect("/").await;
    let id = function.wait_register().await;
    let url = format!("{}/@connections/{id}", gw.sendback_url());
    let chunk = vec![b'x'; 64 * 1024];
    let mut throttled = None;
    for i in 0..2000 {
        let r = sendback_request(Method::POST, &url)
            .body(chunk.clone())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => continue,
            429 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"], "throttled");
                throttled = Some(i);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let sent = throttled.expect("a send was throttled");
    // The connection is still there (throttling does not drop it).
    let r = sendback_request(Method::GET, &url).send().await.unwrap();
    assert_eq!(r.status(), 200, "after {sent} sends");
    drop(client);
    function.wait_cleanup(&id).await;
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn token_can_be_disabled_on_loopback_only() {
    let (function, gw) = setup(|c| {
        c.sendback.token = None;
        c.sendback.insecure_no_auth = true;
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    let r = http()
        .post(format!("{}/@connections/{id}", gw.sendback_url()))
        .body("open")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(next_message(&mut client).await, Some(Message::text("open")));
    gw.shutdown().await;
}

/// `limits.write_delay`: messages sent through the send-back API are held for the delay and
/// then written together, in order; the function's reply to the client's own message is not
/// held.
#[tokio::test]
async fn write_delay_holds_send_backs_but_not_replies() {
    const DELAY: Duration = Duration::from_secs(1);
    let function = ScriptedFunction::start(|e| match e.kind.name() {
        "transport" => tests::scripted::Scripted::text("reply"),
        _ => tests::scripted::Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        c.functions.register = Some(url.clone().into());
        c.functions.transport = Some(url.into());
        c.limits.write_delay = DELAY;
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    let base = gw.sendback_url();
    let sent = std::time::Instant::now();
    for text in ["one", "two"] {
        let r = post_to_connection(&base, &id, text).await;
        assert_eq!(r.status(), 200);
    }
    tests::gateway::send_text(&mut client, "hi").await;
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("reply")),
        "the transport reply overtakes the held send-backs"
    );
    assert_eq!(next_message(&mut client).await, Some(Message::text("one")));
    assert!(sent.elapsed() >= DELAY, "held for {:?}", sent.elapsed());
    assert_eq!(next_message(&mut client).await, Some(Message::text("two")));
    gw.shutdown().await;
}

/// Group sends reach exactly the group's members as they are now, though members join and
/// leave behind the gateway's back (functions write the store directly) and the gateway
/// keeps each group's members between sends: on the embedded store and on Redis.
#[tokio::test]
async fn group_sends_follow_members_changed_in_the_store() {
    group_sends_follow_the_store(std::sync::Arc::new(store::MemoryStore::new())).await;
    if let Some(redis) = tests::redis::require_redis() {
        let prefix = format!("it-groups-{}", uuid::Uuid::new_v4().simple());
        let store = store::open(&redis.url(), &prefix).await.unwrap();
        group_sends_follow_the_store(store).await;
    }
}

async fn expect(client: &mut tests::gateway::Client, text: &str) {
    assert_eq!(next_message(client).await, Some(Message::text(text)));
}

async fn group_sends_follow_the_store(store: store::SharedStore) {
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let options = gateway::Options {
        store: Some(store.clone()),
        ..gateway::Options::default()
    };
    let gw = TestGateway::start_with(
        move |c| {
            c.functions.register = Some(url.clone().into());
            c.functions.cleanup = Some(url.into());
        },
        options,
    )
    .await;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for n in 1..=3 {
        clients.push(gw.connect("/").await);
        let events = function
            .wait_until("a register", Duration::from_secs(10), |e| e.len() >= n)
            .await;
        ids.push(events[n - 1].connection_id.clone());
    }
    let base = gw.sendback_url();
    let publish = |text: &'static str, query: String| {
        let base = base.clone();
        async move { tests::gateway::group_send(&base, &format!("room{query}"), text).await }
    };

    store.join("room", &ids[0]).await.unwrap();
    store.join("room", &ids[1]).await.unwrap();
    for text in ["m1", "m2"] {
        let result = publish(text, String::new()).await;
        assert_eq!(
            (result.delivered, result.gone),
            (2, 0),
            "{text}: {result:?}"
        );
        expect(&mut clients[0], text).await;
        expect(&mut clients[1], text).await;
    }

    // A join made elsewhere is seen by the next send.
    store.join("room", &ids[2]).await.unwrap();
    let result = publish("m3", String::new()).await;
    assert_eq!(result.delivered, 3, "{result:?}");
    for client in &mut clients {
        expect(client, "m3").await;
    }

    // So is a leave; exclusions apply to the kept members too.
    store.leave("room", &ids[0]).await.unwrap();
    let result = publish("m4", format!("?exclude={}", ids[1])).await;
    assert_eq!((result.delivered, result.excluded), (1, 1), "{result:?}");
    expect(&mut clients[2], "m4").await;
    let direct = |id: &str| format!("{base}/@connections/{id}");
    for id in &ids[..2] {
        let r = sendback_request(Method::POST, direct(id))
            .body("direct")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    expect(&mut clients[0], "direct").await;
    expect(&mut clients[1], "direct").await;

    // And a member that disconnected (its cleanup leaves every group).
    drop(clients.remove(1));
    function.wait_cleanup(&ids[1]).await;
    tests::wait::eventually("the store to forget it", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.count("room").await.unwrap() == 1 }
    })
    .await;
    let result = publish("m5", String::new()).await;
    assert_eq!((result.delivered, result.gone), (1, 0), "{result:?}");
    expect(&mut clients[1], "m5").await;
    store.leave("room", &ids[2]).await.unwrap();
    let result = publish("m6", String::new()).await;
    assert_eq!(result.delivered, 0, "{result:?}");
    drop(clients);
    gw.shutdown().await;
}
