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
