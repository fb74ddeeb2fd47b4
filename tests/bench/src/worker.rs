//! Worker processes that hold many client connections (`bench worker`), and the
//! orchestrator's handle on them ([`WorkerPool`]).
//!
//! One process may hold only as many sockets as its open-files limit allows, so the idle
//! and fan-out scenarios spread their clients over worker subprocesses (each under
//! ~19,000 sockets). A worker reads one JSON [`Command`] per stdin line and answers each
//! with one JSON [`Reply`] line on stdout. Fan-out messages are `fan <tag> …`: every
//! connection records when it received each tag, with the wall clock in microseconds
//! (one clock for every process on the machine), so the orchestrator can compute the time
//! from its publish to the last member's receipt across processes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as ProcessCommand};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{Dialer, Sources, Ws};
use super::report::MAX_ERROR_SAMPLES;
use super::unix_us;

/// How long a close handshake may take before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a worker checks whether an expected tag has arrived everywhere.
const POLL: Duration = Duration::from_millis(1);

/// What the orchestrator asks a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Open `count` WebSockets to `url`, at most `concurrency` at a time, from `sources`
    /// round-robin starting at `source_offset`, and hold them.
    Connect {
        /// The WebSocket URL.
        url: String,
        /// The CA to trust for a `wss://` URL, PEM.
        ca_pem: Option<String>,
        /// How many.
        count: usize,
        /// Source addresses.
        sources: Vec<Ipv4Addr>,
        /// Where the round-robin starts.
        source_offset: usize,
        /// Connections in flight at once.
        concurrency: usize,
    },
    /// Answer once `count` connections have received the message tagged `tag`, or after
    /// `timeout_ms` with what arrived.
    Expect {
        /// The tag.
        tag: u64,
        /// Receipts to wait for.
        count: usize,
        /// The bound.
        timeout_ms: u64,
    },
    /// Close every connection (close handshake) and exit.
    Close,
}

/// What a worker answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// After `Connect`.
    Connected {
        /// Connections opened.
        ok: usize,
        /// Connections that failed.
        failed: usize,
        /// The first few failure messages.
        errors: Vec<String>,
        /// Wall time of the whole batch, µs.
        elapsed_us: u64,
        /// Time of each successful connect (TCP + upgrade), µs.
        connect_us: Vec<u64>,
    },
    /// After `Expect`.
    Received {
        /// The tag.
        tag: u64,
        /// Connections that received it.
        count: usize,
        /// Wall clock of the first receipt, µs since the epoch (0 if none).
        first_us: u64,
        /// Wall clock of the last receipt, µs since the epoch (0 if none).
        last_us: u64,
        /// Connections that ended unexpectedly so far.
        dropped: usize,
    },
    /// After `Close`.
    Closed {
        /// Connections that were still open.
        closed: usize,
    },
    /// A command that could not be carried out.
    Failed {
        /// Why.
        message: String,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct TagStat {
    count: usize,
    first_us: u64,
    last_us: u64,
}

#[derive(Default)]
struct State {
    tags: Mutex<HashMap<u64, TagStat>>,
    open: AtomicUsize,
    dropped: AtomicUsize,
    closing: AtomicBool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl State {
    fn record(&self, text: &str) {
        let now = unix_us();
        let Some(tag) = text
            .strip_prefix("fan ")
            .and_then(|r| r.split(' ').next())
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        let stat = tags.entry(tag).or_default();
        if stat.count == 0 {
            stat.first_us = now;
        }
        stat.count += 1;
        stat.last_us = stat.last_us.max(now);
    }

    fn tag(&self, tag: u64) -> TagStat {
        let tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        tags.get(&tag).copied().unwrap_or_default()
    }
}

/// Holds one connection: records fan-out messages, answers pings (tungstenite does while
/// reading), closes on shutdown.
async fn hold(mut ws: Ws, state: Arc<State>) {
    state.open.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                break;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => state.record(&text),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    if !state.closing.load(Ordering::Relaxed) {
                        state.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            },
        }
    }
    state.open.fetch_sub(1, Ordering::Relaxed);
}

async fn connect_many(
    state: &Arc<State>,
    dialer: &Dialer,
    url: &str,
    count: usize,
    sources: Vec<Ipv4Addr>,
    source_offset: usize,
    concurrency: usize,
) -> Reply {
    let sources = Sources::new(sources, source_offset);
    let started = Instant::now();
    let results: Vec<Result<(Ws, u64), String>> = futures_util::stream::iter(0..count)
        .map(|_| {
            let source = sources.next();
            async move {
                let t = Instant::now();
                dialer
                    .ws(url, source)
                    .await
                    .map(|ws| (ws, t.elapsed().as_micros() as u64))
                    .map_err(|e| format!("{e:#}"))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed_us = started.elapsed().as_micros() as u64;
    let (mut ok, mut failed, mut errors, mut connect_us) = (0, 0, Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok((ws, us)) => {
                ok += 1;
                connect_us.push(us);
                state.tracker.spawn(hold(ws, state.clone()));
            }
            Err(e) => {
                failed += 1;
                if errors.len() < MAX_ERROR_SAMPLES && !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
    }
    Reply::Connected {
        ok,
        failed,
        errors,
        elapsed_us,
        connect_us,
    }
}

async fn expect(state: &State, tag: u64, count: usize, timeout: Duration) -> Reply {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = state.tag(tag);
        if stat.count >= count || Instant::now() >= deadline {
            return Reply::Received {
                tag,
                count: stat.count,
                first_us: stat.first_us,
                last_us: stat.last_us,
                dropped: state.dropped.load(Ordering::Relaxed),
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `bench worker`: serves commands from stdin until `Close` or end of input.
pub async fn main() -> anyhow::Result<()> {
    super::machine::raise_fd_limit();
    let state = Arc::new(State::default());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let command: Command = serde_json::from_str(&line).context("bad command")?;
        let (reply, last) = match command {
            Command::Connect {
                url,
                ca_pem,
                count,
                sources,
                source_offset,
                concurrency,
            } => {
                let reply = match Dialer::new(ca_pem.as_deref()) {
                    Ok(dialer) => {
                        connect_many(
                            &state,
                            &dialer,
                            &url,
                            count,
                            sources,
                            source_offset,
                            concurrency,
                        )
                        .await
                    }
                    Err(e) => Reply::Failed {
                        message: format!("{e:#}"),
                    },
                };
                (reply, false)
            }
            Command::Expect {
                tag,
                count,
                timeout_ms,
            } => (
                expect(&state, tag, count, Duration::from_millis(timeout_ms)).await,
                false,
            ),
            Command::Close => {
                let closed = state.open.load(Ordering::Relaxed);
                state.closing.store(true, Ordering::Relaxed);
                state.shutdown.cancel();
                state.tracker.close();
                state.tracker.wait().await;
                (Reply::Closed { closed }, true)
            }
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        stdout.write_all(&out).await?;
        stdout.flush().await?;
        if last {
            break;
        }
    }
    Ok(())
}

/// One worker subprocess.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Connections it holds.
    held: usize,
}

impl Worker {
    async fn request(&mut self, command: &Command) -> anyhow::Result<Reply> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        match self.stdout.next_line().await? {
            Some(reply) => Ok(serde_json::from_str(&reply)?),
            None => bail!(
                "worker {} exited ({:?})",
                self.child.id().unwrap_or(0),
                self.child.try_wait()
            ),
        }
    }
}

/// What a batch of connects across all workers achieved.
#[derive(Clone, Debug, Default)]
pub struct Connected {
    /// Opened.
    pub ok: usize,
    /// Failed.
    pub failed: usize,
    /// The first few failure messages.
    pub errors: Vec<String>,
    /// Wall time until the slowest worker finished.
    pub elapsed: Duration,
    /// Connect time of each connection, µs.
    pub connect_us: Vec<u64>,
}

/// What every worker saw of one tag.
#[derive(Clone, Debug, Default)]
pub struct Receipt {
    /// Connections that received it.
    pub count: usize,
    /// Earliest receipt (µs since the epoch).
    pub first_us: u64,
    /// Latest receipt (µs since the epoch).
    pub last_us: u64,
    /// Connections that ended unexpectedly.
    pub dropped: usize,
}

/// The orchestrator's worker subprocesses.
pub struct WorkerPool {
    workers: Vec<Worker>,
}

impl WorkerPool {
    /// Starts `n` workers (this executable with `worker`), stderr to `<log_dir>/worker-<i>.log`.
    pub async fn spawn(n: usize, log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        std::fs::create_dir_all(log_dir)?;
        let mut workers = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let log = std::fs::File::create(log_dir.join(format!("worker-{i}.log")))?;
            let mut child = ProcessCommand::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .context("starting a bench worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            workers.push(Worker {
                child,
                stdin,
                stdout,
                held: 0,
            });
        }
        Ok(WorkerPool { workers })
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Opens `total` connections to `url` through `dialer`, spread evenly over the workers,
    /// all at once.
    pub async fn connect(
        &mut self,
        dialer: &Dialer,
        url: &str,
        total: usize,
        sources: &[Ipv4Addr],
        concurrency: usize,
    ) -> anyhow::Result<Connected> {
        let n = self.workers.len();
        let requests = self.workers.iter_mut().enumerate().map(|(i, w)| {
            let command = Command::Connect {
                url: url.to_owned(),
                ca_pem: dialer.ca_pem().map(str::to_owned),
                count: total / n + usize::from(i < total % n),
                sources: sources.to_vec(),
                source_offset: i,
                concurrency: (concurrency / n).max(1),
            };
            async move {
                let reply = w.request(&command).await;
                if let Ok(Reply::Connected { ok, .. }) = &reply {
                    w.held += ok;
                }
                reply
            }
        });
        let replies = futures_util::future::join_all(requests).await;
        let mut total = Connected::default();
        for reply in replies {
            match reply? {
                Reply::Connected {
                    ok,
                    failed,
                    errors,
                    elapsed_us,
                    connect_us,
                } => {
                    total.ok += ok;
                    total.failed += failed;
                    for e in errors {
                        if total.errors.len() < MAX_ERROR_SAMPLES {
                            total.errors.push(e);
                        }
                    }
                    total.elapsed = total.elapsed.max(Duration::from_micros(elapsed_us));
                    total.connect_us.extend(connect_us);
                }
                other => bail!("worker answered {other:?} to connect"),
            }
        }
        Ok(total)
    }

    /// Waits until every held connection has the message tagged `tag` (or `timeout`).
    pub async fn expect(&mut self, tag: u64, timeout: Duration) -> anyhow::Result<Receipt> {
        let timeout_ms = timeout.as_millis() as u64;
        let requests = self.workers.iter_mut().map(|w| {
            let command = Command::Expect {
                tag,
                count: w.held,
                timeout_ms,
            };
            async move { w.request(&command).await }
        });
        let mut receipt = Receipt {
            first_us: u64::MAX,
            ..Receipt::default()
        };
        for reply in futures_util::future::join_all(requests).await {
            match reply? {
                Reply::Received {
                    count,
                    first_us,
                    last_us,
                    dropped,
                    ..
                } => {
                    receipt.count += count;
                    receipt.dropped += dropped;
                    if count > 0 {
                        receipt.first_us = receipt.first_us.min(first_us);
                        receipt.last_us = receipt.last_us.max(last_us);
                    }
                }
                other => bail!("worker answered {other:?} to expect"),
            }
        }
        if receipt.first_us == u64::MAX {
            receipt.first_us = 0;
        }
        Ok(receipt)
    }

    /// Closes every connection gracefully and waits for the workers to exit.
    pub async fn close(mut self) {
        for w in &mut self.workers {
            let _ = w.request(&Command::Close).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, w.child.wait()).await;
        }
    }
}
