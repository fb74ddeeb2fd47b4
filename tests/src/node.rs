//! Running the Node.js handlers of `tests/handlers/aws-node` (written as AWS Lambda's users
//! write them): finding `node` and the sample's npm packages, and [`LambdaRuntime`], the
//! Lambda stand-in `runtime.js` serving handler modules over HTTP, in a process with the
//! environment a Lambda function gets and nothing from the machine's proxies or AWS
//! configuration.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::process::Process;

/// How long `runtime.js` may take to load its modules and listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `$NODE` or `node` on `PATH`, else `/usr/bin/node`. When there is none, reports it with
/// [`crate::skip_or_fail`] and returns `None`.
#[track_caller]
pub fn find_node() -> Option<PathBuf> {
    let node = crate::find_program("NODE", "node", &["/usr/bin/node"]);
    if node.is_none() {
        crate::skip_or_fail("node not installed");
    }
    node
}

/// `tests/handlers/aws-node`: `runtime.js`, and the sample in `simple-chat/`.
pub fn aws_node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("handlers")
        .join("aws-node")
}

/// True when every one of `packages` is installed in `dir/node_modules`; otherwise reports
/// it with [`crate::skip_or_fail`] (tests/run.sh runs `npm ci` there).
#[track_caller]
pub fn require_packages(dir: &Path, packages: &[&str]) -> bool {
    match packages
        .iter()
        .find(|p| !dir.join("node_modules").join(p).is_dir())
    {
        Some(missing) => {
            crate::skip_or_fail(&format!(
                "{missing} not installed in {} (npm ci there)",
                dir.display()
            ));
            false
        }
        None => true,
    }
}

/// `runtime.js` serving handler modules, each at `http://addr/<module>`; killed when
/// dropped. What the handlers print shows with the test's output as `[name] line`.
#[derive(Debug)]
pub struct LambdaRuntime {
    process: Process,
    addr: String,
}

impl LambdaRuntime {
    /// Starts `node runtime.js modules…` on a free port with `user_dirs` as `NODE_PATH` (the
    /// user's handlers, searched before the sample's) and `env` added, and waits until it
    /// listens. Panics if it exits first (a module that does not load).
    pub async fn start(
        node: &Path,
        name: &str,
        modules: &[&str],
        user_dirs: &[&Path],
        env: &[(&str, String)],
    ) -> LambdaRuntime {
        let mut cmd = command(node, user_dirs, env);
        cmd.arg("runtime.js").args(modules).args(["--port", "0"]);
        let process = Process::spawn_echoing_stdout(&mut cmd, name);
        let addr = process
            .output()
            .wait_for("runtime.js to listen", LISTEN_TIMEOUT, |lines| {
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned))
            })
            .await;
        LambdaRuntime { process, addr }
    }

    /// Where `module` is served.
    pub fn url(&self, module: &str) -> String {
        format!("http://{}/{module}", self.addr)
    }

    /// Its standard output (what the handlers print), line by line.
    pub fn output(&self) -> &crate::process::OutputLines {
        self.process.output()
    }

    /// Sends SIGTERM and asserts that it exits successfully.
    pub async fn terminate(self) {
        self.process.terminate().await;
    }
}

/// `node` in `tests/handlers/aws-node` with `NODE_PATH` = `user_dirs` (unset if none) and
/// `env` added, without proxies, AWS profiles or the machine's AWS files, without the
/// machine's TLS trust settings (extra CAs, verification turned off), without stdin; killed
/// when dropped. Arguments are the caller's.
pub fn command(node: &Path, user_dirs: &[&Path], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(node);
    cmd.current_dir(aws_node_dir())
        .env("NO_PROXY", "*")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        // The SDK warns on each start that its releases from 2027 on need Node 22.
        .env("AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED", "true")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NODE_OPTIONS",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "NODE_TLS_REJECT_UNAUTHORIZED",
    ] {
        cmd.env_remove(var);
    }
    match std::env::join_paths(user_dirs) {
        Ok(paths) if !user_dirs.is_empty() => cmd.env("NODE_PATH", paths),
        _ => cmd.env_remove("NODE_PATH"),
    };
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}
