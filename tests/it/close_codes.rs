//! Close codes reach real clients: the gateway's close frame is never overtaken by a TCP
//! reset (a client that gets the reset first reports 1006, whatever the gateway sent).

use std::path::Path;

use functions::event::EventKind;
use tests::gateway::TestGateway;
use tests::scripted::{Scripted, ScriptedFunction};

/// How many connections send an oversize message; every one must see 1009.
const TRIES: usize = 20;

/// A Node `ws` client sends a message far over `limits.max_message_bytes` and is still
/// sending when the gateway closes with 1009: its close event reports 1009, every time.
#[tokio::test]
async fn an_oversize_message_from_node_ws_is_closed_with_1009_every_time() {
    let Some(node) = tests::find_program("NODE", "node", &["/usr/bin/node"]) else {
        return tests::skip_or_fail("node not installed");
    };
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients");
    if !clients.join("node_modules/ws").is_dir() {
        return tests::skip_or_fail("ws not installed in tests/clients (npm ci)");
    }
    let function = ScriptedFunction::start(|e| match e.kind {
        EventKind::Transport { .. } => Scripted::status(204),
        _ => Scripted::ok(),
    })
    .await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.limits.max_message_bytes = 64 * 1024;
    })
    .await;
    // 4 MiB: the client is still writing it long after the gateway saw too much.
    let out = tokio::process::Command::new(node)
        .arg(clients.join("oversize.js"))
        .arg(gw.ws_url("/"))
        .arg((4 << 20).to_string())
        .arg(TRIES.to_string())
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON line");
    let codes: Vec<u64> = result["codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_u64().expect("a code"))
        .collect();
    assert_eq!(codes.len(), TRIES);
    assert!(
        codes.iter().all(|&c| c == 1009),
        "every close event should report 1009: {codes:?}"
    );
}
