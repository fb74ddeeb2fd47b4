//! The `switchboard` binary with `log.format = "json"` (set by `SWITCHBOARD_LOG__FORMAT`):
//! every line it writes, on stdout and stderr, from start to a clean SIGTERM exit, is one
//! JSON object; a send-back request's line carries its span (method, route, connection id)
//! and its status and duration.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tests::gateway::{TOKEN, post_to_connection};
use tests::process::{OutputLines, TempDir};
use tests::scripted::ScriptedFunction;
use tokio::process::Command;

/// The first line whose `fields.message` is `message` (and that passes `also`).
async fn line_with(output: &OutputLines, message: &str, also: impl Fn(&Value) -> bool) -> Value {
    output
        .wait_for(
            &format!("a JSON line {message:?}"),
            Duration::from_secs(20),
            |lines| {
                lines
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|v| v["fields"]["message"] == message && also(v))
            },
        )
        .await
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let dir = TempDir::new();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\n\
             token = \"{TOKEN}\"\n[functions]\nregister = \"{url}\"\ntransport = \"{url}\"\n\
             cleanup = \"{url}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(crate::switchboard_bin())
        .arg("--config")
        .arg(&path)
        .env("SWITCHBOARD_LOG__FORMAT", "json")
        .env("SWITCHBOARD_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway starts");
    let stdout = OutputLines::capture(child.stdout.take().unwrap(), None);
    let stderr = OutputLines::capture(child.stderr.take().unwrap(), None);

    let listening = line_with(&stderr, "gateway listening", |_| true).await;
    let field = |name: &str| listening["fields"][name].as_str().unwrap().to_owned();
    let (public, sendback) = (field("public"), field("sendback"));
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{public}/"))
        .await
        .expect("connect");
    let id = function.wait_register().await;
    let base = format!("http://{sendback}");
    assert_eq!(post_to_connection(&base, &id, "hello").await.status(), 200);
    tests::gateway::next_message(&mut client).await;

    let sent = line_with(&stderr, "send-back request", |v| {
        v["span"]["connection"] == id
    })
    .await;
    assert_eq!(sent["level"], "DEBUG", "{sent}");
    assert_eq!(sent["span"]["name"], "sendback", "{sent}");
    assert_eq!(sent["span"]["route"], "native_connection", "{sent}");
    assert_eq!(sent["span"]["method"], "POST", "{sent}");
    assert_eq!(sent["fields"]["status"], 200, "{sent}");
    assert!(sent["fields"]["duration_ms"].as_f64().is_some(), "{sent}");
    // The token is in no line.
    assert!(!stderr.lines().iter().any(|l| l.contains(TOKEN)));

    let pid = child.id().expect("the gateway runs");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    line_with(&stderr, "shutdown complete", |_| true).await;

    for (name, output) in [("stdout", &stdout), ("stderr", &stderr)] {
        for line in output.lines() {
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
            assert!(value["timestamp"].is_string(), "{name}: {line}");
            assert!(value["level"].is_string(), "{name}: {line}");
            assert!(value["fields"]["message"].is_string(), "{name}: {line}");
        }
    }
}
