//! Connection limits and the gateway-answered heartbeat.

use tests::gateway::{TestGateway, expect_close, next_message, send_text};
use tests::scripted::ScriptedFunction;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn max_connections_refuses_with_503_and_frees_slots() {
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        c.functions.cleanup = Some(url.into());
        c.limits.max_connections = 2;
    })
    .await;
    let a = gw.connect("/").await;
    let _b = gw.connect("/").await;
    assert_eq!(gw.try_connect("/").await.err(), Some(503));
    drop(a);
    // The slot frees once the first connection's cleanup has run.
    function
        .wait_until("a cleanup", std::time::Duration::from_secs(10), |e| {
            e.iter().any(|e| e.kind.name() == "cleanup")
        })
        .await;
    tests::wait::eventually("a free slot", std::time::Duration::from_secs(5), || async {
        gw.try_connect("/").await.is_ok()
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn heartbeat_is_configurable_and_needs_no_function() {
    let gw = TestGateway::start(|c| {
        c.heartbeat.request = "{\"type\":\"hb\"}".into();
        c.heartbeat.reply = "{\"type\":\"hb-ack\"}".into();
    })
    .await;
    let mut client = gw.connect("/").await;
    send_text(&mut client, "{\"type\":\"hb\"}").await;
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("{\"type\":\"hb-ack\"}"))
    );
    // Without a transport function, any other message is refused with 1003.
    send_text(&mut client, "hello").await;
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1003);
    gw.shutdown().await;
}
