//! Per-connection ordering: one transport call in flight, so messages reach the function
//! in the order the client sent them, with increasing sequence numbers.

use std::time::Duration;

use functions::event::EventKind;
use futures_util::SinkExt;
use tests::gateway::TestGateway;
use tests::scripted::{Scripted, ScriptedFunction};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn thousand_messages_arrive_in_order() {
    let function = ScriptedFunction::start(|_| Scripted::status(204)).await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        c.functions.register = Some(url.clone().into());
        c.functions.transport = Some(url.into());
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    for i in 0..1000 {
        client.feed(Message::text(i.to_string())).await.unwrap();
    }
    client.flush().await.unwrap();
    let events = function
        .wait_until("1000 transport events", Duration::from_secs(60), |e| {
            e.iter().filter(|e| e.kind.name() == "transport").count() >= 1000
        })
        .await;
    let transports: Vec<_> = events
        .iter()
        .filter(|e| e.connection_id == id)
        .filter_map(|e| match &e.kind {
            EventKind::Transport { data, .. } => Some((e.seq, data.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(transports.len(), 1000);
    for (i, (seq, data)) in transports.iter().enumerate() {
        assert_eq!(data, &i.to_string(), "message {i} out of order");
        assert_eq!(*seq, i as u64 + 1);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn binary_messages_are_base64() {
    let function = ScriptedFunction::start(|_| Scripted::status(204)).await;
    let url = function.url();
    let gw = TestGateway::start(move |c| c.functions.transport = Some(url.into())).await;
    let mut client = gw.connect("/").await;
    client
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let events = function
        .wait_until("a transport", Duration::from_secs(10), |e| !e.is_empty())
        .await;
    match &events[0].kind {
        EventKind::Transport { data_type, data } => {
            assert_eq!(*data_type, functions::event::DataType::Binary);
            assert_eq!(data, "AAEC/w==");
        }
        other => panic!("{other:?}"),
    }
    gw.shutdown().await;
}

/// Messages far larger than the per-connection read buffer (128 B by default), written
/// back to back with small ones so several share one socket read, all arrive whole.
#[tokio::test]
async fn large_and_small_messages_arrive_whole() {
    let function = ScriptedFunction::start(|_| Scripted::status(204)).await;
    let url = function.url();
    let gw = TestGateway::start(move |c| c.functions.transport = Some(url.into())).await;
    let max = gw_max_message();
    let sizes = [
        1,
        127,
        128,
        129,
        1000,
        16 * 1024 - 1,
        16 * 1024 + 7,
        70_000,
        max,
    ];
    let sent: Vec<String> = sizes
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            let big: String = (0..n)
                .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
                .collect();
            [big, format!("small {i}")]
        })
        .collect();
    let mut client = gw.connect("/").await;
    for text in &sent {
        client.feed(Message::text(text.clone())).await.unwrap();
    }
    client.flush().await.unwrap();
    let events = function
        .wait_until("every message", Duration::from_secs(30), |e| {
            e.iter().filter(|e| e.kind.name() == "transport").count() >= sent.len()
        })
        .await;
    let got: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Transport { data, .. } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), sent.len());
    for (i, (got, sent)) in got.iter().zip(&sent).enumerate() {
        assert!(
            got == sent,
            "message {i} ({} bytes) arrived as {} bytes",
            sent.len(),
            got.len()
        );
    }
    gw.shutdown().await;
}

/// The gateway's default message size limit (the largest message that must pass).
fn gw_max_message() -> usize {
    tests::gateway::test_config().limits.max_message_bytes
}
