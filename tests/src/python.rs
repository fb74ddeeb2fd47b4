//! Running the Python handlers under `tests/handlers/<platform>` (written as each
//! platform's users write them): finding an interpreter that can run them, and the command
//! to run one of their scripts with, in their folder and without the machine's proxies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};

use tokio::process::Command;

/// A Python 3 interpreter for which `python -c check` succeeds (e.g. `import boto3`):
/// `$PYTHON3` or `python3` on `PATH`, else `/usr/bin/python3` (where Debian's packages
/// install modules). Probed once per `check`. When there is none, reports `missing` with
/// [`crate::skip_or_fail`] and returns `None`.
#[track_caller]
pub fn find_python3(check: &'static str, missing: &str) -> Option<PathBuf> {
    static FOUND: OnceLock<Mutex<HashMap<&'static str, Option<PathBuf>>>> = OnceLock::new();
    let found = FOUND
        .get_or_init(Mutex::default)
        .lock()
        .unwrap()
        .entry(check)
        .or_insert_with(|| {
            let mut candidates: Vec<PathBuf> = Vec::new();
            candidates.extend(crate::find_program("PYTHON3", "python3", &[]));
            candidates.push("/usr/bin/python3".into());
            candidates.into_iter().find(|python| {
                std::process::Command::new(python)
                    .args(["-c", check])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        })
        .clone();
    if found.is_none() {
        crate::skip_or_fail(missing);
    }
    found
}

/// The handlers of one platform: `tests/handlers/<platform>`.
pub fn handlers_dir(platform: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("handlers")
        .join(platform)
}

/// `python` in the handlers' folder of `platform`, with `env` added, unbuffered, writing no
/// bytecode, without proxies and without stdin; killed when dropped. Arguments are the
/// caller's.
pub fn command(python: &Path, platform: &str, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(python);
    cmd.current_dir(handlers_dir(platform))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}
