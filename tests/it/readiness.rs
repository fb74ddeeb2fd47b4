//! `GET /readyz` on both listeners: ready once the first heartbeat reached the store;
//! `store_unreachable` while the test's own redis-server is frozen (SIGSTOP) or killed, and
//! ready again once it is back; `starting` while no heartbeat has reached the store yet (a
//! Redis that refuses writes); `draining` during a real SIGTERM held open by a client whose
//! message the function has not answered yet, while `/healthz` still says the process runs;
//! and nginx, set up as `deploy/nginx/switchboard.conf` says, sending no client to a node
//! that drains (it answers upgrades with 503 while its listener stays open).

use std::time::Duration;

use bytes::Bytes;
use functions::api::{NotReady, Readiness};
use functions::event::Event;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use tests::function_server::FunctionServer;
use tests::gateway::{TOKEN, TestGateway};
use tests::nginx::Nginx;
use tests::process::GatewayProcess;
use tests::redis::Resp;
use tests::scripted::ScriptedFunction;
use tests::wait::eventually_some;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What `GET http://{addr}/readyz` answered: its status and body, or `None` if nothing
/// answered.
async fn readyz(addr: &str) -> Option<(u16, Readiness)> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let cache = response.headers().get("cache-control").cloned();
    assert_eq!(
        cache.as_ref().and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "{addr}"
    );
    Some((status, response.json().await.ok()?))
}

/// Waits until both listeners answer `/readyz` with `expected` (`None`: ready) and checks
/// the status and body that go with it.
async fn wait_readiness(listeners: [&str; 2], expected: Option<NotReady>, timeout: Duration) {
    for addr in listeners {
        let (status, body) = eventually_some(
            &format!("/readyz on {addr} to say {expected:?}"),
            timeout,
            || async move {
                readyz(addr)
                    .await
                    .filter(|(_, body)| body.reason == expected)
            },
        )
        .await;
        match expected {
            None => {
                assert_eq!(status, 200, "{body:?}");
                assert!(body.ready && body.message.is_none(), "{body:?}");
            }
            Some(_) => {
                assert_eq!(status, 503, "{body:?}");
                assert!(!body.ready, "{body:?}");
                assert!(body.message.is_some_and(|m| !m.is_empty()));
            }
        }
    }
}

#[tokio::test]
async fn ready_after_start_on_both_listeners() {
    let gw = TestGateway::start(|_| {}).await;
    let (public, sendback) = (gw.public.to_string(), gw.sendback.to_string());
    // No waiting: the listeners take connections only after the first heartbeat.
    for addr in [&public, &sendback] {
        let (status, body) = readyz(addr).await.expect("an answer");
        assert_eq!(status, 200, "{addr}");
        assert_eq!(
            body,
            Readiness {
                ready: true,
                reason: None,
                message: None
            }
        );
    }
    // Liveness is unchanged, and readiness needs no token on the send-back listener.
    let health = reqwest::get(format!("http://{public}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_frozen_or_killed_store_is_not_ready_until_it_is_back() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    let gw = TestGateway::on_redis(&redis).await;
    let (public, sendback) = (gw.public.to_string(), gw.sendback.to_string());
    let both = [public.as_str(), sendback.as_str()];
    let timeout = Duration::from_secs(10);
    wait_readiness(both, None, timeout).await;

    // Frozen: the beat hangs (no error for seconds); the TTL passing is enough.
    redis.signal("STOP");
    wait_readiness(both, Some(NotReady::StoreUnreachable), timeout).await;
    redis.signal("CONT");
    wait_readiness(both, None, timeout).await;

    // Killed: beats fail at once; a new server on the same port, and the node is back.
    redis.stop();
    wait_readiness(both, Some(NotReady::StoreUnreachable), timeout).await;
    redis.restart().expect("redis restarts");
    wait_readiness(both, None, timeout).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn starting_until_a_heartbeat_reaches_the_store() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    // A Redis without the replica it wants refuses every write: the heartbeat included.
    let refuse_writes = |on: &str| {
        let reply = redis
            .command(&["CONFIG", "SET", "min-replicas-to-write", on])
            .unwrap();
        assert_eq!(reply, Resp::Simple("OK".into()));
    };
    refuse_writes("1");
    let gw = TestGateway::on_redis(&redis).await;
    let (public, sendback) = (gw.public.to_string(), gw.sendback.to_string());
    let both = [public.as_str(), sendback.as_str()];
    wait_readiness(both, Some(NotReady::Starting), Duration::from_secs(10)).await;
    refuse_writes("0");
    wait_readiness(both, None, Duration::from_secs(10)).await;
    gw.shutdown().await;
}

/// A function that accepts every connection and answers its transport calls only once
/// `release` is cancelled.
async fn holding_function(release: CancellationToken) -> FunctionServer<Event> {
    FunctionServer::start(move |request, log| {
        let release = release.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let event: Event = serde_json::from_slice(&body).unwrap();
            let transport = event.kind.name() == "transport";
            log.push(event);
            if transport {
                release.cancelled().await;
            }
            hyper::Response::new(Full::new(Bytes::new()))
        }
    })
    .await
}

#[tokio::test]
async fn draining_while_a_client_holds_the_shutdown() {
    let release = CancellationToken::new();
    let function = holding_function(release.clone()).await;
    let url = format!("http://{}/fn", function.addr());
    let config = format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{TOKEN}\"\n[functions]\nregister = \"{url}\"\ntransport = \"{url}\"\n\
         cleanup = \"{url}\"\n[shutdown]\ngrace = \"60s\"\n"
    );
    let mut gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let (public, sendback) = (gateway.public().to_owned(), gateway.sendback().to_owned());
    let both = [public.as_str(), sendback.as_str()];
    wait_readiness(both, None, Duration::from_secs(5)).await;

    // A client whose message the function holds: the drain waits for that call.
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{public}/"))
        .await
        .expect("connect");
    client.send(Message::text("held")).await.unwrap();
    function
        .events()
        .wait_until("the transport call", Duration::from_secs(10), |e| {
            e.iter().any(|e| e.kind.name() == "transport")
        })
        .await;

    gateway.process().signal("TERM");
    wait_readiness(both, Some(NotReady::Draining), Duration::from_secs(10)).await;
    // Still alive, and taking no one.
    let health = reqwest::get(format!("http://{public}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    match tokio_tungstenite::connect_async(format!("ws://{public}/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => panic!("an upgrade while draining: {other:?}"),
    }
    // Still draining a moment later: the held call holds the shutdown.
    let (status, body) = readyz(&public).await.expect("an answer");
    assert_eq!((status, body.reason), (503, Some(NotReady::Draining)));

    release.cancel();
    function
        .events()
        .wait_until("the cleanup", Duration::from_secs(10), |e| {
            e.iter().any(|e| e.kind.name() == "cleanup")
        })
        .await;
    // Exits cleanly once the drain is over (a second SIGTERM changes nothing).
    gateway.terminate().await;
    assert!(readyz(&public).await.is_none(), "the listener closed");
}

#[tokio::test]
async fn nginx_sends_no_client_to_a_draining_node() {
    const CLIENTS: usize = 4;
    let release = CancellationToken::new();
    let held = holding_function(release.clone()).await;
    let held_url = format!("http://{}/fn", held.addr());
    let draining = TestGateway::start(move |c| tests::gateway::route_all(c, &held_url)).await;
    let ready = ScriptedFunction::accepting().await;
    let ready_url = ready.url();
    let other = TestGateway::start(move |c| tests::gateway::route_all(c, &ready_url)).await;
    let (public, sendback) = (draining.public.to_string(), draining.sendback.to_string());
    let Some(nginx) = Nginx::require_ports(&[], 1, |spot| {
        let replacements = [
            (
                "listen 80 backlog",
                format!("listen {} backlog", spot.listen),
            ),
            ("10.0.0.10:9090", spot.more[0].to_string()),
            ("10.0.0.11:8080", public.clone()),
            ("10.0.0.12:8080", other.public.to_string()),
            ("10.0.0.11:9090", sendback.clone()),
            ("10.0.0.12:9090", other.sendback.to_string()),
        ];
        spot.http(&tests::deploy_file("nginx/switchboard.conf", &replacements))
    }) else {
        return;
    };

    // A client whose message the function holds keeps the first node draining.
    let mut holder = draining.connect("/").await;
    holder.send(Message::text("held")).await.unwrap();
    held.events()
        .wait_until("the transport call", Duration::from_secs(10), |e| {
            e.iter().any(|e| e.kind.name() == "transport")
        })
        .await;
    let shutdown = tokio::spawn(draining.shutdown());
    wait_readiness(
        [public.as_str(), sendback.as_str()],
        Some(NotReady::Draining),
        Duration::from_secs(10),
    )
    .await;

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        match tokio_tungstenite::connect_async(format!("ws://{}/", nginx.addr())).await {
            Ok((client, _)) => clients.push(client),
            Err(e) => panic!(
                "a client through nginx while a node drains: {e}; nginx log:\n{}",
                nginx.log()
            ),
        }
    }
    let registers = |f: &[Event]| f.iter().filter(|e| e.kind.name() == "register").count();
    assert_eq!(registers(&ready.events()), CLIENTS);
    assert_eq!(registers(&held.events().snapshot()), 1, "only the holder");

    release.cancel();
    shutdown.await.unwrap();
    drop(clients);
    other.shutdown().await;
}
