//! A real Prometheus, configured from `deploy/prometheus.yml`, scraping real targets: a
//! fixed exporter (the harness and the deploy config themselves), then a gateway holding N
//! WebSocket clients with messages flowing, whose `switchboard_connections` the test reads
//! back through Prometheus's query API.

use std::time::Duration;

use bytes::Bytes;
use functions::event::EventKind;
use futures_util::SinkExt;
use http_body_util::Full;
use tests::function_server::FunctionServer;
use tests::gateway::{Client, TestGateway, next_message};
use tests::prometheus::Prometheus;
use tests::scripted::{Scripted, ScriptedFunction};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long a value may take to reach Prometheus: a few scrapes of 1 s.
const SCRAPED: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_deploy_config_scrapes_metrics_paths_of_its_targets() {
    let exporter = FunctionServer::<()>::start(|request, _| async move {
        let body = if request.uri().path() == "/metrics" {
            "# TYPE switchboard_connections gauge\nswitchboard_connections 7\n"
        } else {
            ""
        };
        hyper::Response::new(Full::new(Bytes::from(body)))
    })
    .await;
    let Some(prometheus) = Prometheus::require(&[exporter.addr().to_string()]).await else {
        return;
    };
    let query = r#"switchboard_connections{job="switchboard",service="switchboard"}"#;
    prometheus.wait_value(query, 7.0, SCRAPED).await;
}

#[tokio::test]
async fn prometheus_reads_the_connections_a_gateway_holds() {
    const CLIENTS: usize = 20;
    let function = ScriptedFunction::start(|e| match e.kind {
        EventKind::Transport { .. } => Scripted::text("echo"),
        _ => Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = TestGateway::start(move |c| tests::gateway::route_all(c, &url)).await;
    let Some(prometheus) = Prometheus::require(&[gw.sendback.to_string()]).await else {
        return;
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(gw.connect("/").await);
    }
    // Messages flow, each echoed by the function, until the count is read.
    let stop = CancellationToken::new();
    let traffic = tokio::spawn(echo_until(clients, stop.clone()));

    let query = r#"sum(switchboard_connections{job="switchboard"})"#;
    prometheus.wait_value(query, CLIENTS as f64, SCRAPED).await;
    stop.cancel();
    let (mut clients, echoed) = traffic.await.unwrap();
    assert!(echoed >= CLIENTS, "messages flowed: {echoed}");

    // Half leave: the count Prometheus reads follows.
    for mut client in clients.drain(..CLIENTS / 2) {
        client.close(None).await.unwrap();
    }
    let left = (CLIENTS - CLIENTS / 2) as f64;
    prometheus.wait_value(query, left, SCRAPED).await;
    assert_eq!(
        prometheus.value(r#"up{job="switchboard"}"#).await.unwrap(),
        Some(1.0)
    );
    drop(clients);
    gw.shutdown().await;
}

/// Sends a message on every client in turn and reads its echo, until `stop`; gives the
/// clients back with how many echoes came.
async fn echo_until(mut clients: Vec<Client>, stop: CancellationToken) -> (Vec<Client>, usize) {
    let mut echoed = 0;
    while !stop.is_cancelled() {
        for client in &mut clients {
            client.send(Message::text("hello")).await.unwrap();
            match next_message(client).await {
                Some(Message::Text(text)) if text.as_str() == "echo" => echoed += 1,
                other => panic!("expected the echo, got {other:?}"),
            }
        }
    }
    (clients, echoed)
}

#[test]
fn promtool_checks_the_deploy_config_and_its_alert_rules() {
    let Some(promtool) = tests::prometheus::promtool_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("promtool not installed, and CI is set: tests/run.sh installs prometheus");
        }
        eprintln!("SKIP: promtool not installed");
        return;
    };
    // `check config` loads the rule files the config names, so both are checked.
    let config = tests::prometheus::deploy_config_path();
    let out = std::process::Command::new(&promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check config: {said}");
    assert!(
        said.contains("alerts.yml"),
        "the rules were checked: {said}"
    );

    // And it refuses a broken rule, so the check above can fail.
    let dir = std::env::temp_dir().join(format!("alerts-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::fs::read_to_string(tests::prometheus::deploy_rules_path()).unwrap();
    let broken = dir.join("alerts.yml");
    std::fs::write(
        &broken,
        rules.replacen(
            "expr: switchboard_ready == 0",
            "expr: switchboard_ready ==",
            1,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&broken)
        .output()
        .expect("promtool runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "a broken expression is refused");
}

#[tokio::test]
async fn the_alert_rules_load_and_a_node_without_its_store_alerts() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    let gw = TestGateway::on_redis(&redis).await;
    let Some(prometheus) = Prometheus::require(&[gw.sendback.to_string()]).await else {
        return;
    };
    let ready = r#"switchboard_ready{job="switchboard"}"#;
    prometheus.wait_value(ready, 1.0, SCRAPED).await;

    // Every rule of deploy/alerts.yml loaded and evaluates without error.
    tests::wait::eventually("every alert rule evaluated", SCRAPED, || async {
        let rules = prometheus.rules().await.unwrap();
        assert!(rules.len() >= 10, "rules loaded: {rules:?}");
        for (name, health, error) in &rules {
            assert_ne!(health, "err", "rule {name}: {error}");
        }
        rules.iter().all(|(_, health, _)| health == "ok")
    })
    .await;
    let not_ready = |alerts: &[tests::prometheus::Alert]| {
        alerts.iter().any(|a| {
            a.name == "SwitchboardNotReady"
                && a.labels.get("instance") == Some(&gw.sendback.to_string())
        })
    };
    assert!(
        !not_ready(&prometheus.alerts().await.unwrap()),
        "a ready node raises no alert"
    );

    // The store goes: the node is not ready, and the alert is raised (pending: its `for`
    // is a minute).
    redis.stop();
    prometheus.wait_value(ready, 0.0, SCRAPED).await;
    tests::wait::eventually("SwitchboardNotReady raised", SCRAPED, || async {
        not_ready(&prometheus.alerts().await.unwrap())
    })
    .await;

    // It comes back: the alert goes.
    redis.restart().expect("redis restarts");
    prometheus.wait_value(ready, 1.0, SCRAPED).await;
    tests::wait::eventually("SwitchboardNotReady cleared", SCRAPED, || async {
        !not_ready(&prometheus.alerts().await.unwrap())
    })
    .await;
    gw.shutdown().await;
}
