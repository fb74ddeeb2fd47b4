//! Each group's members as this node last read them, kept between group sends under the
//! version the store gave the group before the read ([`store::Store::group_version`]).
//! A group send whose version still matches reuses the list: one store round trip instead
//! of a walk of the group page by page. Any join or leave changes the version, so a list
//! is never used after its group changed.
//!
//! Bounded: at most [`MAX_MEMBERS`] ids in all; past that, entries are dropped (any) until
//! the new one fits. A group larger than the bound is not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// Ids kept over all groups (16 bytes each: 16 MiB).
pub(crate) const MAX_MEMBERS: usize = 1 << 20;

/// One group's members.
#[derive(Debug, Default)]
pub(crate) struct Members {
    /// Members that are gateway connection ids, each once.
    pub ids: Vec<Uuid>,
    /// Members that are not (written to the store by someone else): never this node's.
    pub others: Vec<String>,
}

impl Members {
    fn len(&self) -> usize {
        self.ids.len() + self.others.len()
    }
}

#[derive(Debug, Default)]
pub(crate) struct GroupCache {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_group: HashMap<String, (u64, Arc<Members>)>,
    /// Ids held over all entries.
    held: usize,
}

impl GroupCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every change leaves the map consistent: a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The members of `group` read under `version`, if kept.
    pub fn get(&self, group: &str, version: u64) -> Option<Arc<Members>> {
        let entries = self.lock();
        match entries.by_group.get(group) {
            Some((kept, members)) if *kept == version => Some(members.clone()),
            _ => None,
        }
    }

    /// Keeps `members`, read after the store gave `group` this `version`.
    pub fn insert(&self, group: &str, version: u64, members: Arc<Members>) {
        let size = members.len();
        let mut entries = self.lock();
        if let Some((_, old)) = entries.by_group.remove(group) {
            entries.held -= old.len();
        }
        if size > MAX_MEMBERS {
            return;
        }
        while entries.held + size > MAX_MEMBERS {
            let Some(victim) = entries.by_group.keys().next().cloned() else {
                break;
            };
            if let Some((_, old)) = entries.by_group.remove(&victim) {
                entries.held -= old.len();
            }
        }
        entries.held += size;
        entries
            .by_group
            .insert(group.to_owned(), (version, members));
    }

    /// Groups kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_group.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Arc<Members> {
        Arc::new(Members {
            ids: (0..n).map(|_| Uuid::new_v4()).collect(),
            others: vec![],
        })
    }

    #[test]
    fn a_list_is_used_only_under_its_version() {
        let cache = GroupCache::default();
        assert!(cache.get("g", 1).is_none());
        cache.insert("g", 1, members(3));
        assert_eq!(cache.get("g", 1).unwrap().ids.len(), 3);
        assert!(cache.get("g", 2).is_none(), "another version");
        assert!(cache.get("h", 1).is_none(), "another group");
        cache.insert("g", 2, members(5));
        assert!(cache.get("g", 1).is_none(), "replaced");
        assert_eq!(cache.get("g", 2).unwrap().ids.len(), 5);
        assert_eq!(cache.lock().held, 5);
    }

    #[test]
    fn the_bound_drops_entries_and_refuses_oversized_groups() {
        let cache = GroupCache::default();
        cache.insert("a", 1, members(MAX_MEMBERS / 2));
        cache.insert("b", 1, members(MAX_MEMBERS / 2));
        assert_eq!(cache.len(), 2);
        cache.insert("c", 1, members(10));
        assert_eq!(cache.len(), 2, "one of a and b made room");
        assert!(cache.lock().held <= MAX_MEMBERS);
        assert!(cache.get("c", 1).is_some());
        cache.insert("huge", 1, members(MAX_MEMBERS + 1));
        assert!(cache.get("huge", 1).is_none());
        assert!(cache.lock().held <= MAX_MEMBERS);
    }
}
