//! Child processes of the tests: one output of a process kept line by line and waited on
//! ([`OutputLines`]), a process that must exit cleanly on SIGTERM ([`Process`]), the real
//! gateway binary run from a config file ([`GatewayProcess`]), and a temporary directory
//! removed on drop ([`TempDir`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the gateway binary may take to print that it listens.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The lines of one output of a process, read in the background and kept; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OutputLines {
    inner: Arc<Mutex<Output>>,
}

#[derive(Debug, Default)]
struct Output {
    lines: Vec<String>,
    /// The output was closed (the process exited): no line will come.
    ended: bool,
}

impl OutputLines {
    /// Reads `reader` line by line in the background, keeping every line and, when `echo`
    /// is given, also printing each as `[echo] line` (with the test's output).
    pub fn capture(reader: impl AsyncRead + Unpin + Send + 'static, echo: Option<String>) -> Self {
        let output = OutputLines::default();
        let writer = output.inner.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(name) = &echo {
                    eprintln!("[{name}] {line}");
                }
                writer.lock().unwrap().lines.push(line);
            }
            writer.lock().unwrap().ended = true;
        });
        output
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.inner.lock().unwrap().lines.clone()
    }

    /// Waits until `find(lines)` finds something and returns it; panics after `timeout`, or
    /// as soon as the output ends without it.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        find: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        crate::wait::eventually_some(what, timeout, || {
            let (found, ended) = {
                let output = self.inner.lock().unwrap();
                (find(&output.lines), output.ended)
            };
            if found.is_none() && ended {
                panic!(
                    "the output ended before {what}; its lines: {:#?}",
                    self.lines()
                );
            }
            async move { found }
        })
        .await
    }

    /// Waits for the first line.
    pub async fn first_line(&self, timeout: Duration) -> String {
        self.wait_for("the first line", timeout, |lines| lines.first().cloned())
            .await
    }

    /// Waits for the first line containing every one of `needles`.
    pub async fn line_with(&self, needles: &[&str], timeout: Duration) -> String {
        self.nth_line_with(1, needles, timeout).await
    }

    /// Waits for the `n`th line (counted from 1) containing every one of `needles`.
    pub async fn nth_line_with(&self, n: usize, needles: &[&str], timeout: Duration) -> String {
        self.wait_for(&format!("line #{n} with {needles:?}"), timeout, |lines| {
            lines
                .iter()
                .filter(|l| needles.iter().all(|needle| l.contains(needle)))
                .nth(n - 1)
                .cloned()
        })
        .await
    }
}

/// A running child process with one of its outputs kept; killed if dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    output: OutputLines,
}

impl Process {
    /// Spawns `cmd` keeping its stderr (where the Rust binaries log) and discarding its
    /// stdout.
    pub fn spawn(cmd: &mut Command) -> Process {
        let mut child = spawn_killed_on_drop(cmd.stdout(Stdio::null()).stderr(Stdio::piped()));
        let output = OutputLines::capture(child.stderr.take().unwrap(), None);
        Process { child, output }
    }

    /// Spawns `cmd` keeping its stdout and echoing it as `[name] line`; its stderr goes
    /// where the test's goes.
    pub fn spawn_echoing_stdout(cmd: &mut Command, name: &str) -> Process {
        let mut child = spawn_killed_on_drop(cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()));
        let output = OutputLines::capture(child.stdout.take().unwrap(), Some(name.to_owned()));
        Process { child, output }
    }

    /// The output it keeps.
    pub fn output(&self) -> &OutputLines {
        &self.output
    }

    /// Its process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, ...) to it.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process runs");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// SIGKILL, then waits for it to exit.
    pub async fn kill(&mut self) {
        self.signal("KILL");
        self.child.wait().await.unwrap();
    }

    /// Sends SIGTERM and asserts that it exits successfully within 15 s.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .expect("process exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

fn spawn_killed_on_drop(cmd: &mut Command) -> Child {
    cmd.kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// The real gateway binary, run with a config file and `SWITCHBOARD_LOG=info`, its log
/// kept; killed if dropped.
#[derive(Debug)]
pub struct GatewayProcess {
    process: Process,
    public: String,
    public_tls: Option<String>,
    sendback: String,
    _dir: TempDir,
}

impl GatewayProcess {
    /// Writes `config` to a file, runs `binary --config <file>` and waits until it logs that
    /// it listens. `binary` is the test binary's `switchboard_bin()`.
    pub async fn start(binary: &Path, config: &str) -> GatewayProcess {
        GatewayProcess::start_logging(binary, config, "info").await
    }

    /// As [`GatewayProcess::start`], logging at `filter` (a `SWITCHBOARD_LOG` value such as
    /// `trace`).
    pub async fn start_logging(binary: &Path, config: &str, filter: &str) -> GatewayProcess {
        let dir = TempDir::new();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let process = Process::spawn(
            Command::new(binary)
                .arg("--config")
                .arg(&path)
                .env("SWITCHBOARD_LOG", filter),
        );
        let listening = process
            .output()
            .line_with(&["gateway listening"], LISTEN_TIMEOUT)
            .await;
        let public_tls = Some(log_field(&listening, "public_tls")).filter(|a| a != "none");
        GatewayProcess {
            public: log_field(&listening, "public"),
            public_tls,
            sendback: log_field(&listening, "sendback"),
            process,
            _dir: dir,
        }
    }

    /// Where clients connect (`host:port`).
    pub fn public(&self) -> &str {
        &self.public
    }

    /// Where `wss://` clients connect (`host:port`), when `public.tls` is set.
    pub fn public_tls(&self) -> Option<&str> {
        self.public_tls.as_deref()
    }

    /// The send-back API (`host:port`).
    pub fn sendback(&self) -> &str {
        &self.sendback
    }

    /// Its log.
    pub fn log(&self) -> &OutputLines {
        self.process.output()
    }

    /// The process, to signal it (SIGKILL, SIGSTOP, SIGCONT).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Sends SIGTERM and asserts that it exits successfully within 15 s.
    pub async fn terminate(self) {
        self.process.terminate().await;
    }
}

/// The value of `name=value` in a log line.
pub fn log_field(line: &str, name: &str) -> String {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
        .to_owned()
}

/// A new temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates it under the system's temporary directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sb-it-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
