//! The chat page in headless Chromium: two pages chat through the demo gateway, and through
//! a gateway serving the page and the WebSockets over TLS only (`https://`, `wss://`, its
//! certificate from a CA Chromium is made to trust); a room the server refuses is shown as
//! refused and not retried, while a dropped connection, or one to a gateway that is gone, is
//! retried.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use functions::event::{Event, EventKind};
use tests::gateway::{TestGateway, route_all, sendback_request};
use tests::process::TempDir;
use tests::scripted::{Scripted, ScriptedFunction};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::tls::Ca;

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

/// Runs `node tests/browser/<script> <base>` with `env` added to its end, handing each line
/// it prints to `cue` as it comes (the script says when it waits for the test to act),
/// asserts that it passed and returns what it printed.
async fn run_script(
    (node, chromium, dir): &(PathBuf, PathBuf, PathBuf),
    script: &str,
    base: &str,
    env: &[(&str, OsString)],
    mut cue: impl AsyncFnMut(&str),
) -> String {
    let shot = std::env::temp_dir().join(format!("switchboard-{script}.png"));
    let mut child = tokio::process::Command::new(node)
        .arg(dir.join(script))
        .arg(base)
        .env("SCREENSHOT", shot)
        .env("CHROMIUM", chromium)
        .envs(env.iter().map(|(k, v)| (k, v)))
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
    transcript
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
    let base = format!("http://{}", addrs.public);
    run_script(&tools, "chat.mjs", &base, &[], async |_| {}).await;
    gw.shutdown().await;
    stop.cancel();
}

/// `certutil` (Debian's libnss3-tools), or `None` (skipped or failed).
fn certutil() -> Option<PathBuf> {
    let found = tests::find_program("CERTUTIL", "certutil", &["/usr/bin/certutil"]);
    if found.is_none() {
        tests::skip_or_fail("certutil not installed (apt-get install libnss3-tools)");
    }
    found
}

/// Makes `home/.pki/nssdb`, the NSS database Chromium on Linux reads the CAs it trusts
/// from beside its own roots, trusting the CA in `ca_file` to identify servers (`C,,`).
async fn trust_in_nssdb(certutil: &Path, home: &Path, ca_file: &Path) {
    let db = home.join(".pki").join("nssdb");
    std::fs::create_dir_all(&db).expect("create the NSS database's folder");
    let db = format!("sql:{}", db.display());
    let mut create = tokio::process::Command::new(certutil);
    create.args(["-N", "-d", &db, "--empty-password"]);
    let mut add = tokio::process::Command::new(certutil);
    add.args([
        "-A",
        "-d",
        &db,
        "-n",
        "Switchboard browser test CA",
        "-t",
        "C,,",
        "-i",
    ])
    .arg(ca_file);
    for mut certutil in [create, add] {
        let out = certutil.output().await.expect("run certutil");
        assert!(
            out.status.success(),
            "{certutil:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The chat over TLS only: the gateway serves the page at `https://localhost:<port>/` and
/// the WebSockets on the same `[public.tls]` listener, with a certificate from a private
/// CA. Chromium trusts that CA through an NSS database in the HOME it is given (no
/// certificate error is ignored), the page connects with `wss://` because it was loaded over
/// https, and two pages in one room exchange messages.
#[tokio::test]
async fn two_pages_chat_over_wss() {
    let Some(tools) = browser_tools() else { return };
    let Some(certutil) = certutil() else { return };
    let dir = TempDir::new();
    let ca = Ca::new("Switchboard browser test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    let (cert, key) = ca.leaf("chat gateway").write(dir.path(), "gw");
    let home = dir.path().join("home");
    trust_in_nssdb(&certutil, &home, &ca_file).await;

    // The demo's parts (the chat functions over loopback HTTP, the page, one embedded
    // store) behind a gateway with a TLS listener.
    let store: store::SharedStore = Arc::new(store::MemoryStore::new());
    let functions = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the chat functions");
    let base = format!("http://{}", functions.local_addr().expect("its address"));
    let gw = TestGateway::start_with(
        move |c| {
            c.functions.register = Some(format!("{base}/register").into());
            c.functions.transport = Some(format!("{base}/transport").into());
            c.functions.cleanup = Some(format!("{base}/cleanup").into());
            c.public.tls = Some(gateway::config::PublicTlsConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                files: gateway::config::TlsFiles {
                    cert_file: cert,
                    key_file: key,
                },
            });
        },
        gateway::Options {
            store: Some(store.clone()),
            page: Some(Bytes::from_static(chat::CHAT_PAGE.as_bytes())),
        },
    )
    .await;
    let sendback =
        functions::SendBack::new(&gw.sendback_url(), Some(tests::gateway::TOKEN.to_owned()))
            .expect("send-back client");
    let stop = CancellationToken::new();
    let serving = tokio::spawn(functions::serve(
        functions,
        Arc::new(chat::Chat::new(store, sendback)),
        stop.clone(),
    ));

    let public_tls = gw.public_tls.expect("a TLS listener");
    let base = format!("https://localhost:{}", public_tls.port());
    let transcript = run_script(
        &tools,
        "chat.mjs",
        &base,
        &[("HOME", home.into_os_string())],
        async |_| {},
    )
    .await;
    for seen in [
        "alice's page came over TLS",
        "issued by Switchboard browser test CA",
        &format!("connected with wss://localhost:{}", public_tls.port()),
    ] {
        assert!(transcript.contains(seen), "{seen:?} in:\n{transcript}");
    }
    gw.shutdown().await;
    stop.cancel();
    let _ = serving.await;
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
    let base = format!("http://{public}");
    run_script(&tools, "refused.mjs", &base, &[], async |line: &str| {
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
        } else if line.contains("waits for the test to stop the gateway")
            && let Some(gw) = gw.take()
        {
            gw.shutdown().await;
        }
    })
    .await;

    let events = function.events();
    assert_eq!(registers(&events, "refused-room"), 1, "{events:#?}");
    assert_eq!(registers(&events, "bad room!"), 0, "{events:#?}");
    assert_eq!(registers(&events, "ok-room"), 2, "{events:#?}");
}
