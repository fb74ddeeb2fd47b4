//! A real Prometheus per test, configured from the deployment's own
//! `deploy/prometheus.yml`: its targets replaced by the test's, its intervals by
//! [`SCRAPE_INTERVAL`]; a free port on 127.0.0.1, a fresh temp dir for its config and its
//! data, killed and removed on drop. [`Prometheus::query`] asks its HTTP API.
//!
//! Where `prometheus` is not installed the test skips with a `SKIP:` line, unless `CI` or
//! `SWITCHBOARD_REQUIRE_ALL` is set: then it fails (`tests/run.sh` installs Debian's
//! `prometheus`).
//!
//! ```no_run
//! # async fn f() {
//! let Some(prometheus) = tests::prometheus::Prometheus::require(&["127.0.0.1:9090".into()]).await
//! else { return };
//! let samples = prometheus.query("up").await.unwrap();
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tokio::time::Instant;

/// How often the test's Prometheus scrapes (and evaluates).
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// How long Prometheus may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Free ports tried (another process may take the port between the probe and Prometheus).
const PORT_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(50);

/// The `prometheus` binary: `$PROMETHEUS`, then `PATH`, then `/usr/bin/prometheus`.
pub fn prometheus_binary() -> Option<PathBuf> {
    crate::find_program("PROMETHEUS", "prometheus", &["/usr/bin/prometheus"])
}

/// The deployment's scrape config, `deploy/prometheus.yml`.
pub fn deploy_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus.yml")
}

/// The deployment's alerting rules, `deploy/alerts.yml` (loaded by `prometheus.yml`).
pub fn deploy_rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alerts.yml")
}

/// `promtool` (Prometheus's checker, in the same package): `$PROMTOOL`, then `PATH`, then
/// `/usr/bin/promtool`.
pub fn promtool_binary() -> Option<PathBuf> {
    crate::find_program("PROMTOOL", "promtool", &["/usr/bin/promtool"])
}

/// `deploy/prometheus.yml` (`text`) with its one `targets: [...]` list replaced by
/// `targets` and every `scrape_interval` / `evaluation_interval` of 15s by `interval`. An
/// error if the file no longer has what is replaced: the test must run the deployment's
/// config, not a look-alike.
pub fn config_from_deploy(
    text: &str,
    targets: &[String],
    interval: Duration,
) -> anyhow::Result<String> {
    let interval = format!("{}ms", interval.as_millis());
    let mut out = String::with_capacity(text.len());
    let (mut target_lists, mut intervals) = (0, 0);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if !trimmed.starts_with('#') && trimmed.starts_with("- targets: [") {
            target_lists += 1;
            let list = serde_json::to_string(targets)?;
            out.push_str(&format!("{indent}- targets: {list}\n"));
            continue;
        }
        let mut line = line.to_owned();
        for key in ["scrape_interval", "evaluation_interval"] {
            let from = format!("{key}: 15s");
            if trimmed == from {
                intervals += 1;
                line = format!("{indent}{key}: {interval}");
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    anyhow::ensure!(
        target_lists == 1,
        "deploy/prometheus.yml: expected one `- targets: [...]` line, found {target_lists}"
    );
    anyhow::ensure!(
        intervals >= 2,
        "deploy/prometheus.yml: expected `scrape_interval: 15s` and `evaluation_interval: 15s`"
    );
    Ok(out)
}

/// One sample of an instant query: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (`__name__` among them for a plain selector).
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`) with the config made from
    /// `deploy/prometheus.yml`, and waits until it says it is ready; or, when it is not
    /// installed, skips (`None`) or fails under `CI` / `SWITCHBOARD_REQUIRE_ALL`. Panics if
    /// it is installed but does not start.
    #[track_caller]
    pub fn require(targets: &[String]) -> impl Future<Output = Option<Prometheus>> + use<> {
        let binary = prometheus_binary();
        if binary.is_none() {
            if ci() {
                panic!("prometheus not installed, and CI is set: tests/run.sh installs it");
            }
            crate::skip_or_fail("prometheus not installed");
        }
        let targets = targets.to_vec();
        async move {
            let binary = binary?;
            match Prometheus::start(&binary, &targets).await {
                Ok(prometheus) => Some(prometheus),
                Err(e) => panic!("starting prometheus: {e:#}"),
            }
        }
    }

    async fn start(binary: &Path, targets: &[String]) -> anyhow::Result<Prometheus> {
        let deploy = deploy_config_path();
        let text =
            fs::read_to_string(&deploy).with_context(|| format!("reading {}", deploy.display()))?;
        let config = config_from_deploy(&text, targets, SCRAPE_INTERVAL)?;
        let dir = std::env::temp_dir().join(format!(
            "switchboard-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("prometheus.yml");
        fs::write(&file, config)?;
        // The rules the config loads, beside it as in deploy/.
        let rules = deploy_rules_path();
        fs::copy(&rules, dir.join("alerts.yml"))
            .with_context(|| format!("copying {}", rules.display()))?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let addr = free_addr()?;
            let log = fs::File::create(dir.join("prometheus.log"))?;
            let mut child = Command::new(binary)
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            match wait_ready(&mut child, addr, &dir).await {
                Ok(()) => {
                    return Ok(Prometheus { child, addr, dir });
                }
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

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it logged so far, for diagnostics.
    pub fn log(&self) -> String {
        log(&self.dir)
    }

    /// An instant query (`GET /api/v1/query`) of `promql`: its vector's samples.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let answer: Value = reqwest::Client::new()
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url(),
                encode(promql)
            ))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(answer["status"] == "success", "query {promql:?}: {answer}");
        anyhow::ensure!(
            answer["data"]["resultType"] == "vector",
            "query {promql:?} is not a vector: {answer}"
        );
        let results = answer["data"]["result"]
            .as_array()
            .with_context(|| format!("query {promql:?}: {answer}"))?;
        results
            .iter()
            .map(|r| {
                let labels = serde_json::from_value(r["metric"].clone())?;
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("query {promql:?}: no value in {r}"))?;
                Ok(Sample { labels, value })
            })
            .collect()
    }

    /// The one value of `promql` (a query that yields a single sample), or `None` while it
    /// yields none.
    pub async fn value(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let samples = self.query(promql).await?;
        anyhow::ensure!(
            samples.len() <= 1,
            "query {promql:?} yields several samples: {samples:?}"
        );
        Ok(samples.first().map(|s| s.value))
    }
}

/// One alert as `/api/v1/alerts` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// `alertname`.
    pub name: String,
    /// `pending` (its `for:` not over yet) or `firing`.
    pub state: String,
    /// Its labels (`instance` among them).
    pub labels: BTreeMap<String, String>,
}

impl Prometheus {
    /// GET `path` of its API, as JSON whose `status` is `success`.
    async fn api(&self, path: &str) -> anyhow::Result<Value> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}{path}", self.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(answer["status"] == "success", "{path}: {answer}");
        Ok(answer)
    }

    /// Every alerting rule it loaded: `(name, health, last error)`; health is `unknown`
    /// until the rule's first evaluation, then `ok` or `err`.
    pub async fn rules(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let answer = self.api("/api/v1/rules?type=alert").await?;
        let groups = answer["data"]["groups"]
            .as_array()
            .with_context(|| format!("rules: {answer}"))?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok(groups
            .iter()
            .filter_map(|g| g["rules"].as_array())
            .flatten()
            .map(|r| (text(&r["name"]), text(&r["health"]), text(&r["lastError"])))
            .collect())
    }

    /// The alerts pending or firing now.
    pub async fn alerts(&self) -> anyhow::Result<Vec<Alert>> {
        let answer = self.api("/api/v1/alerts").await?;
        let alerts = answer["data"]["alerts"]
            .as_array()
            .with_context(|| format!("alerts: {answer}"))?;
        alerts
            .iter()
            .map(|a| {
                let labels: BTreeMap<String, String> = serde_json::from_value(a["labels"].clone())?;
                Ok(Alert {
                    name: labels.get("alertname").cloned().unwrap_or_default(),
                    state: a["state"].as_str().unwrap_or_default().to_owned(),
                    labels,
                })
            })
            .collect()
    }

    /// Its scrape targets as `/api/v1/targets` reports them: `(scrape URL, health, last
    /// error)`, for diagnostics.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/targets", self.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?;
        let active = answer["data"]["activeTargets"]
            .as_array()
            .with_context(|| format!("targets: {answer}"))?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok(active
            .iter()
            .map(|t| {
                (
                    text(&t["scrapeUrl"]),
                    text(&t["health"]),
                    text(&t["lastError"]),
                )
            })
            .collect())
    }

    /// Waits until `promql` yields the one value `expected`, or panics after `timeout` with
    /// what it yielded last and how the targets' scrapes went.
    pub async fn wait_value(&self, promql: &str, expected: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.value(promql).await;
            if matches!(last, Ok(Some(v)) if v == expected) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {promql} = {expected}; last: \
                     {last:?}; targets: {:?}",
                    self.targets().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What a Prometheus logged in `dir`.
fn log(dir: &Path) -> String {
    fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

/// Polls `/-/ready` at `addr` until it answers 200; an error if `child` exits first (a
/// port taken, a bad config) or it takes longer than [`READY_TIMEOUT`].
async fn wait_ready(child: &mut Child, addr: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let client = reqwest::Client::new();
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("prometheus exited with {status}; log:\n{}", log(dir));
        }
        let ready = client
            .get(format!("http://{addr}/-/ready"))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "prometheus not ready at {addr} within {READY_TIMEOUT:?}; log:\n{}",
                log(dir)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `text` percent-encoded for a query string: every byte but unreserved ones.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether `CI` is set to anything but empty, `0` or `false` (as `tests/run.sh` reads it).
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("probing a free port")?;
    Ok(listener.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_config_gets_the_test_targets_and_intervals() {
        let text = fs::read_to_string(deploy_config_path()).unwrap();
        let targets = ["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        let config = config_from_deploy(&text, &targets, Duration::from_secs(1)).unwrap();
        assert!(
            config.contains(r#"- targets: ["127.0.0.1:1","127.0.0.1:2"]"#),
            "{config}"
        );
        let settings = config.lines().filter(|l| !l.trim_start().starts_with('#'));
        assert!(settings.clone().all(|l| !l.contains("15s")), "{config}");
        assert_eq!(
            settings.filter(|l| l.contains("127.0.0.1:9090")).count(),
            0,
            "{config}"
        );
        assert!(config.contains("scrape_interval: 1000ms"), "{config}");
        assert!(config.contains("job_name: switchboard"), "{config}");
        assert!(config.contains("metrics_path: /metrics"), "{config}");
        // A file without what is replaced is refused.
        assert!(config_from_deploy("global: {}\n", &targets, SCRAPE_INTERVAL).is_err());
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode(r#"sum(up{job="a b"})"#),
            "sum%28up%7Bjob%3D%22a%20b%22%7D%29"
        );
    }
}
