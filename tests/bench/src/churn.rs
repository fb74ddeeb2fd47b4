//! Scenario `churn`: K clients each repeat connect (register), one message and its reply
//! (transport), and a clean close (cleanup), until T cycles are done. The run ends when the
//! function has seen every cleanup (systems without a function: when the clients are
//! done). Reports cycles per second, cycle-time percentiles, and CPU per cycle.
//!
//! A close the server ends without answering our close frame (the TCP connection just
//! ends) still completes the cycle, but is counted as `unclean_closes` and shown in the
//! row's note: it is a protocol defect of the system, not a failure of the cycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};

use super::cli::Ctx;
use super::client::{Dialer, Sources};
use super::procs::cpu_us_per;
use super::report::Row;
use super::stats::Percentiles;
use super::systems::Target;

/// How long the function may take to see the last cleanups.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one step of a cycle may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// One cycle; `Ok(true)` when the server answered the close frame (a clean close).
async fn cycle(dialer: &Dialer, url: &str, sources: &Sources, i: usize) -> anyhow::Result<bool> {
    let mut ws = dialer.ws(url, sources.next()).await?;
    let text = format!("churn {i}");
    let exchange = async {
        ws.send(Message::text(text.clone())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(got))) => {
                    anyhow::ensure!(got == text.as_str(), "reply {got:?} to {text:?}");
                    return Ok(());
                }
                Some(Ok(Message::Close(f))) => anyhow::bail!("closed by the server: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("connection ended before the reply"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no reply within {STEP_TIMEOUT:?}"))??;
    let close = async {
        ws.close(None).await?;
        // Until the server's close frame and the end of the stream.
        let mut answered = false;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(_)) => answered = true,
                Ok(_) => {}
                // The stream ended without the server's close frame.
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
                    if !answered =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::Ok(answered)
    };
    match tokio::time::timeout(STEP_TIMEOUT, close).await {
        Ok(Ok(clean)) => Ok(clean),
        Ok(Err(e)) => Err(e.context("closing")),
        Err(_) => anyhow::bail!("close not completed within {STEP_TIMEOUT:?}"),
    }
}

/// Runs the scenario against `target`.
pub async fn run(target: &mut Target, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let mut row = ctx.row("churn", target);
    let total = ctx.sizes.churn_cycles;
    let concurrency = ctx.sizes.churn_concurrency.max(1);
    row.conns = concurrency;
    row.rate_unit = "cycle/s".to_owned();
    let baseline = target.function_stats(&ctx.env.http).await;
    let before = target.usage();
    let fn_before = target.function_usage();
    let next = Arc::new(AtomicUsize::new(0));
    let sources = Arc::new(Sources::new(ctx.sources.clone(), 0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, sources, url) = (next.clone(), sources.clone(), target.ws_url.clone());
            let dialer = target.dialer.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                let mut errors = Vec::new();
                let mut unclean = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    match cycle(&dialer, &url, &sources, i).await {
                        Ok(clean) => {
                            times.push(t.elapsed().as_micros() as u64);
                            unclean += u64::from(!clean);
                        }
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                }
                (times, errors, unclean)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut unclean_closes = 0;
    for task in tasks {
        let (t, errors, unclean) = task.await?;
        times.extend(t);
        unclean_closes += unclean;
        for e in errors {
            row.error(1, e);
        }
    }
    let ok = times.len() as u64;
    if let Some(base) = baseline {
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        loop {
            let seen = target
                .function_stats(&ctx.env.http)
                .await
                .map_or(0, |s| s.cleanup.saturating_sub(base.cleanup));
            if seen >= ok {
                break;
            }
            if Instant::now() >= deadline {
                row.error(
                    ok - seen,
                    format!("{seen} of {ok} cleanups within {CLEANUP_TIMEOUT:?}"),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = target.usage();
    row.ops = ok;
    row.rate = Some(ok as f64 / elapsed.max(1e-9));
    row.latency = Some(Percentiles::of(&mut times));
    row.rss_kib = Some(after.rss_kib);
    row.cpu_us_per_op = cpu_us_per(&before, &after, ok);
    if let (Some(a), Some(b)) = (fn_before, target.function_usage()) {
        row.fn_cpu_us_per_op = cpu_us_per(&a, &b, ok);
    }
    row.detail = serde_json::json!({
        "cycles": total,
        "seconds": elapsed,
        "unclean_closes": unclean_closes,
    });
    if unclean_closes > 0 {
        row.warnings.push(format!(
            "{unclean_closes} closes not answered with a close frame"
        ));
    }
    Ok(vec![row])
}
