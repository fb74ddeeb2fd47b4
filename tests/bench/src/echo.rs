//! Scenario `echo`: N connections each send messages one after another; every message goes
//! through the system (for the gateway: a transport call whose reply comes back to the
//! client) and each reply is checked. Reports round trips per second, round-trip
//! percentiles, and the system's CPU per message.
//!
//! With a message count (smoke) every round trip counts. With a duration (full), the first
//! `echo_warmup_secs` are excluded and the window after it is measured: round trips
//! completed in the window, CPU read at its start and end.
//!
//! For the floor there are two rows: `floor` (bare WebSocket echo) and `floor-http` (bare
//! HTTP echo over keep-alive connections): the gateway's work per message is one of each.
//!
//! `passthrough-echo` ([`run_passthrough`]) is the same load through a WebSocket proxy to
//! `bench-backend`'s echo: the proxy's CPU per message, no function.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use super::cli::Ctx;
use super::client::{Dialer, HttpConn, Sources, Ws};
use super::procs::{Usage, cpu_us_per};
use super::report::Row;
use super::stats::Percentiles;
use super::systems::Target;

/// The longest one round trip may take before the client counts it as an error.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per message.
const PAYLOAD_BYTES: usize = 32;

/// One echo client.
enum Client {
    Ws(Box<Ws>),
    Http(HttpConn),
}

/// A fixed-size message unique to (connection, sequence number).
fn payload(conn: usize, seq: u64) -> String {
    let mut s = format!("echo {conn:05} {seq:010} ");
    while s.len() < PAYLOAD_BYTES {
        s.push('x');
    }
    s
}

impl Client {
    async fn round_trip(&mut self, text: String) -> anyhow::Result<()> {
        match self {
            Client::Ws(ws) => {
                ws.send(Message::text(text.clone())).await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(got))) => {
                            anyhow::ensure!(got == text.as_str(), "reply {got:?} to {text:?}");
                            return Ok(());
                        }
                        Some(Ok(Message::Close(frame))) => {
                            anyhow::bail!("closed by the server: {frame:?}")
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => anyhow::bail!("connection ended"),
                    }
                }
            }
            Client::Http(conn) => {
                let got = conn.post(Bytes::from(text.clone())).await?;
                anyhow::ensure!(got == text.as_bytes(), "reply {got:?} to {text:?}");
                Ok(())
            }
        }
    }
}

/// What one client did.
#[derive(Default)]
struct Done {
    /// Round-trip times in µs of the round trips that count.
    samples: Vec<u64>,
    error: Option<String>,
}

/// When to stop and what counts.
#[derive(Clone, Copy)]
enum Budget {
    /// A number of messages; all count.
    Count(usize),
    /// Until `end`; round trips completing after `from` count.
    Window { from: Instant, end: Instant },
}

async fn drive(mut client: Client, conn: usize, budget: Budget) -> Done {
    let mut done = Done::default();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        match budget {
            Budget::Count(n) if seq as usize >= n => break,
            Budget::Window { end, .. } if now >= end => break,
            _ => {}
        }
        let t = Instant::now();
        let trip = tokio::time::timeout(ROUND_TRIP_TIMEOUT, client.round_trip(payload(conn, seq)));
        match trip.await {
            Ok(Ok(())) => {
                let finished = Instant::now();
                let counts = match budget {
                    Budget::Count(_) => true,
                    Budget::Window { from, end } => finished >= from && finished <= end,
                };
                if counts {
                    done.samples
                        .push(finished.duration_since(t).as_micros() as u64);
                }
            }
            Ok(Err(e)) => {
                done.error = Some(format!("round trip {seq}: {e:#}"));
                break;
            }
            Err(_) => {
                done.error = Some(format!(
                    "round trip {seq}: no reply in {ROUND_TRIP_TIMEOUT:?}"
                ));
                break;
            }
        }
        seq += 1;
    }
    if let Client::Ws(mut ws) = client {
        let _ = tokio::time::timeout(Duration::from_secs(2), Ws::close(&mut ws, None)).await;
    }
    done
}

/// Connects `n` clients of one kind (WebSockets through `dialer`).
async fn connect_all(
    dialer: &Dialer,
    url: &str,
    n: usize,
    http: bool,
    sources: &Sources,
) -> (Vec<Client>, Vec<String>) {
    let attempts = futures_util::stream::iter(0..n)
        .map(|_| {
            let source = sources.next();
            async move {
                if http {
                    HttpConn::connect(url, source).await.map(Client::Http)
                } else {
                    dialer
                        .ws(url, source)
                        .await
                        .map(|ws| Client::Ws(Box::new(ws)))
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut clients = Vec::new();
    let mut errors = Vec::new();
    for a in attempts {
        match a {
            Ok(c) => clients.push(c),
            Err(e) => errors.push(format!("connect: {e:#}")),
        }
    }
    (clients, errors)
}

/// Measures one row of `scenario`: `url` over WebSocket, or over HTTP when `http`.
async fn measure(
    target: &Target,
    ctx: &Ctx,
    scenario: &str,
    system: &str,
    url: &str,
    http: bool,
) -> Row {
    let mut row = ctx.row(scenario, target);
    row.system = system.to_owned();
    row.rate_unit = "rt/s".to_owned();
    let n = ctx.sizes.echo_conns;
    row.conns = n;
    let sources = Sources::new(ctx.sources.clone(), 0);
    let (clients, errors) = connect_all(&target.dialer, url, n, http, &sources).await;
    row.errors_from(errors.len() as u64, &errors);
    if clients.is_empty() {
        return row;
    }
    let start = Instant::now();
    let budget = match ctx.sizes.echo_messages {
        Some(count) => Budget::Count(count),
        None => {
            let from = start + Duration::from_secs_f64(ctx.sizes.echo_warmup_secs);
            Budget::Window {
                from,
                end: from + ctx.sizes.echo_window(),
            }
        }
    };
    let sample = |t: &Target| (t.usage(), t.function_usage());
    let mut cpu_start = sample(target);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(c, i, budget)))
        .collect();
    if let Budget::Window { from, .. } = budget {
        // Pacing: the CPU reading belongs at the start of the measured window.
        tokio::time::sleep_until(from.into()).await;
        cpu_start = sample(target);
    }
    let mut samples = Vec::new();
    for task in tasks {
        match task.await {
            Ok(done) => {
                samples.extend(done.samples);
                if let Some(e) = done.error {
                    row.error(1, e);
                }
            }
            Err(e) => row.error(1, format!("client task: {e}")),
        }
    }
    let cpu_end = sample(target);
    let secs = match budget {
        Budget::Count(_) => start.elapsed().as_secs_f64(),
        Budget::Window { .. } => ctx.sizes.echo_secs,
    };
    let ops = samples.len() as u64;
    row.ops = ops;
    row.rate = Some(ops as f64 / secs.max(1e-9));
    row.latency = Some(Percentiles::of(&mut samples));
    row.rss_kib = Some(cpu_end.0.rss_kib);
    row.cpu_us_per_op = cpu_us_per(&cpu_start.0, &cpu_end.0, ops);
    row.fn_cpu_us_per_op = match (&cpu_start.1, &cpu_end.1) {
        (Some(a), Some(b)) => cpu_us_per(a, b, ops),
        _ => None,
    };
    row.detail = serde_json::json!({
        "seconds": secs,
        "payload_bytes": PAYLOAD_BYTES,
        "cpu_seconds": cpu_seconds(&cpu_start.0, &cpu_end.0),
    });
    row
}

fn cpu_seconds(a: &Usage, b: &Usage) -> f64 {
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / super::procs::CLK_TCK as f64
}

/// Runs the scenario against `target` (two rows for the floor).
pub async fn run(target: &mut Target, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let system = target.system.name();
    let mut rows = vec![measure(target, ctx, "echo", system, &target.ws_url, false).await];
    if let Some(url) = &target.http_echo_url {
        rows.push(measure(target, ctx, "echo", "floor-http", url, true).await);
    }
    Ok(rows)
}

/// Runs `passthrough-echo` against `target` (a proxy in front of `bench-backend`).
pub async fn run_passthrough(target: &mut Target, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let system = target.system.name();
    let row = measure(
        target,
        ctx,
        "passthrough-echo",
        system,
        &target.ws_url,
        false,
    )
    .await;
    Ok(vec![row])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_fixed_size_and_unique() {
        assert_eq!(payload(1, 2).len(), PAYLOAD_BYTES);
        assert_eq!(payload(99_999, 9_999_999_999).len(), PAYLOAD_BYTES);
        assert_ne!(payload(1, 2), payload(2, 1));
    }
}
