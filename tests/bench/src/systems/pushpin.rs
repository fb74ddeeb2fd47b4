//! The Pushpin peer: Debian's `pushpin` (install with `tests/bench/install-peers.sh`) in
//! WebSocket-over-HTTP mode (`over_http` route) in front of the same `bench-function`,
//! publishing through its HTTP publish endpoint.
//!
//! Pushpin 1.36 is a runner (`pushpin`) starting four services: `condure` (the client
//! connections), `pushpin-proxy`, `pushpin-handler` (GRIP, the publish endpoint) and
//! `zurl`, the HTTP client through which the proxy sends every WebSocket-over-HTTP request
//! to the origin. Debian's installed config starts no `zurl` (its `internal.conf` points
//! the proxy at a system-wide zurl service under `/var/run/zurl`), so that config alone
//! accepts WebSocket upgrades and never reaches the function.
//!
//! The bench config is the installed `/etc/pushpin/pushpin.conf` with these changes:
//! - a private run directory; every internal ZeroMQ endpoint on IPC in it;
//! - a private library directory (`global/libdir`) holding a copy of the installed
//!   `internal.conf` and runner templates, with the proxy's zurl endpoints and zurl's own
//!   (`zurl.conf.template`) both in the run directory, and the proxy connected to zurl
//!   several times over ([`ZURL_REQUEST_PIPES`]: otherwise bursts drop connections when
//!   the CPUs are saturated);
//! - `zurl` among the runner's services, next to condure, proxy and handler;
//! - clients on a free loopback port (`--port`), the publish endpoint on another;
//! - `client_maxconn` within the open-files limit the runner and condure inherit;
//! - the route to the function, warnings-only logging (as the gateway's), and
//!   `message_rate` / `message_hwm` raised so that Pushpin's own rate limit (2,500
//!   messages/s by default) does not cap fan-out.
//!
//! The runner is started with `--merge-output`: every service logs to its stdout, which
//! goes to `pushpin.log` in the run's log directory. It is up when a plain request through
//! it reaches the function (`GET /stats`), which needs condure, proxy and zurl.
//!
//! In the passthrough scenarios ([`start_passthrough`]) the same instance runs in its
//! plain WebSocket proxy mode: the route goes to the run's `bench-backend` without
//! `over_http`, so each client WebSocket becomes a WebSocket to the backend (condure holds
//! the client's, zurl opens the backend's, the proxy relays the frames between them), and
//! it is up when a WebSocket echo comes back through it. It is measured the same way: the
//! runner and every process under it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{
    Env, Publisher, ROOM, START_TIMEOUT, Target, free_port, start_function, start_in_scratch,
    wait_port, wait_ws_echo,
};
use crate::client::Dialer;
use crate::machine::FD_RESERVE;
use crate::plan::System;
use crate::procs::Proc;

/// The installed default config the bench config is derived from.
const SYSTEM_CONFIG: &str = "/etc/pushpin/pushpin.conf";

/// The library directory (`internal.conf`, `runner/*.template`) when the installed config
/// names none.
const SYSTEM_LIBDIR: &str = "/usr/lib/pushpin";

/// The runner's services: client connections, HTTP client, proxy, handler.
const SERVICES: &str = "condure,zurl,pushpin-proxy,pushpin-handler";

/// Path of the `pushpin` runner, if installed (`$PUSHPIN`, `PATH`, `/usr/bin/pushpin`).
pub fn binary() -> Option<PathBuf> {
    harness::find_program("PUSHPIN", "pushpin", &["/usr/bin/pushpin"])
}

/// Path of `condure` (Pushpin's connection manager), if installed.
fn condure() -> Option<PathBuf> {
    harness::find_program("CONDURE", "condure", &["/usr/bin/condure"])
}

/// Path of `zurl` (Pushpin's HTTP client), if installed.
fn zurl() -> Option<PathBuf> {
    harness::find_program("ZURL", "zurl", &["/usr/bin/zurl"])
}

/// The library directory the installed config uses.
fn system_libdir(template: &str) -> PathBuf {
    get_key(template, "global", "libdir")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(SYSTEM_LIBDIR), PathBuf::from)
}

/// Why Pushpin cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if binary().is_none() {
        return Some("pushpin not installed (tests/bench/install-peers.sh)".to_owned());
    }
    let Ok(template) = std::fs::read_to_string(SYSTEM_CONFIG) else {
        return Some(format!("{SYSTEM_CONFIG} missing"));
    };
    if condure().is_none() {
        return Some("condure (pushpin's connection manager) not installed".to_owned());
    }
    if zurl().is_none() {
        return Some("zurl (pushpin's HTTP client) not installed".to_owned());
    }
    let lib = system_libdir(&template);
    for file in ["internal.conf", "runner/zurl.conf.template"] {
        if !lib.join(file).is_file() {
            return Some(format!("{} missing", lib.join(file).display()));
        }
    }
    None
}

/// The value of `key` in `[section]` of an INI `text`, if set (not commented out).
pub fn get_key(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            current = &line[1..line.len() - 1];
        } else if current == section
            && !line.starts_with('#')
            && !line.starts_with(';')
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_owned());
        }
    }
    None
}

/// `template` with `key=value` set in `[section]` (replacing the key's line, or appended
/// to the section).
pub fn set_key(template: &str, section: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut current = String::new();
    let mut done = false;
    let mut lines = template.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            current = trimmed[1..trimmed.len() - 1].to_owned();
        }
        let is_key = trimmed
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == key && !trimmed.starts_with('#'));
        if current == section && is_key && !done {
            let _ = writeln!(out, "{key}={value}");
            done = true;
            continue;
        }
        let _ = writeln!(out, "{line}");
        let next_is_section = lines
            .peek()
            .is_none_or(|n| n.trim().starts_with('[') && n.trim().ends_with(']'));
        if current == section && !done && next_is_section {
            let _ = writeln!(out, "{key}={value}");
            done = true;
        }
    }
    if !done {
        let _ = writeln!(out, "[{section}]\n{key}={value}");
    }
    out
}

/// What the bench config sets besides the directory.
struct Settings {
    /// The publish endpoint's port.
    publish_port: u16,
    /// Client connections condure accepts.
    client_maxconn: u64,
    /// `condure`.
    condure: PathBuf,
    /// `zurl`.
    zurl: PathBuf,
}

/// The bench config derived from the installed one.
fn config(template: &str, dir: &Path, s: &Settings) -> String {
    let d = dir.display();
    let overrides: [(&str, &str, String); 20] = [
        ("global", "rundir", format!("{d}/run")),
        ("global", "libdir", format!("{d}/lib")),
        ("global", "ipc_prefix", "bench-".to_owned()),
        ("runner", "services", SERVICES.to_owned()),
        ("runner", "logdir", format!("{d}/log")),
        ("runner", "log_level", "1".to_owned()),
        ("runner", "client_maxconn", s.client_maxconn.to_string()),
        ("runner", "condure_bin", s.condure.display().to_string()),
        ("runner", "zurl_bin", s.zurl.display().to_string()),
        ("proxy", "routesfile", format!("{d}/routes")),
        ("proxy", "updates_check", "off".to_owned()),
        (
            "proxy",
            "sig_key",
            uuid::Uuid::new_v4().simple().to_string(),
        ),
        (
            "handler",
            "push_in_spec",
            "ipc://{rundir}/{ipc_prefix}push-in".to_owned(),
        ),
        (
            "handler",
            "push_in_sub_specs",
            "ipc://{rundir}/{ipc_prefix}push-in-sub".to_owned(),
        ),
        (
            "handler",
            "command_spec",
            "ipc://{rundir}/{ipc_prefix}command".to_owned(),
        ),
        ("handler", "push_in_http_addr", "127.0.0.1".to_owned()),
        ("handler", "push_in_http_port", s.publish_port.to_string()),
        (
            "handler",
            "push_in_http_max_body_size",
            "4000000".to_owned(),
        ),
        ("handler", "message_rate", "100000000".to_owned()),
        ("handler", "message_hwm", "10000000".to_owned()),
    ];
    overrides
        .iter()
        .fold(template.to_owned(), |t, (s, k, v)| set_key(&t, s, k, v))
}

/// The zurl endpoints, in the run directory: `(proxy key in internal.conf, zurl key in
/// zurl.conf.template, socket name)`. The proxy pushes requests to zurl's `in_spec`,
/// continues them on its `in_stream_spec`, and reads responses from its `out_spec`.
const ZURL_SPECS: [(&str, &str, &str); 3] = [
    ("zurl_out_specs", "in_spec", "zurl-in"),
    ("zurl_out_stream_specs", "in_stream_spec", "zurl-in-stream"),
    ("zurl_in_specs", "out_spec", "zurl-out"),
];

/// Connections from the proxy to zurl's request endpoint (`zurl_out_specs` lists the one
/// endpoint this many times).
///
/// The proxy queues new requests to zurl on one ZeroMQ PUSH socket with a fixed
/// high-water mark of 100 messages, and fails a WebSocket-over-HTTP request outright (the
/// client connection is dropped without a close frame) when that socket is not writable
/// at the moment. With the machine's CPUs saturated, as echo and churn make them, the
/// proxy's I/O thread falls behind a burst of requests and a few dozen connections drop
/// at once. Each connection of the socket is a pipe with its own high-water mark, so
/// several connections to the same endpoint give the burst room without changing
/// anything else.
const ZURL_REQUEST_PIPES: usize = 8;

/// The installed `internal.conf` with the proxy's zurl endpoints in the run directory.
fn internal_conf(installed: &str) -> String {
    ZURL_SPECS
        .iter()
        .fold(installed.to_owned(), |t, (key, _, name)| {
            let spec = format!("ipc://{{rundir}}/{{ipc_prefix}}{name}");
            let value = if *key == "zurl_out_specs" {
                vec![spec; ZURL_REQUEST_PIPES].join(",")
            } else {
                spec
            };
            set_key(&t, "proxy", key, &value)
        })
}

/// The installed `zurl.conf.template` with zurl's endpoints where the proxy looks
/// (the template's own `{{ rundir }}` syntax), and `max_open_requests` at `max_open`.
///
/// zurl counts every WebSocket it holds to the origin as an open request, and the
/// installed 2,000 caps Pushpin's WebSocket proxy mode at 2,000 connections: the next
/// client's handshake waits, unanswered, for one to close. Raising it to the number of
/// clients condure accepts is what a user proxying more connections must do. (In
/// WebSocket-over-HTTP mode requests are short: the cap was never reached.)
fn zurl_template(installed: &str, max_open: u64) -> String {
    let t = ZURL_SPECS
        .iter()
        .fold(installed.to_owned(), |t, (_, key, name)| {
            set_key(
                &t,
                "General",
                key,
                &format!("ipc://{{{{ rundir }}}}/{{{{ ipc_prefix }}}}{name}"),
            )
        });
    set_key(&t, "General", "max_open_requests", &max_open.to_string())
}

/// Writes the private library directory `lib` from the installed one: `internal.conf`
/// and every runner template, the zurl parts changed (zurl open to `max_open` requests).
fn write_libdir(installed: &Path, lib: &Path, max_open: u64) -> anyhow::Result<()> {
    let runner = lib.join("runner");
    std::fs::create_dir_all(&runner)?;
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    std::fs::write(
        lib.join("internal.conf"),
        internal_conf(&read(installed.join("internal.conf"))?),
    )?;
    for entry in std::fs::read_dir(installed.join("runner"))? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() {
            continue;
        }
        let text = read(entry.path())?;
        let text = if name == "zurl.conf.template" {
            zurl_template(&text, max_open)
        } else {
            text
        };
        std::fs::write(runner.join(name), text)?;
    }
    Ok(())
}

/// Client connections condure may hold: the installed `client_maxconn`, but no more than
/// the open-files limit it inherits allows (beyond it accepts fail anyway, and condure
/// sizes its connection table by this number).
fn client_maxconn(template: &str) -> u64 {
    let configured = get_key(template, "runner", "client_maxconn")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    configured.min(soft.saturating_sub(FD_RESERVE).max(1))
}

/// Polls a plain `GET /stats` through Pushpin until the function answers it: condure,
/// the proxy and zurl are all up and connected.
async fn wait_ready(
    http: &reqwest::Client,
    client_port: u16,
    runner: &mut Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let url = format!("http://127.0.0.1:{client_port}/stats");
    loop {
        if let Some(status) = runner.exited() {
            bail!("pushpin exited ({status}); log:\n{}", runner.log_tail());
        }
        let last = match http.get(&url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{e}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "GET /stats through pushpin did not reach the function within \
                 {START_TIMEOUT:?} (last: {last}); log:\n{}",
                runner.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the instance's one route goes.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// `bench-function` on this port, in WebSocket-over-HTTP mode.
    Function(u16),
    /// `bench-backend` on this port, WebSocket to WebSocket.
    Backend(u16),
}

impl Origin {
    /// The routes file: every request to the origin.
    fn routes(self) -> String {
        match self {
            Origin::Function(port) => format!("* 127.0.0.1:{port},over_http\n"),
            Origin::Backend(port) => format!("* 127.0.0.1:{port}\n"),
        }
    }
}

/// One start of the runner on fresh ports, with its files in `dir`: the runner, the
/// client port and the publish port once it is ready.
async fn start_runner(
    env: &Env,
    template: &str,
    dir: &Path,
    origin: Origin,
) -> anyhow::Result<(Proc, u16, u16)> {
    let binary = binary().context("pushpin not installed")?;
    let settings = Settings {
        publish_port: free_port()?,
        client_maxconn: client_maxconn(template),
        condure: condure().context("condure not installed")?,
        zurl: zurl().context("zurl not installed")?,
    };
    let client_port = free_port()?;
    std::fs::create_dir_all(dir.join("run"))?;
    std::fs::create_dir_all(dir.join("log"))?;
    write_libdir(
        &system_libdir(template),
        &dir.join("lib"),
        settings.client_maxconn,
    )?;
    std::fs::write(dir.join("routes"), origin.routes())?;
    let conf = dir.join("pushpin.conf");
    std::fs::write(&conf, config(template, dir, &settings))?;
    std::fs::copy(&conf, env.log_dir.join("pushpin.conf"))?;
    std::fs::copy(dir.join("routes"), env.log_dir.join("pushpin.routes"))?;

    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--config")
        .arg(&conf)
        .arg("--port")
        .arg(format!("127.0.0.1:{client_port}"))
        .arg("--merge-output");
    let mut runner = Proc::spawn_logged("pushpin", cmd, &env.log_dir)?;
    let ready = async {
        wait_port(client_port, &mut runner).await?;
        wait_port(settings.publish_port, &mut runner).await?;
        match origin {
            Origin::Function(_) => wait_ready(&env.http, client_port, &mut runner).await,
            Origin::Backend(_) => {
                let url = format!("ws://127.0.0.1:{client_port}/ws");
                wait_ws_echo(&url, &mut runner).await
            }
        }
    }
    .await;
    match ready {
        Ok(()) => Ok((runner, client_port, settings.publish_port)),
        Err(e) => {
            runner.terminate(Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

/// Starts Pushpin with `bench-function` behind it.
pub async fn start(env: &Env) -> anyhow::Result<Target> {
    let template = std::fs::read_to_string(SYSTEM_CONFIG)
        .with_context(|| format!("reading {SYSTEM_CONFIG}"))?;
    let (function, function_url, function_port) = start_function(env, None).await?;
    let template = &template;
    let started = start_in_scratch("sbpp", |dir| async move {
        start_runner(env, template, &dir, Origin::Function(function_port)).await
    })
    .await;
    let ((runner, client_port, publish_port), dir) = match started {
        Ok(started) => started,
        Err(e) => {
            function.kill().await;
            return Err(e);
        }
    };
    let function_pid = function.pid();
    Ok(Target {
        system: System::Pushpin,
        store: None,
        ws_url: format!("ws://127.0.0.1:{client_port}/ws"),
        room_url: format!("ws://127.0.0.1:{client_port}/ws?room={ROOM}"),
        dialer: Dialer::plain(),
        http_echo_url: None,
        publisher: Publisher::Pushpin {
            url: format!("http://127.0.0.1:{publish_port}/publish/"),
        },
        function_url: Some(function_url),
        measured: vec![runner.pid()],
        function_pid: Some(function_pid),
        procs: vec![function, runner],
        redis: None,
        scratch: Some(dir),
    })
}

/// Starts Pushpin as a plain WebSocket proxy in front of the run's `bench-backend`.
pub async fn start_passthrough(env: &Env) -> anyhow::Result<Target> {
    let template = std::fs::read_to_string(SYSTEM_CONFIG)
        .with_context(|| format!("reading {SYSTEM_CONFIG}"))?;
    let backend = env.backend_port()?;
    let template = &template;
    let ((runner, client_port, publish_port), dir) = start_in_scratch("sbpp", |dir| async move {
        start_runner(env, template, &dir, Origin::Backend(backend)).await
    })
    .await?;
    Ok(Target {
        system: System::Pushpin,
        store: None,
        ws_url: format!("ws://127.0.0.1:{client_port}/ws"),
        room_url: format!("ws://127.0.0.1:{client_port}/ws?room={ROOM}"),
        dialer: Dialer::plain(),
        http_echo_url: None,
        publisher: Publisher::Pushpin {
            url: format!("http://127.0.0.1:{publish_port}/publish/"),
        },
        function_url: None,
        measured: vec![runner.pid()],
        function_pid: None,
        procs: vec![runner],
        redis: None,
        scratch: Some(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_go_over_http_to_the_function_and_as_websockets_to_the_backend() {
        assert_eq!(
            Origin::Function(5000).routes(),
            "* 127.0.0.1:5000,over_http\n"
        );
        assert_eq!(Origin::Backend(9000).routes(), "* 127.0.0.1:9000\n");
    }

    #[test]
    fn set_key_replaces_or_appends_within_the_section() {
        let t = "[a]\nx=1\n# y=old\n\n[b]\nx=2\n";
        let s = set_key(t, "b", "x", "9");
        assert!(s.contains("[a]\nx=1\n") && s.contains("[b]\nx=9\n"), "{s}");
        let s = set_key(t, "a", "y", "5");
        assert!(
            s.contains("# y=old\n\ny=5\n[b]") || s.contains("y=5"),
            "{s}"
        );
        assert_eq!(s.matches("y=5").count(), 1, "{s}");
        let s = set_key(t, "c", "z", "1");
        assert!(s.ends_with("[c]\nz=1\n"), "{s}");
    }

    #[test]
    fn config_moves_everything_private() {
        let template = "[global]\ninclude={libdir}/internal.conf\nrundir=/var/run/pushpin\n[runner]\nservices=condure,pushpin-proxy,pushpin-handler\nlogdir=/var/log\nclient_maxconn=50000\n[proxy]\nroutesfile=routes\n[handler]\npush_in_http_port=5561\nmessage_rate=2500\n";
        let settings = Settings {
            publish_port: 4242,
            client_maxconn: 19_000,
            condure: PathBuf::from("/usr/bin/condure"),
            zurl: PathBuf::from("/usr/bin/zurl"),
        };
        let c = config(template, Path::new("/tmp/x"), &settings);
        assert!(c.contains("rundir=/tmp/x/run"), "{c}");
        assert_eq!(
            get_key(&c, "global", "libdir").as_deref(),
            Some("/tmp/x/lib")
        );
        assert_eq!(get_key(&c, "runner", "services").as_deref(), Some(SERVICES));
        assert_eq!(
            get_key(&c, "runner", "client_maxconn").as_deref(),
            Some("19000")
        );
        assert!(c.contains("push_in_http_port=4242"), "{c}");
        assert!(c.contains("message_rate=100000000"), "{c}");
        // (Whole settings, not bare numbers: the generated sig_key is random hex.)
        assert!(
            !c.contains("push_in_http_port=5561") && !c.contains("message_rate=2500"),
            "{c}"
        );
        assert!(client_maxconn(template) <= 50_000);
    }

    #[test]
    fn zurl_endpoints_meet_in_the_run_directory() {
        let internal = "[proxy]\n# list of connect PUSH\nzurl_out_specs=ipc:///var/run/zurl/zurl-in\nzurl_out_stream_specs=ipc:///var/run/zurl/zurl-in-stream\nzurl_in_specs=ipc:///var/run/zurl/zurl-out\n\n[handler]\nx=1\n";
        let i = internal_conf(internal);
        assert!(!i.contains("/var/run/zurl"), "{i}");
        let out_specs = get_key(&i, "proxy", "zurl_out_specs").unwrap();
        assert_eq!(out_specs.split(',').count(), ZURL_REQUEST_PIPES);
        assert!(
            out_specs
                .split(',')
                .all(|s| s == "ipc://{rundir}/{ipc_prefix}zurl-in"),
            "{out_specs}"
        );
        assert_eq!(
            get_key(&i, "proxy", "zurl_in_specs").as_deref(),
            Some("ipc://{rundir}/{ipc_prefix}zurl-out")
        );
        assert_eq!(get_key(&i, "handler", "x").as_deref(), Some("1"));
        let template =
            "[General]\nin_spec=ipc:///elsewhere/zurl-in\nout_spec=ipc:///elsewhere/zurl-out\n";
        let z = zurl_template(template, 19_000);
        assert_eq!(
            get_key(&z, "General", "in_stream_spec").as_deref(),
            Some("ipc://{{ rundir }}/{{ ipc_prefix }}zurl-in-stream")
        );
        assert_eq!(
            get_key(&z, "General", "out_spec").as_deref(),
            Some("ipc://{{ rundir }}/{{ ipc_prefix }}zurl-out")
        );
        assert_eq!(
            get_key(&z, "General", "max_open_requests").as_deref(),
            Some("19000")
        );
    }

    #[test]
    fn installed_files_convert_when_present() {
        let lib = Path::new(SYSTEM_LIBDIR);
        if !lib.join("internal.conf").is_file() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("sbpp-test-{}", uuid::Uuid::new_v4()));
        write_libdir(lib, &dir, 19_000).unwrap();
        let internal = std::fs::read_to_string(dir.join("internal.conf")).unwrap();
        assert!(!internal.contains("/var/run/zurl"), "{internal}");
        let zurl = std::fs::read_to_string(dir.join("runner/zurl.conf.template")).unwrap();
        assert_eq!(
            get_key(&zurl, "General", "max_open_requests").as_deref(),
            Some("19000"),
            "{zurl}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
