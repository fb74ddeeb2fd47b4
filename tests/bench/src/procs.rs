//! Processes: spawning the systems under test, reading their memory and CPU from `/proc`,
//! and stopping them.
//!
//! Memory is `VmRSS` from `/proc/<pid>/status`; CPU is `utime + stime` from
//! `/proc/<pid>/stat` in clock ticks ([`CLK_TCK`] per second). A system made of several
//! processes (Pushpin's runner and its condure, proxy and handler) is measured as the sum
//! over the process tree under its root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Clock ticks per second of `/proc/<pid>/stat` times: 100 on every Linux this runs on
/// (`getconf CLK_TCK`).
pub const CLK_TCK: u64 = 100;

/// The resident set size of `pid` in KiB, if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces):
/// index 0 is the state (field 3).
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let rest = stat.get(close + 1..)?;
    Some((name, rest.split_whitespace().map(str::to_owned).collect()))
}

/// User + system CPU time of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let (_, f) = stat_fields(pid)?;
    // Fields 14 (utime) and 15 (stime) of stat(5); f[0] is field 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `root` and every process below it.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((_, f)) = stat_fields(pid)
                && let Some(ppid) = f.get(1).and_then(|p| p.parse().ok())
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// One process's share of a [`Usage`].
#[derive(Clone, Debug, Serialize)]
pub struct ProcUsage {
    /// The process id.
    pub pid: u32,
    /// Its command name.
    pub name: String,
    /// Its RSS in KiB.
    pub rss_kib: u64,
}

/// Memory and CPU of a set of process trees at one instant.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    /// Total RSS in KiB.
    pub rss_kib: u64,
    /// Total user + system CPU in clock ticks.
    pub cpu_ticks: u64,
    /// Per process.
    pub procs: Vec<ProcUsage>,
}

/// The usage of the trees under `roots`.
pub fn usage(roots: &[u32]) -> Usage {
    let mut total = Usage::default();
    for &root in roots {
        for pid in process_tree(root) {
            let rss = rss_kib(pid).unwrap_or(0);
            total.rss_kib += rss;
            total.cpu_ticks += cpu_ticks(pid).unwrap_or(0);
            total.procs.push(ProcUsage {
                pid,
                name: stat_fields(pid).map(|(n, _)| n).unwrap_or_default(),
                rss_kib: rss,
            });
        }
    }
    total
}

/// CPU microseconds between two readings, per `units` (messages, deliveries, cycles).
pub fn cpu_us_per(before: &Usage, after: &Usage, units: u64) -> Option<f64> {
    if units == 0 {
        return None;
    }
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks);
    Some(ticks as f64 * (1_000_000 / CLK_TCK) as f64 / units as f64)
}

/// Sends `signal` (e.g. `TERM`) to `pid` with the `kill` program, so no unsafe code is
/// needed.
pub fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A child process the harness started; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    stdout: Option<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout piped (for [`Proc::read_json_line`]) and stderr appended
    /// to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, cmd: Command, log_dir: &Path) -> anyhow::Result<Proc> {
        Self::start(name, cmd, log_dir, false)
    }

    /// Spawns `cmd` with stdout and stderr both appended to `<log_dir>/<name>.log`, for a
    /// process that logs to stdout (nothing reads the pipe otherwise, and a full pipe
    /// would block it).
    pub fn spawn_logged(name: &str, cmd: Command, log_dir: &Path) -> anyhow::Result<Proc> {
        Self::start(name, cmd, log_dir, true)
    }

    fn start(
        name: &str,
        mut cmd: Command,
        log_dir: &Path,
        stdout_to_log: bool,
    ) -> anyhow::Result<Proc> {
        fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let stdout = if stdout_to_log {
            Stdio::from(file.try_clone()?)
        } else {
            Stdio::piped()
        };
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("child has no pid")?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
            stdout,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last lines of its stderr log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Reads the next stdout line as JSON (how the harness's servers announce their
    /// ports), then drains the rest of stdout in the background.
    pub async fn read_json_line<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let mut stdout = self.stdout.take().context("stdout already read")?;
        let mut line = String::new();
        let read = tokio::time::timeout(timeout, stdout.read_line(&mut line)).await;
        match read {
            Err(_) => bail!(
                "{} printed nothing within {timeout:?}; log:\n{}",
                self.name,
                self.log_tail()
            ),
            Ok(Err(e)) => return Err(e).context(format!("reading {}'s stdout", self.name)),
            Ok(Ok(0)) => bail!(
                "{} exited before announcing itself; log:\n{}",
                self.name,
                self.log_tail()
            ),
            Ok(Ok(_)) => {}
        }
        tokio::spawn(async move {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut stdout, &mut sink).await;
        });
        serde_json::from_str(line.trim())
            .with_context(|| format!("{} announced {line:?}, not the JSON expected", self.name))
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, waits up to `grace` for the exit, then kills the process and every
    /// process still below it.
    pub async fn terminate(mut self, grace: Duration) {
        let below = self.descendants();
        signal(self.pid, "TERM");
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        kill_if_same(&below);
    }

    /// Kills it (SIGKILL) and everything below it, and reaps it.
    pub async fn kill(mut self) {
        let below = self.descendants();
        let _ = self.child.kill().await;
        kill_if_same(&below);
    }

    /// The processes below this one, with their names, while it is still ours (not
    /// reaped, so its pid cannot have been reused).
    fn descendants(&mut self) -> Vec<(u32, String)> {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return Vec::new();
        }
        process_tree(self.pid)
            .into_iter()
            .skip(1)
            .filter_map(|pid| stat_fields(pid).map(|(name, _)| (pid, name)))
            .collect()
    }
}

/// SIGKILLs each `(pid, name)` still running under the same name (a pid recorded as our
/// descendant moments ago, not a reused one).
fn kill_if_same(procs: &[(u32, String)]) {
    for (pid, name) in procs {
        if stat_fields(*pid).is_some_and(|(n, _)| &n == name) {
            signal(*pid, "KILL");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // kill_on_drop kills the root only; a runner's children (Pushpin's) would be left.
        let below = self.descendants();
        kill_if_same(&below);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert_eq!(process_tree(me)[0], me);
        let u = usage(&[me]);
        assert!(u.rss_kib > 0 && !u.procs.is_empty());
        assert_eq!(rss_kib(u32::MAX), None);
    }

    #[test]
    fn cpu_per_unit() {
        let a = Usage {
            cpu_ticks: 10,
            ..Usage::default()
        };
        let b = Usage {
            cpu_ticks: 30,
            ..Usage::default()
        };
        // 20 ticks = 200 ms over 1000 units = 200 µs each.
        assert_eq!(cpu_us_per(&a, &b, 1000), Some(200.0));
        assert_eq!(cpu_us_per(&a, &b, 0), None);
    }
}
