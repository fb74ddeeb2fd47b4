//! The systems under test, started fresh for every (scenario, system, store) and stopped
//! afterwards: each becomes a [`Target`] that says where clients connect, how a fan-out is
//! published, and which processes to measure.
//!
//! In the passthrough scenarios the gateway, nginx ([`nginx_proxy`]) and Pushpin are
//! started as WebSocket proxies in front of the run's one `bench-backend` ([`Env::backend`]),
//! with no function.

pub mod floor;
pub mod nchan;
pub mod nginx_proxy;
pub mod nginx_tls;
pub mod node;
pub mod pushpin;
pub mod switchboard;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::client::Dialer;
use super::function::FunctionStats;
use super::machine::FD_RESERVE;
use super::plan::{Scenario, StoreKind, System};
use super::procs::{Proc, Usage, usage};
use super::tls::Pki;
use harness::redis::RedisServer;

/// The room (group, channel) every fan-out member joins.
pub const ROOM: &str = "bench";

/// How long a system may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Run-wide settings the systems need.
#[derive(Clone, Debug)]
pub struct Env {
    /// Where process logs and generated configs go.
    pub log_dir: PathBuf,
    /// The Node.js peer's directory (`tests/bench/node-ws`).
    pub node_dir: PathBuf,
    /// The HTTP client for control requests.
    pub http: reqwest::Client,
    /// The run's CA and server certificate (`switchboard-wss`, `nginx-tls`).
    pub pki: Arc<Pki>,
    /// The port of the run's `bench-backend` on 127.0.0.1, when a passthrough scenario is
    /// on the plan.
    pub backend: Option<u16>,
}

impl Env {
    /// The backend's port, or why there is none.
    pub fn backend_port(&self) -> anyhow::Result<u16> {
        self.backend
            .ok_or_else(|| anyhow::anyhow!("no bench-backend was started for this run"))
    }
}

/// How a fan-out is published.
#[derive(Clone, Debug)]
pub enum Publisher {
    /// The gateway's send-back API (`POST /@groups/{room}` or `POST /@connections`).
    Switchboard {
        /// `http://127.0.0.1:PORT`.
        sendback: String,
        /// The bearer token.
        token: String,
    },
    /// Pushpin's publish endpoint (`POST /publish/`, GRIP `ws-message` items).
    Pushpin {
        /// `http://127.0.0.1:PORT/publish/`.
        url: String,
    },
    /// A plain `POST url` whose body is the message (Nchan, Node and the raw floor).
    Plain {
        /// The URL.
        url: String,
    },
}

/// A started system.
pub struct Target {
    /// Which system.
    pub system: System,
    /// The gateway's store (the systems running the gateway only).
    pub store: Option<StoreKind>,
    /// WebSocket URL for idle, echo and churn clients.
    pub ws_url: String,
    /// WebSocket URL of a fan-out member (joins [`ROOM`]).
    pub room_url: String,
    /// How clients connect (with the run's CA for a `wss://` URL).
    pub dialer: Dialer,
    /// HTTP echo URL (the floor's bare HTTP round trip).
    pub http_echo_url: Option<String>,
    /// How to publish to the room.
    pub publisher: Publisher,
    /// The benchmark function's base URL, when the system calls it.
    pub function_url: Option<String>,
    /// Processes measured as the system (their whole trees).
    measured: Vec<u32>,
    /// The benchmark function's pid.
    function_pid: Option<u32>,
    /// Stopped in reverse order.
    procs: Vec<Proc>,
    redis: Option<RedisServer>,
    scratch: Option<PathBuf>,
}

impl Target {
    /// Starts `system` (on `store` for the systems running the gateway) for `scenario`:
    /// as a WebSocket proxy in front of the run's backend for the passthrough scenarios.
    pub async fn start(
        system: System,
        store: Option<StoreKind>,
        scenario: Scenario,
        env: &Env,
    ) -> anyhow::Result<Target> {
        let store = store.unwrap_or(StoreKind::Memory);
        if scenario.is_passthrough() {
            return match system {
                System::Switchboard => switchboard::start_passthrough(store, env).await,
                System::Nginx => nginx_proxy::start(env).await,
                System::Pushpin => pushpin::start_passthrough(env).await,
                other => bail!("{other} has no passthrough mode"),
            };
        }
        match system {
            System::Switchboard => switchboard::start(store, env).await,
            System::SwitchboardWss => switchboard::start_wss(store, env).await,
            System::NginxTls => nginx_tls::start(store, env).await,
            System::Pushpin => pushpin::start(env).await,
            System::Nchan => nchan::start(env).await,
            System::Node => node::start(env).await,
            System::Floor => floor::start(env).await,
            System::Nginx => bail!("nginx runs the passthrough scenarios only"),
        }
    }

    /// Why `system` cannot run on this machine, if it cannot.
    pub fn unavailable(system: System, store: Option<StoreKind>, env: &Env) -> Option<String> {
        if store == Some(StoreKind::Redis) && !harness::redis::redis_available() {
            return Some("redis-server not installed".to_owned());
        }
        match system {
            System::Pushpin => pushpin::unavailable(),
            System::Nchan => nchan::unavailable(),
            System::NginxTls | System::Nginx => nginx_tls::unavailable(),
            System::Node => node::unavailable(env),
            System::Switchboard | System::SwitchboardWss | System::Floor => None,
        }
    }

    /// Memory and CPU of the system's processes now.
    pub fn usage(&self) -> Usage {
        usage(&self.measured)
    }

    /// Memory and CPU of the benchmark function now.
    pub fn function_usage(&self) -> Option<Usage> {
        self.function_pid.map(|pid| usage(&[pid]))
    }

    /// The function's counters.
    pub async fn function_stats(&self, http: &reqwest::Client) -> Option<FunctionStats> {
        let url = format!("{}/stats", self.function_url.as_ref()?);
        http.get(url).send().await.ok()?.json().await.ok()
    }

    /// Fails if a process of the system has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.exited() {
                bail!("{} exited ({status}); log:\n{}", p.name(), p.log_tail());
            }
        }
        Ok(())
    }

    /// Stops every process (gracefully where it matters) and removes scratch files.
    pub async fn stop(mut self) {
        while let Some(p) = self.procs.pop() {
            p.terminate(Duration::from_secs(5)).await;
        }
        if let Some(mut redis) = self.redis.take() {
            let _ = tokio::task::spawn_blocking(move || redis.stop()).await;
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An nginx worker's open-files limit and connections (`nchan`, `nginx-tls`): the hard
/// limit the harness runs under (every system inherits it), less a reserve for everything
/// but connections.
pub fn nginx_limits() -> (u64, u64) {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let nofile = hard.min(1 << 20);
    (nofile, nofile.saturating_sub(FD_RESERVE).max(512))
}

/// What every nginx the bench generates a config for shares: its scratch directory (pid,
/// lock and temporary files), worker processes, each worker's open-files limit and
/// connections.
#[derive(Debug, Clone)]
pub struct NginxProcess {
    pub dir: PathBuf,
    pub workers: usize,
    pub nofile: u64,
    pub connections: u64,
}

impl NginxProcess {
    /// For a run in `dir`: one worker per CPU, the limits of [`nginx_limits`].
    pub fn for_run(dir: &std::path::Path) -> Self {
        let (nofile, connections) = nginx_limits();
        NginxProcess {
            dir: dir.to_path_buf(),
            workers: std::thread::available_parallelism().map_or(2, usize::from),
            nofile,
            connections,
        }
    }
}

/// A whole `nginx.conf` (`generated_by`: the module writing it): `before` (e.g.
/// `load_module`) and the process settings, then an `http` block with logging off, the
/// temporary paths in the scratch directory, and `http`.
pub fn nginx_conf(generated_by: &str, p: &NginxProcess, before: &str, http: &str) -> String {
    let d = p.dir.display();
    format!(
        "# Generated by the benchmark harness ({generated_by}).\n{before}\
         daemon off;\nmaster_process on;\nworker_processes {workers};\n\
         worker_rlimit_nofile {nofile};\npid {d}/nginx.pid;\nlock_file {d}/nginx.lock;\n\
         error_log stderr warn;\n\nevents {{\n    worker_connections {connections};\n}}\n\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/tmp/body;\n    \
         proxy_temp_path {d}/tmp/proxy;\n    fastcgi_temp_path {d}/tmp/fastcgi;\n    \
         uwsgi_temp_path {d}/tmp/uwsgi;\n    scgi_temp_path {d}/tmp/scgi;\n{http}}}\n",
        workers = p.workers,
        nofile = p.nofile,
        connections = p.connections,
    )
}

/// `location /` proxying WebSocket upgrades (and plain requests) to 127.0.0.1:`port`, as
/// a user would: HTTP/1.1, the upgrade headers, `Host`, read and send timeouts of
/// `timeout`.
pub fn ws_proxy_location(port: u16, timeout: &str) -> String {
    format!(
        r#"        location / {{
            proxy_pass http://127.0.0.1:{port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $http_host;
            proxy_read_timeout {timeout};
            proxy_send_timeout {timeout};
        }}
"#
    )
}

/// Starts nginx (`nchan`, `nginx-tls`) with `config` as its whole configuration, in `dir`
/// (its prefix; `tmp/` made for its temporary files), logging to stderr; a copy of the
/// config goes to the run's log directory as `<name>-nginx.conf`.
pub fn spawn_nginx(
    binary: &std::path::Path,
    dir: &std::path::Path,
    config: &str,
    name: &str,
    env: &Env,
) -> anyhow::Result<Proc> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir.join("tmp"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
    std::fs::copy(&conf, env.log_dir.join(format!("{name}-nginx.conf")))?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg("stderr");
    Proc::spawn_logged(name, cmd, &env.log_dir)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(harness::redis::free_port()?)
}

/// Polls until `port` on 127.0.0.1 accepts TCP connections, failing early if `proc` exits.
pub async fn wait_port(port: u16, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = proc.exited() {
            bail!(
                "{} exited ({status}) before listening on {port}; log:\n{}",
                proc.name(),
                proc.log_tail()
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not listen on {port} within {START_TIMEOUT:?}; log:\n{}",
                proc.name(),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until a WebSocket through `url` echoes a message back: the proxy in front of
/// `bench-backend` is up and reaches it. Fails early if `proc` exits.
pub async fn wait_ws_echo(url: &str, proc: &mut Proc) -> anyhow::Result<()> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    async fn echo_once(url: &str) -> anyhow::Result<()> {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        ws.send(Message::text("ready?")).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "ready?" => break,
                Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the connection ended before the echo"),
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    }

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            bail!(
                "{} exited ({status}); log:\n{}",
                proc.name(),
                proc.log_tail()
            );
        }
        let last = match tokio::time::timeout(Duration::from_secs(2), echo_once(url)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no echo within 2 s".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!(
                "a WebSocket echo through {} at {url} did not come back within \
                 {START_TIMEOUT:?} (last: {last}); log:\n{}",
                proc.name(),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attempts at starting a system (a free port may be taken between probe and bind).
pub const ATTEMPTS: usize = 3;

/// Runs `start` in a fresh scratch directory under /tmp (`{prefix}-{8 hex digits}`: short,
/// since IPC socket paths in it must fit in 108 bytes), up to [`ATTEMPTS`] times (a free
/// port may be taken between probe and bind). Returns what it started and its directory;
/// a failed attempt's directory is removed.
pub async fn start_in_scratch<T, Fut>(
    prefix: &str,
    mut start: impl FnMut(PathBuf) -> Fut,
) -> anyhow::Result<(T, PathBuf)>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut last_err = None;
    for _ in 0..ATTEMPTS {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        match start(dir.clone()).await {
            Ok(started) => return Ok((started, dir)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// Starts `bench-function` (with a send-back API for room joins, if given) and returns it
/// with its base URL and port.
pub async fn start_function(
    env: &Env,
    sendback: Option<(&str, &str)>,
) -> anyhow::Result<(Proc, String, u16)> {
    let mut cmd = tokio::process::Command::new(super::sibling("bench-function")?);
    if let Some((url, token)) = sendback {
        cmd.args(["--sendback", url, "--token", token]);
    }
    let mut proc = Proc::spawn("bench-function", cmd, &env.log_dir)?;
    #[derive(serde::Deserialize)]
    struct Port {
        port: u16,
    }
    let Port { port } = proc.read_json_line(START_TIMEOUT).await?;
    Ok((proc, format!("http://127.0.0.1:{port}"), port))
}

/// For the nginx systems' tests: a fresh scratch directory (with `tmp/`) named `tag`.
#[cfg(test)]
pub fn nginx_test_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    dir
}

/// For the nginx systems' tests: `nginx -t` accepts `config` run in `dir` (removed after).
#[cfg(test)]
pub fn assert_nginx_accepts(nginx: &std::path::Path, dir: &std::path::Path, config: &str) {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let out = std::process::Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg("stderr")
        .output()
        .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
