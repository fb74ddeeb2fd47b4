//! Passthrough routes: a WebSocket service behind the gateway. Real gateway, real backend
//! (`tests::ws_backend`, tokio-tungstenite), real clients: what the backend's upgrade
//! request holds, subprotocols, auth by the register function, dial failures, messages
//! intact both ways, limits, close codes both ways, pushes and DELETE, cleanup once, idle
//! timeout, backpressure on a slow client, and a `wss://` backend with a private CA.

use std::time::Duration;

use functions::event::{DisconnectReason, EventKind};
use futures_util::SinkExt;
use gateway::Config;
use gateway::config::{ApiKeyConfig, JwtAlgorithm, JwtConfig, PassthroughAuth, PassthroughRoute};
use reqwest::Method;
use tests::gateway::{
    Client, TestGateway, expect_close, next_message, post_to_connection, sendback_request,
};
use tests::scripted::{Scripted, ScriptedFunction};
use tests::wait::eventually;
use tests::ws_backend::{Options, WsBackend};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const WAIT: Duration = Duration::from_secs(10);

/// A client and the gateway's 101, or why not.
type Connected = Result<(Client, http::Response<Option<Vec<u8>>>), WsError>;

fn route(path: &str, backend: &str, auth: PassthroughAuth) -> PassthroughRoute {
    PassthroughRoute {
        path: path.into(),
        backend: backend.into(),
        headers: Default::default(),
        auth,
        max_message_bytes: 12 * 1024 * 1024,
        connect_timeout: Duration::from_secs(5),
        api_key: None,
        jwt: None,
    }
}

/// A gateway with one route, `/v1/realtime` → the backend's `/ws`, changed by `configure`.
async fn gateway_for(
    backend: &str,
    auth: PassthroughAuth,
    configure: impl FnOnce(&mut Config, &mut PassthroughRoute),
) -> TestGateway {
    let mut route = route("/v1/realtime", backend, auth);
    route
        .headers
        .insert("x-upstream-key".into(), "s3cret".into());
    TestGateway::start(|c| {
        configure(c, &mut route);
        c.passthrough = vec![route];
    })
    .await
}

async fn connect(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Connected {
    let mut request = gw.ws_url(path).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request).await
}

fn status_of(result: Connected) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("refused without a status: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}

fn code_of(frame: Option<CloseFrame>) -> Option<(u16, String)> {
    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
}

#[tokio::test]
async fn the_backend_gets_the_path_query_headers_and_subprotocol() {
    let backend = WsBackend::start(Options {
        subprotocols: vec!["b".into()],
        ..Options::default()
    })
    .await;
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::None, |_, _| {}).await;
    let (mut client, response) = connect(
        &gw,
        "/v1/realtime/x/y?model=m1&a=b",
        &[
            ("sec-websocket-protocol", "a, b"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-upstream-key", "from-the-client"),
            ("authorization", "Bearer t"),
        ],
    )
    .await
    .expect("connects");
    assert_eq!(response.headers()["sec-websocket-protocol"], "b");
    let seen = backend.seen().remove(0);
    assert_eq!(seen.uri, "/ws/x/y?model=m1&a=b");
    let h = &seen.headers;
    assert_eq!(h["x-upstream-key"], "s3cret", "the configured header wins");
    assert_eq!(h.get_all("x-upstream-key").iter().count(), 1);
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "the client's address, not its header"
    );
    assert!(h.get("proxy-authorization").is_none(), "hop-by-hop");
    assert!(h.get("te").is_none(), "hop-by-hop");
    assert_eq!(h["authorization"], "Bearer t");
    assert_eq!(h["sec-websocket-protocol"], "a, b");
    assert_eq!(seen.subprotocol.as_deref(), Some("b"));
    // Text and binary come back intact.
    client.send(Message::text("héllo")).await.unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("héllo"))
    );
    let bytes: Vec<u8> = (0..=255).collect();
    client.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(bytes))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_fails_is_502_and_one_that_is_slow_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refusing = WsBackend::start(Options {
        status: Some(403),
        ..Options::default()
    })
    .await;
    let silent = WsBackend::start(Options {
        silent: true,
        ..Options::default()
    })
    .await;
    let timeout = Duration::from_millis(400);
    let gw = TestGateway::start(|c| {
        let mut slow = route("/slow", &silent.url("/"), PassthroughAuth::None);
        slow.connect_timeout = timeout;
        c.passthrough = vec![
            route("/down", &format!("ws://{dead}/"), PassthroughAuth::None),
            route("/refusing", &refusing.url("/"), PassthroughAuth::None),
            slow,
        ];
    })
    .await;
    assert_eq!(status_of(connect(&gw, "/down", &[]).await), 502);
    assert_eq!(status_of(connect(&gw, "/refusing", &[]).await), 502);
    assert_eq!(refusing.seen().len(), 1);
    let started = std::time::Instant::now();
    assert_eq!(status_of(connect(&gw, "/slow", &[]).await), 504);
    let took = started.elapsed();
    assert!(took >= timeout && took < timeout * 5, "{took:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_register_function_decides_and_adds_context_and_headers() {
    let backend = WsBackend::start(Options::default()).await;
    let function = ScriptedFunction::start(|e| match &e.kind {
        EventKind::Register { request } if request.query.contains("user=eve") => {
            Scripted::text("not you").with_status(403)
        }
        EventKind::Register { .. } => Scripted::json(serde_json::json!({
            "context": {"user": "ann"},
            "headers": {"x-user": "ann", "x-upstream-key": "from-function"}
        })),
        _ => Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::Register, |c, _| {
        c.functions.register = Some(url.as_str().into());
        c.functions.cleanup = Some(url.as_str().into());
    })
    .await;
    let refused = connect(&gw, "/v1/realtime?user=eve", &[]).await;
    assert_eq!(status_of(refused), 403);
    assert!(
        backend.seen().is_empty(),
        "a refused client never reaches the backend"
    );
    let (mut client, _) = connect(&gw, "/v1/realtime?user=ann", &[]).await.unwrap();
    let seen = backend.seen().remove(0);
    assert_eq!(seen.headers["x-user"], "ann");
    assert_eq!(seen.headers["x-upstream-key"], "s3cret");
    let id = function.wait_registers(2).await.pop().unwrap();
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut client).await, Some(Message::text("hi")));
    assert!(
        function.events_of("transport", &id).is_empty(),
        "no transport calls"
    );
    client.send(close_frame(1000, "bye")).await.unwrap();
    assert_eq!(backend.wait_close().await, Some((1000, "bye".into())));
    let cleanup = function.wait_cleanup(&id).await;
    assert_eq!(cleanup.context, serde_json::json!({"user": "ann"}));
    match cleanup.kind {
        EventKind::Cleanup {
            reason,
            close_code,
            stats,
            ..
        } => {
            assert_eq!(reason, DisconnectReason::ClientClose);
            assert_eq!(close_code, Some(1000));
            let stats = stats.expect("a passthrough cleanup has stats");
            assert_eq!(
                (
                    stats.messages_in,
                    stats.messages_out,
                    stats.bytes_in,
                    stats.bytes_out
                ),
                (1, 1, 2, 2),
                "one message of 2 bytes each way"
            );
        }
        other => panic!("{other:?}"),
    }
    gw.shutdown().await;
    assert_eq!(
        function.events_of("cleanup", &id).len(),
        1,
        "cleanup exactly once"
    );
}

#[tokio::test]
async fn the_backends_close_code_reaches_the_client_and_a_drop_is_1011() {
    let backend = WsBackend::start(Options::default()).await;
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::Register, |c, _| {
        c.functions.register = Some(url.as_str().into());
        c.functions.cleanup = Some(url.as_str().into());
    })
    .await;
    let (mut client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    let first = function.wait_register().await;
    client.send(Message::text("close:4001:x")).await.unwrap();
    assert_eq!(
        code_of(expect_close(&mut client).await),
        Some((4001, "x".into()))
    );
    let cleanup = function.wait_cleanup(&first).await;
    assert!(matches!(
        cleanup.kind,
        EventKind::Cleanup {
            close_code: Some(4001),
            ..
        }
    ));
    let (mut client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    let second = function.wait_registers(2).await.pop().unwrap();
    client.send(Message::text("drop")).await.unwrap();
    assert_eq!(
        code_of(expect_close(&mut client).await),
        Some((1011, "backend went away".into()))
    );
    function.wait_cleanup(&second).await;
    gw.shutdown().await;
    assert_eq!(function.events_of("cleanup", &first).len(), 1);
    assert_eq!(function.events_of("cleanup", &second).len(), 1);
}

#[tokio::test]
async fn messages_up_to_the_limit_pass_and_a_larger_one_is_1009() {
    let backend = WsBackend::start(Options::default()).await;
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::None, |_, _| {}).await;
    let limit = 12 * 1024 * 1024;
    let (mut client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    let big: Vec<u8> = (0..limit).map(|i| (i % 251) as u8).collect();
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_message(&mut client).await, Some(Message::binary(big)));
    // Fragmented: three frames, one message.
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let parts = [
        ("frag", OpCode::Data(Data::Text), false),
        ("men", OpCode::Data(Data::Continue), false),
        ("ted", OpCode::Data(Data::Continue), true),
    ];
    for (text, opcode, fin) in parts {
        let frame = Frame::message(text.as_bytes().to_vec(), opcode, fin);
        client.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("fragmented"))
    );
    // One byte over the limit: 1009 for the client, 1001 for the backend.
    let (mut over, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    let _ = over.send(Message::binary(vec![0u8; limit + 1])).await;
    assert_eq!(
        code_of(expect_close(&mut over).await).map(|c| c.0),
        Some(1009)
    );
    eventually("the backend closed with 1001", WAIT, || async {
        backend
            .closes()
            .iter()
            .any(|c| matches!(c, Some((1001, _))))
    })
    .await;
    // The backend sending one byte over: 1009 to the backend, 1011 to the client.
    let (mut client2, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    client2
        .send(Message::text(format!("big:{}", limit + 1)))
        .await
        .unwrap();
    assert_eq!(
        code_of(expect_close(&mut client2).await).map(|c| c.0),
        Some(1011)
    );
    eventually("the backend got 1009", WAIT, || async {
        backend
            .closes()
            .iter()
            .any(|c| matches!(c, Some((1009, _))))
    })
    .await;
    drop(client);
    gw.shutdown().await;
}

#[tokio::test]
async fn pushes_reach_a_passthrough_client_and_delete_closes_both_sides() {
    let backend = WsBackend::start(Options::default()).await;
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::Register, |c, _| {
        c.functions.register = Some(url.as_str().into());
        c.functions.cleanup = Some(url.as_str().into());
    })
    .await;
    let (mut client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    let id = function.wait_register().await;
    let base = gw.sendback_url();
    let r = post_to_connection(&base, &id, "pushed").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("pushed"))
    );
    let r = sendback_request(Method::DELETE, format!("{base}/@connections/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(expect_close(&mut client).await.is_some());
    assert_eq!(backend.wait_close().await.map(|c| c.0), Some(1001));
    let cleanup = function.wait_cleanup(&id).await;
    assert!(matches!(
        cleanup.kind,
        EventKind::Cleanup {
            reason: DisconnectReason::ServerDisconnect,
            ..
        }
    ));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_passthrough_connection_times_out_on_both_sides() {
    let backend = WsBackend::start(Options::default()).await;
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::None, |c, _| {
        c.limits.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let (mut client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    assert_eq!(
        code_of(expect_close(&mut client).await),
        Some((1001, "idle timeout".into()))
    );
    assert_eq!(
        backend.wait_close().await,
        Some((1001, "idle timeout".into()))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_stalls_the_backend() {
    let backend = WsBackend::start(Options::default()).await;
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::None, |c, _| {
        c.limits.write_timeout = Duration::from_secs(60);
        c.limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let (mut client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    // 64 KiB messages, far more than every socket buffer on the way could hold.
    let total = 20_000u64;
    client
        .send(Message::text(format!("stream:{total}:65536")))
        .await
        .unwrap();
    // The backend's sends stop: wait until the count holds still for a second.
    let mut last = u64::MAX;
    let mut still_since = std::time::Instant::now();
    tests::wait::eventually("the backend's sends stall", Duration::from_secs(30), || {
        let now = backend.streamed();
        if now != last {
            last = now;
            still_since = std::time::Instant::now();
        }
        let stalled = now > 0 && still_since.elapsed() >= Duration::from_secs(1);
        async move { stalled }
    })
    .await;
    let stalled_at = backend.streamed();
    // Bounded by the socket buffers (a few MiB each way), not by the stream: 1000
    // messages are 64 MiB.
    assert!(stalled_at < 1000, "the backend sent {stalled_at} messages");
    // Reading again lets everything through.
    let mut got = 0u64;
    while got < total {
        match next_message(&mut client).await {
            Some(Message::Binary(b)) => {
                assert_eq!(b.len(), 65536);
                got += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(backend.streamed(), total);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_wss_backend_is_verified_with_the_private_ca() {
    let dir = tempfile_dir();
    let ca = crate::tls::Ca::new("passthrough test CA");
    let leaf = ca.leaf("localhost");
    let backend = WsBackend::start(Options {
        tls: Some(leaf.server_config()),
        ..Options::default()
    })
    .await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let port = backend.addr.port();
    let gw = TestGateway::start(|c| {
        c.functions.ca_file = Some(ca_file.clone());
        c.passthrough = vec![route(
            "/secure",
            &format!("wss://localhost:{port}/ws"),
            PassthroughAuth::None,
        )];
    })
    .await;
    let (mut client, _) = connect(&gw, "/secure", &[])
        .await
        .expect("connects over wss");
    client.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::text("over tls"))
    );
    // Without the CA the backend's certificate does not verify: 502.
    let untrusting = TestGateway::start(|c| {
        c.passthrough = vec![route(
            "/secure",
            &format!("wss://localhost:{port}/ws"),
            PassthroughAuth::None,
        )];
    })
    .await;
    assert_eq!(status_of(connect(&untrusting, "/secure", &[]).await), 502);
    gw.shutdown().await;
    untrusting.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-passthrough-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn dials_are_counted_by_outcome() {
    let backend = WsBackend::start(Options::default()).await;
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::None, |_, _| {}).await;
    let (client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    let text = reqwest::get(gw.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("switchboard_passthrough_dials_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    drop(client);
    gw.shutdown().await;
}

/// A Python `websockets` service, as its users write it, behind the gateway: the
/// configured key gets it past the service's own check, path and query arrive, its
/// subprotocol reaches the client, and messages come back intact.
#[tokio::test]
async fn a_python_websockets_service_works_behind_the_gateway() {
    use tokio::io::AsyncBufReadExt;
    let Some(python) = tests::python::find_python3(
        "import websockets",
        "python3 with websockets (Debian: python3-websockets)",
    ) else {
        return;
    };
    let mut child = tests::python::command(&python, "passthrough", &[])
        .args(["backend.py", "s3cret"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python backend starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the backend prints its port")
        .unwrap()
        .unwrap();
    let port = serde_json::from_str::<serde_json::Value>(&first).unwrap()["port"]
        .as_u64()
        .unwrap();
    let backend = format!("ws://127.0.0.1:{port}/models");
    let gw = gateway_for(&backend, PassthroughAuth::None, |_, _| {}).await;
    let (mut client, response) = connect(
        &gw,
        "/v1/realtime/m1?stream=true",
        &[("sec-websocket-protocol", "other, realtime.v1")],
    )
    .await
    .expect("connects");
    assert_eq!(response.headers()["sec-websocket-protocol"], "realtime.v1");
    client.send(Message::text("who")).await.unwrap();
    let seen = match next_message(&mut client).await {
        Some(Message::Text(t)) => serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        seen,
        serde_json::json!({
            "path": "/models/m1?stream=true",
            "key": true,
            "subprotocol": "realtime.v1",
            "forwardedFor": "127.0.0.1",
        })
    );
    let big = vec![42u8; 1 << 20];
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_message(&mut client).await, Some(Message::binary(big)));
    // Without the key the service refuses, and the client gets a 502.
    let keyless = TestGateway::start(|c| {
        c.passthrough = vec![route("/v1/realtime", &backend, PassthroughAuth::None)];
    })
    .await;
    assert_eq!(status_of(connect(&keyless, "/v1/realtime", &[]).await), 502);
    gw.shutdown().await;
    keyless.shutdown().await;
    let _ = child.kill().await;
}

#[tokio::test]
async fn shutdown_closes_the_client_and_the_backend_with_1001() {
    let backend = WsBackend::start(Options::default()).await;
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::None, |_, _| {}).await;
    let (mut client, _) = connect(&gw, "/v1/realtime", &[]).await.unwrap();
    let stopping = tokio::spawn(gw.shutdown());
    assert_eq!(
        code_of(expect_close(&mut client).await).map(|c| c.0),
        Some(1001)
    );
    assert_eq!(backend.wait_close().await.map(|c| c.0), Some(1001));
    stopping.await.unwrap();
}

/// Seconds since the Unix epoch, `by` from now.
fn epoch_in(by: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(now).unwrap() + by
}

#[tokio::test]
async fn jwt_routes_admit_good_tokens_refuse_the_rest_and_keep_the_token_from_the_backend() {
    const SECRET: &[u8] = b"a test-only HS256 secret of 40 bytes...";
    let dir = tests::process::TempDir::new();
    let key_file = dir.path().join("jwt.secret");
    std::fs::write(&key_file, SECRET).unwrap();
    let backend = WsBackend::start(Options::default()).await;
    let function = ScriptedFunction::start(|_| Scripted::ok()).await;
    let url = function.url();
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::Jwt, |c, route| {
        c.functions.cleanup = Some(url.as_str().into());
        route.jwt = Some(JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            key_file: key_file.clone(),
            audience: Some("realtime".into()),
            issuer: Some("https://auth.test".into()),
            leeway: Duration::from_secs(5),
            header: None,
            query: None,
        });
    })
    .await;
    let token = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    };
    let claims = |exp: i64, aud: &str| serde_json::json!({"sub": "ann", "aud": aud, "iss": "https://auth.test", "exp": exp});
    let bearer = |t: &str| format!("Bearer {t}");

    // Missing, expired, signed with another secret: 401 with the Bearer challenge.
    for (what, header) in [
        ("missing", None),
        (
            "expired",
            Some(bearer(&token(claims(epoch_in(-3600), "realtime")))),
        ),
        ("garbage", Some(bearer("not.a.token"))),
    ] {
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("authorization", h)])
            .unwrap_or_default();
        match connect(&gw, "/v1/realtime", &headers).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), 401, "{what}");
                let challenge = response.headers()["www-authenticate"].to_str().unwrap();
                assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
            }
            other => panic!("{what}: {:?}", other.map(|(_, r)| r.status())),
        }
    }
    // A valid token for another audience: 403.
    let other = bearer(&token(claims(epoch_in(3600), "billing")));
    let refused = connect(&gw, "/v1/realtime", &[("authorization", &other)]).await;
    assert_eq!(status_of(refused), 403);
    assert!(
        backend.seen().is_empty(),
        "no refused client reached the backend"
    );

    // A good one: through, without the token; its claims are the connection's context.
    let good = bearer(&token(claims(epoch_in(3600), "realtime")));
    let (mut client, _) = connect(&gw, "/v1/realtime", &[("authorization", &good)])
        .await
        .expect("a good token connects");
    let seen = backend.seen().remove(0);
    assert!(
        seen.headers.get("authorization").is_none(),
        "the gateway's credential stays at the gateway: {:?}",
        seen.headers
    );
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut client).await, Some(Message::text("hi")));
    client.send(close_frame(1000, "bye")).await.unwrap();
    let cleanup = function
        .wait_until("a cleanup", WAIT, |e| {
            e.iter().any(|e| e.kind.name() == "cleanup")
        })
        .await
        .into_iter()
        .find(|e| e.kind.name() == "cleanup")
        .unwrap();
    assert_eq!(cleanup.context["sub"], "ann", "{:?}", cleanup.context);
    gw.shutdown().await;
}

#[tokio::test]
async fn api_key_routes_check_the_key_and_strip_it_from_the_backend_query() {
    let backend = WsBackend::start(Options::default()).await;
    let gw = gateway_for(&backend.url("/ws"), PassthroughAuth::ApiKey, |_, route| {
        route.api_key = Some(ApiKeyConfig {
            header: None,
            query: Some("api_key".into()),
            keys: vec!["k-one".into(), "k-two".into()],
            keys_file: None,
        });
    })
    .await;
    for (what, path) in [
        ("missing", "/v1/realtime?model=m"),
        ("wrong", "/v1/realtime?model=m&api_key=k-three"),
        ("prefix of a key", "/v1/realtime?api_key=k-tw"),
    ] {
        let refused = connect(&gw, path, &[]).await;
        assert_eq!(status_of(refused), 401, "{what}");
    }
    assert!(
        backend.seen().is_empty(),
        "no refused client reached the backend"
    );
    let (mut client, _) = connect(&gw, "/v1/realtime?model=m&api_key=k-two&x=1", &[])
        .await
        .expect("a good key connects");
    assert_eq!(backend.seen().remove(0).uri, "/ws?model=m&x=1");
    client.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0u8, 1, 2]))
    );
    drop(client);
    gw.shutdown().await;
}
