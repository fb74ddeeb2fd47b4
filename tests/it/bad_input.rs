//! Bad input on every surface: oversize and invalid frames, garbage and stalled
//! handshakes, functions that answer with floods. Each gets its documented outcome and the
//! gateway keeps serving other clients.

use std::time::Duration;

use functions::event::EventKind;
use futures_util::SinkExt;
use tests::gateway::{Client, TestGateway, expect_close, next_message, send_text};
use tests::scripted::{Scripted, ScriptedFunction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn setup(configure: impl FnOnce(&mut gateway::Config)) -> (ScriptedFunction, TestGateway) {
    let function = ScriptedFunction::start(|e| match &e.kind {
        EventKind::Transport { data, .. } if data == "flood" => {
            Scripted::text("x".repeat(10 * 1024 * 1024))
        }
        EventKind::Transport { .. } => Scripted::status(204),
        _ => Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.limits.max_message_bytes = 64 * 1024;
        configure(c);
    })
    .await;
    (function, gw)
}

/// The bystander still gets heartbeat answers from the gateway.
async fn still_serving(bystander: &mut Client) {
    send_text(bystander, "ping").await;
    assert_eq!(
        next_message(bystander).await,
        Some(Message::text("pong")),
        "the gateway stopped serving others"
    );
}

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let (_f, gw) = setup(|_| {}).await;
    let mut bystander = gw.connect("/").await;
    let mut client = gw.connect("/").await;
    client
        .send(Message::binary(vec![7u8; 64 * 1024 + 1]))
        .await
        .unwrap();
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    still_serving(&mut bystander).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let (_f, gw) = setup(|_| {}).await;
    let mut bystander = gw.connect("/").await;
    let mut client = gw.connect("/").await;
    let frame = Frame::message(vec![0xffu8, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    client.send(Message::Frame(frame)).await.unwrap();
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1007);
    still_serving(&mut bystander).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_gets_400() {
    let (_f, gw) = setup(|_| {}).await;
    let mut bystander = gw.connect("/").await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(b"\x16\x03\x01 this is not http\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // A well-formed request that is not an upgrade gets 426.
    let r = reqwest::get(format!("http://{}/", gw.public))
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    still_serving(&mut bystander).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn stalled_handshake_is_dropped_after_the_timeout() {
    let (function, gw) = setup(|c| c.limits.handshake_timeout = Duration::from_millis(300)).await;
    let mut bystander = gw.connect("/").await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("the gateway drops a stalled handshake")
        .ok();
    // It never became a connection: only the bystander registered.
    assert_eq!(
        function
            .events()
            .iter()
            .filter(|e| e.kind.name() == "register")
            .count(),
        1
    );
    still_serving(&mut bystander).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn flooding_function_reply_closes_that_client_only() {
    let (function, gw) = setup(|_| {}).await;
    let mut bystander = gw.connect("/").await;
    let mut client = gw.connect("/").await;
    send_text(&mut client, "flood").await;
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1011);
    still_serving(&mut bystander).await;
    // The flood was not retried: a reply too large is not a passing fault.
    let floods = function
        .events()
        .into_iter()
        .filter(|e| matches!(&e.kind, EventKind::Transport { data, .. } if data == "flood"))
        .count();
    assert_eq!(floods, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_websocket_version_gets_426() {
    let (_f, gw) = setup(|_| {}).await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 426"), "{reply}");
    assert!(reply.contains("sec-websocket-version: 13"), "{reply}");
    gw.shutdown().await;
}
