//! The floors: `bench-floor` (see [`crate::floor`]), built in the same run.

use super::{Env, Publisher, START_TIMEOUT, Target};
use crate::client::Dialer;
use crate::floor::FloorPorts;
use crate::plan::System;
use crate::procs::Proc;

/// Starts `bench-floor` and reads its ports.
pub async fn start(env: &Env) -> anyhow::Result<Target> {
    let cmd = tokio::process::Command::new(crate::sibling("bench-floor")?);
    let mut proc = Proc::spawn("bench-floor", cmd, &env.log_dir)?;
    let ports: FloorPorts = proc.read_json_line(START_TIMEOUT).await?;
    Ok(Target {
        system: System::Floor,
        store: None,
        ws_url: format!("ws://127.0.0.1:{}/ws", ports.ws),
        room_url: format!("ws://127.0.0.1:{}/ws", ports.fanout_ws),
        dialer: Dialer::plain(),
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
