//! The Nchan peer: Debian's `nginx` with `libnginx-mod-nchan` (install with
//! `tests/bench/install-peers.sh`), run by the harness with a private generated config in
//! front of the same `bench-function`. The system's nginx service is never used.
//!
//! The config (see [`config`]) loads the module from Debian's path, runs one master and
//! one worker per CPU in the foreground (`daemon off`), keeps its pid file, lock file and
//! temporary directories in a scratch directory, logs errors to stderr (`nchan.log` in
//! the run's log directory; no access log), and listens on a free loopback port. Its
//! open-files limit is the hard limit the harness runs under (what every other system
//! inherits), with connections per worker up to it, so one worker can hold all of the
//! idle and fan-out connections.
//!
//! One WebSocket location, `/ws`, is an Nchan publisher and subscriber (`nchan_pubsub`)
//! whose channel is the `room` of the query, or a channel of its own per connection
//! (`conn-$request_id`) without one. Every connection goes through the function:
//! - open: `nchan_authorize_request` → `GET /nchan/open?{query}` (a register; 2xx admits);
//! - message: `nchan_publisher_upstream_request` → `POST /nchan/message` with the message;
//!   the function's 200 reply body is what Nchan publishes to the connection's channel,
//!   so on a connection's own channel the reply comes back to it (echo, churn);
//! - close: `nchan_unsubscribe_request` → `GET /nchan/close` (a cleanup).
//!
//! A fan-out is a plain `POST /publish/{room}` whose body is the message (Nchan's HTTP
//! publisher). Subscribers get raw message bodies as text frames (no Nchan subprotocol is
//! asked for, so no metadata wrapping), only messages published after they subscribed
//! (`nchan_subscriber_first_message newest`), with a message buffer per channel several
//! bursts deep ([`BUFFER_LENGTH`]) in shared memory sized far beyond what a run stores
//! ([`SHARED_MEMORY`]). There is no `fanout-batch` row: like the other peers, Nchan has no
//! publish naming connections one by one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{
    Env, NginxProcess, Publisher, ROOM, START_TIMEOUT, Target, free_port, nginx_conf, spawn_nginx,
    start_function, start_in_scratch, wait_port,
};
use crate::client::Dialer;
use crate::plan::System;
use crate::procs::Proc;

/// Where Debian's `libnginx-mod-nchan` puts the module.
const SYSTEM_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// Debian's snippet loading the module (`load_module modules/…;`, relative to nginx's
/// prefix [`NGINX_PREFIX`]), consulted when the module is not at [`SYSTEM_MODULE`].
const MODULE_SNIPPET: &str = "/usr/share/nginx/modules-available/mod-nchan.conf";

/// Debian nginx's compiled-in prefix, against which the snippet's path is relative.
const NGINX_PREFIX: &str = "/usr/share/nginx";

/// Messages kept per channel: several fan-out bursts (`fanout::BURST` publishes each)
/// deep, so a burst never pushes a message out before every worker has delivered it.
const BUFFER_LENGTH: usize = 200;

/// How long a message is kept: longer than any scenario waits for a delivery.
const MESSAGE_TIMEOUT: &str = "120s";

/// Nchan's shared memory (channels and messages of every worker): a full run stores at
/// most a few tens of MiB (20,000 churned channels with one message each, 10,000 fan-out
/// subscribers), and untouched pages cost nothing.
const SHARED_MEMORY: &str = "256m";

/// Idle keep-alive connections from each worker to the function.
const UPSTREAM_KEEPALIVE: usize = 64;

/// Path of `nginx`, if installed (`$NGINX`, `PATH`, `/usr/sbin/nginx`).
pub fn binary() -> Option<PathBuf> {
    harness::find_program("NGINX", "nginx", &["/usr/sbin/nginx"])
}

/// The module path a `load_module` line of `snippet` names, absolute (relative paths are
/// nginx's prefix's).
fn module_in_snippet(snippet: &str) -> Option<PathBuf> {
    let path = snippet.lines().map(str::trim).find_map(|l| {
        l.strip_prefix("load_module")
            .map(|rest| rest.trim().trim_end_matches(';').trim())
    })?;
    (!path.is_empty()).then(|| Path::new(NGINX_PREFIX).join(path))
}

/// Path of the Nchan module, if installed (`$NCHAN_MODULE`, Debian's modules directory,
/// or wherever Debian's `mod-nchan.conf` snippet loads it from).
pub fn module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NCHAN_MODULE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let system = PathBuf::from(SYSTEM_MODULE);
    if system.is_file() {
        return Some(system);
    }
    std::fs::read_to_string(MODULE_SNIPPET)
        .ok()
        .and_then(|s| module_in_snippet(&s))
        .filter(|p| p.is_file())
}

/// Why Nchan cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if binary().is_none() {
        return Some("nginx not installed (tests/bench/install-peers.sh)".to_owned());
    }
    if module().is_none() {
        return Some(
            "the nchan module is not installed (libnginx-mod-nchan; tests/bench/install-peers.sh)"
                .to_owned(),
        );
    }
    None
}

/// What the generated config needs.
struct Settings {
    /// Its scratch directory, workers and limits.
    process: NginxProcess,
    /// The Nchan module.
    module: PathBuf,
    /// The client port on 127.0.0.1.
    port: u16,
    /// `bench-function`'s port on 127.0.0.1.
    function_port: u16,
}

/// The generated `nginx.conf`.
fn config(s: &Settings) -> String {
    let generated_by = "tests/bench/src/systems/nchan.rs";
    let http = format!(
        r#"
    nchan_shared_memory_size {SHARED_MEMORY};
    nchan_message_buffer_length {BUFFER_LENGTH};
    nchan_message_timeout {MESSAGE_TIMEOUT};

    upstream function {{
        server 127.0.0.1:{function_port};
        keepalive {UPSTREAM_KEEPALIVE};
    }}

    # The room the query names, or a channel of the connection's own.
    map $arg_room $bench_channel {{
        "" "conn-$request_id";
        default $arg_room;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;

        location = /ws {{
            nchan_pubsub websocket;
            nchan_channel_id $bench_channel;
            nchan_subscriber_first_message newest;
            nchan_authorize_request /function/open;
            nchan_publisher_upstream_request /function/message;
            nchan_unsubscribe_request /function/close;
        }}

        location ~ ^/publish/([A-Za-z0-9_-]+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
        }}

        location ~ ^/function/(open|message|close)$ {{
            internal;
            proxy_pass http://function/nchan/$1?$args;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        location = /ready {{
            proxy_pass http://function/stats;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"#,
        function_port = s.function_port,
        port = s.port,
    );
    nginx_conf(
        generated_by,
        &s.process,
        &format!("load_module {};\n", s.module.display()),
        &http,
    )
}

/// Polls `GET /ready` (the function's `/stats` through nginx) until it answers: the
/// workers are up and reach the function.
async fn wait_ready(http: &reqwest::Client, port: u16, nginx: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let url = format!("http://127.0.0.1:{port}/ready");
    loop {
        if let Some(status) = nginx.exited() {
            bail!("nginx exited ({status}); log:\n{}", nginx.log_tail());
        }
        let last = match http.get(&url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{e}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "GET /ready through nginx did not reach the function within \
                 {START_TIMEOUT:?} (last: {last}); log:\n{}",
                nginx.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One start of nginx on a fresh port with its files in `dir`: nginx and its port, once
/// it is ready.
async fn start_nginx(env: &Env, dir: &Path, function_port: u16) -> anyhow::Result<(Proc, u16)> {
    let binary = binary().context("nginx not installed")?;
    let settings = Settings {
        process: NginxProcess::for_run(dir),
        module: module().context("the nchan module is not installed")?,
        port: free_port()?,
        function_port,
    };
    let mut nginx = spawn_nginx(&binary, dir, &config(&settings), "nchan", env)?;
    let ready = async {
        wait_port(settings.port, &mut nginx).await?;
        wait_ready(&env.http, settings.port, &mut nginx).await
    }
    .await;
    match ready {
        Ok(()) => Ok((nginx, settings.port)),
        Err(e) => {
            nginx.terminate(Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

/// Starts nginx with Nchan in front of `bench-function`.
pub async fn start(env: &Env) -> anyhow::Result<Target> {
    let (function, function_url, function_port) = start_function(env, None).await?;
    let started = start_in_scratch("sbnchan", |dir| async move {
        start_nginx(env, &dir, function_port).await
    })
    .await;
    let ((nginx, port), dir) = match started {
        Ok(started) => started,
        Err(e) => {
            function.kill().await;
            return Err(e);
        }
    };
    let function_pid = function.pid();
    Ok(Target {
        system: System::Nchan,
        store: None,
        ws_url: format!("ws://127.0.0.1:{port}/ws"),
        room_url: format!("ws://127.0.0.1:{port}/ws?room={ROOM}"),
        dialer: Dialer::plain(),
        http_echo_url: None,
        publisher: Publisher::Plain {
            url: format!("http://127.0.0.1:{port}/publish/{ROOM}"),
        },
        function_url: Some(function_url),
        measured: vec![nginx.pid()],
        function_pid: Some(function_pid),
        procs: vec![function, nginx],
        redis: None,
        scratch: Some(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_snippet_names_the_module() {
        assert_eq!(
            module_in_snippet("load_module modules/ngx_nchan_module.so;\n"),
            Some(PathBuf::from(
                "/usr/share/nginx/modules/ngx_nchan_module.so"
            ))
        );
        assert_eq!(
            module_in_snippet("# x\nload_module /opt/n.so;"),
            Some(PathBuf::from("/opt/n.so"))
        );
        assert_eq!(module_in_snippet("# nothing\n"), None);
    }

    #[test]
    fn config_is_private_and_routes_through_the_function() {
        let c = config(&Settings {
            process: NginxProcess {
                dir: PathBuf::from("/tmp/sbnchan-x"),
                workers: 2,
                nofile: 20_000,
                connections: 19_000,
            },
            module: PathBuf::from(SYSTEM_MODULE),
            port: 4242,
            function_port: 4343,
        });
        for line in [
            "load_module /usr/lib/nginx/modules/ngx_nchan_module.so;",
            "daemon off;",
            "worker_processes 2;",
            "worker_rlimit_nofile 20000;",
            "worker_connections 19000;",
            "pid /tmp/sbnchan-x/nginx.pid;",
            "error_log stderr warn;",
            "listen 127.0.0.1:4242 backlog=4096;",
            "server 127.0.0.1:4343;",
            "nchan_authorize_request /function/open;",
            "nchan_publisher_upstream_request /function/message;",
            "nchan_unsubscribe_request /function/close;",
            "proxy_pass http://function/nchan/$1?$args;",
            "nchan_subscriber_first_message newest;",
        ] {
            assert!(c.contains(line), "{line} missing:\n{c}");
        }
        // Nothing of the system's nginx: no include of /etc/nginx, no default log paths.
        assert!(!c.contains("/etc/nginx") && !c.contains("/var/"), "{c}");
        // Balanced braces.
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
    }

    #[test]
    fn installed_nginx_accepts_the_config() {
        let (Some(nginx), Some(module)) = (binary(), module()) else {
            return;
        };
        let dir = super::super::nginx_test_dir("sbnchan-test");
        let settings = Settings {
            process: NginxProcess {
                workers: 2,
                ..NginxProcess::for_run(&dir)
            },
            module,
            port: 4242,
            function_port: 4343,
        };
        super::super::assert_nginx_accepts(&nginx, &dir, &config(&settings));
    }
}
