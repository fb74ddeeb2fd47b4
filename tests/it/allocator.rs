//! The gateway's allocator gives memory back while it is idle: the `switchboard` binary
//! runs jemalloc with its background purging threads, so freed pages go back to the OS
//! without waiting for the next allocation (tests/bench's `wave` row measures the RSS).

use std::time::Duration;

use tests::process::GatewayProcess;
use tests::wait::eventually;

/// The names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn the_gateway_runs_jemalloc_background_purging() {
    let config = format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{}\"\n",
        tests::gateway::TOKEN
    );
    let mut gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let pid = gateway.process().pid().expect("the gateway's pid");
    eventually(
        "a jemalloc background thread in the gateway",
        Duration::from_secs(10),
        || async move { thread_names(pid).iter().any(|n| n == "jemalloc_bg_thd") },
    )
    .await;
    gateway.terminate().await;
}
