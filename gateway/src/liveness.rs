//! This node's presence in the store: a heartbeat key with a TTL and this node's send-back
//! address (so another node can tell that this one died and clean up after it, and relay
//! send-back requests to it), and the retry of store removals that failed
//! while the store was down (so no record of a closed connection outlives an outage).

use std::sync::Arc;

use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::Shared;

/// Removes a connection from the store; if the store is down, remembers it for the next
/// heartbeat to retry.
pub(crate) async fn forget(shared: &Shared, id: String) {
    if let Err(e) = shared.store.unregister(&id).await {
        warn!(cause = %e, "could not remove the connection from the store; will retry");
        shared.backlog().push(id);
    }
}

/// Retries the removals that failed. Returns how many are still pending.
pub(crate) async fn retry_backlog(shared: &Shared) -> usize {
    let pending = std::mem::take(&mut *shared.backlog());
    if pending.is_empty() {
        return 0;
    }
    let mut failed = Vec::new();
    for id in pending {
        if shared.store.unregister(&id).await.is_err() {
            failed.push(id);
        }
    }
    let left = failed.len();
    if left == 0 {
        info!("store removals that failed during an outage are done");
    }
    shared.backlog().extend(failed);
    left
}

/// One heartbeat: this node and its send-back address, alive for three intervals.
pub(crate) async fn beat(shared: &Shared) -> Result<(), store::StoreError> {
    let ttl = shared.config.node_heartbeat * 3;
    shared
        .store
        .heartbeat(&shared.node, &shared.advertise, ttl)
        .await
}

/// Refreshes the heartbeat every `node_heartbeat` (TTL three intervals) until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let interval = shared.config.node_heartbeat;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match beat(&shared).await {
            Ok(()) => {
                if !healthy {
                    info!("store reachable again");
                    healthy = true;
                }
                retry_backlog(&shared).await;
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
