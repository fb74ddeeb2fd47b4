//! Cleanups: every ended connection's cleanup goes through the store's durable queue and is
//! delivered by a bounded pool of workers.
//!
//! A socket task hands its connection's cleanup over ([`Cleanups::hand_over`]: one store
//! write) and ends. The workers ([`Cleanups::run`], at most `cleanup.workers` calls at once)
//! claim due cleanups from the queue, call the cleanup function, and only then remove the
//! connection from the store (so a cleanup function still finds its groups and record), and
//! take the cleanup off the queue. A cleanup that fails retryably (function unreachable,
//! timed out, 500/502/503/504) goes back in the queue, due after an exponential backoff with
//! jitter (`cleanup.backoff_initial` doubled per attempt, at most `cleanup.backoff_max`);
//! once `cleanup.max_age` has passed since it was first queued it is dropped, logged at warn
//! with the connection id and counted, and the connection removed from the store. Either
//! way, once a cleanup is done no key of its connection is left. The price of that order:
//! while a cleanup waits (an outage of its function), the closed connection is still listed
//! in its groups; a send to it finds it gone (this node no longer holds its socket, and a
//! node that relays to this one hears the same), as for a member that leaves mid-send.
//!
//! The queue lives in the store, so with Redis it outlives this process: cleanups not
//! delivered at shutdown stay queued and whichever node drains the queue next delivers them
//! (this one after a restart included). A claim holds a cleanup for `cleanup.lease`, so two
//! nodes never send one at once; after a crash it is due again when the lease lapses, and
//! may then reach the function twice, with the same event id (`<connectionId>:cleanup`).
//! On the embedded memory store the queue lives and dies with the process.
//!
//! A wave of disconnects costs time, not memory: each socket task ends once its cleanup is
//! queued, and at most `cleanup.workers` cleanups are in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::{ConnectionRecord, PendingCleanup, SharedStore, StoreError};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use wire::event::{DisconnectReason, Event, EventKind};

use crate::clock;
use crate::cluster::liveness::Removals;
use crate::config::Config;
use crate::dialect::{self, model::Facts};
use crate::function::invoke::{Call, Invoker};
use crate::metrics::registry::{CleanupOutcome, FunctionEvent, Metrics};

/// Hand-overs writing to the store at once.
const HAND_OVER_WRITES: usize = 64;

/// The cleanup queue's producer side and its workers.
#[derive(Debug)]
pub(crate) struct Cleanups {
    store: SharedStore,
    /// `functions.cleanup` and the dialects' settings, `cleanup.*`.
    config: Arc<Config>,
    invoker: Invoker,
    removals: Arc<Removals>,
    /// Bounds the hand-overs writing to the store at once: in a wave of disconnects the
    /// rest wait before they build anything, so the wave costs time, not memory.
    writes: Semaphore,
    /// Woken when this node queued a cleanup, so a worker takes it at once.
    queued: Notify,
    /// Cleanups the store refused (it was down), queued again on the workers' next round.
    backlog: Mutex<Vec<PendingCleanup>>,
    delivered: AtomicU64,
    expired: AtomicU64,
    metrics: Arc<Metrics>,
}

/// What one connection's cleanup needs to know about it, taken when the connection ends.
#[derive(Debug)]
pub(crate) struct Ended<'a> {
    pub connection_id: &'a str,
    pub node: &'a str,
    pub seq: u64,
    pub facts: Facts<'a>,
    pub context: &'a serde_json::Value,
    pub reason: DisconnectReason,
    pub close_code: Option<u16>,
    pub close_reason: &'a str,
    /// A passthrough connection's counts.
    pub stats: Option<wire::event::PassthroughStats>,
}

impl Cleanups {
    pub fn new(
        store: SharedStore,
        config: Arc<Config>,
        invoker: Invoker,
        removals: Arc<Removals>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Cleanups {
            writes: Semaphore::new(HAND_OVER_WRITES),
            store,
            config,
            invoker,
            removals,
            queued: Notify::new(),
            backlog: Mutex::default(),
            delivered: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            metrics,
        }
    }

    /// Hands a connection's cleanup over to the durable queue; a worker delivers it (on
    /// this node or another). With no cleanup function the connection is only removed from
    /// the store.
    pub async fn hand_over(&self, ended: Ended<'_>) {
        if self.config.functions.cleanup.is_none() {
            self.removals.forget(ended.connection_id.to_owned()).await;
            return;
        }
        let _write = self.writes.acquire().await;
        let now = clock::now_ms();
        let cleanup = PendingCleanup {
            connection_id: ended.connection_id.to_owned(),
            event_id: wire::event::cleanup_event_id(ended.connection_id),
            node: ended.node.to_owned(),
            seq: ended.seq,
            connected_at_ms: ended.facts.connected_at_ms,
            source_ip: ended.facts.source_ip.to_owned(),
            user_agent: ended.facts.user_agent.map(str::to_owned),
            host: ended.facts.host.map(str::to_owned),
            context: ended.context.clone(),
            reason: reason_name(ended.reason),
            close_code: ended.close_code,
            close_reason: ended.close_reason.to_owned(),
            stats: ended.stats.and_then(|s| serde_json::to_value(s).ok()),
            queued_at_ms: now,
            attempts: 0,
            next_attempt_ms: now,
        };
        match self.store.queue_cleanup(&cleanup).await {
            Ok(_) => self.queued.notify_one(),
            Err(e) => {
                warn!(cause = %e, "could not queue the cleanup in the store; will retry");
                self.lock_backlog().push(cleanup);
            }
        }
    }

    /// Queues the `node_lost` cleanup of a connection whose node died (the reaper's call):
    /// encoded later from the store's record, with the same event id as the connection's
    /// own cleanup and the given `seq`. A worker delivers it, then removes the connection
    /// from the store. With no cleanup function the connection is only removed. Queueing
    /// one that is queued already changes nothing.
    pub async fn queue_reaped(
        &self,
        record: &ConnectionRecord,
        seq: u64,
    ) -> Result<(), StoreError> {
        if self.config.functions.cleanup.is_none() {
            self.store.unregister(&record.id).await?;
            return Ok(());
        }
        let now = clock::now_ms();
        let cleanup = PendingCleanup {
            connection_id: record.id.clone(),
            event_id: wire::event::cleanup_event_id(&record.id),
            node: record.node.clone(),
            seq,
            connected_at_ms: record.connected_at_ms,
            source_ip: record.source_ip.clone(),
            user_agent: record.user_agent.clone(),
            host: None,
            context: record.context.clone(),
            reason: reason_name(DisconnectReason::NodeLost),
            close_code: None,
            close_reason: format!("gateway node {} stopped", record.node),
            stats: None,
            queued_at_ms: now,
            attempts: 0,
            next_attempt_ms: now,
        };
        if self.store.queue_cleanup(&cleanup).await? {
            self.queued.notify_one();
        }
        Ok(())
    }

    /// Cleanups delivered by this node so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Cleanups this node dropped because `cleanup.max_age` passed.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    fn lock_backlog(&self) -> std::sync::MutexGuard<'_, Vec<PendingCleanup>> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues again what the store refused earlier. Returns how many are still waiting.
    async fn requeue_backlog(&self) -> usize {
        let waiting = std::mem::take(&mut *self.lock_backlog());
        let mut failed = Vec::new();
        for cleanup in waiting {
            if self.store.queue_cleanup(&cleanup).await.is_err() {
                failed.push(cleanup);
            }
        }
        let left = failed.len();
        self.lock_backlog().extend(failed);
        left
    }

    /// The workers: claim due cleanups and deliver them, at most `cleanup.workers` at once,
    /// until `finish` is cancelled; then drain what is due (what fails stays queued for
    /// later) and return. The caller bounds the drain with a timeout.
    pub async fn run(self: Arc<Self>, finish: CancellationToken) {
        let settings = &self.config.cleanup;
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut store_healthy = true;
        // Once draining: claim only what was due when the drain began, so a cleanup that
        // fails during the drain is not tried again and again until the grace period ends.
        let mut drain_from: Option<u64> = None;
        // Whether the queue may hold a due cleanup no claim has seen: set by a hand-over's
        // wake-up, the poll interval, a claim that filled every free worker (or found none
        // free) or failed; cleared by a claim that left workers free. A worker finishing
        // claims again only while it is set: otherwise that claim finds nothing (a retried
        // cleanup is due after its backoff, which the poll interval covers), and on Redis
        // it would cost a round trip per cleanup.
        let mut maybe_due = true;
        // One timer for the poll interval, re-armed on each wait (not one made per wait).
        let poll = tokio::time::sleep(settings.poll_interval);
        tokio::pin!(poll);
        loop {
            while tasks.try_join_next().is_some() {}
            if finish.is_cancelled() && drain_from.is_none() {
                drain_from = Some(clock::now_ms());
            }
            let draining = drain_from.is_some();
            let free = settings.workers.saturating_sub(tasks.len());
            let mut claimed = 0;
            if free == 0 {
                maybe_due = true;
            } else if !self.lock_backlog().is_empty() {
                self.requeue_backlog().await;
                maybe_due = true;
            }
            if free > 0 && (maybe_due || draining) {
                let now = drain_from.unwrap_or_else(clock::now_ms);
                match self.claim(now, free).await {
                    Ok(cleanups) => {
                        if !store_healthy {
                            info!("cleanup queue reachable again");
                            store_healthy = true;
                        }
                        claimed = cleanups.len();
                        maybe_due = claimed == free;
                        for cleanup in cleanups {
                            let this = self.clone();
                            let span = info_span!("conn", id = %cleanup.connection_id);
                            tasks
                                .spawn(async move { this.deliver(cleanup).await }.instrument(span));
                        }
                    }
                    Err(e) => {
                        maybe_due = true;
                        if store_healthy {
                            warn!(cause = %e, "could not read the cleanup queue");
                            store_healthy = false;
                        }
                        if draining {
                            break;
                        }
                    }
                }
            }
            if claimed > 0 && claimed == free {
                continue; // every worker got one: more may be due
            }
            if draining {
                if claimed == 0 && tasks.is_empty() {
                    break;
                }
                if tasks.join_next().await.is_none() && claimed == 0 {
                    break;
                }
                continue;
            }
            poll.as_mut()
                .reset(tokio::time::Instant::now() + settings.poll_interval);
            tokio::select! {
                _ = finish.cancelled() => {}
                _ = self.queued.notified() => maybe_due = true,
                _ = poll.as_mut() => maybe_due = true,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let left = self.requeue_backlog().await;
        if left > 0 {
            warn!(
                left,
                "store unreachable at shutdown: cleanups not queued are lost"
            );
        }
    }

    async fn claim(&self, now_ms: u64, max: usize) -> Result<Vec<PendingCleanup>, StoreError> {
        self.store
            .claim_cleanups(now_ms, self.config.cleanup.lease, max)
            .await
    }

    /// One attempt at a claimed cleanup.
    async fn deliver(&self, mut cleanup: PendingCleanup) {
        let settings = &self.config.cleanup;
        let now = clock::now_ms();
        let deadline = cleanup
            .queued_at_ms
            .saturating_add(millis(settings.max_age));
        if now >= deadline {
            self.expire(&cleanup, now).await;
            return;
        }
        let Some(target) = &self.config.functions.cleanup else {
            // No cleanup function (any more): only forget the connection.
            self.done(&cleanup.connection_id).await;
            return;
        };
        let dialect = target.dialect(self.config.functions.dialect);
        let event = Event {
            connection_id: cleanup.connection_id.clone(),
            seq: cleanup.seq,
            node: cleanup.node.clone(),
            timestamp: now,
            context: cleanup.context.clone(),
            event_id: cleanup.event_id.clone(),
            kind: EventKind::Cleanup {
                reason: parse_reason(&cleanup.reason),
                close_code: cleanup.close_code,
                close_reason: cleanup.close_reason.clone(),
                stats: cleanup
                    .stats
                    .clone()
                    .and_then(|v| serde_json::from_value(v).ok()),
            },
        };
        let facts = Facts {
            connected_at_ms: cleanup.connected_at_ms,
            source_ip: &cleanup.source_ip,
            user_agent: cleanup.user_agent.as_deref(),
            host: cleanup.host.as_deref(),
        };
        let body = dialect::encode(dialect, &self.config, &event, facts, "$disconnect");
        let call = Call {
            event: FunctionEvent::Cleanup,
            dialect,
            connection_id: &cleanup.connection_id,
            body: body.into(),
        };
        match self.invoker.call_with_retries(target.url(), &call).await {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.metrics.cleanup(CleanupOutcome::Delivered);
                debug!(attempts = cleanup.attempts + 1, "cleanup delivered");
                self.done(&cleanup.connection_id).await;
            }
            Err(e) if e.is_retryable() => {
                self.metrics.cleanup(CleanupOutcome::Retried);
                cleanup.attempts = cleanup.attempts.saturating_add(1);
                let now = clock::now_ms();
                let pause = backoff(
                    settings.backoff_initial,
                    settings.backoff_max,
                    cleanup.attempts,
                );
                // Due no later than its expiry, so it is dropped on time.
                cleanup.next_attempt_ms = now.saturating_add(millis(pause)).min(deadline);
                warn!(cause = %e, attempts = cleanup.attempts, retry_in = ?pause, "cleanup function failed; will retry");
                if let Err(e) = self.store.retry_cleanup(&cleanup).await {
                    warn!(cause = %e, "could not reschedule the cleanup; it is retried when its claim lapses");
                }
            }
            Err(e) => {
                // The function answered and retrying will not change its answer.
                self.metrics.cleanup(CleanupOutcome::Dropped);
                warn!(cause = %e, "cleanup function failed; not retried");
                self.done(&cleanup.connection_id).await;
            }
        }
    }

    /// Drops a cleanup whose `cleanup.max_age` passed.
    async fn expire(&self, cleanup: &PendingCleanup, now: u64) {
        let total = self.expired.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.cleanup(CleanupOutcome::Expired);
        warn!(
            connection_id = %cleanup.connection_id,
            event_id = %cleanup.event_id,
            attempts = cleanup.attempts,
            age_ms = now.saturating_sub(cleanup.queued_at_ms),
            expired_total = total,
            "cleanup expired undelivered (cleanup.max_age); dropped"
        );
        self.done(&cleanup.connection_id).await;
    }

    /// The cleanup is over: the connection leaves the store, then the queue.
    async fn done(&self, connection_id: &str) {
        // In this order: the reaper asks "queued?" before "recorded?", so it never queues
        // a delivered cleanup again.
        self.removals.forget(connection_id.to_owned()).await;
        if let Err(e) = self.store.finish_cleanup(connection_id).await {
            warn!(cause = %e, "could not take the cleanup off the queue; it may be sent again (same event id)");
        }
    }
}

/// The pause before attempt `attempts + 1`: `initial` doubled per earlier failure, at most
/// `max`, then jittered to between half and all of it (so the cleanups of one outage do
/// not come back all at once).
fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(32);
    let full = initial.saturating_mul(1 << doublings.min(31)).min(max);
    let half = full / 2;
    let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    half + Duration::from_micros(random % spread.saturating_add(1))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The native name of a reason (`client_close`), as the queue keeps it.
fn reason_name(reason: DisconnectReason) -> String {
    match serde_json::to_value(reason) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "connection_lost".to_owned(),
    }
}

/// A reason from its native name; one this version does not know reads as lost.
fn parse_reason(name: &str) -> DisconnectReason {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .unwrap_or(DisconnectReason::ConnectionLost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_with_jitter() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let first = backoff(initial, max, 1);
            assert!(
                first >= Duration::from_millis(50) && first <= initial,
                "{first:?}"
            );
            let third = backoff(initial, max, 3);
            assert!(
                third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
                "{third:?}"
            );
            let late = backoff(initial, max, 40);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }

    #[test]
    fn reasons_round_trip_by_name() {
        for reason in [
            DisconnectReason::ClientClose,
            DisconnectReason::Shutdown,
            DisconnectReason::UpgradeFailed,
        ] {
            assert_eq!(parse_reason(&reason_name(reason)), reason);
        }
        assert_eq!(reason_name(DisconnectReason::IdleTimeout), "idle_timeout");
        assert_eq!(parse_reason("new_reason"), DisconnectReason::ConnectionLost);
    }
}
