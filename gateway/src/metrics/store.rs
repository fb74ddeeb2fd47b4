//! [`MeasuredStore`]: the gateway's store, counted. It wraps the store the gateway opened
//! (or was given) and counts each call by operation (the `store::Store` method's name) and
//! outcome (`ok`, `unavailable`: the backend is down, `error`: anything else), with its
//! duration. Everything in the gateway goes through it; what callers outside the gateway
//! do with the same store (functions in the same process) is not counted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{
    ConnectionRecord, MembersPage, NodeCheck, NodeInfo, PendingCleanup, SharedStore, Store,
    StoreError,
};

use crate::metrics::registry::{Metrics, StoreOp, StoreOutcome};

/// A store whose every call is counted in [`Metrics`].
#[derive(Debug)]
pub(crate) struct MeasuredStore {
    inner: SharedStore,
    metrics: Arc<Metrics>,
}

impl MeasuredStore {
    /// `inner`, counted in `metrics`.
    pub fn wrap(inner: SharedStore, metrics: Arc<Metrics>) -> SharedStore {
        Arc::new(MeasuredStore { inner, metrics })
    }

    async fn measure<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => StoreOutcome::Ok,
            Err(e) if e.is_unavailable() => StoreOutcome::Unavailable,
            Err(_) => StoreOutcome::Error,
        };
        self.metrics.store_op(op, outcome, started.elapsed());
        result
    }
}

#[async_trait::async_trait]
impl Store for MeasuredStore {
    async fn register(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
        self.measure(StoreOp::Register, self.inner.register(record))
            .await
    }
    async fn get(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        self.measure(StoreOp::Get, self.inner.get(id)).await
    }
    async fn unregister(&self, id: &str) -> Result<bool, StoreError> {
        self.measure(StoreOp::Unregister, self.inner.unregister(id))
            .await
    }
    async fn join(&self, group: &str, id: &str) -> Result<bool, StoreError> {
        self.measure(StoreOp::Join, self.inner.join(group, id))
            .await
    }
    async fn leave(&self, group: &str, id: &str) -> Result<bool, StoreError> {
        self.measure(StoreOp::Leave, self.inner.leave(group, id))
            .await
    }
    async fn members(
        &self,
        group: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError> {
        self.measure(StoreOp::Members, self.inner.members(group, cursor, count))
            .await
    }
    async fn group_version(&self, group: &str) -> Result<Option<u64>, StoreError> {
        self.measure(StoreOp::GroupVersion, self.inner.group_version(group))
            .await
    }
    async fn count(&self, group: &str) -> Result<u64, StoreError> {
        self.measure(StoreOp::Count, self.inner.count(group)).await
    }
    async fn groups_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        self.measure(StoreOp::GroupsOf, self.inner.groups_of(id))
            .await
    }
    async fn groups_of_many(&self, ids: &[String]) -> Result<Vec<Vec<String>>, StoreError> {
        self.measure(StoreOp::GroupsOfMany, self.inner.groups_of_many(ids))
            .await
    }
    fn can_lose_data(&self) -> bool {
        self.inner.can_lose_data()
    }
    async fn mark_node(&self, node: &str, keep: Duration) -> Result<(), StoreError> {
        self.measure(StoreOp::MarkNode, self.inner.mark_node(node, keep))
            .await
    }
    async fn node_check(&self, node: &str, keep: Duration) -> Result<NodeCheck, StoreError> {
        self.measure(StoreOp::NodeCheck, self.inner.node_check(node, keep))
            .await
    }
    async fn heartbeat(&self, node: &str, address: &str, ttl: Duration) -> Result<(), StoreError> {
        self.measure(StoreOp::Heartbeat, self.inner.heartbeat(node, address, ttl))
            .await
    }
    async fn node_alive(&self, node: &str) -> Result<bool, StoreError> {
        self.measure(StoreOp::NodeAlive, self.inner.node_alive(node))
            .await
    }
    async fn node_address(&self, node: &str) -> Result<Option<String>, StoreError> {
        self.measure(StoreOp::NodeAddress, self.inner.node_address(node))
            .await
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.measure(StoreOp::Nodes, self.inner.nodes()).await
    }
    async fn queue_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError> {
        self.measure(StoreOp::QueueCleanup, self.inner.queue_cleanup(cleanup))
            .await
    }
    async fn claim_cleanups(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingCleanup>, StoreError> {
        self.measure(
            StoreOp::ClaimCleanups,
            self.inner.claim_cleanups(now_ms, lease, max),
        )
        .await
    }
    async fn retry_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError> {
        self.measure(StoreOp::RetryCleanup, self.inner.retry_cleanup(cleanup))
            .await
    }
    async fn finish_cleanup(&self, connection_id: &str) -> Result<bool, StoreError> {
        self.measure(
            StoreOp::FinishCleanup,
            self.inner.finish_cleanup(connection_id),
        )
        .await
    }
    async fn pending_cleanups(&self) -> Result<u64, StoreError> {
        self.measure(StoreOp::PendingCleanups, self.inner.pending_cleanups())
            .await
    }
    async fn cleanup_queued(&self, connection_id: &str) -> Result<bool, StoreError> {
        self.measure(
            StoreOp::CleanupQueued,
            self.inner.cleanup_queued(connection_id),
        )
        .await
    }
    async fn remove_heartbeat(&self, node: &str) -> Result<(), StoreError> {
        self.measure(StoreOp::RemoveHeartbeat, self.inner.remove_heartbeat(node))
            .await
    }
    async fn dead_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.measure(StoreOp::DeadNodes, self.inner.dead_nodes())
            .await
    }
    async fn node_connections(
        &self,
        node: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError> {
        self.measure(
            StoreOp::NodeConnections,
            self.inner.node_connections(node, cursor, count),
        )
        .await
    }
    async fn release(&self, node: &str, id: &str) -> Result<(), StoreError> {
        self.measure(StoreOp::Release, self.inner.release(node, id))
            .await
    }
    async fn reap_lease(
        &self,
        node: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.measure(StoreOp::ReapLease, self.inner.reap_lease(node, holder, ttl))
            .await
    }
    async fn drop_reap_lease(&self, node: &str, holder: &str) -> Result<(), StoreError> {
        self.measure(
            StoreOp::DropReapLease,
            self.inner.drop_reap_lease(node, holder),
        )
        .await
    }
    async fn mark_reaped(&self, node: &str, at_ms: u64, ttl: Duration) -> Result<(), StoreError> {
        self.measure(
            StoreOp::MarkReaped,
            self.inner.mark_reaped(node, at_ms, ttl),
        )
        .await
    }
    async fn reaped_at(&self, node: &str) -> Result<Option<u64>, StoreError> {
        self.measure(StoreOp::ReapedAt, self.inner.reaped_at(node))
            .await
    }
    async fn clear_reaped(&self, node: &str) -> Result<(), StoreError> {
        self.measure(StoreOp::ClearReaped, self.inner.clear_reaped(node))
            .await
    }
    async fn all_members(&self, group: &str) -> Result<Vec<String>, StoreError> {
        self.measure(StoreOp::AllMembers, self.inner.all_members(group))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_call_is_counted_by_operation_and_outcome() {
        let metrics = Arc::new(Metrics::new());
        let store = MeasuredStore::wrap(Arc::new(store::MemoryStore::new()), metrics.clone());
        assert!(
            store
                .get("4b0c0b1e-0000-4000-8000-000000000000")
                .await
                .unwrap()
                .is_none()
        );
        // A name the store refuses: an error, not "unavailable".
        assert!(store.join("a{b}", "x").await.is_err());
        assert_eq!(store.group_version("room").await.unwrap(), None);
        let text = metrics.encode().unwrap();
        for line in [
            "switchboard_store_operations_total{op=\"get\",outcome=\"ok\"} 1\n",
            "switchboard_store_operations_total{op=\"join\",outcome=\"error\"} 1\n",
            "switchboard_store_operations_total{op=\"group_version\",outcome=\"ok\"} 1\n",
            "switchboard_store_operation_duration_seconds_count{op=\"get\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }
}
