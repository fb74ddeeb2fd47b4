//! `nginx-tls`: Debian's `nginx` (the one `tests/bench/install-peers.sh` installs for Nchan;
//! its `ssl` module is built in) terminating TLS in front of the plain gateway and proxying
//! WebSocket upgrades to it: what a user does instead of the gateway's own `wss://`.
//!
//! The gateway is the `switchboard` system's, started the same way
//! ([`super::switchboard::launch`]); nginx runs from a private generated config (see
//! [`config`]) in a scratch directory, like Nchan's: one master and one worker per CPU in
//! the foreground, errors to stderr (`nginx-tls.log` in the run's log directory), no access
//! log, the open-files limit the harness runs under. The server listens with `ssl` on a
//! free loopback port, presenting the run's certificate (the one `switchboard-wss` presents,
//! [`crate::tls`]) over TLS 1.2 and 1.3 with nginx's other TLS settings at their defaults,
//! and proxies every request to the gateway's plain listener with `proxy_http_version
//! 1.1`, `Upgrade` and `Connection: upgrade`, and read and send timeouts of an hour (longer
//! than any scenario holds an idle connection).
//!
//! `reuseport` gives each worker its own listening socket, so the kernel spreads
//! connections evenly: without it, one worker took most of them, and each proxied
//! connection costs its worker two descriptors (client and gateway), so 15,000 in one
//! worker would pass the open-files limit.
//!
//! The system is measured as nginx (master and workers) plus the gateway: RSS and CPU are
//! the sums over both process trees.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::switchboard::launch;
use super::{
    Env, NginxProcess, START_TIMEOUT, Target, free_port, nginx_conf, spawn_nginx, start_in_scratch,
    wait_port, ws_proxy_location,
};
use crate::client::Dialer;
use crate::plan::{StoreKind, System};
use crate::procs::Proc;
use harness::nginx::nginx_binary;

/// `proxy_read_timeout` and `proxy_send_timeout`: above any scenario's duration, so nginx
/// never closes an idle proxied connection during a run.
const PROXY_TIMEOUT: &str = "3600s";

/// Why nginx-tls cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    nginx_binary()
        .is_none()
        .then(|| "nginx not installed (tests/bench/install-peers.sh)".to_owned())
}

/// What the generated config needs.
struct Settings {
    /// Its scratch directory, workers and limits.
    process: NginxProcess,
    /// The TLS port on 127.0.0.1.
    port: u16,
    /// The gateway's plain public port on 127.0.0.1.
    gateway_port: u16,
    /// The certificate and its key, PEM.
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// The generated `nginx.conf`.
fn config(s: &Settings) -> String {
    let generated_by = "tests/bench/src/systems/nginx_tls.rs";
    let server = format!(
        "\n    server {{\n        listen 127.0.0.1:{port} ssl reuseport backlog=4096;\n        \
         ssl_certificate {cert};\n        ssl_certificate_key {key};\n        ssl_protocols TLSv1.2 TLSv1.3;\n\n{location}    }}\n",
        port = s.port,
        cert = s.cert_file.display(),
        key = s.key_file.display(),
        location = ws_proxy_location(s.gateway_port, PROXY_TIMEOUT),
    );
    nginx_conf(generated_by, &s.process, "", &server)
}

/// `GET /healthz` over TLS through nginx to the gateway: the status line's code.
async fn healthz(dialer: &Dialer, port: u16) -> anyhow::Result<String> {
    let mut tls = dialer
        .tls(
            Ipv4Addr::LOCALHOST,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
        .await?;
    let request =
        format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = tls.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the connection ended before a status line");
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or_default();
    Ok(status
        .split_whitespace()
        .nth(1)
        .unwrap_or(status)
        .to_owned())
}

/// Polls `GET /healthz` over TLS until the gateway answers it through nginx: the workers
/// are up, have the certificate, and reach the gateway.
async fn wait_ready(dialer: &Dialer, port: u16, nginx: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = nginx.exited() {
            bail!("nginx exited ({status}); log:\n{}", nginx.log_tail());
        }
        let last = match tokio::time::timeout(Duration::from_secs(2), healthz(dialer, port)).await {
            Ok(Ok(code)) if code == "200" => return Ok(()),
            Ok(Ok(code)) => format!("answered {code}"),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no answer within 2 s".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!(
                "GET /healthz over TLS through nginx did not reach the gateway within \
                 {START_TIMEOUT:?} (last: {last}); log:\n{}",
                nginx.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One start of nginx on a fresh port with its files in `dir`, in front of the gateway on
/// `gateway_port`: nginx and its port, once it is ready.
async fn start_nginx(
    env: &Env,
    dialer: &Dialer,
    dir: &Path,
    gateway_port: u16,
) -> anyhow::Result<(Proc, u16)> {
    let binary = nginx_binary().context("nginx not installed")?;
    let settings = Settings {
        process: NginxProcess::for_run(dir),
        port: free_port()?,
        gateway_port,
        cert_file: env.pki.cert_file().to_path_buf(),
        key_file: env.pki.key_file().to_path_buf(),
    };
    let mut nginx = spawn_nginx(&binary, dir, &config(&settings), "nginx-tls", env)?;
    let ready = async {
        wait_port(settings.port, &mut nginx).await?;
        wait_ready(dialer, settings.port, &mut nginx).await
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

/// Starts the plain gateway on `store` and nginx terminating TLS in front of it.
pub async fn start(store: StoreKind, env: &Env) -> anyhow::Result<Target> {
    let dialer = Dialer::new(Some(env.pki.ca_pem()))?;
    let gateway = launch(store, false, "gateway-behind-nginx", env).await?;
    let gateway_port = gateway.public;
    let started = start_in_scratch("sbngtls", |dir| {
        let dialer = &dialer;
        async move { start_nginx(env, dialer, &dir, gateway_port).await }
    })
    .await;
    match started {
        Ok(((nginx, port), dir)) => {
            Ok(gateway.into_target(System::NginxTls, "wss", port, dialer, Some((nginx, dir))))
        }
        Err(e) => {
            gateway.stop().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, cert_file: &Path, key_file: &Path) -> Settings {
        Settings {
            process: NginxProcess {
                workers: 2,
                ..NginxProcess::for_run(dir)
            },
            port: 4242,
            gateway_port: 4343,
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        }
    }

    #[test]
    fn config_terminates_tls_and_proxies_upgrades_to_the_gateway() {
        let c = config(&settings(
            Path::new("/tmp/sbngtls-x"),
            Path::new("/tmp/sbtls-x/cert.pem"),
            Path::new("/tmp/sbtls-x/key.pem"),
        ));
        for line in [
            "daemon off;",
            "worker_processes 2;",
            "pid /tmp/sbngtls-x/nginx.pid;",
            "error_log stderr warn;",
            "listen 127.0.0.1:4242 ssl reuseport backlog=4096;",
            "ssl_certificate /tmp/sbtls-x/cert.pem;",
            "ssl_certificate_key /tmp/sbtls-x/key.pem;",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            "proxy_pass http://127.0.0.1:4343;",
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection \"upgrade\";",
            "proxy_read_timeout 3600s;",
            "proxy_send_timeout 3600s;",
        ] {
            assert!(c.contains(line), "{line} missing:\n{c}");
        }
        assert!(!c.contains("/etc/nginx") && !c.contains("/var/"), "{c}");
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
    }

    #[test]
    fn installed_nginx_accepts_the_config() {
        let Some(nginx) = nginx_binary() else {
            return;
        };
        let pki = crate::tls::Pki::make().unwrap();
        let dir = super::super::nginx_test_dir("sbngtls-test");
        let text = config(&settings(&dir, pki.cert_file(), pki.key_file()));
        super::super::assert_nginx_accepts(&nginx, &dir, &text);
    }
}
