//! Cleanup after dead nodes. A node whose heartbeat expired cannot send the cleanups of its
//! connections; one surviving node (the holder of a lease in the store) does it for them:
//! a `node_lost` cleanup per connection, queued durably from the store's record; once it is
//! delivered the record and its group memberships go, and so does the node's connection set.
//!
//! - **Who reaps**: every node looks for dead nodes each heartbeat interval, but only once
//!   its own store access has worked for a whole TTL ([`StoreHealth::up_for`]): after an
//!   outage that every node saw, every heartbeat looks expired for a moment, and nobody
//!   must be reaped for that. Of the nodes that look, the one that takes the store's lease
//!   on the dead node reaps it; the lease is renewed per page and dropped at the end.
//! - **Fencing**: the reaper first leaves a mark ("reaped at") on the dead node. A node that
//!   was not dead but silent (paused, or cut off from the store) for longer than its TTL
//!   looks for that mark before it beats again ([`Reaper::fence`]): if it was reaped, it
//!   waits for the reaper to finish (by taking the lease itself) and closes the
//!   connections whose records the reaper removed, without a second cleanup. If not, it
//!   carries on. A reaper stops as soon as the node beats again (checked once per page of
//!   connections: a node that beats again in the middle of a page loses that page).
//! - **Restart**: a node starting with the name of a dead one reaps its own leftovers before
//!   it takes connections ([`Reaper::reap_own`]).
//!
//! A reaped connection's cleanup goes through the durable cleanup queue
//! ([`Cleanups::queue_reaped`]), with the event id the connection's own cleanup would carry,
//! so a function sees one cleanup per connection however it ended; its worker then removes
//! the record and memberships. Until then the connection is "unavailable" (503) to
//! send-backs, not gone.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use store::{SharedStore, StoreError};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};
use wire::codes;

use crate::clock;
use crate::cluster::cleanup::Cleanups;
use crate::cluster::liveness::StoreHealth;
use crate::config::Config;
use crate::socket::outbox::CloseRequest;
use crate::socket::registry::Registry;
use crate::stop::Stop;

/// The `seq` of a cleanup a reaper sends: the dead node's count is lost, and a cleanup has
/// the highest `seq` of its connection. 2^53 - 1: the largest integer every JSON reader
/// keeps exact.
pub(crate) const REAPED_SEQ: u64 = (1 << 53) - 1;

/// How long the fencing mark stays: a node silent for longer than this and then back
/// would not know it was reaped.
const MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// Connection ids read per store round trip while reaping.
const PAGE: usize = 200;

/// Cleanups sent at once while reaping.
const CONCURRENCY: usize = 32;

/// This node's part in cleaning up after dead nodes, and its own fencing.
#[derive(Debug)]
pub(crate) struct Reaper {
    pub node: Arc<str>,
    pub store: SharedStore,
    /// `functions` (how long a cleanup call may take, for the lease).
    pub config: Arc<Config>,
    /// Where a reaped connection's cleanup goes: the durable queue.
    pub cleanups: Arc<Cleanups>,
    pub registry: Arc<Registry>,
    pub health: Arc<StoreHealth>,
    /// `node_heartbeat`: how often to look.
    pub interval: Duration,
    /// `node_heartbeat_ttl`.
    pub ttl: Duration,
}

/// What fencing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fenced {
    /// Not reaped: this node carries on and re-asserts its state in the store.
    NotReaped,
    /// Reaped: the connections the reaper took are being closed.
    Reaped,
}

/// How reaping one node ended.
#[derive(Debug, PartialEq, Eq)]
enum Reaped {
    /// Its connection set is empty.
    Done,
    /// Another node holds the lease.
    NotOurs,
    /// The node beats again: it fences itself.
    CameBack,
}

impl Reaper {
    /// How long a lease lasts without renewal: a TTL, plus a page of cleanups with every
    /// retry.
    fn lease_ttl(&self) -> Duration {
        let f = &self.config.functions;
        let attempts = f.retries + 1;
        self.ttl * 2 + (f.timeout + f.retry_backoff * (1 << f.retries.min(10))) * attempts
    }

    /// Looks for dead nodes every interval and reaps the ones whose lease it gets, until
    /// `stop`.
    pub async fn run(self: Arc<Self>, stop: Arc<Stop>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // After a break in this node's own store access, every heartbeat may look
            // expired: wait one TTL of working access first.
            if !self.health.up_for(self.ttl) {
                continue;
            }
            let dead = match self.store.dead_nodes().await {
                Ok(dead) => dead,
                Err(e) => {
                    debug!(cause = %e, "cannot list dead nodes");
                    continue;
                }
            };
            for node in dead.iter().filter(|n| **n != *self.node) {
                let reaping = tokio::select! {
                    _ = stop.cancelled() => return,
                    reaping = self.reap(node, false) => reaping,
                };
                match reaping {
                    Ok(Reaped::NotOurs) => {}
                    Ok(how) => info!(dead = node, ?how, "reaped a dead node"),
                    Err(e) => {
                        warn!(dead = node, cause = %e, "reaping a dead node stopped; will retry")
                    }
                }
            }
        }
    }

    /// Reaps what a previous run of this node left (it was killed): before this node takes
    /// connections. Waits for another node's reaper of it to finish first.
    pub async fn reap_own(&self) -> Result<(), StoreError> {
        let node = self.node.clone();
        let leftovers = self.store.node_connections(&node, None, 1).await?;
        if !leftovers.members.is_empty() {
            info!("reaping the connections a previous run of this node left");
            let deadline = tokio::time::Instant::now() + self.lease_ttl();
            while self.reap(&node, true).await? == Reaped::NotOurs {
                if tokio::time::Instant::now() > deadline {
                    warn!("another node holds the lease on this node's leftovers");
                    break;
                }
                tokio::time::sleep(self.interval).await;
            }
            // Their cleanups are queued; wait (bounded) until the workers delivered them
            // and the leftovers are gone, so this node starts clean.
            while !self
                .store
                .node_connections(&node, None, 1)
                .await?
                .members
                .is_empty()
            {
                if tokio::time::Instant::now() > deadline {
                    warn!("the cleanups of this node's leftovers are still queued; starting");
                    break;
                }
                tokio::time::sleep(self.interval).await;
            }
        }
        self.store.clear_reaped(&node).await
    }

    /// Reaps `node` if this node gets its lease: marks it reaped, then for each connection
    /// in its set sends the cleanup and unregisters it, page by page, until the set is
    /// empty or `node` beats again (unless `own`: this node reaping its previous run).
    async fn reap(&self, node: &str, own: bool) -> Result<Reaped, StoreError> {
        let lease = self.lease_ttl();
        if !self.store.reap_lease(node, &self.node, lease).await? {
            return Ok(Reaped::NotOurs);
        }
        let reaped = self.reap_leased(node, own, lease).await;
        if let Err(e) = self.store.drop_reap_lease(node, &self.node).await {
            debug!(dead = node, cause = %e, "could not drop the reap lease; it expires");
        }
        reaped
    }

    async fn reap_leased(
        &self,
        node: &str,
        own: bool,
        lease: Duration,
    ) -> Result<Reaped, StoreError> {
        if !own {
            self.store
                .mark_reaped(node, clock::now_ms(), MARK_TTL)
                .await?;
        }
        let mut total = 0usize;
        let mut cursor: Option<String> = None;
        loop {
            if !own && self.store.node_alive(node).await? {
                return Ok(Reaped::CameBack);
            }
            // The set keeps each id until its cleanup is delivered (the worker then
            // unregisters it): one pass queues them all; a later pass queues nothing new.
            let page = self
                .store
                .node_connections(node, cursor.as_deref(), PAGE)
                .await?;
            let reaps = page
                .members
                .into_iter()
                .map(|id| async move { self.reap_one(node, &id).await });
            let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(reaps)
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            if failed > 0 && failed == results.len() {
                // No progress: the store fails; try again at the next look.
                return results
                    .into_iter()
                    .find_map(Result::err)
                    .map_or(Ok(Reaped::Done), Err);
            }
            total += results.len() - failed;
            let Some(next) = page.cursor else {
                debug!(
                    dead = node,
                    connections = total,
                    "dead node's cleanups queued"
                );
                return Ok(Reaped::Done);
            };
            cursor = Some(next);
            if !self.store.reap_lease(node, &self.node, lease).await? {
                return Ok(Reaped::NotOurs);
            }
        }
    }

    /// One connection of dead `node`: its `node_lost` cleanup is queued durably (a cleanup
    /// worker delivers it, then its record and memberships go); an id with no record of
    /// that node's only leaves the node's set.
    async fn reap_one(&self, node: &str, id: &str) -> Result<(), StoreError> {
        // Queued already (a pass before this one): its worker removes it once delivered.
        // Asked before the record: a worker deletes the record before it takes the cleanup
        // off the queue, so an id found not queued here has either never been queued or
        // has no record left, and a delivered cleanup is never queued twice.
        if self.store.cleanup_queued(id).await? {
            return Ok(());
        }
        match self.store.get(id).await? {
            Some(record) if record.node == node => {
                self.cleanups.queue_reaped(&record, REAPED_SEQ).await?;
                debug!(connection = id, dead = node, "reaped: cleanup queued");
                Ok(())
            }
            _ => self.store.release(node, id).await,
        }
    }

    /// Run before this node beats again after more than a TTL without a beat that reached
    /// the store (`last_beat_ms`: when the last one did). If another node reaped this one
    /// since, waits for that reaper to finish (takes the lease itself) and closes every
    /// connection it reaped (record gone: its cleanup was sent, none is sent again); one
    /// whose record is still this node's serves on, one the store cannot tell about is
    /// closed with its own cleanup. Fails if the store does: then this node does not beat
    /// yet.
    pub async fn fence(&self, last_beat_ms: u64) -> Result<Fenced, StoreError> {
        let node = &*self.node;
        let Some(at) = self.store.reaped_at(node).await? else {
            info!("back after missing the heartbeat TTL; not reaped: carrying on");
            return Ok(Fenced::NotReaped);
        };
        if at < last_beat_ms {
            // A mark from before this node's last beat: already acted on.
            self.store.clear_reaped(node).await?;
            return Ok(Fenced::NotReaped);
        }
        let lease = self.lease_ttl();
        warn!("this node was reaped while it could not beat: closing its connections");
        let deadline = tokio::time::Instant::now() + lease;
        while !self.store.reap_lease(node, node, lease).await? {
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(self.interval.min(Duration::from_millis(100))).await;
        }
        let conns = self.registry.all();
        let (mut reaped, mut unknown) = (0usize, 0usize);
        for conn in &conns {
            let id = conn.id.to_string();
            let was_reaped = match self.store.get(&id).await {
                // Still this node's record: reaped if its cleanup is queued, else not (the
                // reaper stopped, or it connected since) and it serves on.
                Ok(Some(record)) if record.node == node => {
                    match self.store.cleanup_queued(&id).await {
                        Ok(true) => true,
                        Ok(false) => continue,
                        Err(_) => false,
                    }
                }
                Ok(_) => true,
                // Unknown: close it with its own cleanup (a duplicate at worst).
                Err(_) => false,
            };
            if was_reaped {
                reaped += 1;
            } else {
                unknown += 1;
            }
            conn.outbox.request_close(CloseRequest {
                code: codes::CLOSE_GOING_AWAY,
                reason: "gateway node was declared dead".into(),
                reaped: was_reaped,
            });
        }
        info!(
            held = conns.len(),
            reaped, unknown, "closed the connections another node reaped"
        );
        self.store.clear_reaped(node).await?;
        self.store.drop_reap_lease(node, node).await?;
        Ok(Fenced::Reaped)
    }
}
