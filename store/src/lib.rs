//! The connection registry and groups (rooms) that the gateway and the functions share.
//!
//! Everything about a connection that must outlive one function call lives behind the
//! [`Store`] trait: the gateway registers a connection before it asks the register function
//! about it, and unregisters it (leaving every group it joined, in the same step) when the
//! connection ends, whatever the function did. Functions join and leave groups and list
//! members. Two backends implement the trait: [`MemoryStore`], embedded in one process (the
//! default), and Redis (for separate processes and many gateway nodes).

mod error;
mod memory;
mod record;

use std::sync::Arc;
use std::time::Duration;

pub use error::StoreError;
pub use memory::MemoryStore;
pub use record::{ConnectionRecord, MembersPage};

/// A store shared between tasks.
pub type SharedStore = Arc<dyn Store>;

/// What the gateway and the functions need from shared storage.
///
/// Every method is atomic on its own: a reader never sees a connection half unregistered.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Registers a connection, or replaces the record of one already registered (its group
    /// memberships are kept).
    async fn register(&self, record: &ConnectionRecord) -> Result<(), StoreError>;

    /// The record of a registered connection, `None` if it is not registered.
    async fn get(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError>;

    /// Removes a connection and its membership in every group it joined, in one step.
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

    /// How many connections a group has.
    async fn count(&self, group: &str) -> Result<u64, StoreError>;

    /// The groups a connection has joined.
    async fn groups_of(&self, id: &str) -> Result<Vec<String>, StoreError>;

    /// Records that gateway `node` is alive for the next `ttl`.
    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Whether gateway `node` has sent a heartbeat that has not yet expired.
    async fn node_alive(&self, node: &str) -> Result<bool, StoreError>;

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

/// Opens the store a URL names: `memory` (or an empty string) for a new embedded store.
pub async fn open(url: &str) -> Result<SharedStore, StoreError> {
    match url {
        "" | "memory" | "memory://" => Ok(Arc::new(MemoryStore::new())),
        other => Err(StoreError::InvalidUrl {
            url: other.to_owned(),
            reason: "expected `memory`".to_owned(),
        }),
    }
}
