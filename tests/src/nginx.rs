//! A real nginx in front of a gateway, one per test: its own config in a fresh temp dir
//! (pid file, logs and temp files there too), free ports on 127.0.0.1 (one, or as many as
//! its servers need: [`Nginx::require_ports`]), in the foreground as one process
//! (`master_process off`), killed on drop. Runs as the current user (ports above 1024 need
//! no privilege); under root, nginx is told `user root;`.
//!
//! The example configs of `deploy/nginx` run here as they are, their marked placeholders
//! replaced ([`crate::deploy_file`]), inside an `http` block ([`Spot::http`]).
//!
//! ```no_run
//! # async fn f(upstream: std::net::SocketAddr) {
//! let Some(nginx) = tests::nginx::Nginx::require(&["stream"], |spot| format!(
//!     "stream {{ server {{ listen {}; proxy_pass {upstream}; proxy_protocol on; }} }}",
//!     spot.listen,
//! )) else { return };
//! # }
//! ```

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long nginx may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Free ports tried (another process may take the port between the probe and nginx).
const PORT_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(10);

/// The `nginx` binary: `$NGINX`, then `PATH`, then `/usr/sbin/nginx`.
pub fn nginx_binary() -> Option<PathBuf> {
    crate::find_program("NGINX", "nginx", &["/usr/sbin/nginx"])
}

/// Where a dynamic module (`stream` → `ngx_stream_module.so`) is, if nginx was not built
/// with it: `Ok(None)` when it is built in, `Err` when it is in neither form.
fn module_path(binary: &Path, module: &str) -> anyhow::Result<Option<PathBuf>> {
    let version = Command::new(binary)
        .arg("-V")
        .output()
        .with_context(|| format!("running {} -V", binary.display()))?;
    // `nginx -V` prints its configure arguments on stderr.
    let configure = String::from_utf8_lossy(&version.stderr).into_owned();
    let flag = format!("--with-{module}");
    let built_in = configure.split_whitespace().any(|arg| arg == flag);
    if built_in {
        return Ok(None);
    }
    let file = format!("ngx_{module}_module.so");
    // The configured modules path first, then Debian's and the usual places.
    let configured = configure
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("--modules-path="))
        .map(PathBuf::from);
    configured
        .into_iter()
        .chain(
            [
                "/usr/lib/nginx/modules",
                "/usr/share/nginx/modules",
                "/usr/lib64/nginx/modules",
                "/etc/nginx/modules",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
        .map(Some)
        .with_context(|| {
            format!("nginx has no {module} module (Debian: apt-get install libnginx-mod-{module})")
        })
}

/// Where an nginx under test listens and keeps its files, for its config.
#[derive(Debug, Clone)]
pub struct Spot {
    /// The address its (first) server must listen on.
    pub listen: SocketAddr,
    /// The addresses its other servers listen on ([`Nginx::require_ports`]).
    pub more: Vec<SocketAddr>,
    /// Its private directory (the prefix).
    pub dir: PathBuf,
}

impl Spot {
    /// The `http` block's temp paths, in the private directory (the compiled-in ones need
    /// root).
    pub fn http_temp_paths(&self) -> String {
        ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .map(|kind| format!("{kind}_temp_path {};\n", self.dir.join(kind).display()))
            .concat()
    }

    /// An `http` block holding `body` (e.g. a file of `deploy/nginx`, which belongs in
    /// one), with the temp paths and the access log in the private directory.
    pub fn http(&self, body: &str) -> String {
        format!(
            "http {{\n{temp}access_log {log};\n{body}\n}}\n",
            temp = self.http_temp_paths(),
            log = self.dir.join("access.log").display(),
        )
    }

    /// Every address it listens on.
    fn addrs(&self) -> impl Iterator<Item = &SocketAddr> {
        std::iter::once(&self.listen).chain(&self.more)
    }
}

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    spot: Spot,
}

impl Nginx {
    /// Starts nginx with `blocks(spot)` (its `stream`/`http` blocks) after a prelude that
    /// loads `modules` (e.g. `["stream"]`) and keeps its files in its temp dir; or, when
    /// nginx or a module is missing, reports it with [`crate::skip_or_fail`] and returns
    /// `None`. Panics if nginx is there but does not start.
    #[track_caller]
    pub fn require(modules: &[&str], blocks: impl Fn(&Spot) -> String) -> Option<Nginx> {
        Nginx::require_ports(modules, 0, blocks)
    }

    /// As [`Nginx::require`], with `more` free ports besides [`Spot::listen`] for other
    /// servers ([`Spot::more`]); it is ready once every one of them accepts connections.
    #[track_caller]
    pub fn require_ports(
        modules: &[&str],
        more: usize,
        blocks: impl Fn(&Spot) -> String,
    ) -> Option<Nginx> {
        let Some(binary) = nginx_binary() else {
            crate::skip_or_fail("nginx not installed");
            return None;
        };
        let mut load = String::new();
        for module in modules {
            match module_path(&binary, module) {
                Ok(Some(path)) => load.push_str(&format!("load_module {};\n", path.display())),
                Ok(None) => {}
                Err(e) => {
                    crate::skip_or_fail(&format!("{e:#}"));
                    return None;
                }
            }
        }
        match Nginx::start(&binary, &load, more, &blocks) {
            Ok(nginx) => Some(nginx),
            Err(e) => panic!("starting nginx: {e:#}"),
        }
    }

    fn start(
        binary: &Path,
        load: &str,
        more: usize,
        blocks: &dyn Fn(&Spot) -> String,
    ) -> anyhow::Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("switchboard-nginx-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The directory is ours, so its owner is who we run as.
        let root = fs::metadata(&dir)?.uid() == 0;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let spot = Spot {
                listen: free_addr()?,
                more: (0..more).map(|_| free_addr()).collect::<Result<_, _>>()?,
                dir: dir.clone(),
            };
            let config = format!(
                "{load}{user}daemon off;\nmaster_process off;\npid {pid};\n\
                 error_log {log} info;\nevents {{ worker_connections 256; }}\n{blocks}\n",
                user = if root { "user root;\n" } else { "" },
                pid = dir.join("nginx.pid").display(),
                log = dir.join("error.log").display(),
                blocks = blocks(&spot),
            );
            let file = dir.join("nginx.conf");
            fs::write(&file, config)?;
            let stderr = fs::File::create(dir.join("stderr.log"))?;
            let mut child = Command::new(binary)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&file)
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            match wait_ready(&mut child, &spot) {
                Ok(()) => return Ok(Nginx { child, spot }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(e);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.spot.listen
    }

    /// Where its other servers listen ([`Nginx::require_ports`]).
    pub fn more(&self) -> &[SocketAddr] {
        &self.spot.more
    }

    /// What it logged so far (its error log and its standard error), for diagnostics.
    pub fn log(&self) -> String {
        log(&self.spot.dir)
    }
}

/// What an nginx logged in `dir`.
fn log(dir: &Path) -> String {
    ["error.log", "stderr.log"]
        .map(|name| fs::read_to_string(dir.join(name)).unwrap_or_default())
        .concat()
}

/// Waits until the nginx `child` accepts connections at every address of `spot`; an error
/// if it exits first (a port taken) or takes too long.
fn wait_ready(child: &mut Child, spot: &Spot) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("nginx exited with {status}; log:\n{}", log(&spot.dir));
        }
        let waiting = spot
            .addrs()
            .find(|addr| TcpStream::connect_timeout(addr, POLL).is_err());
        let Some(waiting) = waiting else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            anyhow::bail!(
                "nginx did not listen on {waiting} within {READY_TIMEOUT:?}; log:\n{}",
                log(&spot.dir)
            );
        }
        std::thread::sleep(POLL);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.spot.dir);
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("probing a free port")?;
    Ok(listener.local_addr()?)
}
