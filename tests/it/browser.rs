//! The chat page in headless Chromium: two pages chat through the demo gateway.

use std::net::SocketAddr;
use std::path::Path;

use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn two_pages_chat() {
    let Some(node) = tests::find_program("NODE", "node", &["/usr/bin/node"]) else {
        return tests::skip_or_fail("node not installed");
    };
    let chromium = tests::find_program("CHROMIUM", "chromium", &["/usr/bin/chromium"]);
    if chromium.is_none() {
        return tests::skip_or_fail("chromium not installed");
    }
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return tests::skip_or_fail("playwright-core not installed in tests/browser (npm ci)");
    }
    let stop = CancellationToken::new();
    let (gw, addrs, _task) = chat::demo::start(SocketAddr::from(([127, 0, 0, 1], 0)), stop.clone())
        .await
        .expect("demo starts");
    let store = gw.store();
    let gw = tests::gateway::TestGateway::run(gw, store);
    let shot = std::env::temp_dir().join("switchboard-chat.png");
    let out = tokio::process::Command::new(node)
        .arg(browser_dir.join("chat.mjs"))
        .arg(format!("http://{}", addrs.public))
        .env("SCREENSHOT", &shot)
        .env("CHROMIUM", chromium.unwrap())
        .output()
        .await
        .expect("run node");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser chat failed:\n{text}");
    gw.shutdown().await;
    stop.cancel();
}
