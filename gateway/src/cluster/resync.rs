//! Writing this node's state back when the store lost it (a Redis restarted without
//! persistence, a failover to a replica that lagged): the record, the node-set entry and
//! the group memberships of every connection this node holds, so that they stay reachable
//! from every node and from group sends without reconnecting.
//!
//! Only for a store that can lose data while this process lives ([`Store::can_lose_data`]:
//! Redis); on the embedded memory store there is no [`Resync`] at all and nothing is kept.
//!
//! - **What is kept**: the records are rebuilt from the [`Registry`] (id, accept time,
//!   source address, user agent, context: what admission wrote). Group memberships are
//!   written by functions straight to the store, so a background sweep every
//!   `store_resync.interval` reads the groups of every held connection (pages of
//!   [`PAGE`] ids, one pipelined round trip each) into a mirror: only connections in some
//!   group have an entry, group names are interned. The price: a join or leave newer than
//!   the last sweep is not in the mirror, so if the store loses its data right then the
//!   join is lost (or the left group comes back).
//! - **Detection**: each round starts with [`Store::node_check`] (one round trip): this
//!   node's mark (a key only this node writes, at start and after each write-back) is gone,
//!   or its connection set lists fewer ids than the registry holds open connections (every
//!   held connection was added to the set before it entered the registry, and leaves the
//!   set only after its cleanup, which follows its removal from the registry; one a reaper
//!   took is closing, so not counted). After the fencing path finds
//!   this node was not reaped, [`Resync::reassert`] asks for a round at once that writes the
//!   records back whatever the check says.
//! - **Write-back** runs only while this node's heartbeat is live (its last beat reached the
//!   store less than half a TTL ago, checked before each connection; so its fencing, if it
//!   missed its TTL, is done): a node that was reaped closes its connections (they are then
//!   closing, so skipped), it does not bring them back. At most [`CONCURRENCY`] connections are written at once; then the mark
//!   is written again. A sweep whose reads may have met the emptied store (the mark is gone
//!   after them) is thrown away, so it never wipes the mirror the write-back needs.
//! - **Connections that close meanwhile**: a connection's own end runs in this order:
//!   registry removal and its outbox marked closed (M), its cleanup queued, delivered, and
//!   only then its store removal (U). The write-back of one connection checks the outbox
//!   right before writing (C), writes (W), and checks again (R). Closed at C: skipped, its
//!   own path removes whatever the store holds. Open at R: M comes after R, so U comes
//!   after W and wins. Closed at R but open at C: U may have run before W ended, so the
//!   write-back removes the connection again itself, but only once its cleanup is no longer
//!   queued (after it was seen queued, or after the time a socket task takes to queue it),
//!   so the record is never gone before the cleanup is delivered.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use store::{ConnectionRecord, SharedStore, Store, StoreError};
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use crate::cluster::liveness::{Removals, StoreHealth};
use crate::socket::registry::{Connection, IdHasher, Registry};
use crate::stop::Stop;

/// How long this node's mark lives without a check renewing it (like the fencing mark).
const MARK_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Connection ids per pipelined read of memberships.
pub(crate) const PAGE: usize = 500;

/// Connections written back at once.
pub(crate) const CONCURRENCY: usize = 64;

/// How often a late removal looks at the connection's queued cleanup.
const LATE_POLL: Duration = Duration::from_millis(200);

/// The groups of the held connections that are in some group, as last swept.
type Mirror = HashMap<Uuid, Box<[Arc<str>]>, BuildHasherDefault<IdHasher>>;

/// This node's write-back of its state, and the mirror of its connections' memberships.
#[derive(Debug)]
pub(crate) struct Resync {
    node: Arc<str>,
    store: SharedStore,
    registry: Arc<Registry>,
    health: Arc<StoreHealth>,
    removals: Arc<Removals>,
    /// `store_resync.interval`.
    interval: Duration,
    /// `node_heartbeat_ttl`.
    ttl: Duration,
    /// Whether a cleanup function is configured (then a late removal waits for it).
    cleanup: bool,
    /// How long a closed connection's cleanup may take to be queued.
    handover_wait: Duration,
    mirror: Mutex<Mirror>,
    /// Set by the fencing path: write the records back on the next round, whatever the
    /// check says.
    reassert: AtomicBool,
    wake: Notify,
    /// Connections written back so far (all rounds; logged, and read by tests).
    restored: AtomicU64,
}

/// Why a round stopped (the next one tries again).
#[derive(Debug, thiserror::Error)]
enum ResyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A write-back must not run while this node may have been reaped.
    #[error("this node's heartbeat is late: write-back stopped")]
    NotLive,
}

/// What one write-back did.
#[derive(Debug, Default)]
struct Tally {
    restored: AtomicU64,
    memberships: AtomicU64,
    closed: AtomicU64,
}

/// What the resync needs from the rest of the node.
#[derive(Debug)]
pub(crate) struct ResyncParts {
    pub node: Arc<str>,
    pub store: SharedStore,
    pub registry: Arc<Registry>,
    pub health: Arc<StoreHealth>,
    pub removals: Arc<Removals>,
    pub interval: Duration,
    pub ttl: Duration,
    pub cleanup: bool,
    pub handover_wait: Duration,
}

impl Resync {
    /// A resync for `parts.store`, or `None` if that store cannot lose data on its own.
    pub fn for_store(parts: ResyncParts) -> Option<Arc<Resync>> {
        if !parts.store.can_lose_data() {
            return None;
        }
        Some(Arc::new(Resync {
            node: parts.node,
            store: parts.store,
            registry: parts.registry,
            health: parts.health,
            removals: parts.removals,
            interval: parts.interval,
            ttl: parts.ttl,
            cleanup: parts.cleanup,
            handover_wait: parts.handover_wait,
            mirror: Mutex::default(),
            reassert: AtomicBool::new(false),
            wake: Notify::new(),
            restored: AtomicU64::new(0),
        }))
    }

    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node's heartbeat is live now (see the module docs).
    fn live(&self) -> bool {
        self.health.beat_within(self.ttl / 2)
    }

    /// The fencing path found this node was not reaped: write its records back now.
    pub fn reassert(&self) {
        self.reassert.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Connections written back so far.
    #[cfg(test)]
    fn restored(&self) -> u64 {
        self.restored.load(Ordering::Relaxed)
    }

    /// Marks this node, then checks (and sweeps, or writes back) every interval until
    /// `stop`.
    pub async fn run(self: Arc<Self>, stop: Arc<Stop>) {
        if let Err(e) = self.store.mark_node(&self.node, MARK_KEEP).await {
            debug!(cause = %e, "could not mark this node in the store; the first check will");
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
            }
            if let Err(e) = self.round().await {
                debug!(cause = %e, "store resync round failed; the next one retries");
            }
        }
    }

    /// One round: check, then write back or sweep.
    async fn round(&self) -> Result<(), ResyncError> {
        let reassert = self.reassert.swap(false, Ordering::AcqRel);
        let held = self.registry.open_count() as u64;
        let check = self.store.node_check(&self.node, MARK_KEEP).await?;
        let lost = !check.marked || check.connections < held;
        if !lost && !reassert {
            return Ok(self.sweep().await?);
        }
        if !self.live() {
            // Heartbeats are failing or late: the fencing path decides first.
            self.reassert.fetch_or(reassert, Ordering::AcqRel);
            return Ok(());
        }
        if lost {
            info!(
                marked = check.marked,
                listed = check.connections,
                held,
                "the store lost this node's state: writing it back"
            );
        }
        let result = self.write_back(lost).await;
        if result.is_err() {
            self.reassert.fetch_or(reassert, Ordering::AcqRel);
        }
        result?;
        Ok(self.store.mark_node(&self.node, MARK_KEEP).await?)
    }

    /// Writes back the record and node-set entry of every held connection, and (`groups`)
    /// its mirrored memberships.
    async fn write_back(&self, groups: bool) -> Result<(), ResyncError> {
        let started = Instant::now();
        let tally = Tally::default();
        let conns = self.registry.all();
        let held = conns.len();
        futures_util::stream::iter(conns.into_iter().map(Ok))
            .try_for_each_concurrent(CONCURRENCY, |conn| {
                let span = info_span!("conn", id = %conn.id);
                self.write_one(conn, groups, &tally).instrument(span)
            })
            .await?;
        let restored = tally.restored.load(Ordering::Relaxed);
        self.restored.fetch_add(restored, Ordering::Relaxed);
        info!(
            held,
            restored,
            memberships = tally.memberships.load(Ordering::Relaxed),
            skipped_closed = tally.closed.load(Ordering::Relaxed),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "wrote this node's connections back to the store"
        );
        Ok(())
    }

    /// One connection: C, W, R (see the module docs).
    async fn write_one(
        &self,
        conn: Arc<Connection>,
        groups: bool,
        tally: &Tally,
    ) -> Result<(), ResyncError> {
        if !self.live() {
            return Err(ResyncError::NotLive);
        }
        if conn.outbox.is_closed() {
            tally.closed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let id = conn.id.to_string();
        let record = ConnectionRecord {
            id: id.clone(),
            node: self.node.to_string(),
            connected_at_ms: conn.connected_at_ms,
            source_ip: conn.source_ip.to_string(),
            user_agent: conn.user_agent.as_deref().map(str::to_owned),
            context: conn.context.clone(),
        };
        self.store.register(&record).await?;
        if groups {
            let mirrored = self.mirror().get(&conn.id).cloned().unwrap_or_default();
            for group in mirrored.iter() {
                match self.store.join(group, &id).await {
                    Ok(_) => {
                        tally.memberships.fetch_add(1, Ordering::Relaxed);
                    }
                    // Removed meanwhile: it closed, R below sees it.
                    Err(StoreError::NotRegistered(_)) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if conn.outbox.is_closed() {
            debug!("closed while written back: removed again after its cleanup");
            self.remove_late(id);
            return Ok(());
        }
        tally.restored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes a connection that closed while it was written back, once its cleanup is no
    /// longer queued (it may have been removed before the write-back wrote it).
    fn remove_late(&self, id: String) {
        let (store, removals) = (self.store.clone(), self.removals.clone());
        let (cleanup, wait) = (self.cleanup, self.handover_wait);
        tokio::spawn(
            async move {
                if cleanup {
                    wait_for_cleanup(&*store, &id, wait).await;
                }
                removals.forget(id).await;
            }
            .in_current_span(),
        );
    }

    /// Reads the groups of every held connection into a new mirror, and keeps it if the
    /// store still held this node's state after the reads.
    async fn sweep(&self) -> Result<(), StoreError> {
        let ids = self.registry.ids();
        let mut names: HashSet<Arc<str>> = HashSet::new();
        let mut mirror = Mirror::default();
        for page in ids.chunks(PAGE) {
            let keys: Vec<String> = page.iter().map(Uuid::to_string).collect();
            let groups = self.store.groups_of_many(&keys).await?;
            for (id, groups) in page.iter().zip(groups) {
                if groups.is_empty() {
                    continue;
                }
                let interned = groups.into_iter().map(|g| intern(&mut names, g)).collect();
                mirror.insert(*id, interned);
            }
        }
        if !self.store.node_check(&self.node, MARK_KEEP).await?.marked {
            // The reads may have met an emptied store: keep the mirror for the write-back.
            self.wake.notify_one();
            return Ok(());
        }
        *self.mirror() = mirror;
        Ok(())
    }

    /// How many held connections the mirror lists (for tests).
    #[cfg(test)]
    fn mirrored(&self) -> usize {
        self.mirror().len()
    }
}

/// The shared copy of a group name.
fn intern(names: &mut HashSet<Arc<str>>, name: String) -> Arc<str> {
    if let Some(known) = names.get(name.as_str()) {
        return known.clone();
    }
    let name: Arc<str> = Arc::from(name);
    names.insert(name.clone());
    name
}

/// Waits until the connection's cleanup has been queued and is no longer (delivered or
/// given up), or, if it is never seen queued, for `wait` (it may have come and gone before
/// the first look).
async fn wait_for_cleanup(store: &dyn Store, id: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    let mut seen = false;
    loop {
        match store.cleanup_queued(id).await {
            Ok(true) => seen = true,
            Ok(false) if seen || Instant::now() >= deadline => return,
            Ok(false) => {}
            Err(e) => warn!(cause = %e, "could not look for the cleanup; looking again"),
        }
        tokio::time::sleep(LATE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn interned_names_are_shared() {
        let mut names = HashSet::new();
        let a = intern(&mut names, "room".into());
        let b = intern(&mut names, "room".into());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(names.len(), 1);
    }

    #[tokio::test]
    async fn no_resync_on_the_memory_store() {
        let store: SharedStore = Arc::new(store::MemoryStore::new());
        let parts = ResyncParts {
            node: Arc::from("n"),
            store: store.clone(),
            registry: Arc::default(),
            health: Arc::default(),
            removals: Arc::new(Removals::new(store)),
            interval: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            cleanup: false,
            handover_wait: Duration::from_secs(1),
        };
        assert!(Resync::for_store(parts).is_none());
    }

    /// A store that says it can lose data (the memory store underneath).
    #[derive(Debug, Default)]
    struct Forgetful(store::MemoryStore);

    #[async_trait::async_trait]
    impl Store for Forgetful {
        fn can_lose_data(&self) -> bool {
            true
        }
        async fn register(&self, r: &ConnectionRecord) -> Result<(), StoreError> {
            self.0.register(r).await
        }
        async fn get(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError> {
            self.0.get(id).await
        }
        async fn unregister(&self, id: &str) -> Result<bool, StoreError> {
            self.0.unregister(id).await
        }
        async fn join(&self, g: &str, id: &str) -> Result<bool, StoreError> {
            self.0.join(g, id).await
        }
        async fn leave(&self, g: &str, id: &str) -> Result<bool, StoreError> {
            self.0.leave(g, id).await
        }
        async fn members(
            &self,
            g: &str,
            c: Option<&str>,
            n: usize,
        ) -> Result<store::MembersPage, StoreError> {
            self.0.members(g, c, n).await
        }
        async fn count(&self, g: &str) -> Result<u64, StoreError> {
            self.0.count(g).await
        }
        async fn groups_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
            self.0.groups_of(id).await
        }
        async fn mark_node(&self, n: &str, k: Duration) -> Result<(), StoreError> {
            self.0.mark_node(n, k).await
        }
        async fn node_check(&self, n: &str, k: Duration) -> Result<store::NodeCheck, StoreError> {
            self.0.node_check(n, k).await
        }
        async fn heartbeat(&self, n: &str, a: &str, t: Duration) -> Result<(), StoreError> {
            self.0.heartbeat(n, a, t).await
        }
        async fn node_alive(&self, n: &str) -> Result<bool, StoreError> {
            self.0.node_alive(n).await
        }
        async fn node_address(&self, n: &str) -> Result<Option<String>, StoreError> {
            self.0.node_address(n).await
        }
        async fn nodes(&self) -> Result<Vec<store::NodeInfo>, StoreError> {
            self.0.nodes().await
        }
        async fn queue_cleanup(&self, c: &store::PendingCleanup) -> Result<bool, StoreError> {
            self.0.queue_cleanup(c).await
        }
        async fn claim_cleanups(
            &self,
            now: u64,
            lease: Duration,
            max: usize,
        ) -> Result<Vec<store::PendingCleanup>, StoreError> {
            self.0.claim_cleanups(now, lease, max).await
        }
        async fn retry_cleanup(&self, c: &store::PendingCleanup) -> Result<bool, StoreError> {
            self.0.retry_cleanup(c).await
        }
        async fn finish_cleanup(&self, id: &str) -> Result<bool, StoreError> {
            self.0.finish_cleanup(id).await
        }
        async fn pending_cleanups(&self) -> Result<u64, StoreError> {
            self.0.pending_cleanups().await
        }
        async fn cleanup_queued(&self, id: &str) -> Result<bool, StoreError> {
            self.0.cleanup_queued(id).await
        }
        async fn remove_heartbeat(&self, n: &str) -> Result<(), StoreError> {
            self.0.remove_heartbeat(n).await
        }
        async fn dead_nodes(&self) -> Result<Vec<String>, StoreError> {
            self.0.dead_nodes().await
        }
        async fn node_connections(
            &self,
            n: &str,
            c: Option<&str>,
            k: usize,
        ) -> Result<store::MembersPage, StoreError> {
            self.0.node_connections(n, c, k).await
        }
        async fn release(&self, n: &str, id: &str) -> Result<(), StoreError> {
            self.0.release(n, id).await
        }
        async fn reap_lease(&self, n: &str, h: &str, t: Duration) -> Result<bool, StoreError> {
            self.0.reap_lease(n, h, t).await
        }
        async fn drop_reap_lease(&self, n: &str, h: &str) -> Result<(), StoreError> {
            self.0.drop_reap_lease(n, h).await
        }
        async fn mark_reaped(&self, n: &str, at: u64, t: Duration) -> Result<(), StoreError> {
            self.0.mark_reaped(n, at, t).await
        }
        async fn reaped_at(&self, n: &str) -> Result<Option<u64>, StoreError> {
            self.0.reaped_at(n).await
        }
        async fn clear_reaped(&self, n: &str) -> Result<(), StoreError> {
            self.0.clear_reaped(n).await
        }
    }

    fn conn() -> Arc<Connection> {
        Arc::new(Connection::new(
            Uuid::new_v4(),
            1_700_000_000_000,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
            Some("ua".into()),
            None,
            serde_json::json!({"user": "u"}),
        ))
    }

    /// The sweep mirrors only connections in some group; a write-back after the store lost
    /// everything restores records and memberships, and skips a closed connection.
    #[tokio::test]
    async fn sweeps_then_writes_back_what_was_lost() {
        let backing = Arc::new(Forgetful::default());
        let store: SharedStore = backing.clone();
        let registry = Arc::new(Registry::default());
        let health = Arc::new(StoreHealth::default());
        let resync = Resync::for_store(ResyncParts {
            node: Arc::from("node-r"),
            store: store.clone(),
            registry: registry.clone(),
            health: health.clone(),
            removals: Arc::new(Removals::new(store.clone())),
            interval: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            cleanup: false,
            handover_wait: Duration::from_secs(1),
        })
        .expect("a store that can lose data");
        let (joined, alone, closed) = (conn(), conn(), conn());
        for c in [&joined, &alone, &closed] {
            registry.insert(c.clone());
            let id = c.id.to_string();
            store
                .register(&ConnectionRecord {
                    id: id.clone(),
                    node: "node-r".into(),
                    connected_at_ms: c.connected_at_ms,
                    source_ip: c.source_ip.to_string(),
                    user_agent: c.user_agent.as_deref().map(str::to_owned),
                    context: c.context.clone(),
                })
                .await
                .unwrap();
        }
        let expected = store.get(&joined.id.to_string()).await.unwrap();
        store.join("a", &joined.id.to_string()).await.unwrap();
        store.join("b", &joined.id.to_string()).await.unwrap();
        store.join("a", &closed.id.to_string()).await.unwrap();
        store.mark_node("node-r", MARK_KEEP).await.unwrap();
        resync.round().await.unwrap();
        assert_eq!(resync.mirrored(), 2);
        // The store loses everything; one connection closes.
        for c in [&joined, &alone, &closed] {
            store.unregister(&c.id.to_string()).await.unwrap();
        }
        store.remove_heartbeat("node-r").await.unwrap();
        closed.outbox.mark_closed();
        // Not while this node's heartbeat is not live.
        resync.round().await.unwrap();
        assert_eq!(resync.restored(), 0);
        let beat = crate::cluster::liveness::Heartbeat {
            store: store.clone(),
            node: Arc::from("node-r"),
            advertise: String::new(),
            interval: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            health: health.clone(),
        };
        beat.beat().await.unwrap();
        resync.round().await.unwrap();
        assert_eq!(resync.restored(), 2);
        assert_eq!(store.get(&joined.id.to_string()).await.unwrap(), expected);
        assert!(store.get(&alone.id.to_string()).await.unwrap().is_some());
        assert_eq!(store.get(&closed.id.to_string()).await.unwrap(), None);
        assert_eq!(
            store.groups_of(&joined.id.to_string()).await.unwrap(),
            ["a", "b"]
        );
        assert_eq!(store.count("a").await.unwrap(), 1);
        let check = store.node_check("node-r", MARK_KEEP).await.unwrap();
        assert!(check.marked);
        assert_eq!(check.connections, 2);
        // Nothing lost now (the closed connection has left the registry): the next round only
        // sweeps.
        registry.remove(&closed.id);
        resync.round().await.unwrap();
        assert_eq!(resync.restored(), 2);
    }

    /// A connection that closed while it was written back is removed again, but only once
    /// its cleanup is no longer queued: never before its cleanup is delivered.
    #[tokio::test]
    async fn a_late_removal_waits_for_the_cleanup() {
        let store: SharedStore = Arc::new(Forgetful::default());
        let resync = Resync::for_store(ResyncParts {
            node: Arc::from("node-r"),
            store: store.clone(),
            registry: Arc::default(),
            health: Arc::default(),
            removals: Arc::new(Removals::new(store.clone())),
            interval: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            cleanup: true,
            handover_wait: Duration::from_secs(30),
        })
        .expect("a store that can lose data");
        let record = ConnectionRecord {
            id: "late".into(),
            node: "node-r".into(),
            connected_at_ms: 1,
            source_ip: "10.0.0.7".into(),
            user_agent: None,
            context: serde_json::Value::Null,
        };
        store.register(&record).await.unwrap();
        let cleanup = store::PendingCleanup {
            connection_id: "late".into(),
            event_id: "late:cleanup".into(),
            node: "node-r".into(),
            seq: 1,
            connected_at_ms: 1,
            source_ip: "10.0.0.7".into(),
            user_agent: None,
            host: None,
            context: serde_json::Value::Null,
            reason: "client_close".into(),
            close_code: None,
            close_reason: String::new(),
            stats: None,
            queued_at_ms: 1,
            attempts: 0,
            next_attempt_ms: 1,
        };
        assert!(store.queue_cleanup(&cleanup).await.unwrap());
        resync.remove_late("late".into());
        // While the cleanup is queued the record stays (a negative: give the removal a few
        // looks).
        tokio::time::sleep(LATE_POLL * 3).await;
        assert!(store.get("late").await.unwrap().is_some());
        assert!(store.finish_cleanup("late").await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.get("late").await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the late removal never came");
            tokio::time::sleep(Duration::from_millis(10)).await; // polling interval
        }
    }
}
