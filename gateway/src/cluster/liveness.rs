//! This node's presence in the store: a heartbeat key with a TTL and this node's send-back
//! address (so another node can tell that this one died and clean up after it, and relay
//! send-back requests to it), the retry of store removals that failed
//! while the store was down (so no record of a closed connection outlives an outage), and
//! [`StoreHealth`]: how long this node's own store access has worked without a break
//! (a node reaps others only once it has worked for a whole TTL; a node whose beats do not
//! reach the store is not ready, `cluster::readiness`).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use store::{SharedStore, StoreError};
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::clock;
use crate::stop::Stop;

/// Since when this node's heartbeats have reached the store without a miss (a failed beat,
/// or more than a TTL between two beats: a pause), and when the last one did.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    up_since: Option<Instant>,
    last_ok: Option<Instant>,
}

impl StoreHealth {
    fn lock(&self) -> MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A beat reached the store.
    fn up(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        state.up_since.get_or_insert(now);
        state.last_ok = Some(now);
    }

    /// A beat failed, or this node missed its TTL.
    fn down(&self) {
        self.lock().up_since = None;
    }

    /// Whether the store has worked for at least `span` without a break.
    pub fn up_for(&self, span: Duration) -> bool {
        self.lock()
            .up_since
            .is_some_and(|since| since.elapsed() >= span)
    }

    /// Whether the store works and the last beat reached it less than `span` ago (so this
    /// node's heartbeat is live now, even if this process was just paused).
    pub fn beat_within(&self, span: Duration) -> bool {
        self.state(span) == StoreState::Up
    }

    /// The store as this node's heartbeats see it: `Up` when the store works and the last
    /// beat reached it less than `span` ago, `Down` when a beat failed since or none
    /// reached it within `span` (a beat that hangs counts once `span` has passed), `Never`
    /// before any beat reached it.
    pub fn state(&self, span: Duration) -> StoreState {
        let state = self.lock();
        match state.last_ok {
            None => StoreState::Never,
            Some(at) if state.up_since.is_some() && at.elapsed() < span => StoreState::Up,
            Some(_) => StoreState::Down,
        }
    }
}

/// What [`StoreHealth::state`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreState {
    /// No heartbeat has reached the store since this process started.
    Never,
    /// The last beat failed, or the last that worked is too old.
    Down,
    /// The last beat reached the store, recently enough.
    Up,
}

/// Removals of closed connections from the store, with the ones that failed (store down)
/// kept for the next heartbeat to retry.
#[derive(Debug)]
pub(crate) struct Removals {
    store: SharedStore,
    backlog: Mutex<Vec<String>>,
}

impl Removals {
    pub fn new(store: SharedStore) -> Self {
        Removals {
            store,
            backlog: Mutex::default(),
        }
    }

    fn backlog(&self) -> MutexGuard<'_, Vec<String>> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a connection from the store; if the store is down, remembers it for the
    /// next heartbeat to retry.
    pub async fn forget(&self, id: String) {
        if let Err(e) = self.store.unregister(&id).await {
            warn!(cause = %e, "could not remove the connection from the store; will retry");
            self.backlog().push(id);
        }
    }

    /// Retries the removals that failed. Returns how many are still pending.
    pub async fn retry(&self) -> usize {
        let pending = std::mem::take(&mut *self.backlog());
        if pending.is_empty() {
            return 0;
        }
        let mut failed = Vec::new();
        for id in pending {
            if self.store.unregister(&id).await.is_err() {
                failed.push(id);
            }
        }
        let left = failed.len();
        if left == 0 {
            info!("store removals that failed during an outage are done");
        }
        self.backlog().extend(failed);
        left
    }
}

/// This node's heartbeat in the store.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    pub store: SharedStore,
    pub node: Arc<str>,
    /// Where the other nodes reach this node's send-back API (empty: they cannot).
    pub advertise: String,
    /// `node_heartbeat`: how often it beats.
    pub interval: Duration,
    /// `node_heartbeat_ttl`: how long a beat lives.
    pub ttl: Duration,
    pub health: Arc<StoreHealth>,
}

impl Heartbeat {
    /// One heartbeat: this node and its send-back address, alive for the TTL.
    pub async fn beat(&self) -> Result<(), StoreError> {
        let beat = self
            .store
            .heartbeat(&self.node, &self.advertise, self.ttl)
            .await;
        match &beat {
            Ok(()) => self.health.up(),
            Err(_) => self.health.down(),
        }
        beat
    }

    /// Beats every interval until `stop`, retrying failed removals after each beat that
    /// reached the store. When more than a TTL has passed since the last beat that reached
    /// the store (its writes failed, or this process was paused), the other nodes may have
    /// reaped this one: `fence` (given when that last beat was, ms since the Unix epoch)
    /// runs first and must succeed before this node beats again.
    pub async fn run<F, Fut>(self: Arc<Self>, stop: Arc<Stop>, removals: Arc<Removals>, fence: F)
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut healthy = true;
        // `run` is called right after the first beat (which may have failed).
        let (mut last_ok, mut last_ok_ms) = (Instant::now(), clock::now_ms());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if last_ok.elapsed() > self.ttl {
                // Monotonic time: it counts a pause of this process too.
                self.health.down();
                if let Err(e) = fence(last_ok_ms).await {
                    if healthy {
                        warn!(cause = %e, "store heartbeat failed");
                        healthy = false;
                    }
                    continue;
                }
            }
            match self.beat().await {
                Ok(()) => {
                    if !healthy {
                        info!("store reachable again");
                        healthy = true;
                    }
                    (last_ok, last_ok_ms) = (Instant::now(), clock::now_ms());
                    removals.retry().await;
                }
                Err(e) => {
                    if healthy {
                        warn!(cause = %e, "store heartbeat failed");
                        healthy = false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_state_follows_the_beats() {
        let health = StoreHealth::default();
        let span = Duration::from_secs(60);
        assert_eq!(health.state(span), StoreState::Never);
        health.down();
        assert_eq!(health.state(span), StoreState::Never, "a failed first beat");
        health.up();
        assert_eq!(health.state(span), StoreState::Up);
        assert!(health.beat_within(span));
        assert_eq!(
            health.state(Duration::ZERO),
            StoreState::Down,
            "a beat older than the span"
        );
        health.down();
        assert_eq!(health.state(span), StoreState::Down);
        assert!(!health.beat_within(span));
        health.up();
        assert_eq!(health.state(span), StoreState::Up, "back");
    }
}
