//! Switchboard test harness: shared harness for the end-to-end tests (`tests/it`), also
//! used by the benchmark package (`tests/bench`, which depends on this library).
//!
//! Everything here runs real things: a real `redis-server` on a free port
//! ([`redis::RedisServer`]) or a real three-node Redis Cluster
//! ([`redis_cluster::RedisCluster`]), real processes, real sockets. Waiting is always
//! polling for a condition with a bound ([`wait::eventually`]), never a bare sleep.
//!
//! Tests that need an external program (redis-server, nginx, chromium, node, prometheus)
//! skip with a loud `SKIP:` line when it is missing, unless `SWITCHBOARD_REQUIRE_ALL` is
//! set (as `tests/run.sh` does under CI), in which case they fail.

pub mod function_server;
pub mod gateway;
pub mod metrics;
pub mod nginx;
pub mod node;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod python;
pub mod recorder;
pub mod redis;
pub mod redis_cluster;
pub mod scripted;
pub mod tls;
pub mod wait;
pub mod ws_backend;

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Environment variable that turns "skip when a tool is missing" into a failure.
pub const REQUIRE_ALL_ENV: &str = "SWITCHBOARD_REQUIRE_ALL";

/// True when `SWITCHBOARD_REQUIRE_ALL` is set to anything but empty or `0`.
pub fn require_all() -> bool {
    std::env::var_os(REQUIRE_ALL_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Reports a missing external tool: panics under `SWITCHBOARD_REQUIRE_ALL`,
/// otherwise prints a loud `SKIP:` line (past cargo's output capture) and returns,
/// so the caller can return early.
///
/// `what` is e.g. `"redis-server not installed"`.
#[track_caller]
pub fn skip_or_fail(what: &str) {
    if require_all() {
        panic!(
            "{what}, and {REQUIRE_ALL_ENV} is set: install it (tests/run.sh does) or unset {REQUIRE_ALL_ENV}"
        );
    }
    // Written straight to stderr, not with eprintln!, so libtest's capture does
    // not swallow it for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP: {what} (run tests/run.sh) [{}] ***\n",
        std::panic::Location::caller()
    );
}

/// Finds an executable: the path in env var `env_var` if set (and a file),
/// else `name` on `PATH`, else each of `fallbacks` that exists.
pub fn find_program(env_var: &str, name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    fallbacks
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
}

/// The file `deploy/<name>` of this repository with each placeholder replaced by its
/// value, e.g. `("listen 80;", "listen 127.0.0.1:8123;")` (every occurrence). Panics if a
/// placeholder is not in the file, so that a file and its test cannot drift apart unseen.
pub fn deploy_file(name: &str, replacements: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (placeholder, value) in replacements {
        assert!(
            text.contains(placeholder),
            "deploy/{name} no longer holds the placeholder `{placeholder}`"
        );
        text = text.replace(placeholder, value);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_program_uses_path_and_fallbacks() {
        // `sh` is on every machine that can run these tests.
        let sh = find_program("SWITCHBOARD_TEST_UNSET_VAR", "sh", &[]).expect("sh on PATH");
        assert!(sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            find_program(
                "SWITCHBOARD_TEST_UNSET_VAR",
                "no-such-program-xyz",
                &["/bin/sh"]
            ),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find_program(
                "SWITCHBOARD_TEST_UNSET_VAR",
                "no-such-program-xyz",
                &["/nonexistent/x"]
            ),
            None
        );
    }
}
