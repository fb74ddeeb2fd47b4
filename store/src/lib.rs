//! The connection registry and groups (rooms) that the gateway and the functions share.
//!
//! Everything about a connection that must outlive one function call lives behind the
//! [`Store`] trait: the gateway registers a connection before it asks the register function
//! about it, and unregisters it (leaving every group it joined, in the same step) when the
//! connection ends, whatever the function did. Functions join and leave groups and list
//! members. Two backends implement the trait: [`MemoryStore`], embedded in one process (the
//! default), and [`RedisStore`] (standalone Redis or Redis Cluster, for separate processes and
//! many gateway nodes). [`open`] picks one from a URL.
//!
//! Both backends accept the same names: ids, group names and node names must be non-empty and
//! must not contain `{` or `}` ([`StoreError::InvalidName`] otherwise).

mod error;
mod memory;
mod names;
mod record;
pub mod redis;
pub mod shrink;

use std::sync::Arc;
use std::time::Duration;

pub use self::redis::{RedisOptions, RedisStore};
pub use error::StoreError;
pub use memory::MemoryStore;
pub use record::{ConnectionRecord, MembersPage, NodeCheck, NodeInfo, PendingCleanup};

/// The key prefix a Redis-backed store uses unless told otherwise.
pub const DEFAULT_PREFIX: &str = "switchboard";

/// A store shared between tasks.
pub type SharedStore = Arc<dyn Store>;

/// What the gateway and the functions need from shared storage.
///
/// On [`MemoryStore`] every method is atomic on its own. On [`RedisStore`] a connection's
/// record and its list of groups always change together, but a group's member set may list
/// an id for a moment while it is joining or being unregistered (see [`redis`] for exactly
/// what is atomic): whoever reads members must expect an id that has just gone.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Registers a connection, or replaces the record of one already registered (its group
    /// memberships are kept).
    async fn register(&self, record: &ConnectionRecord) -> Result<(), StoreError>;

    /// The record of a registered connection, `None` if it is not registered.
    async fn get(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError>;

    /// Removes a connection and its membership in every group it joined (the record and its
    /// list of groups in one step; on Redis the group sets in the same call).
    /// Returns whether it was registered.
    async fn unregister(&self, id: &str) -> Result<bool, StoreError>;

    /// Adds a registered connection to a group. Returns whether it was newly added;
    /// [`StoreError::NotRegistered`] if the connection is not registered, so that no group
    /// ever lists an id that nothing will clean up.
    async fn join(&self, group: &str, id: &str) -> Result<bool, StoreError>;

    /// Removes a connection from a group. Returns whether it was a member.
    async fn leave(&self, group: &str, id: &str) -> Result<bool, StoreError>;

    /// One page of a group's members. Start with `cursor = None`; the page's `cursor` is
    /// `None` after the last page. Pages may be shorter than `count`; a member present for
    /// the whole walk is listed at least once.
    async fn members(
        &self,
        group: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError>;

    /// A token for the current member set of a group: it changes whenever a member joins
    /// or leaves, and never comes back once it has changed. `None` when the group is empty
    /// (or the store keeps no token). If two calls return the same token, the members did
    /// not change between them, so a member list read after the first call is still
    /// current at the second: what lets a gateway node keep a group's members between
    /// group sends and pay one round trip per send instead of a walk.
    async fn group_version(&self, group: &str) -> Result<Option<u64>, StoreError> {
        names::group(group)?;
        Ok(None)
    }

    /// How many connections a group has.
    async fn count(&self, group: &str) -> Result<u64, StoreError>;

    /// The groups a connection has joined.
    async fn groups_of(&self, id: &str) -> Result<Vec<String>, StoreError>;

    /// The groups of each of `ids`, in the order of `ids` (each sorted; empty for an id in
    /// no group or not registered). On Redis one pipeline per call (split by hash tag on a
    /// cluster), never one round trip per id: callers pass pages of a few hundred ids.
    async fn groups_of_many(&self, ids: &[String]) -> Result<Vec<Vec<String>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.groups_of(id).await?);
        }
        Ok(out)
    }

    /// Whether this store can lose what it holds while the process using it lives on (a
    /// Redis restarted without persistence): then each gateway node watches for it and
    /// writes back what it holds. `false` for the embedded store, which lives and dies with
    /// its process.
    fn can_lose_data(&self) -> bool {
        false
    }

    /// Leaves gateway `node`'s mark, kept for `keep`: a key only that node writes, so that
    /// the node finds out (through [`Store::node_check`]) that the store lost its state.
    async fn mark_node(&self, node: &str, keep: Duration) -> Result<(), StoreError>;

    /// What the store holds of gateway `node` (one round trip): whether its mark is there
    /// (if so it is kept for `keep` from now) and the size of its connection set.
    async fn node_check(&self, node: &str, keep: Duration) -> Result<NodeCheck, StoreError>;

    /// Records that gateway `node` is alive for the next `ttl`, its send-back API at
    /// `address` (a base URL other nodes can reach; empty for none).
    async fn heartbeat(&self, node: &str, address: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Whether gateway `node` has sent a heartbeat that has not yet expired.
    async fn node_alive(&self, node: &str) -> Result<bool, StoreError>;

    /// The send-back address of a live node: `None` if its heartbeat expired or it gave
    /// no address.
    async fn node_address(&self, node: &str) -> Result<Option<String>, StoreError>;

    /// Every live node (heartbeat not expired), sorted by name.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;

    /// Adds a cleanup to the durable queue, due at its `next_attempt_ms`. Returns `false`
    /// (and changes nothing) if one for that connection is already queued: a connection has
    /// one cleanup, whoever queues it.
    async fn queue_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError>;

    /// Claims up to `max` queued cleanups due at `now_ms` (earliest first): each is returned
    /// and its due time moved to `now_ms + lease`, in one atomic step, so no other caller
    /// claims it until the lease lapses. A claimed cleanup is then either finished
    /// ([`Store::finish_cleanup`]) or put back ([`Store::retry_cleanup`]); if its claimer
    /// dies it is due again once the lease lapses.
    async fn claim_cleanups(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingCleanup>, StoreError>;

    /// Puts a claimed cleanup back in the queue with its new `attempts` and
    /// `next_attempt_ms`. Returns `false` if it is no longer queued (finished meanwhile).
    async fn retry_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError>;

    /// Removes a connection's cleanup from the queue (delivered, or given up). Returns
    /// whether it was queued.
    async fn finish_cleanup(&self, connection_id: &str) -> Result<bool, StoreError>;

    /// How many cleanups are queued (due or not, claimed or not).
    async fn pending_cleanups(&self) -> Result<u64, StoreError>;

    /// Whether a cleanup for `connection_id` is queued (a reaper's, or the connection's own).
    async fn cleanup_queued(&self, connection_id: &str) -> Result<bool, StoreError>;

    /// Deletes `node`'s heartbeat at once (a clean shutdown): the other nodes stop relaying
    /// to it, and any connection it leaves registered is reaped as a dead node's.
    async fn remove_heartbeat(&self, node: &str) -> Result<(), StoreError>;

    /// The nodes to reap: each heartbeat has expired (or was removed) and the node still
    /// has registered connections (a non-empty connection set). Sorted by name.
    async fn dead_nodes(&self) -> Result<Vec<String>, StoreError>;

    /// One page of the ids `node` registered (its connection set; on Redis it may also list
    /// an id whose record is gone, see [`Store::release`]). Paged like [`Store::members`].
    async fn node_connections(
        &self,
        node: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError>;

    /// Takes `id` out of `node`'s connection set (for an id whose record is gone or names
    /// another node; [`Store::unregister`] does this for a registered one).
    async fn release(&self, node: &str, id: &str) -> Result<(), StoreError>;

    /// Takes, or renews, the lease on reaping dead node `node` for `ttl`, on behalf of
    /// `holder`: `true` if `holder` holds it now. One holder at a time: whoever else asks
    /// before it expires (or is dropped) gets `false`.
    async fn reap_lease(&self, node: &str, holder: &str, ttl: Duration)
    -> Result<bool, StoreError>;

    /// Drops the lease on reaping `node` if `holder` holds it.
    async fn drop_reap_lease(&self, node: &str, holder: &str) -> Result<(), StoreError>;

    /// Leaves the fencing mark "`node` was reaped at `at_ms`" (ms since the Unix epoch),
    /// kept for `ttl`: a node that comes back finds it and closes what was reaped.
    async fn mark_reaped(&self, node: &str, at_ms: u64, ttl: Duration) -> Result<(), StoreError>;

    /// When `node` was last reaped, if the mark is still there.
    async fn reaped_at(&self, node: &str) -> Result<Option<u64>, StoreError>;

    /// Removes the fencing mark of `node` (it has acted on it).
    async fn clear_reaped(&self, node: &str) -> Result<(), StoreError>;

    /// Every member of a group, read page by page (never one round trip per member).
    async fn all_members(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.members(group, cursor.as_deref(), 1000).await?;
            out.extend(page.members);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// Opens the store a URL names:
///
/// - `memory` (or `memory://`, or an empty string): a new embedded [`MemoryStore`];
/// - `redis://host[:port][/db]`: a standalone Redis, see [`RedisStore::connect`];
/// - `redis+cluster://host:port,host:port,...`: a Redis Cluster (any reachable nodes of it).
///
/// `prefix` starts every Redis key (several deployments can share one Redis with different
/// prefixes; [`DEFAULT_PREFIX`] is the usual one); the memory backend ignores it.
pub async fn open(url: &str, prefix: &str) -> Result<SharedStore, StoreError> {
    check_url(url)?;
    if self::redis::is_redis_url(url) {
        Ok(Arc::new(RedisStore::connect(url, prefix).await?))
    } else {
        Ok(Arc::new(MemoryStore::new()))
    }
}

/// Checks a store URL without connecting: `Ok` for every URL [`open`] accepts (it may still
/// fail to connect), [`StoreError::InvalidUrl`] otherwise. For configuration checks.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    match url {
        "" | "memory" | "memory://" => Ok(()),
        url if self::redis::is_redis_url(url) => self::redis::check_url(url),
        other => Err(StoreError::InvalidUrl {
            url: other.to_owned(),
            reason: "expected `memory`, `redis://host:port[/db]` or \
                     `redis+cluster://host:port,host:port`"
                .to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_picks_the_backend_from_the_url() {
        for url in ["", "memory", "memory://"] {
            let store = open(url, DEFAULT_PREFIX).await.unwrap();
            assert!(
                format!("{store:?}").contains("MemoryStore"),
                "{url}: {store:?}"
            );
        }
        let err = open("postgres://x", DEFAULT_PREFIX).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains("redis+cluster://"), "{err}");
        assert!(check_url("postgres://x").is_err());
        assert!(check_url("memory").is_ok());
        assert!(check_url("redis://127.0.0.1:1").is_ok());
    }
}
