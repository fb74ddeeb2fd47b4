//! `nginx` in the passthrough scenarios: Debian's nginx (the one
//! `tests/bench/install-peers.sh` installs) as a plain WebSocket reverse proxy in front of
//! the run's `bench-backend`, configured as its documentation and every guide show it:
//! `proxy_pass` with `proxy_http_version 1.1`, the `Upgrade` header passed on and
//! `Connection: upgrade`, read and send timeouts of an hour (longer than any scenario holds
//! an idle connection). What a user puts in front of an existing WebSocket service instead
//! of the gateway's `[[passthrough]]` route (without the authentication: the gateway's
//! route runs with `auth = "none"` too).
//!
//! It runs from a private generated config in a scratch directory, as `nginx-tls` does
//! ([`super::spawn_nginx`]): one master and one worker per CPU in the foreground, errors
//! to stderr (`nginx.log` in the run's log directory), no access log, the open-files limit
//! the harness runs under, `reuseport` so the kernel spreads connections evenly over the
//! workers (each proxied connection holds two descriptors in its worker). It is measured
//! as its master and workers: RSS and CPU summed.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::{
    Env, NginxProcess, Publisher, ROOM, Target, free_port, nginx_conf, spawn_nginx,
    start_in_scratch, wait_port, wait_ws_echo, ws_proxy_location,
};
use crate::client::Dialer;
use crate::plan::System;
use crate::procs::Proc;
use harness::nginx::nginx_binary;

/// `proxy_read_timeout` and `proxy_send_timeout`: above any scenario's duration.
const PROXY_TIMEOUT: &str = "3600s";

/// What the generated config needs.
struct Settings {
    /// Its scratch directory, workers and limits.
    process: NginxProcess,
    /// The port clients connect to on 127.0.0.1.
    port: u16,
    /// The backend's port on 127.0.0.1.
    backend_port: u16,
}

/// The generated `nginx.conf`.
fn config(s: &Settings) -> String {
    let generated_by = "tests/bench/src/systems/nginx_proxy.rs";
    let server = format!(
        "\n    server {{\n        listen 127.0.0.1:{port} reuseport backlog=4096;\n\n{location}    }}\n",
        port = s.port,
        location = ws_proxy_location(s.backend_port, PROXY_TIMEOUT),
    );
    nginx_conf(generated_by, &s.process, "", &server)
}

/// One start of nginx on a fresh port with its files in `dir`: nginx and its port, once a
/// WebSocket echo comes back through it.
async fn start_nginx(env: &Env, dir: &Path, backend_port: u16) -> anyhow::Result<(Proc, u16)> {
    let binary = nginx_binary().context("nginx not installed")?;
    let settings = Settings {
        process: NginxProcess::for_run(dir),
        port: free_port()?,
        backend_port,
    };
    let mut nginx = spawn_nginx(&binary, dir, &config(&settings), "nginx", env)?;
    let ready = async {
        wait_port(settings.port, &mut nginx).await?;
        wait_ws_echo(&format!("ws://127.0.0.1:{}/ws", settings.port), &mut nginx).await
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

/// Starts nginx proxying WebSockets to the run's `bench-backend`.
pub async fn start(env: &Env) -> anyhow::Result<Target> {
    let backend = env.backend_port()?;
    let ((nginx, port), dir) = start_in_scratch("sbngpt", |dir| async move {
        start_nginx(env, &dir, backend).await
    })
    .await?;
    Ok(Target {
        system: System::Nginx,
        store: None,
        ws_url: format!("ws://127.0.0.1:{port}/ws"),
        room_url: format!("ws://127.0.0.1:{port}/ws?room={ROOM}"),
        dialer: Dialer::plain(),
        http_echo_url: None,
        // No fan-out through a plain proxy: never used.
        publisher: Publisher::Plain {
            url: format!("http://127.0.0.1:{port}/"),
        },
        function_url: None,
        measured: vec![nginx.pid()],
        function_pid: None,
        procs: vec![nginx],
        redis: None,
        scratch: Some(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> Settings {
        Settings {
            process: NginxProcess {
                workers: 2,
                ..NginxProcess::for_run(dir)
            },
            port: 4242,
            backend_port: 4343,
        }
    }

    #[test]
    fn config_proxies_upgrades_to_the_backend() {
        let c = config(&settings(Path::new("/tmp/sbngpt-x")));
        for line in [
            "daemon off;",
            "worker_processes 2;",
            "pid /tmp/sbngpt-x/nginx.pid;",
            "error_log stderr warn;",
            "listen 127.0.0.1:4242 reuseport backlog=4096;",
            "proxy_pass http://127.0.0.1:4343;",
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection \"upgrade\";",
            "proxy_read_timeout 3600s;",
            "proxy_send_timeout 3600s;",
        ] {
            assert!(c.contains(line), "{line} missing:\n{c}");
        }
        assert!(!c.contains("ssl"), "{c}");
        assert!(!c.contains("/etc/nginx") && !c.contains("/var/"), "{c}");
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
    }

    #[test]
    fn installed_nginx_accepts_the_config() {
        let Some(nginx) = nginx_binary() else {
            return;
        };
        let dir = super::super::nginx_test_dir("sbngpt-test");
        super::super::assert_nginx_accepts(&nginx, &dir, &config(&settings(&dir)));
    }
}
