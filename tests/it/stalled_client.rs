//! A client that completes the handshake and then reads nothing: the gateway's writes to
//! it block, yet the write deadline, DELETE through the send-back API and SIGTERM each
//! still end the connection, send its one cleanup and free its slot.

use std::net::SocketAddr;
use std::time::Duration;

use functions::event::{DisconnectReason, EventKind};
use tests::gateway::{TestGateway, post_to_connection, sendback_request};
use tests::process::GatewayProcess;
use tests::scripted::{Scripted, ScriptedFunction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One send-back message: 64 KiB, so a few fill the small receive buffer.
const MESSAGE: usize = 64 * 1024;

async fn function() -> ScriptedFunction {
    ScriptedFunction::start(|e| match e.kind {
        EventKind::Transport { .. } => Scripted::status(204),
        _ => Scripted::ok(),
    })
    .await
}

/// Opens a WebSocket to `public` by hand with a small receive buffer, and never reads
/// after the 101.
async fn stalled_client(public: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    // Set before connect, so the advertised window stays small.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(public).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {public}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The response head, byte by byte: nothing after it may be taken off the socket.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.expect("the 101 response");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Pushes send-backs to `id` until the gateway answers 429: its queue no longer drains,
/// so its socket task is waiting in a write the client does not take.
async fn push_until_blocked(sendback: &str, id: &str) {
    let body = "x".repeat(MESSAGE);
    for _ in 0..2000 {
        let status = post_to_connection(sendback, id, body.clone())
            .await
            .status();
        match status.as_u16() {
            200 => continue,
            429 => return,
            other => panic!("send-back answered {other} before the queue filled"),
        }
    }
    panic!("the queue never filled: the gateway's writes never blocked");
}

fn reason(cleanup: &functions::event::Event) -> DisconnectReason {
    match cleanup.kind {
        EventKind::Cleanup { reason, .. } => reason,
        ref other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_dropped_after_the_write_timeout() {
    let function = function().await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.limits.write_timeout = Duration::from_millis(500);
        c.limits.max_connections = 1;
    })
    .await;
    let _client = stalled_client(gw.public).await;
    let id = function.wait_register().await;
    // The slot is taken.
    assert_eq!(gw.try_connect("/").await.err(), Some(503));
    push_until_blocked(&gw.sendback_url(), &id).await;
    let cleanup = function.wait_cleanup(&id).await;
    assert_eq!(reason(&cleanup), DisconnectReason::ConnectionLost);
    assert_eq!(function.events_of("cleanup", &id).len(), 1);
    // The slot is free again (the client itself still holds its end open).
    tests::wait::eventually(
        "a new connection to be admitted",
        Duration::from_secs(5),
        || async { gw.try_connect("/").await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn delete_closes_a_client_that_reads_nothing_promptly() {
    let function = function().await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.limits.write_timeout = Duration::from_secs(600);
    })
    .await;
    let _client = stalled_client(gw.public).await;
    let id = function.wait_register().await;
    push_until_blocked(&gw.sendback_url(), &id).await;
    let deleted = sendback_request(
        reqwest::Method::DELETE,
        format!("{}/@connections/{id}", gw.sendback_url()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(deleted.status(), 204);
    // The blocked write gets 2 s more (a client that catches up gets its messages and
    // the close frame), then the socket is dropped.
    let cleanup = tokio::time::timeout(Duration::from_secs(5), function.wait_cleanup(&id))
        .await
        .expect("cleanup within 5 s of DELETE (the write timeout is 10 minutes)");
    assert_eq!(reason(&cleanup), DisconnectReason::ServerDisconnect);
    assert_eq!(function.events_of("cleanup", &id).len(), 1);
}

/// SIGTERM with many connections, one of them stalled in a write: every reading client
/// gets 1001, and every connection, the stalled one included, exactly one cleanup
/// before the process exits.
#[tokio::test]
async fn sigterm_sends_the_cleanup_of_a_client_that_reads_nothing() {
    const READERS: usize = 100;
    let function = function().await;
    let url = function.url();
    let config = format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{token}\"\n[functions]\nregister = \"{url}\"\ntransport = \"{url}\"\n\
         cleanup = \"{url}\"\n[limits]\nwrite_timeout = \"10m\"\n[shutdown]\ngrace = \"2s\"\n",
        token = tests::gateway::TOKEN,
    );
    let gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let public: SocketAddr = gateway.public().parse().unwrap();
    let sendback = format!("http://{}", gateway.sendback());
    let _stalled = stalled_client(public).await;
    let stalled = function.wait_register().await;
    push_until_blocked(&sendback, &stalled).await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (client, _) = tokio_tungstenite::connect_async(format!("ws://{public}/"))
            .await
            .expect("connect");
        readers.push(tokio::spawn(async move {
            let mut client = client;
            tests::gateway::expect_close(&mut client)
                .await
                .map(|f| u16::from(f.code))
        }));
    }
    let registered = function
        .wait_until("every register", Duration::from_secs(10), |e| {
            e.iter().filter(|e| e.kind.name() == "register").count() == READERS + 1
        })
        .await;
    // Exits successfully within 15 s (grace is 2 s)...
    gateway.terminate().await;
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(1001));
    }
    // ... and every cleanup went out before it did.
    for id in registered.iter().map(|e| &e.connection_id) {
        let cleanups = function.events_of("cleanup", id);
        assert_eq!(cleanups.len(), 1, "cleanups of {id}: {cleanups:?}");
        assert_eq!(reason(&cleanups[0]), DisconnectReason::Shutdown);
    }
}
