//! The Node.js peer: `tests/bench/node-ws/server.js`, a hand-written `ws` server doing the
//! same work in-process (echo, rooms, an HTTP publish endpoint): what a user writes
//! instead of using a broker. Its npm packages come from `tests/bench/install-peers.sh`.

use anyhow::Context as _;

use super::{Env, Publisher, ROOM, START_TIMEOUT, Target};
use crate::client::Dialer;
use crate::plan::System;
use crate::procs::Proc;

/// Why the Node peer cannot run here, if it cannot.
pub fn unavailable(env: &Env) -> Option<String> {
    if harness::find_program("NODE", "node", &["/usr/bin/node"]).is_none() {
        return Some("node not installed".to_owned());
    }
    if !env.node_dir.join("node_modules/ws/package.json").is_file() {
        return Some(format!(
            "npm package ws missing in {} (tests/bench/install-peers.sh)",
            env.node_dir.display()
        ));
    }
    None
}

/// Starts `node server.js` and reads its port.
pub async fn start(env: &Env) -> anyhow::Result<Target> {
    let node = harness::find_program("NODE", "node", &["/usr/bin/node"]).context("node")?;
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg("server.js").current_dir(&env.node_dir);
    let mut proc = Proc::spawn("node-ws", cmd, &env.log_dir)?;
    #[derive(serde::Deserialize)]
    struct Port {
        port: u16,
    }
    let Port { port } = proc.read_json_line(START_TIMEOUT).await?;
    Ok(Target {
        system: System::Node,
        store: None,
        ws_url: format!("ws://127.0.0.1:{port}/ws"),
        room_url: format!("ws://127.0.0.1:{port}/ws?room={ROOM}"),
        dialer: Dialer::plain(),
        http_echo_url: None,
        publisher: Publisher::Plain {
            url: format!("http://127.0.0.1:{port}/publish/{ROOM}"),
        },
        function_url: None,
        measured: vec![proc.pid()],
        function_pid: None,
        procs: vec![proc],
        redis: None,
        scratch: None,
    })
}
