//! The `chat-functions` binary as a process: it serves the chat until SIGTERM and stops
//! cleanly, and it exits with a clear error (not a panic) when Redis is unreachable.

#![cfg(unix)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// A guard against a hung process, not a synchronisation: everything below waits for
/// output or exit.
const GUARD: Duration = Duration::from_secs(30);

fn chat_functions(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chat-functions"))
        .args(args)
        .env_remove("CHAT_LOG")
        .env_remove("CHAT_STORE")
        .env_remove("CHAT_SENDBACK_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chat-functions starts")
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error_and_a_failing_exit() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut child = chat_functions(&["--store", &url, "--listen", "127.0.0.1:0"]);
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    let status = tokio::time::timeout(GUARD, async {
        pipe.read_to_string(&mut stderr).await.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .expect("it exits");

    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("chat-functions: cannot open the store `{url}`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("store unavailable at 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[tokio::test]
async fn serves_until_sigterm_then_stops_cleanly() {
    let mut child = chat_functions(&["--listen", "127.0.0.1:0", "--store", "memory"]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = tokio::time::timeout(GUARD, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if let Some((_, rest)) = line.split_once("chat functions listening addr=") {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("exited before listening: {seen:#?}");
    })
    .await
    .expect("it listens");
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("memory")),
        "memory is warned about: {seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains('\u{1b}')),
        "no ANSI codes when stderr is not a terminal: {seen:#?}"
    );

    let event = serde_json::json!({
        "type": "transport", "connectionId": "c1", "seq": 1, "node": "n1", "timestamp": 0,
        "context": {"room": "lobby", "name": "Ann"}, "dataType": "text", "data": "ping"
    });
    let reply = reqwest::Client::new()
        .post(format!("http://{addr}/transport"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.unwrap(), "pong");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, rest) = tokio::time::timeout(GUARD, async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push(line);
        }
        (child.wait().await.unwrap(), rest)
    })
    .await
    .expect("it stops");
    assert!(status.success(), "{status:?} {rest:#?}");
    assert!(
        rest.iter().any(|l| l.contains("functions server stopped")),
        "{rest:#?}"
    );
}
