//! The chat page in headless Chromium: two pages chat through the demo gateway; a room the
//! server refuses is shown as refused and not retried, while a dropped connection, or one to
//! a gateway that is gone, is retried.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use functions::event::{Event, EventKind};
use tests::gateway::{TestGateway, route_all, sendback_request};
use tests::scripted::{Scripted, ScriptedFunction};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Node, Chromium and the browser tests' directory, or `None` (skipped or failed) if one
/// is missing.
fn browser_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let Some(node) = tests::find_program("NODE", "node", &["/usr/bin/node"]) else {
        tests::skip_or_fail("node not installed");
        return None;
    };
    let Some(chromium) = tests::find_program("CHROMIUM", "chromium", &["/usr/bin/chromium"]) else {
        tests::skip_or_fail("chromium not installed");
        return None;
    };
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        tests::skip_or_fail("playwright-core not installed in tests/browser (npm ci)");
        return None;
    }
    Some((node, chromium, browser_dir))
}

/// Runs `node tests/browser/<script> http://<public>` to its end, handing each line it
/// prints to `cue` as it comes (the script says when it waits for the test to act), and
/// asserts that it passed.
async fn run_script(
    (node, chromium, dir): &(PathBuf, PathBuf, PathBuf),
    script: &str,
    public: SocketAddr,
    mut cue: impl AsyncFnMut(&str),
) {
    let shot = std::env::temp_dir().join(format!("switchboard-{script}.png"));
    let mut child = tokio::process::Command::new(node)
        .arg(dir.join(script))
        .arg(format!("http://{public}"))
        .env("SCREENSHOT", shot)
        .env("CHROMIUM", chromium)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut transcript = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        cue(&line).await;
        transcript.push_str(&line);
        transcript.push('\n');
    }
    let status = child.wait().await.expect("node exits");
    transcript.push_str(&errors.await.unwrap_or_default());
    assert!(
        status.success(),
        "browser test {script} failed:\n{transcript}"
    );
    println!("{transcript}"); // shown with --nocapture
}

#[tokio::test]
async fn two_pages_chat() {
    let Some(tools) = browser_tools() else { return };
    let stop = CancellationToken::new();
    let (gw, addrs, _task) = chat::demo::start(SocketAddr::from(([127, 0, 0, 1], 0)), stop.clone())
        .await
        .expect("demo starts");
    let store = gw.store();
    let gw = TestGateway::run(gw, store);
    run_script(&tools, "chat.mjs", addrs.public, async |_| {}).await;
    gw.shutdown().await;
    stop.cancel();
}

/// The room of a register event.
fn room_of(event: &Event) -> Option<String> {
    match &event.kind {
        EventKind::Register { request } => request.query_param("room"),
        _ => None,
    }
}

/// How many register events asked for `room`.
fn registers(events: &[Event], room: &str) -> usize {
    events
        .iter()
        .filter(|e| room_of(e).as_deref() == Some(room))
        .count()
}

#[tokio::test]
async fn a_refused_room_is_shown_and_not_retried() {
    let Some(tools) = browser_tools() else { return };
    // Refuses one room the page cannot know is refused, accepts the others.
    let function = ScriptedFunction::start(|event| {
        if room_of(event).as_deref() == Some("refused-room") {
            Scripted::json(serde_json::json!({"error": "this room is closed"})).with_status(403)
        } else {
            Scripted::ok()
        }
    })
    .await;
    let gw = TestGateway::start_with(
        |config| route_all(config, &function.url()),
        gateway::Options {
            store: None,
            page: Some(Bytes::from_static(chat::CHAT_PAGE.as_bytes())),
        },
    )
    .await;
    let (public, sendback) = (gw.public, gw.sendback_url());
    let mut gw = Some(gw);

    // The script says when its last page (room `ok-room`) waits for its connection to be
    // dropped, then for the gateway to be gone.
    run_script(&tools, "refused.mjs", public, async |line: &str| {
        if line.contains("waits for the test to drop its connection") {
            let events = function.events();
            let id = events
                .iter()
                .find(|e| room_of(e).as_deref() == Some("ok-room"))
                .map(|e| e.connection_id.clone())
                .expect("a register for ok-room");
            let response = sendback_request(
                reqwest::Method::DELETE,
                format!("{sendback}/@connections/{id}"),
            )
            .send()
            .await
            .expect("send-back DELETE");
            assert_eq!(response.status(), 204, "close {id}");
        } else if line.contains("waits for the test to stop the gateway") {
            if let Some(gw) = gw.take() {
                gw.shutdown().await;
            }
        }
    })
    .await;

    let events = function.events();
    assert_eq!(registers(&events, "refused-room"), 1, "{events:#?}");
    assert_eq!(registers(&events, "bad room!"), 0, "{events:#?}");
    assert_eq!(registers(&events, "ok-room"), 2, "{events:#?}");
}
