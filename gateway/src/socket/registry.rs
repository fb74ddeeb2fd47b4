//! The connections this gateway node holds right now, by id: what the send-back API needs
//! to reach a socket.
//!
//! The map gives its memory back after a burst has left: a removal that leaves it under an
//! eighth full (past [`store::shrink::MIN_SHRINK_CAPACITY`]; the store's rule) shrinks it to twice what it holds, so it
//! must double to grow again and fall to under a quarter to shrink again: churn at a
//! steady size never rehashes, and each rehash is paid for by as many removals as it
//! moves entries.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use store::shrink::shrink_if_sparse;
use uuid::Uuid;

use crate::clock;
use crate::socket::outbox::Outbox;

/// One live connection, shared by its socket task and the send-back API.
#[derive(Debug)]
pub struct Connection {
    /// Its id.
    pub id: Uuid,
    /// Messages waiting for its socket.
    pub outbox: Outbox,
    /// When the handshake arrived (ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// When the client last sent a message (ms since the Unix epoch).
    last_active_ms: AtomicU64,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The client's `User-Agent`.
    pub user_agent: Option<Box<str>>,
    /// The `Host` the client asked for (AWS events name it as `domainName`).
    pub host: Option<Box<str>>,
    /// The context register returned.
    pub context: serde_json::Value,
}

impl Connection {
    /// A new connection record, active now.
    pub fn new(
        id: Uuid,
        connected_at_ms: u64,
        source_ip: IpAddr,
        user_agent: Option<Box<str>>,
        host: Option<Box<str>>,
        context: serde_json::Value,
    ) -> Self {
        Connection {
            id,
            outbox: Outbox::default(),
            connected_at_ms,
            last_active_ms: AtomicU64::new(connected_at_ms),
            source_ip,
            user_agent,
            host,
            context,
        }
    }

    /// Records client activity now.
    pub fn touch(&self) {
        self.last_active_ms
            .store(clock::now_ms(), Ordering::Relaxed);
    }

    /// When the client last sent a message (ms since the Unix epoch).
    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}

/// The map of live connections.
#[derive(Debug, Default)]
pub struct Registry {
    map: Mutex<IdMap>,
}

/// Connections by id. Ids are random (v4) and made by this gateway, never chosen by a
/// client, so their own bits serve as the hash: no SipHash on the group-send hot path.
type IdMap = HashMap<Uuid, std::sync::Arc<Connection>, BuildHasherDefault<IdHasher>>;

/// Hashes a [`Uuid`] by folding its bytes: the key is already uniformly random.
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection.
    pub fn insert(&self, conn: std::sync::Arc<Connection>) {
        self.lock().insert(conn.id, conn);
    }

    /// Removes a connection; returns whether it was there. The map shrinks when it has
    /// emptied (see the module's header); the connection is dropped after the lock.
    pub fn remove(&self, id: &Uuid) -> bool {
        let mut map = self.lock();
        let removed = map.remove(id);
        if removed.is_some() {
            shrink_if_sparse(&mut map);
        }
        drop(map);
        removed.is_some()
    }

    /// The map's capacity (tests).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.lock().capacity()
    }

    /// Looks a connection up.
    pub fn get(&self, id: &Uuid) -> Option<std::sync::Arc<Connection>> {
        self.lock().get(id).cloned()
    }

    /// Every connection this node holds (rare paths: fencing after this node was reaped, the
    /// write-back after the store lost this node's state).
    pub fn all(&self) -> Vec<std::sync::Arc<Connection>> {
        self.lock().values().cloned().collect()
    }

    /// The ids of every connection this node holds (the store resync's sweep).
    pub fn ids(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Calls `f` with the connection of each id this node holds (which may be closing:
    /// its outbox says so), or `None`, all under one lock: a group send reaches a page of
    /// members without a lock and a reference count round trip per member. `f` must not
    /// block: no socket write under this lock.
    pub fn with_each(&self, ids: &[Uuid], mut f: impl FnMut(Option<&std::sync::Arc<Connection>>)) {
        let map = self.lock();
        for id in ids {
            f(map.get(id));
        }
    }

    /// How many connections are registered and not closing (the store resync's check, once
    /// per interval: one pass under the lock).
    pub fn open_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|c| !c.outbox.is_closed())
            .count()
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;
    use store::shrink::MIN_SHRINK_CAPACITY;

    fn conn() -> Arc<Connection> {
        Arc::new(Connection::new(
            Uuid::new_v4(),
            0,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            None,
            None,
            serde_json::Value::Null,
        ))
    }

    #[test]
    fn with_each_sees_held_connections_only() {
        let registry = Registry::default();
        let (live, closed) = (conn(), conn());
        registry.insert(live.clone());
        registry.insert(closed.clone());
        closed.outbox.mark_closed();
        let mut seen = Vec::new();
        registry.with_each(&[live.id, closed.id, Uuid::new_v4()], |c| {
            seen.push(c.map(|c| (c.id, c.outbox.is_closed())));
        });
        assert_eq!(
            seen,
            vec![Some((live.id, false)), Some((closed.id, true)), None]
        );
        assert!(registry.get(&live.id).is_some());
        assert!(registry.remove(&live.id));
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn the_map_shrinks_once_a_burst_left_and_not_under_churn() {
        let mut map = IdMap::default();
        let conns: Vec<_> = (0..20_000).map(|_| conn()).collect();
        for c in &conns {
            map.insert(c.id, c.clone());
        }
        let full = map.capacity();
        // Half leave: the table stays, it may fill again.
        for c in &conns[..10_000] {
            map.remove(&c.id);
            assert!(!shrink_if_sparse(&mut map));
        }
        // Most leave: it shrinks, keeping room for twice what it holds.
        let mut shrinks = 0;
        for c in &conns[10_000..19_000] {
            map.remove(&c.id);
            shrinks += usize::from(shrink_if_sparse(&mut map));
        }
        assert!(shrinks >= 1);
        let shrunk = map.capacity();
        assert!(shrunk <= full / 4, "{shrunk} of {full}");
        assert!(shrunk >= 2 * map.len());
        // Churn at that size never shrinks it again.
        for _ in 0..5_000 {
            let c = conn();
            map.insert(c.id, c.clone());
            map.remove(&c.id);
            assert!(!shrink_if_sparse(&mut map));
        }
        assert!(map.capacity() <= shrunk);
    }

    #[test]
    fn an_emptied_registry_keeps_next_to_nothing() {
        let registry = Registry::default();
        let conns: Vec<_> = (0..20_000).map(|_| conn()).collect();
        for c in &conns {
            registry.insert(c.clone());
        }
        assert!(registry.capacity() >= 20_000);
        for c in &conns {
            assert!(registry.remove(&c.id));
        }
        assert!(registry.capacity() <= MIN_SHRINK_CAPACITY);
        assert!(!registry.remove(&conns[0].id));
    }

    #[test]
    fn id_hashes_differ_for_ids_that_differ_in_any_half() {
        let hash = |bytes: [u8; 16]| {
            let mut h = IdHasher::default();
            h.write(&bytes);
            h.finish()
        };
        let mut a = [7u8; 16];
        let base = hash(a);
        a[3] ^= 1;
        assert_ne!(hash(a), base);
        a[3] ^= 1;
        a[12] ^= 1;
        assert_ne!(hash(a), base);
    }

    /// Every connection holds an `Arc<Connection>` for its whole life: its size is paid per
    /// idle connection, in jemalloc's size classes (256, then 320 bytes).
    #[test]
    fn a_connection_fits_the_256_byte_class() {
        let arc_inner = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Connection>();
        assert!(arc_inner <= 256, "Arc<Connection> takes {arc_inner} bytes");
    }
}
