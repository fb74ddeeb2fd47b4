//! A real, private Redis Cluster per test: three masters (no replicas), each a
//! `redis-server --cluster-enabled yes` on free 127.0.0.1 ports (client port and cluster
//! bus port both chosen free, never fixed), joined with `redis-cli --cluster create`,
//! killed and cleaned up on drop.
//!
//! ```no_run
//! let Some(cluster) = tests::redis_cluster::require_redis_cluster() else { return };
//! let url = cluster.url(); // redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
//! ```

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::redis::{free_port, ping, redis_server_binary};

/// How long to wait for the nodes to answer and for the cluster to report `cluster_state:ok`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
const MASTERS: usize = 3;
const PORT_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(20);

/// Path of `redis-cli` (`$REDIS_CLI`, then `PATH`, then `/usr/bin/redis-cli`); it comes
/// with redis-server (Debian package `redis-tools`).
pub fn redis_cli_binary() -> Option<PathBuf> {
    crate::find_program("REDIS_CLI", "redis-cli", &["/usr/bin/redis-cli"])
}

/// Starts a three-master cluster for a test, or reports redis-server / redis-cli missing
/// (panics under `SWITCHBOARD_REQUIRE_ALL`, else prints `SKIP:` and returns `None`).
///
/// Panics if they are installed but the cluster does not come up.
#[track_caller]
pub fn require_redis_cluster() -> Option<RedisCluster> {
    if redis_server_binary().is_none() || redis_cli_binary().is_none() {
        crate::skip_or_fail("redis-server or redis-cli not installed");
        return None;
    }
    match RedisCluster::start() {
        Ok(cluster) => Some(cluster),
        Err(e) => panic!("starting a redis cluster: {e:#}"),
    }
}

/// Three `redis-server` cluster nodes owned by one test.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    cli: PathBuf,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    port: u16,
    child: Child,
}

impl RedisCluster {
    /// Starts three nodes, creates the cluster (16384 slots split over them) and waits until
    /// every node reports `cluster_state:ok` (bounded by [`READY_TIMEOUT`]).
    pub fn start() -> anyhow::Result<Self> {
        let server = redis_server_binary().context("redis-server not found")?;
        let cli = redis_cli_binary().context("redis-cli not found")?;
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-cluster-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = RedisCluster {
            dir,
            cli,
            nodes: Vec::new(),
        };
        for _ in 0..MASTERS {
            let node = cluster.launch_node(&server)?;
            cluster.nodes.push(node);
        }
        let mut create = Command::new(&cluster.cli);
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create exited with {}:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_state_ok()?;
        Ok(cluster)
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The client ports of the nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The cluster's private working directory (one subdirectory per node).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `redis-cli -p PORT ARGS...` against one node and returns its standard output.
    pub fn cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.cli)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running redis-cli -p {port} {args:?}"))?;
        if !out.status.success() {
            bail!(
                "redis-cli -p {port} {args:?} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every key matching a glob `pattern`, across all nodes (`redis-cli --scan`), sorted.
    pub fn keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        for port in self.ports() {
            let out = self.cli(port, &["--scan", "--pattern", pattern])?;
            keys.extend(out.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
        keys.sort();
        Ok(keys)
    }

    /// Spawns one node on free ports (retrying on other ports if it exits at startup, e.g.
    /// because another process took a port) and waits until it answers `PING`.
    fn launch_node(&self, server: &Path) -> anyhow::Result<Node> {
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let (port, bus_port) = (free_port()?, free_port()?);
            if port == bus_port {
                continue;
            }
            let dir = self.dir.join(port.to_string());
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("redis.log"))
                .context("opening the node's log")?;
            let child = Command::new(server)
                .args(["--port", &port.to_string()])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&dir)
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("spawning {}", server.display()))?;
            let mut node = Node { port, child };
            match wait_node_ready(&mut node, &dir) {
                Ok(()) => return Ok(node),
                Err(e) => {
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no free port pair found"))
            .context(format!(
                "a cluster node failed to start after {PORT_ATTEMPTS} attempts"
            )))
    }

    /// Polls `CLUSTER INFO` on every node until each says `cluster_state:ok`.
    fn wait_state_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for port in self.ports() {
            loop {
                let info = self.cli(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "node {port} did not report cluster_state:ok within {READY_TIMEOUT:?}:\n{info}"
                    );
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }
}

/// Waits until the node answers `PING`, or reports that it exited.
fn wait_node_ready(node: &mut Node, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            bail!(
                "cluster node on port {} exited with {status}; log:\n{}",
                node.port,
                fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
        }
        if ping(node.port).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "cluster node on port {} did not answer PING within {READY_TIMEOUT:?}",
                node.port
            );
        }
        std::thread::sleep(POLL);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_masters_cover_every_slot_and_clean_up() {
        let Some(cluster) = require_redis_cluster() else {
            return;
        };
        let ports = cluster.ports();
        assert_eq!(ports.len(), 3);
        for &port in &ports {
            let info = cluster.cli(port, &["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_slots_ok:16384"), "{info}");
            assert!(info.contains("cluster_known_nodes:3"), "{info}");
        }
        assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
        // `-c` follows redirections: a key set through one node is found through another.
        cluster.cli(ports[0], &["-c", "SET", "k{x}", "v"]).unwrap();
        assert_eq!(
            cluster
                .cli(ports[2], &["-c", "GET", "k{x}"])
                .unwrap()
                .trim(),
            "v"
        );
        assert_eq!(cluster.keys("k*").unwrap(), ["k{x}"]);

        let dir = cluster.dir().to_path_buf();
        drop(cluster);
        assert!(!dir.exists(), "temp dir {dir:?} must be removed on drop");
        for port in ports {
            assert!(
                !ping(port).unwrap_or(false),
                "port {port} must refuse after drop"
            );
        }
    }
}
