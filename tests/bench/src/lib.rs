//! The benchmark harness: Switchboard (on `ws://`, and on `wss://` against nginx
//! terminating TLS in front of it) against Pushpin, Nchan (nginx), a hand-written Node.js
//! `ws` server and bare tokio floors, side by side, on one machine, with one load generator
//! and one function; and the gateway as a WebSocket proxy (`[[passthrough]]`) against
//! nginx's `proxy_pass` and Pushpin's WebSocket proxy mode, in front of one echo backend.
//!
//! Its own package, so the integration tests do not compile it; it uses their library
//! (the `tests` package, as `harness`) for `redis-server` and finding programs.
//!
//! Three binaries of this package use it:
//! - `bench` ([`cli`]): the orchestrator and load generator. It starts every system under
//!   test itself (the gateway's own binary `switchboard`, `pushpin`, `nginx`, `node`,
//!   `bench-function`, `bench-floor`), drives real WebSocket clients from several 127.0.0.x
//!   source addresses (spread over `bench worker` subprocesses when one process may not
//!   hold them all), and prints one table row per (scenario, system, store), appending it
//!   as JSON to `bench-results/results.jsonl`. `bench svg` draws the latency chart.
//! - `bench-function` ([`function`]): the one benchmark function, answering the gateway's
//!   native events, Pushpin's WebSocket-over-HTTP events and Nchan's open, message and
//!   close requests with the same logic.
//! - `bench-floor` ([`floor`]): the floors: a bare tokio-tungstenite echo, a bare hyper
//!   HTTP echo and a raw fan-out server.
//! - `bench-backend` ([`backend`]): the echo WebSocket service the passthrough scenarios
//!   reach through a proxy (the gateway's `[[passthrough]]` route, nginx, Pushpin).
//!
//! Scenarios: [`idle`], [`echo`], [`fanout`], [`churn`], and `passthrough-idle` and
//! `passthrough-echo` (the idle and echo measurements through a WebSocket proxy). [`tls`] makes the run's
//! certificates. `tests/bench/README.md` has the commands and the latest results.

pub mod backend;
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
pub mod tls;
pub mod worker;
pub mod wsevents;

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top `Cargo.toml`), as built: two levels
/// above this package's `tests/bench`.
pub fn workspace_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.ancestors().nth(2).unwrap_or(bench).to_path_buf()
}

/// The directory of the running executable: its sibling binaries live there.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", exe.display()))
}

/// A sibling binary of the running executable: cargo puts every workspace binary in one
/// target directory, so the gateway's `switchboard` sits beside this package's binaries.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir()?;
    let release = if dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it with `cargo build{release} -p gateway -p bench --bins`",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_and_a_missing_sibling() {
        assert!(workspace_root().join("tests/bench/Cargo.toml").is_file());
        let err = sibling("no-such-binary").unwrap_err().to_string();
        assert!(
            err.contains("`cargo build -p gateway -p bench --bins`"),
            "{err}"
        );
    }
}
