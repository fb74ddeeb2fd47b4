//! This node's presence in the store: a heartbeat key with a TTL and this node's send-back
//! address (so another node can tell that this one died and clean up after it, and relay
//! send-back requests to it), and the retry of store removals that failed
//! while the store was down (so no record of a closed connection outlives an outage).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use store::{SharedStore, StoreError};
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::stop::Stop;

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
    /// `node_heartbeat`: how often it beats; it lives three intervals.
    pub interval: Duration,
}

impl Heartbeat {
    /// One heartbeat: this node and its send-back address, alive for three intervals.
    pub async fn beat(&self) -> Result<(), StoreError> {
        self.store
            .heartbeat(&self.node, &self.advertise, self.interval * 3)
            .await
    }

    /// Beats every interval until `stop`, retrying failed removals after each beat that
    /// reached the store.
    pub async fn run(self: Arc<Self>, stop: Arc<Stop>, removals: Arc<Removals>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.beat().await {
                Ok(()) => {
                    if !healthy {
                        info!("store reachable again");
                        healthy = true;
                    }
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
