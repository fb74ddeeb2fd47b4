//! Two gateway nodes sharing one store (the embedded store shared in-process, and a real
//! Redis): every send-back request made to one node reaches a connection the other holds:
//! send, get, batch, group send, AWS `@connections`, Tencent push, disconnect. And the
//! SDK given both nodes' URLs keeps reaching connections when one node is killed.

use std::sync::Arc;
use std::time::Duration;

use functions::api::{BatchResult, DeliveryStatus};
use reqwest::Method;
use tests::gateway::{
    Client, TestGateway, connection_info, expect_close, group_send, next_message,
    post_to_connection, sendback_request,
};
use tests::process::GatewayProcess;
use tests::scripted::ScriptedFunction;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn send_backs_reach_connections_on_the_other_node_memory() {
    send_backs_cross_nodes(Arc::new(store::MemoryStore::new())).await;
}

#[tokio::test]
async fn send_backs_reach_connections_on_the_other_node_redis() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = format!("it-nodes-{}", uuid::Uuid::new_v4().simple());
    send_backs_cross_nodes(store::open(&redis.url(), &prefix).await.unwrap()).await;
}

async fn node(name: &str, function: &ScriptedFunction, store: store::SharedStore) -> TestGateway {
    let url = function.url();
    let name = name.to_owned();
    let options = gateway::Options {
        store: Some(store),
        ..gateway::Options::default()
    };
    TestGateway::start_with(
        move |c| {
            c.node_id = name;
            c.functions.register = Some(url.clone().into());
            c.functions.cleanup = Some(url.into());
            // Lets the AWS management API be called unsigned (loopback only).
            c.sendback.insecure_no_auth = true;
        },
        options,
    )
    .await
}

async fn expect(client: &mut Client, text: &str) {
    assert_eq!(next_message(client).await, Some(Message::text(text)));
}

async fn send_backs_cross_nodes(store: store::SharedStore) {
    let function = ScriptedFunction::accepting().await;
    let a = node("node-a", &function, store.clone()).await;
    let b = node("node-b", &function, store.clone()).await;
    let mut on_a = a.connect("/").await;
    let id_a = function.wait_register().await;
    let mut on_b = b.connect("/").await;
    let id_b = function
        .wait_until("two registers", Duration::from_secs(10), |e| e.len() >= 2)
        .await[1]
        .connection_id
        .clone();
    let via_b = b.sendback_url();

    // One connection: send and get, through the node that does not hold it.
    let r = post_to_connection(&via_b, &id_a, "hello").await;
    assert_eq!(r.status(), 200);
    expect(&mut on_a, "hello").await;
    let info = connection_info(&via_b, &id_a).await;
    assert_eq!(
        (info.connection_id.as_str(), info.node.as_str()),
        (id_a.as_str(), "node-a")
    );

    // A batch split between the nodes, with an unknown id.
    let batch = serde_json::json!({"connectionIds": [id_a, id_b, "unknown"], "data": "both"});
    let result: BatchResult = sendback_request(Method::POST, format!("{via_b}/@connections"))
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((result.delivered, result.gone), (2, 1), "{result:?}");
    let statuses: Vec<DeliveryStatus> = result.results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            DeliveryStatus::Delivered,
            DeliveryStatus::Delivered,
            DeliveryStatus::Gone
        ]
    );
    expect(&mut on_a, "both").await;
    expect(&mut on_b, "both").await;

    // A group with a member on each node, sent to through either.
    store.join("room", &id_a).await.unwrap();
    store.join("room", &id_b).await.unwrap();
    for base in [a.sendback_url(), via_b.clone()] {
        let result = group_send(&base, "room", "to the room").await;
        assert_eq!((result.delivered, result.gone), (2, 0), "{result:?}");
        expect(&mut on_a, "to the room").await;
        expect(&mut on_b, "to the room").await;
    }
    let result = group_send(&via_b, &format!("room?exclude={id_b}"), "not to b").await;
    assert_eq!(
        (result.delivered, result.excluded, result.gone),
        (1, 1, 0),
        "{result:?}"
    );
    expect(&mut on_a, "not to b").await;

    // The AWS management API and the Tencent push, relayed as they came.
    let r = reqwest::Client::new()
        .post(format!("{via_b}/prod/@connections/{id_a}"))
        .body("from aws")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect(&mut on_a, "from aws").await;
    let push = serde_json::json!({"websocket": {
        "action": "data send", "secConnectionID": id_a, "data": "from tencent"}});
    let r = reqwest::Client::new()
        .post(format!("{via_b}/@tencent/{}", tests::gateway::TOKEN))
        .json(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["errNo"], 0, "{answer}");
    expect(&mut on_a, "from tencent").await;

    // Disconnect through the other node; then the connection is gone everywhere.
    let r = sendback_request(
        Method::DELETE,
        format!("{via_b}/@connections/{id_a}?code=4000"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let close = expect_close(&mut on_a).await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    function.wait_cleanup(&id_a).await;
    tests::wait::eventually("the store to forget it", Duration::from_secs(10), || {
        let store = store.clone();
        let id = id_a.clone();
        async move { store.get(&id).await.unwrap().is_none() }
    })
    .await;
    let r = post_to_connection(&via_b, &id_a, "too late").await;
    assert_eq!(r.status(), 410);
    drop(on_b);
    a.shutdown().await;
    b.shutdown().await;
}

/// A connection record on `node`, with a new id.
fn record_on(node: &str) -> store::ConnectionRecord {
    store::ConnectionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        node: node.into(),
        connected_at_ms: 0,
        source_ip: "10.0.0.9".into(),
        user_agent: None,
        context: serde_json::Value::Null,
    }
}

/// A node that is alive in the store but does not answer: a send to its connection is a
/// 503 (retryable: the connection is not gone) naming the cause, within the relay timeout;
/// a group send still reaches every other member, counts that node's members as gone and
/// names the node.
#[tokio::test]
async fn an_unreachable_node_is_a_503_and_does_not_stop_group_sends() {
    let store: store::SharedStore = Arc::new(store::MemoryStore::new());
    let function = ScriptedFunction::accepting().await;
    let a = node("node-a", &function, store.clone()).await;
    let mut client = a.connect("/").await;
    let id = function.wait_register().await;
    // Node C: a heartbeat whose address refuses connections, and one connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    store
        .heartbeat("node-c", &address, Duration::from_secs(60))
        .await
        .unwrap();
    let ghost_record = record_on("node-c");
    let ghost = ghost_record.id.clone();
    store.register(&ghost_record).await.unwrap();

    let r = post_to_connection(&a.sendback_url(), &ghost, "x").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "node_unavailable", "{body}");

    // Node D accepts connections but never answers: unreachable too, after the relay's
    // time limit.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    store
        .heartbeat("node-d", &silent_address, Duration::from_secs(60))
        .await
        .unwrap();
    let mut quiet = record_on("node-d");
    quiet.id = uuid::Uuid::new_v4().to_string();
    store.register(&quiet).await.unwrap();
    let started = std::time::Instant::now();
    let r = sendback_request(
        Method::GET,
        format!("{}/@connections/{}", a.sendback_url(), quiet.id),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    // `relay_timeout` (2 s by default), not longer.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    store.unregister(&quiet.id).await.unwrap();
    held.abort();

    store.join("room", &id).await.unwrap();
    store.join("room", &ghost).await.unwrap();
    let result = group_send(&a.sendback_url(), "room", "still here").await;
    assert_eq!((result.delivered, result.gone), (1, 1), "{result:?}");
    assert_eq!(result.unreachable_nodes, ["node-c", "node-d"], "{result:?}");
    expect(&mut client, "still here").await;
    store.unregister(&ghost).await.unwrap();
    a.shutdown().await;
}

/// The SDK given both nodes' send-back URLs, the first node killed (SIGKILL: no drain, no
/// goodbye): every request to a connection on the second node still succeeds, the dead one
/// costing a failed connect. A client given only the dead node's URL fails, as every
/// function did before it could be given more than one.
#[tokio::test]
async fn sendback_fails_over_when_a_node_is_killed() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let function = ScriptedFunction::accepting().await;
    let prefix = format!("it-failover-{}", uuid::Uuid::new_v4().simple());
    let config = |node: &str| {
        format!(
            "node_id = \"{node}\"\nstore = \"{url}\"\nstore_prefix = \"{prefix}\"\n\
             [public]\nlisten = \"127.0.0.1:0\"\n\
             [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[functions]\n\
             register = \"{f}\"\ncleanup = \"{f}\"\n",
            url = redis.url(),
            token = tests::gateway::TOKEN,
            f = function.url(),
        )
    };
    let mut first = GatewayProcess::start(&crate::switchboard_bin(), &config("gw-1")).await;
    let second = GatewayProcess::start(&crate::switchboard_bin(), &config("gw-2")).await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{}/", second.public()))
        .await
        .expect("connect to gw-2");
    let id = function.wait_register().await;
    let urls = [
        format!("http://{}", first.sendback()),
        format!("http://{}", second.sendback()),
    ];
    let token = Some(tests::gateway::TOKEN.to_owned());
    let sendback = functions::SendBack::with_urls(&urls, token.clone()).unwrap();
    let only_first = functions::SendBack::new(&urls[0], token).unwrap();

    // Through gw-1, relayed to gw-2.
    sendback
        .send(&id, &functions::Message::text("before"))
        .await
        .unwrap();
    expect(&mut client, "before").await;

    first.process().kill().await;
    for i in 0..3 {
        let text = format!("after {i}");
        sendback
            .send(&id, &functions::Message::text(text.as_str()))
            .await
            .unwrap_or_else(|e| panic!("send {i} after gw-1 died: {e}"));
        expect(&mut client, &text).await;
    }
    sendback.join_group("room", &id).await.unwrap();
    let result = sendback
        .send_to_group("room", &functions::Message::text("to the room"), &[])
        .await
        .unwrap();
    assert_eq!(result.delivered, 1, "{result:?}");
    expect(&mut client, "to the room").await;
    assert_eq!(sendback.get(&id).await.unwrap().node, "gw-2");

    match only_first
        .send(&id, &functions::Message::text("lost"))
        .await
    {
        Err(functions::FunctionsError::Transport(e)) => assert!(e.is_connect(), "{e}"),
        other => panic!("a client of the dead node only: {other:?}"),
    }
    second.terminate().await;
}
