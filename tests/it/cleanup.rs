//! Cleanup fires exactly once for every way an accepted connection can end, and the
//! store forgets the connection (and its groups) afterwards.

use std::process::Stdio;
use std::time::Duration;

use functions::event::{DisconnectReason, EventKind};
use futures_util::{SinkExt, StreamExt};
use tests::gateway::{Client, TestGateway, expect_close, send_text};
use tests::scripted::{Scripted, ScriptedFunction};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

struct Setup {
    function: ScriptedFunction,
    gw: TestGateway,
}

async fn setup(configure: impl FnOnce(&mut gateway::Config)) -> Setup {
    let function = ScriptedFunction::start(|e| match e.kind {
        EventKind::Transport { .. } => Scripted::status(204),
        _ => Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        configure(c);
    })
    .await;
    Setup { function, gw }
}

impl Setup {
    /// Connects, and joins the connection to a group the way a function would.
    async fn connect(&self) -> (Client, String) {
        let client = self.gw.connect("/").await;
        let id = self.function.wait_register().await;
        self.gw.store.join("room", &id).await.unwrap();
        (client, id)
    }

    /// Waits for the one cleanup of `id` and checks the store forgot it.
    async fn assert_cleaned_once(&self, id: &str, reason: DisconnectReason) {
        let cleanup = self.function.wait_cleanup(id).await;
        match cleanup.kind {
            EventKind::Cleanup { reason: got, .. } => assert_eq!(got, reason),
            other => panic!("{other:?}"),
        }
        let store = self.gw.store.clone();
        let owned = id.to_owned();
        tests::wait::eventually(
            "the store to forget the connection",
            Duration::from_secs(5),
            move || {
                let (store, id) = (store.clone(), owned.clone());
                async move {
                    store.get(&id).await.unwrap().is_none()
                        && store.count("room").await.unwrap() == 0
                }
            },
        )
        .await;
        // Nothing more arrives for this id: a second cleanup would follow the first at once.
        self.gw_quiet().await;
        assert_eq!(
            self.function.events_of("cleanup", id).len(),
            1,
            "cleanup fired more than once"
        );
    }

    /// Lets any in-flight call land (the gateway serves a ping-pong round trip).
    async fn gw_quiet(&self) {
        let (mut probe, _) = tokio_tungstenite::connect_async(self.gw.ws_url("/probe"))
            .await
            .unwrap();
        send_text(&mut probe, "ping").await;
        let _ = tests::gateway::next_message(&mut probe).await;
    }
}

#[tokio::test]
async fn client_close() {
    let s = setup(|_| {}).await;
    let (mut client, id) = s.connect().await;
    client
        .close(Some(CloseFrame {
            code: 4000.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    // The gateway answers the close handshake (RFC 6455 5.5.1) before the TCP close.
    let answer = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("no answer to the close frame");
    assert!(
        matches!(answer, Some(Ok(Message::Close(Some(ref f)))) if u16::from(f.code) == 4000),
        "the close frame was not answered: {answer:?}"
    );
    s.assert_cleaned_once(&id, DisconnectReason::ClientClose)
        .await;
    let cleanup = s.function.wait_cleanup(&id).await;
    match cleanup.kind {
        EventKind::Cleanup {
            close_code,
            close_reason,
            ..
        } => {
            assert_eq!(close_code, Some(4000));
            assert_eq!(close_reason, "bye");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tcp_reset() {
    let s = setup(|_| {}).await;
    let (client, id) = s.connect().await;
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.get_ref() {
        // SO_LINGER 0: closing sends RST instead of FIN.
        socket2::SockRef::from(tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(client);
    s.assert_cleaned_once(&id, DisconnectReason::ConnectionLost)
        .await;
}

#[tokio::test]
async fn tcp_close_without_a_close_frame_is_a_lost_connection() {
    let s = setup(|_| {}).await;
    let (client, id) = s.connect().await;
    // Dropping the stream closes the socket with a FIN and no close frame.
    drop(client);
    s.assert_cleaned_once(&id, DisconnectReason::ConnectionLost)
        .await;
    let cleanup = s.function.wait_cleanup(&id).await;
    match cleanup.kind {
        EventKind::Cleanup { close_code, .. } => assert_eq!(close_code, None),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sends_during_a_close_handshake_are_refused_not_lost() {
    let s = setup(|_| {}).await;
    // The client never reads, so it never answers the close frame: the gateway waits
    // for the answer (up to its close timeout) with the connection still registered.
    let (client, id) = s.connect().await;
    let http = reqwest::Client::new();
    let url = format!("{}/@connections/{id}", s.gw.sendback_url());
    let status = |r: reqwest::Response| r.status().as_u16();
    let delete = http
        .delete(&url)
        .bearer_auth(tests::gateway::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status(delete), 204);
    let post = http
        .post(&url)
        .bearer_auth(tests::gateway::TOKEN)
        .body("too late")
        .send()
        .await
        .unwrap();
    assert_eq!(
        status(post),
        410,
        "a message accepted after the close request"
    );
    let again = http
        .delete(&url)
        .bearer_auth(tests::gateway::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status(again), 410, "a second close of a closing connection");
    drop(client);
    s.assert_cleaned_once(&id, DisconnectReason::ServerDisconnect)
        .await;
}

#[tokio::test]
async fn idle_timeout() {
    let s = setup(|c| c.limits.idle_timeout = Duration::from_millis(300)).await;
    let (mut client, id) = s.connect().await;
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "idle timeout");
    s.assert_cleaned_once(&id, DisconnectReason::IdleTimeout)
        .await;
}

#[tokio::test]
async fn heartbeat_counts_as_activity() {
    let s = setup(|c| c.limits.idle_timeout = Duration::from_millis(600)).await;
    let (mut client, id) = s.connect().await;
    let started = tokio::time::Instant::now();
    // Keep the connection busy with heartbeats for well past the idle timeout.
    while started.elapsed() < Duration::from_millis(1500) {
        send_text(&mut client, "ping").await;
        let reply = tests::gateway::next_message(&mut client)
            .await
            .expect("pong");
        assert_eq!(reply.to_text().unwrap(), "pong");
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not synchronisation
    }
    assert!(
        s.function.events_of("cleanup", &id).is_empty(),
        "closed despite heartbeats"
    );
    assert!(
        s.function.events_of("transport", &id).is_empty(),
        "heartbeat reached the transport function"
    );
    // Then silence: the idle timeout closes it.
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
}

#[tokio::test]
async fn dead_client_is_dropped_after_unanswered_pings() {
    let s = setup(|c| c.limits.ping_interval = Duration::from_millis(200)).await;
    let (client, id) = s.connect().await;
    // A client that never reads never answers pings.
    s.assert_cleaned_once(&id, DisconnectReason::PingTimeout)
        .await;
    drop(client);
}

#[tokio::test]
async fn max_duration() {
    let s = setup(|c| c.limits.max_duration = Duration::from_millis(300)).await;
    let (mut client, id) = s.connect().await;
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    s.assert_cleaned_once(&id, DisconnectReason::MaxDuration)
        .await;
}

#[tokio::test]
async fn delete_through_send_back() {
    let s = setup(|_| {}).await;
    let (mut client, id) = s.connect().await;
    let response = reqwest::Client::new()
        .delete(format!(
            "{}/@connections/{id}?code=4001&reason=kicked",
            s.gw.sendback_url()
        ))
        .bearer_auth(tests::gateway::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4001);
    assert_eq!(frame.reason.as_str(), "kicked");
    s.assert_cleaned_once(&id, DisconnectReason::ServerDisconnect)
        .await;
}

#[tokio::test]
async fn in_process_shutdown_closes_with_1001_and_cleans_up() {
    let s = setup(|_| {}).await;
    let (mut a, id_a) = s.connect().await;
    let mut b = s.gw.connect("/").await;
    let id_b = s
        .function
        .wait_until("two registers", Duration::from_secs(5), |e| {
            e.iter().filter(|e| e.kind.name() == "register").count() == 2
        })
        .await
        .into_iter()
        .filter(|e| e.kind.name() == "register")
        .map(|e| e.connection_id)
        .find(|id| *id != id_a)
        .unwrap();
    let Setup { function, gw } = s;
    let shutdown = tokio::spawn(gw.shutdown());
    for client in [&mut a, &mut b] {
        let frame = expect_close(client).await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1001);
    }
    shutdown.await.unwrap();
    // Shutdown waited for both cleanups.
    for id in [&id_a, &id_b] {
        assert_eq!(function.events_of("cleanup", id).len(), 1);
    }
}

#[tokio::test]
async fn transport_failure_closes_with_1011_after_retries() {
    let function = ScriptedFunction::start(|e| match e.kind {
        EventKind::Transport { .. } => Scripted::status(503),
        _ => Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.functions.retries = 2;
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    client.send(Message::text("doomed")).await.unwrap();
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1011);
    let cleanup = function.wait_cleanup(&id).await;
    assert!(matches!(
        cleanup.kind,
        EventKind::Cleanup {
            reason: DisconnectReason::FunctionFailed,
            ..
        }
    ));
    // One try and two retries, all with the same seq so the function can tell.
    let tries = function.events_of("transport", &id);
    assert_eq!(tries.len(), 3);
    assert!(tries.iter().all(|e| e.seq == 1));
    gw.shutdown().await;
}

#[tokio::test]
async fn sigterm_closes_with_1001_and_cleans_up_every_connection() {
    let function = ScriptedFunction::accepting().await;
    let dir = std::env::temp_dir().join(format!("sb-sigterm-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n[functions]\nregister = \"{u}\"\ntransport = \"{u}\"\ncleanup = \"{u}\"\n",
            tests::gateway::TOKEN,
            u = function.url()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(crate::switchboard_bin())
        .args(["--config", config.to_str().unwrap()])
        .env("SWITCHBOARD_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The address is in the "gateway listening" log line.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let public = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("gateway starts")
            .unwrap()
            .expect("log line");
        if let Some(rest) = line.split("public=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (c, _) = tokio_tungstenite::connect_async(format!("ws://{public}/"))
            .await
            .unwrap();
        clients.push(c);
    }
    let events = function
        .wait_until("three registers", Duration::from_secs(5), |e| {
            e.iter().filter(|e| e.kind.name() == "register").count() == 3
        })
        .await;
    let ids: Vec<String> = events.into_iter().map(|e| e.connection_id).collect();
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for c in &mut clients {
        let frame = expect_close(c).await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1001);
    }
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    for id in &ids {
        let cleanups = function.events_of("cleanup", id);
        assert_eq!(cleanups.len(), 1, "cleanups for {id}: {cleanups:?}");
        assert!(matches!(
            cleanups[0].kind,
            EventKind::Cleanup {
                reason: DisconnectReason::Shutdown,
                ..
            }
        ));
    }
    std::fs::remove_dir_all(&dir).ok();
}
