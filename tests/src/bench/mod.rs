//! The benchmark harness: Switchboard against Pushpin, Nchan (nginx), a hand-written
//! Node.js `ws` server and bare tokio floors, side by side, on one machine, with one load
//! generator and one function.
//!
//! Three binaries of the `tests` package use it:
//! - `bench` ([`cli`]): the orchestrator and load generator. It starts every system under
//!   test itself (the gateway's own `main.rs` as `switchboard-under-test`, `pushpin`,
//!   `nginx`, `node`, `bench-floor`), drives real WebSocket clients from several 127.0.0.x
//!   source addresses (spread over `bench worker` subprocesses when one process may not
//!   hold them all), and prints one table row per (scenario, system, store), appending it
//!   as JSON to `bench-results/results.jsonl`. `bench svg` draws the latency chart.
//! - `bench-function` ([`function`]): the one benchmark function, answering the gateway's
//!   native events, Pushpin's WebSocket-over-HTTP events and Nchan's open, message and
//!   close requests with the same logic.
//! - `bench-floor` ([`floor`]): the floors: a bare tokio-tungstenite echo, a bare hyper
//!   HTTP echo and a raw fan-out server.
//!
//! Scenarios: [`idle`], [`echo`], [`fanout`], [`churn`]. `tests/bench/README.md` has the
//! commands and the latest results.

pub mod churn;
pub mod cli;
pub mod client;
pub mod echo;
pub mod fanout;
pub mod floor;
pub mod function;
pub mod idle;
pub mod machine;
pub mod plan;
pub mod procs;
pub mod report;
pub mod stats;
pub mod svg;
pub mod systems;
pub mod targets;
pub mod worker;
pub mod wsevents;

use std::path::PathBuf;

/// The workspace root (the directory holding the top `Cargo.toml`), as built.
pub fn workspace_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests.parent().map_or(tests.clone(), PathBuf::from)
}

/// The directory of the running executable: its sibling binaries live there.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", exe.display()))
}

/// A sibling binary of the running executable (built by the same `cargo build`).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it with `cargo build --release -p tests --bins`",
        path.display()
    );
    Ok(path)
}

/// Microseconds since the Unix epoch: one clock every process on the machine shares, so
/// worker processes and the orchestrator can compare their timestamps.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
