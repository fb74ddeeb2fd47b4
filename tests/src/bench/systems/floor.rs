//! The floors: `bench-floor` (see [`crate::bench::floor`]), built in the same run.

use super::{Env, Publisher, START_TIMEOUT, Target};
use crate::bench::floor::FloorPorts;
use crate::bench::plan::System;
use crate::bench::procs::Proc;

/// Starts `bench-floor` and reads its ports.
pub async fn start(env: &Env) -> anyhow::Result<Target> {
    let cmd = tokio::process::Command::new(crate::bench::sibling("bench-floor")?);
    let mut proc = Proc::spawn("bench-floor", cmd, &env.log_dir)?;
    let ports: FloorPorts = proc.read_json_line(START_TIMEOUT).await?;
    Ok(Target {
        system: System::Floor,
        store: None,
        ws_url: format!("ws://127.0.0.1:{}/ws", ports.ws),
        room_url: format!("ws://127.0.0.1:{}/ws", ports.fanout_ws),
        http_echo_url: Some(format!("http://127.0.0.1:{}/echo", ports.http)),
        publisher: Publisher::Plain {
            url: format!("http://127.0.0.1:{}/publish", ports.fanout_http),
        },
        function_url: None,
        measured: vec![proc.pid()],
        function_pid: None,
        procs: vec![proc],
        redis: None,
        scratch: None,
    })
}
