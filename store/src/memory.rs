//! The embedded in-memory backend: one process, no setup, the default.
//!
//! Records are kept compact, since a gateway node holds one per connection, and the map's
//! every bucket (not only the used ones) is an entry's size: the id is only the map's key,
//! and a UUID id (the gateway's) is kept as its 16 bytes; the node name is shared by every
//! connection of that node, behind a thin pointer; the address is an [`IpAddr`]; strings are
//! exactly sized; and what most connections lack (a context, groups) is one optional box, so
//! a connection in no group with a `null` context allocates nothing beyond its bucket. The maps
//! of connections, groups and queued cleanups give their memory back once a burst has
//! left (`shrink`).

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::shrink::shrink_if_sparse;
use crate::{
    ConnectionRecord, MembersPage, NodeCheck, NodeInfo, PendingCleanup, Store, StoreError, names,
};

/// A store held in this process's memory. Cloning is not supported: share it in an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Connections whose id is a UUID in its canonical text (lowercase, hyphenated): every
    /// id the gateway makes.
    connections: HashMap<Uuid, Entry>,
    /// Connections with any other id.
    named: HashMap<Box<str>, Entry>,
    groups: HashMap<String, Group>,
    /// The last version a group was given; versions are never reused.
    last_version: u64,
    /// Each node's heartbeat expiry and address.
    nodes: HashMap<String, (Instant, String)>,
    /// Every node name a record named, shared by the records: a name referenced by more
    /// than this set has connections.
    node_names: HashSet<NodeName>,
    /// The cleanup queue by connection id, and its index by due time.
    cleanups: HashMap<String, PendingCleanup>,
    cleanups_due: BTreeSet<(u64, String)>,
    /// Reap leases: node -> (expiry, holder).
    leases: HashMap<String, (Instant, String)>,
    /// Fencing marks: node -> (expiry, reaped at ms).
    reaped: HashMap<String, (Instant, u64)>,
    /// Node marks ([`Store::mark_node`]): node -> expiry.
    marks: HashMap<String, Instant>,
}

#[derive(Debug, Default)]
struct Group {
    /// Ordered so that a cursor (the last id returned) can resume a walk.
    members: BTreeSet<String>,
    /// Changes with every join and leave (see [`Store::group_version`]).
    version: u64,
}

/// One connection's record, without its id (the map's key).
#[derive(Debug)]
struct Entry {
    node: NodeName,
    connected_at_ms: u64,
    user_agent: Option<Box<str>>,
    source_ip: SourceIp,
    /// The context when it is not `null`, and the groups when there are any.
    more: Option<Box<More>>,
}

/// What few connections have.
#[derive(Debug, Default)]
struct More {
    context: serde_json::Value,
    groups: Vec<Box<str>>,
}

/// A connection's address: parsed when the record's text is an address in its usual
/// spelling (so that it reads back the same), else kept as the text.
#[derive(Debug)]
enum SourceIp {
    Ip(IpAddr),
    Text(Box<str>),
}

impl SourceIp {
    fn new(text: &str) -> Self {
        match text.parse::<IpAddr>() {
            Ok(ip) if ip.to_string() == text => SourceIp::Ip(ip),
            _ => SourceIp::Text(text.into()),
        }
    }
}

impl std::fmt::Display for SourceIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceIp::Ip(ip) => ip.fmt(f),
            SourceIp::Text(text) => f.write_str(text),
        }
    }
}

/// A node name shared by the records of that node's connections; a thin pointer (the
/// name's length lives with the name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NodeName(Arc<Box<str>>);

impl Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for NodeName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// The UUID a connection id spells, when it spells one as the gateway writes them.
fn uuid_of(id: &str) -> Option<Uuid> {
    // 36 characters: the hyphenated form only (`try_parse` also takes other spellings).
    if id.len() != 36 || id.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Uuid::try_parse(id).ok()
}

impl Entry {
    fn record(&self, id: &str) -> ConnectionRecord {
        ConnectionRecord {
            id: id.to_owned(),
            node: self.node.to_string(),
            connected_at_ms: self.connected_at_ms,
            source_ip: self.source_ip.to_string(),
            user_agent: self.user_agent.as_deref().map(str::to_owned),
            context: self
                .more
                .as_ref()
                .map_or(serde_json::Value::Null, |more| more.context.clone()),
        }
    }

    fn groups(&self) -> &[Box<str>] {
        self.more.as_deref().map_or(&[], |more| &more.groups)
    }

    /// Takes the groups (the record is being replaced or removed).
    fn take_groups(&mut self) -> Vec<Box<str>> {
        self.more
            .as_mut()
            .map(|more| std::mem::take(&mut more.groups))
            .unwrap_or_default()
    }
}

impl Inner {
    fn entry(&self, id: &str) -> Option<&Entry> {
        match uuid_of(id) {
            Some(uuid) => self.connections.get(&uuid),
            None => self.named.get(id),
        }
    }

    fn entry_mut(&mut self, id: &str) -> Option<&mut Entry> {
        match uuid_of(id) {
            Some(uuid) => self.connections.get_mut(&uuid),
            None => self.named.get_mut(id),
        }
    }

    fn remove_entry(&mut self, id: &str) -> Option<Entry> {
        match uuid_of(id) {
            Some(uuid) => self.connections.remove(&uuid),
            None => self.named.remove(id),
        }
    }

    fn insert_entry(&mut self, id: &str, entry: Entry) {
        match uuid_of(id) {
            Some(uuid) => self.connections.insert(uuid, entry),
            None => self.named.insert(id.into(), entry),
        };
    }

    /// The ids of the connections `keep` accepts.
    fn ids_where(&self, keep: impl Fn(&str, &Entry) -> bool) -> Vec<String> {
        let mut text = Uuid::encode_buffer();
        let uuids = self.connections.iter().filter_map(|(uuid, entry)| {
            let id = uuid.hyphenated().encode_lower(&mut text);
            keep(id, entry).then(|| id.to_owned())
        });
        let uuids: Vec<String> = uuids.collect();
        let named = self
            .named
            .iter()
            .filter(|(id, entry)| keep(id, entry))
            .map(|(id, _)| id.to_string());
        uuids.into_iter().chain(named).collect()
    }
}

impl Inner {
    fn node_name(&mut self, node: &str) -> NodeName {
        if let Some(name) = self.node_names.get(node) {
            return name.clone();
        }
        let name = NodeName(Arc::new(node.into()));
        self.node_names.insert(name.clone());
        name
    }

    /// Removes `id` from `group`, dropping the group when it empties. Whether it was there.
    fn remove_member(&mut self, group: &str, id: &str) -> bool {
        let Some(entry) = self.groups.get_mut(group) else {
            return false;
        };
        if !entry.members.remove(id) {
            return false;
        }
        if entry.members.is_empty() {
            self.groups.remove(group);
            shrink_if_sparse(&mut self.groups);
        } else {
            self.last_version += 1;
            entry.version = self.last_version;
        }
        true
    }
}

impl Inner {
    fn alive(&self, node: &str, now: Instant) -> bool {
        self.nodes.get(node).is_some_and(|(until, _)| *until > now)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every change is a
        // single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are registered (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        let inner = self.lock();
        inner.connections.len() + inner.named.len()
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn register(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
        names::id(&record.id)?;
        names::node(&record.node)?;
        let mut inner = self.lock();
        let node = inner.node_name(&record.node);
        let groups = inner
            .remove_entry(&record.id)
            .map(|mut old| old.take_groups())
            .unwrap_or_default();
        let more = (!record.context.is_null() || !groups.is_empty()).then(|| {
            Box::new(More {
                context: record.context.clone(),
                groups,
            })
        });
        let entry = Entry {
            node,
            connected_at_ms: record.connected_at_ms,
            user_agent: record.user_agent.as_deref().map(Box::from),
            source_ip: SourceIp::new(&record.source_ip),
            more,
        };
        inner.insert_entry(&record.id, entry);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        names::id(id)?;
        Ok(self.lock().entry(id).map(|e| e.record(id)))
    }

    async fn unregister(&self, id: &str) -> Result<bool, StoreError> {
        names::id(id)?;
        let mut inner = self.lock();
        let Some(mut entry) = inner.remove_entry(id) else {
            return Ok(false);
        };
        shrink_if_sparse(&mut inner.connections);
        shrink_if_sparse(&mut inner.named);
        for group in entry.take_groups() {
            inner.remove_member(&group, id);
        }
        Ok(true)
    }

    async fn join(&self, group: &str, id: &str) -> Result<bool, StoreError> {
        names::group(group)?;
        names::id(id)?;
        let mut inner = self.lock();
        let Some(entry) = inner.entry_mut(id) else {
            return Err(StoreError::NotRegistered(id.to_owned()));
        };
        let more = entry.more.get_or_insert_default();
        if !more.groups.iter().any(|g| &**g == group) {
            more.groups.push(group.into());
        }
        let inner = &mut *inner;
        let entry = inner.groups.entry(group.to_owned()).or_default();
        let added = entry.members.insert(id.to_owned());
        if added {
            inner.last_version += 1;
            entry.version = inner.last_version;
        }
        Ok(added)
    }

    async fn leave(&self, group: &str, id: &str) -> Result<bool, StoreError> {
        names::group(group)?;
        names::id(id)?;
        let mut inner = self.lock();
        if let Some(entry) = inner.entry_mut(id)
            && let Some(more) = &mut entry.more
        {
            more.groups.retain(|g| &**g != group);
            if more.groups.is_empty() && more.context.is_null() {
                entry.more = None;
            }
        }
        Ok(inner.remove_member(group, id))
    }

    async fn members(
        &self,
        group: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError> {
        names::group(group)?;
        let inner = self.lock();
        let Some(Group { members, .. }) = inner.groups.get(group) else {
            return Ok(MembersPage::default());
        };
        let count = count.max(1);
        let page: Vec<String> = match cursor {
            None => members.iter().take(count).cloned().collect(),
            Some(after) => members
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .take(count)
                .cloned()
                .collect(),
        };
        let cursor = if page.len() == count {
            page.last().cloned()
        } else {
            None
        };
        Ok(MembersPage {
            members: page,
            cursor,
        })
    }

    async fn count(&self, group: &str) -> Result<u64, StoreError> {
        names::group(group)?;
        Ok(self
            .lock()
            .groups
            .get(group)
            .map_or(0, |g| g.members.len() as u64))
    }

    async fn group_version(&self, group: &str) -> Result<Option<u64>, StoreError> {
        names::group(group)?;
        Ok(self.lock().groups.get(group).map(|g| g.version))
    }

    async fn groups_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        names::id(id)?;
        let inner = self.lock();
        let mut groups: Vec<String> = inner
            .entry(id)
            .map(|e| e.groups().iter().map(|g| g.to_string()).collect())
            .unwrap_or_default();
        groups.sort_unstable();
        Ok(groups)
    }

    async fn mark_node(&self, node: &str, keep: Duration) -> Result<(), StoreError> {
        names::node(node)?;
        self.lock()
            .marks
            .insert(node.to_owned(), Instant::now() + keep);
        Ok(())
    }

    async fn node_check(&self, node: &str, keep: Duration) -> Result<NodeCheck, StoreError> {
        names::node(node)?;
        let now = Instant::now();
        let mut inner = self.lock();
        let marked = match inner.marks.get_mut(node) {
            Some(until) if *until > now => {
                *until = now + keep;
                true
            }
            Some(_) => {
                inner.marks.remove(node);
                false
            }
            None => false,
        };
        // Every record naming the node holds its shared name: the count beyond the set's.
        let connections = inner.node_names.get(node).map_or(0, |name| {
            Arc::strong_count(&name.0).saturating_sub(1) as u64
        });
        Ok(NodeCheck {
            marked,
            connections,
        })
    }

    async fn heartbeat(&self, node: &str, address: &str, ttl: Duration) -> Result<(), StoreError> {
        names::node(node)?;
        self.lock()
            .nodes
            .insert(node.to_owned(), (Instant::now() + ttl, address.to_owned()));
        Ok(())
    }

    async fn node_alive(&self, node: &str) -> Result<bool, StoreError> {
        names::node(node)?;
        Ok(self
            .lock()
            .nodes
            .get(node)
            .is_some_and(|(until, _)| *until > Instant::now()))
    }

    async fn node_address(&self, node: &str) -> Result<Option<String>, StoreError> {
        names::node(node)?;
        Ok(self
            .lock()
            .nodes
            .get(node)
            .filter(|(until, address)| *until > Instant::now() && !address.is_empty())
            .map(|(_, address)| address.clone()))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.nodes.retain(|_, (until, _)| *until > now);
        let mut nodes: Vec<NodeInfo> = inner
            .nodes
            .iter()
            .map(|(name, (_, address))| NodeInfo {
                name: name.clone(),
                address: address.clone(),
            })
            .collect();
        nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    async fn queue_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError> {
        names::id(&cleanup.connection_id)?;
        let mut inner = self.lock();
        if inner.cleanups.contains_key(&cleanup.connection_id) {
            return Ok(false);
        }
        let id = cleanup.connection_id.clone();
        inner
            .cleanups_due
            .insert((cleanup.next_attempt_ms, id.clone()));
        inner.cleanups.insert(id, cleanup.clone());
        Ok(true)
    }

    async fn claim_cleanups(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingCleanup>, StoreError> {
        let mut inner = self.lock();
        let due: Vec<(u64, String)> = inner
            .cleanups_due
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .cloned()
            .collect();
        let until = now_ms.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            inner.cleanups_due.remove(&key);
            let (_, id) = key;
            inner.cleanups_due.insert((until, id.clone()));
            if let Some(cleanup) = inner.cleanups.get_mut(&id) {
                out.push(cleanup.clone());
                cleanup.next_attempt_ms = until;
            }
        }
        Ok(out)
    }

    async fn retry_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError> {
        names::id(&cleanup.connection_id)?;
        let mut inner = self.lock();
        let Some(old) = inner.cleanups.get(&cleanup.connection_id) else {
            return Ok(false);
        };
        let key = (old.next_attempt_ms, cleanup.connection_id.clone());
        inner.cleanups_due.remove(&key);
        inner
            .cleanups_due
            .insert((cleanup.next_attempt_ms, cleanup.connection_id.clone()));
        inner
            .cleanups
            .insert(cleanup.connection_id.clone(), cleanup.clone());
        Ok(true)
    }

    async fn finish_cleanup(&self, connection_id: &str) -> Result<bool, StoreError> {
        names::id(connection_id)?;
        let mut inner = self.lock();
        let Some(old) = inner.cleanups.remove(connection_id) else {
            return Ok(false);
        };
        shrink_if_sparse(&mut inner.cleanups);
        inner
            .cleanups_due
            .remove(&(old.next_attempt_ms, connection_id.to_owned()));
        Ok(true)
    }

    async fn pending_cleanups(&self) -> Result<u64, StoreError> {
        Ok(self.lock().cleanups.len() as u64)
    }

    async fn cleanup_queued(&self, connection_id: &str) -> Result<bool, StoreError> {
        names::id(connection_id)?;
        Ok(self.lock().cleanups.contains_key(connection_id))
    }

    async fn remove_heartbeat(&self, node: &str) -> Result<(), StoreError> {
        names::node(node)?;
        let mut inner = self.lock();
        inner.nodes.remove(node);
        inner.marks.remove(node);
        Ok(())
    }

    async fn dead_nodes(&self) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        let mut dead: Vec<String> = inner
            .node_names
            .iter()
            .filter(|name| Arc::strong_count(&name.0) > 1 && !inner.alive(name, now))
            .map(|name| name.to_string())
            .collect();
        dead.sort_unstable();
        Ok(dead)
    }

    /// A scan of every record (this store keeps no per-node index: a dead node on an
    /// embedded store is rare, and its reaping pays for it).
    async fn node_connections(
        &self,
        node: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError> {
        names::node(node)?;
        let count = count.max(1);
        let inner = self.lock();
        let mut ids =
            inner.ids_where(|id, e| &*e.node == node && cursor.is_none_or(|after| id > after));
        ids.sort_unstable();
        ids.truncate(count);
        let cursor = (ids.len() == count).then(|| ids[count - 1].clone());
        Ok(MembersPage {
            members: ids,
            cursor,
        })
    }

    async fn release(&self, node: &str, id: &str) -> Result<(), StoreError> {
        names::node(node)?;
        names::id(id)?;
        Ok(())
    }

    async fn reap_lease(
        &self,
        node: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        names::node(node)?;
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.leases.get(node) {
            Some((until, other)) if *until > now && other != holder => Ok(false),
            _ => {
                inner
                    .leases
                    .insert(node.to_owned(), (now + ttl, holder.to_owned()));
                Ok(true)
            }
        }
    }

    async fn drop_reap_lease(&self, node: &str, holder: &str) -> Result<(), StoreError> {
        names::node(node)?;
        let mut inner = self.lock();
        if inner.leases.get(node).is_some_and(|(_, h)| h == holder) {
            inner.leases.remove(node);
        }
        Ok(())
    }

    async fn mark_reaped(&self, node: &str, at_ms: u64, ttl: Duration) -> Result<(), StoreError> {
        names::node(node)?;
        self.lock()
            .reaped
            .insert(node.to_owned(), (Instant::now() + ttl, at_ms));
        Ok(())
    }

    async fn reaped_at(&self, node: &str) -> Result<Option<u64>, StoreError> {
        names::node(node)?;
        let now = Instant::now();
        Ok(self
            .lock()
            .reaped
            .get(node)
            .filter(|(until, _)| *until > now)
            .map(|(_, at)| *at))
    }

    async fn clear_reaped(&self, node: &str) -> Result<(), StoreError> {
        names::node(node)?;
        self.lock().reaped.remove(node);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, source_ip: &str, context: serde_json::Value) -> ConnectionRecord {
        ConnectionRecord {
            id: id.to_owned(),
            node: "node-a".to_owned(),
            connected_at_ms: 7,
            source_ip: source_ip.to_owned(),
            user_agent: None,
            context,
        }
    }

    /// Every bucket of the connection map is one key and one entry, used or not (at 15,000
    /// connections the map has 32,768 buckets): the common record fits in 80 bytes.
    #[test]
    fn a_connections_bucket_is_small() {
        assert!(
            size_of::<(Uuid, Entry)>() <= 80,
            "{}",
            size_of::<(Uuid, Entry)>()
        );
    }

    /// A UUID id is kept as its bytes, an address as an address, and a `null` context with
    /// no group as nothing; whatever does not fit that reads back as it was written.
    #[tokio::test]
    async fn records_read_back_as_written_whatever_their_spelling() {
        let store = MemoryStore::new();
        let uuid = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let cases = [
            record(uuid, "203.0.113.9", serde_json::Value::Null),
            record(
                &uuid.to_uppercase(),
                "2001:db8::1",
                serde_json::json!({"user": 1}),
            ),
            record("c-1", "::ffff:10.0.0.1", serde_json::Value::Null),
            record("braced", "not an address", serde_json::json!(2)),
            record(
                "0a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d",
                "010.000.000.001",
                serde_json::Value::Null,
            ),
        ];
        for case in &cases {
            store.register(case).await.unwrap();
        }
        assert_eq!(store.connection_count(), cases.len());
        for case in &cases {
            assert_eq!(store.get(&case.id).await.unwrap().as_ref(), Some(case));
        }
        let page = store.node_connections("node-a", None, 10).await.unwrap();
        let mut ids: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
        ids.sort_unstable();
        assert_eq!(page.members, ids);
    }

    /// Groups live in the record's optional part: joining makes it, leaving the last group
    /// drops it, and re-registering keeps the groups.
    #[tokio::test]
    async fn groups_survive_re_registering_and_leave_nothing_behind() {
        let store = MemoryStore::new();
        let id = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        store
            .register(&record(id, "10.0.0.1", serde_json::Value::Null))
            .await
            .unwrap();
        assert!(store.join("room", id).await.unwrap());
        store
            .register(&record(id, "10.0.0.2", serde_json::Value::Null))
            .await
            .unwrap();
        assert_eq!(store.groups_of(id).await.unwrap(), vec!["room".to_owned()]);
        assert!(store.leave("room", id).await.unwrap());
        let uuid = uuid_of(id).unwrap();
        assert!(store.lock().connections[&uuid].more.is_none());
        assert!(store.join("room", id).await.unwrap());
        assert!(store.unregister(id).await.unwrap());
        assert_eq!(store.count("room").await.unwrap(), 0);
        assert_eq!(store.connection_count(), 0);
    }
    use crate::shrink::MIN_SHRINK_CAPACITY;

    #[tokio::test]
    async fn the_maps_give_their_memory_back_after_a_burst_leaves() {
        let store = MemoryStore::new();
        for i in 0..20_000 {
            store
                .register(&record(
                    &format!("c-{i}"),
                    "127.0.0.1",
                    serde_json::Value::Null,
                ))
                .await
                .unwrap();
            store
                .join(&format!("own-{i}"), &format!("c-{i}"))
                .await
                .unwrap();
        }
        let capacities = |s: &MemoryStore| {
            let inner = s.lock();
            (
                inner.connections.capacity() + inner.named.capacity(),
                inner.groups.capacity(),
            )
        };
        let (conns, groups) = capacities(&store);
        assert!(conns >= 20_000 && groups >= 20_000);
        for i in 0..20_000 {
            store.unregister(&format!("c-{i}")).await.unwrap();
        }
        let (conns, groups) = capacities(&store);
        assert!(conns <= 2 * MIN_SHRINK_CAPACITY, "connections keep {conns}");
        assert!(groups <= MIN_SHRINK_CAPACITY, "groups keep {groups}");
    }
}
