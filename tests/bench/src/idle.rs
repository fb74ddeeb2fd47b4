//! Scenario `idle`: open C connections through the full register path (for the gateway:
//! store write + register call) and hold them. Reports the system's RSS growth per
//! connection (`VmRSS` before and after, divided by C), the connect rate, the connect time
//! percentiles, and CPU per connect. Then every client leaves at once (a mass disconnect,
//! `wave`): where the system's function counts ends, the row `wave` reports how fast their
//! cleanups arrived and the system's peak RSS during the wave and its RSS after it, as
//! ratios to the held state, and whether memory comes back: the RSS [`AFTER_WAVE`] after
//! the last cleanup arrived against the RSS of the empty process (before any client
//! connected, after the warm-up every system gets).
//!
//! `passthrough-idle` ([`run_passthrough`]) is the same measurement through a WebSocket
//! proxy to `bench-backend`: the proxy's RSS growth per connection (nginx: master and
//! workers; Pushpin: every process of its runner), with no function and so no wave.

use std::time::{Duration, Instant};

use super::cli::Ctx;
use super::procs::{Usage, cpu_us_per};
use super::report::Row;
use super::stats::Percentiles;
use super::systems::Target;
use super::worker::WorkerPool;

/// How long a mass disconnect's cleanups may take to arrive.
const WAVE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long after the wave's last cleanup the system's RSS is read again, against the
/// empty process's: memory a burst took should be back by then.
pub const AFTER_WAVE: Duration = Duration::from_secs(15);

/// How long memory may take to settle after the last connect.
const SETTLE: Duration = Duration::from_secs(3);

/// Reads usage until two readings 100 ms apart agree within 0.5% (or [`SETTLE`] passes).
pub async fn settled_usage(target: &Target) -> Usage {
    let deadline = Instant::now() + SETTLE;
    let mut last = target.usage();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = target.usage();
        let diff = now.rss_kib.abs_diff(last.rss_kib) as f64;
        if diff <= now.rss_kib as f64 * 0.005 || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Runs the scenario against `target`.
pub async fn run(target: &mut Target, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    hold(target, ctx, "idle", ctx.sizes.idle_conns).await
}

/// Runs `passthrough-idle` against `target` (a proxy in front of `bench-backend`).
pub async fn run_passthrough(target: &mut Target, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    hold(target, ctx, "passthrough-idle", ctx.sizes.passthrough_conns).await
}

/// Opens and holds `conns` connections to `target` (the row named `scenario`), then the
/// wave where the system's function counts ends.
async fn hold(
    target: &mut Target,
    ctx: &Ctx,
    scenario: &str,
    conns: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut row = ctx.row(scenario, target);
    row.conns = conns;
    row.rate_unit = "conn/s".to_owned();
    let before = settled_usage(target).await;
    let fn_before = target.function_usage();
    let mut pool = WorkerPool::spawn(ctx.workers_for(conns), &ctx.env.log_dir).await?;
    let mut connected = pool
        .connect(
            &target.dialer,
            &target.ws_url,
            conns,
            &ctx.sources,
            ctx.sizes.connect_concurrency,
        )
        .await?;
    let cpu_after = target.usage();
    let fn_after = target.function_usage();
    let after = settled_usage(target).await;

    let ok = connected.ok as u64;
    row.ops = ok;
    row.errors_from(connected.failed as u64, &connected.errors);
    row.rate = Some(ok as f64 / connected.elapsed.as_secs_f64().max(1e-9));
    row.latency = Some(Percentiles::of(&mut connected.connect_us));
    row.rss_kib = Some(after.rss_kib);
    if ok > 0 {
        row.rss_kib_per_conn =
            Some(after.rss_kib.saturating_sub(before.rss_kib) as f64 / ok as f64);
    }
    row.cpu_us_per_op = cpu_us_per(&before, &cpu_after, ok);
    if let (Some(a), Some(b)) = (&fn_before, &fn_after) {
        row.fn_cpu_us_per_op = cpu_us_per(a, b, ok);
    }
    if let Some(stats) = target.function_stats(&ctx.env.http).await
        && stats.register < ok
    {
        row.error(
            ok - stats.register,
            format!(
                "{ok} connected but the function saw {} opens",
                stats.register
            ),
        );
    }
    row.detail = serde_json::json!({
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "processes": after.procs,
        "workers": pool.len(),
        "connect_seconds": connected.elapsed.as_secs_f64(),
    });
    // Dropping the pool kills the workers: their sockets reset, the system cleans up.
    let mem = WaveMemory {
        empty_kib: before.rss_kib,
        held_kib: after.rss_kib,
    };
    let wave = wave(target, ctx, pool, ok, mem).await;
    Ok(std::iter::once(row).chain(wave).collect())
}

/// The system's RSS before the wave: empty (before the first connect) and holding every
/// client.
#[derive(Clone, Copy, Debug)]
struct WaveMemory {
    empty_kib: u64,
    held_kib: u64,
}

/// Every held client leaves at once (the workers are killed, their sockets reset): the
/// rate at which the cleanups reach the function, the system's RSS at its peak during
/// the wave and once it settled after, against the held RSS, and its RSS [`AFTER_WAVE`]
/// after the last cleanup arrived, against the empty RSS. `None` for a system whose
/// function counts no ends.
async fn wave(
    target: &mut Target,
    ctx: &Ctx,
    pool: WorkerPool,
    left: u64,
    mem: WaveMemory,
) -> Option<Row> {
    let WaveMemory {
        empty_kib,
        held_kib,
    } = mem;
    let ends_before = target.function_stats(&ctx.env.http).await?.cleanup;
    let mut row = ctx.row("wave", target);
    row.conns = left as usize;
    row.rate_unit = "cleanup/s".to_owned();
    let started = Instant::now();
    drop(pool);
    let mut peak = target.usage().rss_kib;
    let mut ended = 0;
    while ended < left {
        if started.elapsed() > WAVE_TIMEOUT {
            row.error(
                left - ended,
                format!("{ended} of {left} cleanups arrived within {WAVE_TIMEOUT:?}"),
            );
            break;
        }
        // Sampled while the wave drains: the peak is what the wave costs.
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(target.usage().rss_kib);
        if let Some(stats) = target.function_stats(&ctx.env.http).await {
            ended = stats.cleanup.saturating_sub(ends_before);
        }
    }
    let elapsed = started.elapsed();
    let last_cleanup = Instant::now();
    let settled = settled_usage(target).await;
    // A fixed wait, not a condition: how much memory is back after it is the figure.
    tokio::time::sleep_until((last_cleanup + AFTER_WAVE).into()).await;
    let later = target.usage().rss_kib;
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    row.ops = ended;
    row.rate = Some(ended as f64 / elapsed.as_secs_f64().max(1e-9));
    row.rss_kib = Some(peak);
    row.note = Some(format!(
        "peak {:.2}x held, settled {:.2}x held; {}s after {:.1} MiB = {:.2}x empty ({:.1} MiB)",
        ratio(peak, held_kib),
        ratio(settled.rss_kib, held_kib),
        AFTER_WAVE.as_secs(),
        later as f64 / 1024.0,
        ratio(later, empty_kib),
        empty_kib as f64 / 1024.0,
    ));
    row.detail = serde_json::json!({
        "rss_empty_kib": empty_kib,
        "rss_held_kib": held_kib,
        "rss_peak_kib": peak,
        "rss_after_kib": settled.rss_kib,
        "rss_later_kib": later,
        "later_seconds": AFTER_WAVE.as_secs_f64(),
        "peak_vs_held": ratio(peak, held_kib),
        "after_vs_held": ratio(settled.rss_kib, held_kib),
        "later_vs_empty": ratio(later, empty_kib),
        "wave_seconds": elapsed.as_secs_f64(),
    });
    Some(row)
}
