//! Scenario `fanout`: C members join one room through the system (for the gateway: the
//! register function joins the group; for Pushpin: a `subscribe` control message; for
//! Nchan: a subscription to the room's channel; for Node: its own room map; for the floor:
//! every socket of its fan-out port). Then
//! publishes, one at a time: each is timed from just before the publish request to the
//! moment the last member received it (receipts are timestamped by the worker processes on
//! the shared wall clock). Reports p50/p99 of that time to the last member, deliveries per
//! second within the bursts, and CPU per delivery.
//!
//! The gateway gets two rows: `fanout` (`POST /@groups/{room}`) and `fanout-batch`
//! (`POST /@connections` naming every member).
//!
//! Every system also gets a `fanout-burst` row: rounds of [`BURST`] publishes sent back to
//! back (each waits only for its publish reply, not for the deliveries), timed from the
//! first publish to the moment the last member has the last message. Messages queue up per
//! socket, so this measures deliveries per second when writes can be batched per socket
//! (one flush per wake-up); its latency columns are per round, not per message.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::cli::Ctx;
use super::procs::{Usage, cpu_us_per};
use super::report::Row;
use super::stats::Percentiles;
use super::systems::{Publisher, ROOM, Target};
use super::unix_us;
use super::worker::{Receipt, WorkerPool};

/// How long the members may take to receive one publish.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the warm-up publish waits for every member (joins may still be settling).
const WARMUP_WAIT: Duration = Duration::from_secs(2);
/// Warm-up publishes before giving up on reaching every member.
const WARMUP_ATTEMPTS: usize = 10;

/// Publishes per burst round.
pub const BURST: usize = 20;

/// How one publish is sent.
#[derive(Clone, Debug)]
enum Via {
    /// `POST /@groups/{room}`, Pushpin's publish, or a plain POST.
    Room,
    /// `POST /@connections` with these ids.
    Batch(Vec<String>),
}

#[derive(Deserialize)]
struct Delivered {
    delivered: usize,
}

#[derive(Deserialize)]
struct GroupPage {
    members: Vec<String>,
    cursor: Option<String>,
}

/// Publishes `text` to the room; returns the count the system says it delivered, if it
/// says.
async fn publish(
    http: &reqwest::Client,
    publisher: &Publisher,
    via: &Via,
    text: &str,
) -> anyhow::Result<Option<usize>> {
    let request = match (publisher, via) {
        (Publisher::Switchboard { sendback, token }, Via::Room) => http
            .post(format!("{sendback}/@groups/{ROOM}"))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(text.to_owned()),
        (Publisher::Switchboard { sendback, token }, Via::Batch(ids)) => http
            .post(format!("{sendback}/@connections"))
            .bearer_auth(token)
            .json(&serde_json::json!({"connectionIds": ids, "data": text})),
        (Publisher::Pushpin { url }, _) => http.post(url).json(&serde_json::json!({
            "items": [{"channel": ROOM, "formats": {"ws-message": {"content": text}}}]
        })),
        (Publisher::Plain { url }, _) => http.post(url).body(text.to_owned()),
    };
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!(
            "publish answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice::<Delivered>(&body)
        .ok()
        .map(|d| d.delivered))
}

/// Every member id of the room, from the gateway's `GET /@groups/{room}` pages.
async fn member_ids(
    http: &reqwest::Client,
    sendback: &str,
    token: &str,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{sendback}/@groups/{ROOM}?limit=1000");
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(&percent_encode(c));
        }
        let request = http.get(url).bearer_auth(token);
        let page: GroupPage = request.send().await?.error_for_status()?.json().await?;
        ids.extend(page.members);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Percent-encodes everything but unreserved characters (for a cursor in a query).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn message(tag: u64) -> String {
    format!("fan {tag} ................")
}

/// Publishes until every member received one message (or gives up).
async fn warm_up(
    ctx: &Ctx,
    target: &Target,
    pool: &mut WorkerPool,
    members: usize,
    tag: &mut u64,
) -> anyhow::Result<()> {
    let mut got = 0;
    for _ in 0..WARMUP_ATTEMPTS {
        *tag += 1;
        publish(&ctx.env.http, &target.publisher, &Via::Room, &message(*tag)).await?;
        got = pool.expect(*tag, WARMUP_WAIT).await?.count;
        if got >= members {
            return Ok(());
        }
    }
    bail!("only {got} of {members} members received a warm-up publish")
}

/// Fills a row's figures: `delivered` deliveries over the summed `times_us` (each timed
/// until the last member had its message), and the CPU the system spent since `before`.
fn record(
    row: &mut Row,
    target: &Target,
    before: &Usage,
    fn_before: Option<Usage>,
    delivered: u64,
    times_us: &mut [u64],
) {
    let after = target.usage();
    let busy_us: u64 = times_us.iter().sum();
    row.ops = delivered;
    row.rate = Some(delivered as f64 / (busy_us.max(1) as f64 / 1e6));
    row.latency = Some(Percentiles::of(times_us));
    row.rss_kib = Some(after.rss_kib);
    row.cpu_us_per_op = cpu_us_per(before, &after, delivered);
    if let (Some(a), Some(b)) = (fn_before, target.function_usage()) {
        row.fn_cpu_us_per_op = cpu_us_per(&a, &b, delivered);
    }
}

/// Measures one row of publishes via `via`.
async fn measure(
    ctx: &Ctx,
    target: &Target,
    pool: &mut WorkerPool,
    members: usize,
    via: Via,
    tag: &mut u64,
    scenario: &str,
) -> Row {
    let mut row = ctx.row(scenario, target);
    row.conns = members;
    row.rate_unit = "deliv/s".to_owned();
    let (mut to_last, mut to_first, mut replies) = (Vec::new(), Vec::new(), Vec::new());
    let mut delivered_total = 0u64;
    let before = target.usage();
    let fn_before = target.function_usage();
    for _ in 0..ctx.sizes.fanout_publishes {
        *tag += 1;
        let t0 = unix_us();
        let reported = match publish(&ctx.env.http, &target.publisher, &via, &message(*tag)).await {
            Ok(r) => r,
            Err(e) => {
                row.error(1, format!("{e:#}"));
                continue;
            }
        };
        replies.push(unix_us().saturating_sub(t0));
        if let Some(n) = reported.filter(|&n| n < members) {
            row.error(1, format!("publish reported {n} of {members} delivered"));
        }
        let receipt = match pool.expect(*tag, DELIVERY_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                row.error(1, format!("{e:#}"));
                break;
            }
        };
        count_missing(&mut row, &receipt, members, *tag);
        delivered_total += receipt.count as u64;
        if receipt.count > 0 {
            to_last.push(receipt.last_us.saturating_sub(t0));
            to_first.push(receipt.first_us.saturating_sub(t0));
        }
    }
    record(
        &mut row,
        target,
        &before,
        fn_before,
        delivered_total,
        &mut to_last,
    );
    row.detail = serde_json::json!({
        "publishes": ctx.sizes.fanout_publishes,
        "time_to_first": Percentiles::of(&mut to_first),
        "publish_reply": Percentiles::of(&mut replies),
    });
    row
}

/// Counts the members that did not receive publish `tag` as errors.
fn count_missing(row: &mut Row, receipt: &Receipt, members: usize, tag: u64) {
    if receipt.count < members {
        row.error(
            (members - receipt.count) as u64,
            format!(
                "{} of {members} members received publish {tag} ({} connections dropped)",
                receipt.count, receipt.dropped
            ),
        );
    }
}

/// Measures the `fanout-burst` row: rounds of [`BURST`] back-to-back publishes.
async fn measure_bursts(
    ctx: &Ctx,
    target: &Target,
    pool: &mut WorkerPool,
    members: usize,
    tag: &mut u64,
) -> Row {
    let mut row = ctx.row("fanout-burst", target);
    row.conns = members;
    row.rate_unit = "deliv/s".to_owned();
    // A round lasts well under a second: a fifth of the publish count in rounds (10 at
    // full size) keeps one slow round from deciding the figure.
    let rounds = (ctx.sizes.fanout_publishes / 5).max(2);
    let mut round_times = Vec::new();
    let mut delivered_total = 0u64;
    let before = target.usage();
    let fn_before = target.function_usage();
    'rounds: for _ in 0..rounds {
        let first = *tag + 1;
        let t0 = unix_us();
        for _ in 0..BURST {
            *tag += 1;
            match publish(&ctx.env.http, &target.publisher, &Via::Room, &message(*tag)).await {
                Ok(Some(n)) if n < members => {
                    row.error(1, format!("publish reported {n} of {members} delivered"));
                }
                Ok(_) => {}
                Err(e) => {
                    row.error(1, format!("{e:#}"));
                    break 'rounds;
                }
            }
        }
        let mut last_us = 0;
        for t in first..=*tag {
            let receipt = match pool.expect(t, DELIVERY_TIMEOUT).await {
                Ok(r) => r,
                Err(e) => {
                    row.error(1, format!("{e:#}"));
                    break 'rounds;
                }
            };
            count_missing(&mut row, &receipt, members, t);
            delivered_total += receipt.count as u64;
            last_us = last_us.max(receipt.last_us);
        }
        round_times.push(last_us.saturating_sub(t0));
    }
    record(
        &mut row,
        target,
        &before,
        fn_before,
        delivered_total,
        &mut round_times,
    );
    row.detail = serde_json::json!({ "rounds": rounds, "publishes_per_round": BURST });
    row
}

/// Runs the scenario against `target`.
pub async fn run(target: &mut Target, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let wanted = ctx.sizes.fanout_members;
    let mut pool = WorkerPool::spawn(ctx.workers_for(wanted), &ctx.env.log_dir).await?;
    let connected = pool
        .connect(
            &target.dialer,
            &target.room_url,
            wanted,
            &ctx.sources,
            ctx.sizes.connect_concurrency,
        )
        .await?;
    let members = connected.ok;
    let mut tag = 0u64;
    let mut setup = ctx.row("fanout", target);
    setup.conns = wanted;
    setup.errors_from(connected.failed as u64, &connected.errors);
    if members == 0 {
        setup.fail("no member connected");
        return Ok(vec![setup]);
    }
    if let Err(e) = warm_up(ctx, target, &mut pool, members, &mut tag).await {
        setup.fail(format!("{e:#}"));
        return Ok(vec![setup]);
    }
    let mut rows = Vec::new();
    let mut room = measure(
        ctx,
        target,
        &mut pool,
        members,
        Via::Room,
        &mut tag,
        "fanout",
    )
    .await;
    room.errors_from(setup.errors, &setup.error_samples);
    room.conns = wanted;
    rows.push(room);
    let mut burst = measure_bursts(ctx, target, &mut pool, members, &mut tag).await;
    burst.conns = wanted;
    rows.push(burst);
    if let Publisher::Switchboard { sendback, token } = &target.publisher {
        let ids = member_ids(&ctx.env.http, sendback, token)
            .await
            .context("listing the room's members")?;
        let mut batch = if ids.len() == members {
            measure(
                ctx,
                target,
                &mut pool,
                members,
                Via::Batch(ids),
                &mut tag,
                "fanout-batch",
            )
            .await
        } else {
            let mut r = ctx.row("fanout-batch", target);
            r.fail(format!(
                "the group lists {} of {members} members",
                ids.len()
            ));
            r
        };
        batch.conns = wanted;
        rows.push(batch);
    }
    // Dropping the pool kills the workers: their sockets reset, the system cleans up.
    drop(pool);
    Ok(rows)
}
