//! The store behaviour suite, written once and run against every backend: the embedded
//! memory store, a real standalone Redis and a real three-master Redis Cluster (each on
//! free ports, started by the harness). On Redis the suite ends with every connection
//! unregistered and every heartbeat expired, so no key with the test's prefix may remain.

use std::sync::Arc;
use std::time::Duration;

use store::{ConnectionRecord, PendingCleanup, RedisStore, SharedStore, StoreError};
use tests::redis::{RedisServer, Resp};

fn record(id: &str) -> ConnectionRecord {
    ConnectionRecord {
        id: id.to_owned(),
        node: "node-a".into(),
        connected_at_ms: 1_700_000_000_000,
        source_ip: "10.0.0.1".into(),
        user_agent: Some("ua".into()),
        context: serde_json::Value::Null,
    }
}

/// Every behaviour the gateway and functions rely on.
pub async fn behaviour_suite(store: SharedStore) {
    // register / get / replace
    assert_eq!(store.get("c1").await.unwrap(), None);
    store.register(&record("c1")).await.unwrap();
    assert_eq!(store.get("c1").await.unwrap(), Some(record("c1")));
    let mut with_context = record("c1");
    with_context.context = serde_json::json!({"room": "r"});
    store.register(&with_context).await.unwrap();
    assert_eq!(store.get("c1").await.unwrap().unwrap().context["room"], "r");
    // replacing drops fields the new record lacks, and keeps nested context intact
    let mut bare = record("c1");
    bare.user_agent = None;
    bare.context = serde_json::json!({"room": "r", "tags": ["a", {"b": null}], "n": 1.5});
    store.register(&bare).await.unwrap();
    assert_eq!(store.get("c1").await.unwrap(), Some(bare));
    store.register(&with_context).await.unwrap();

    // names both backends refuse: empty, or with a brace (Redis hash tags)
    let invalid = |r: Result<bool, StoreError>| matches!(r, Err(StoreError::InvalidName { .. }));
    assert!(invalid(store.join("a{b", "c1").await));
    assert!(invalid(store.join("g", "").await));
    assert!(invalid(store.leave("", "c1").await));
    assert!(invalid(store.unregister("c}").await));
    assert!(matches!(
        store.register(&record("{c}")).await,
        Err(StoreError::InvalidName { .. })
    ));
    assert!(matches!(
        store.count("").await,
        Err(StoreError::InvalidName { .. })
    ));

    // join needs a registered connection
    assert!(matches!(
        store.join("g", "ghost").await,
        Err(StoreError::NotRegistered(_))
    ));
    assert_eq!(store.count("g").await.unwrap(), 0);

    // join / leave / count / members / groups_of
    assert!(store.join("g", "c1").await.unwrap());
    assert!(
        !store.join("g", "c1").await.unwrap(),
        "second join is a no-op"
    );
    store.register(&record("c2")).await.unwrap();
    store.join("g", "c2").await.unwrap();
    store.join("h", "c2").await.unwrap();
    assert_eq!(store.count("g").await.unwrap(), 2);
    assert_eq!(store.all_members("g").await.unwrap(), ["c1", "c2"]);
    assert_eq!(store.groups_of("c2").await.unwrap(), ["g", "h"]);
    // re-registering keeps memberships
    store.register(&record("c2")).await.unwrap();
    assert_eq!(store.groups_of("c2").await.unwrap(), ["g", "h"]);
    assert!(store.leave("h", "c2").await.unwrap());
    assert!(!store.leave("h", "c2").await.unwrap());
    assert_eq!(store.count("h").await.unwrap(), 0);

    // unregister removes the record and every membership in one step
    store.join("h", "c2").await.unwrap();
    assert!(store.unregister("c2").await.unwrap());
    assert!(!store.unregister("c2").await.unwrap());
    assert_eq!(store.get("c2").await.unwrap(), None);
    assert_eq!(store.all_members("g").await.unwrap(), ["c1"]);
    assert_eq!(store.count("h").await.unwrap(), 0);
    assert!(store.groups_of("c2").await.unwrap().is_empty());

    // a group's version changes with every join and leave, and only then
    assert_eq!(store.group_version("v").await.unwrap(), None, "empty group");
    store.register(&record("c3")).await.unwrap();
    store.join("v", "c1").await.unwrap();
    let mut versions = vec![store.group_version("v").await.unwrap().expect("a version")];
    let current = || async { store.group_version("v").await.unwrap().unwrap() };
    assert_eq!(current().await, versions[0], "stable without changes");
    store.join("v", "c1").await.unwrap();
    store.leave("v", "c3").await.unwrap();
    store.count("v").await.unwrap();
    store.register(&record("c3")).await.unwrap();
    assert_eq!(current().await, versions[0], "no-op joins, leaves, reads");
    store.join("v", "c3").await.unwrap();
    versions.push(current().await);
    store.leave("v", "c3").await.unwrap();
    versions.push(current().await);
    store.join("v", "c3").await.unwrap();
    versions.push(current().await);
    store.unregister("c3").await.unwrap();
    versions.push(current().await);
    let mut distinct = versions.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), versions.len(), "never reused: {versions:?}");
    store.leave("v", "c1").await.unwrap();
    assert_eq!(store.group_version("v").await.unwrap(), None, "emptied");
    store.join("v", "c1").await.unwrap();
    assert!(
        !versions.contains(&current().await),
        "a group emptied and joined again has a new version"
    );
    store.leave("v", "c1").await.unwrap();

    // paging walks a large group completely
    for i in 0..2500 {
        let id = format!("m{i:05}");
        store.register(&record(&id)).await.unwrap();
        store.join("big", &id).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.members("big", cursor.as_deref(), 400).await.unwrap();
        pages += 1;
        seen.extend(page.members);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2500);
    assert!(pages > 1, "paged");
    assert_eq!(store.count("big").await.unwrap(), 2500);
    for i in 0..2500 {
        store.unregister(&format!("m{i:05}")).await.unwrap();
    }
    assert_eq!(store.count("big").await.unwrap(), 0);

    // node liveness and addresses
    assert!(!store.node_alive("node-a").await.unwrap());
    assert_eq!(store.node_address("node-a").await.unwrap(), None);
    store
        .heartbeat("node-a", "http://10.0.0.1:9090", Duration::from_millis(300))
        .await
        .unwrap();
    store
        .heartbeat("node-b", "", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(store.node_alive("node-a").await.unwrap());
    assert_eq!(
        store.node_address("node-a").await.unwrap().as_deref(),
        Some("http://10.0.0.1:9090")
    );
    assert_eq!(
        store.node_address("node-b").await.unwrap(),
        None,
        "no address"
    );
    let node = |name: &str, address: &str| store::NodeInfo {
        name: name.into(),
        address: address.into(),
    };
    assert_eq!(
        store.nodes().await.unwrap(),
        [node("node-a", "http://10.0.0.1:9090"), node("node-b", "")]
    );
    tests::wait::eventually("the heartbeat to expire", Duration::from_secs(5), || {
        let store = store.clone();
        async move { !store.node_alive("node-a").await.unwrap() }
    })
    .await;
    tests::wait::eventually("the node list to empty", Duration::from_secs(5), || {
        let store = store.clone();
        async move { store.nodes().await.unwrap().is_empty() }
    })
    .await;
    assert_eq!(store.node_address("node-a").await.unwrap(), None);

    dead_node_reaping(&store).await;

    store.unregister("c1").await.unwrap();
    assert_eq!(store.count("g").await.unwrap(), 0);
    // node-a's heartbeat expired: with its last connection gone it is no longer listed.
    assert_eq!(store.dead_nodes().await.unwrap(), Vec::<String>::new());

    cleanup_queue_suite(&store).await;
    node_state_suite(&store).await;
}

/// What a node reads to find out that the store lost its state, and the batched read of
/// memberships it keeps to write them back.
async fn node_state_suite(store: &SharedStore) {
    let keep = Duration::from_secs(60);
    let node = "node-m";
    let empty = store::NodeCheck::default();
    assert_eq!(store.node_check(node, keep).await.unwrap(), empty);
    store.mark_node(node, keep).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = format!("m{i}");
        let mut r = record(&id);
        r.node = node.into();
        store.register(&r).await.unwrap();
        ids.push(id);
    }
    store.join("gb", "m0").await.unwrap();
    store.join("ga", "m0").await.unwrap();
    store.join("ga", "m2").await.unwrap();
    let check = store.node_check(node, keep).await.unwrap();
    assert_eq!(
        check,
        store::NodeCheck {
            marked: true,
            connections: 3
        }
    );
    ids.push("never-registered".into());
    assert_eq!(
        store.groups_of_many(&ids).await.unwrap(),
        vec![
            vec!["ga".to_owned(), "gb".to_owned()],
            vec![],
            vec!["ga".to_owned()],
            vec![],
        ]
    );
    assert!(store.groups_of_many(&[]).await.unwrap().is_empty());
    assert!(matches!(
        store.groups_of_many(&["bad{id}".to_owned()]).await,
        Err(StoreError::InvalidName { .. })
    ));
    // A check renews the mark for its own keep; a short one lapses, and a check finds the
    // mark gone and does not bring it back.
    let short = Duration::from_millis(1);
    tests::wait::eventually("the mark to lapse", Duration::from_secs(5), || async {
        !store.node_check(node, short).await.unwrap().marked
    })
    .await;
    assert!(!store.node_check(node, keep).await.unwrap().marked);
    store.mark_node(node, keep).await.unwrap();
    for id in &ids[..3] {
        store.unregister(id).await.unwrap();
    }
    assert_eq!(
        store.node_check(node, keep).await.unwrap(),
        store::NodeCheck {
            marked: true,
            connections: 0
        }
    );
    // A clean shutdown takes the mark away with the heartbeat.
    store.remove_heartbeat(node).await.unwrap();
    assert_eq!(store.node_check(node, keep).await.unwrap(), empty);
    assert_eq!(store.dead_nodes().await.unwrap(), Vec::<String>::new());
}

fn pending(id: &str, due_ms: u64) -> PendingCleanup {
    PendingCleanup {
        connection_id: id.to_owned(),
        event_id: format!("{id}:cleanup"),
        node: "node-a".into(),
        seq: 3,
        connected_at_ms: 1_700_000_000_000,
        source_ip: "10.0.0.1".into(),
        user_agent: Some("ua".into()),
        host: None,
        context: serde_json::json!({"room": "r", "n": [1, null]}),
        reason: "client_close".into(),
        close_code: Some(4000),
        close_reason: "bye".into(),
        stats: None,
        queued_at_ms: 1_000,
        attempts: 0,
        next_attempt_ms: due_ms,
    }
}

/// The durable cleanup queue: one per connection, claims only what is due and never the
/// same one twice within a lease, retries keep what they say, finish removes.
async fn cleanup_queue_suite(store: &SharedStore) {
    let lease = Duration::from_secs(60);
    assert_eq!(store.pending_cleanups().await.unwrap(), 0);
    assert!(
        store
            .claim_cleanups(10_000, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.queue_cleanup(&pending("a{b", 1_000)).await,
        Err(StoreError::InvalidName { .. })
    ));

    // one per connection, whoever queues it: the first one stays
    assert!(store.queue_cleanup(&pending("q1", 1_000)).await.unwrap());
    let mut other = pending("q1", 1_000);
    other.node = "node-b".into();
    assert!(!store.queue_cleanup(&other).await.unwrap(), "queued twice");
    assert!(store.queue_cleanup(&pending("q2", 2_000)).await.unwrap());
    assert!(store.queue_cleanup(&pending("q3", 50_000)).await.unwrap());
    assert_eq!(store.pending_cleanups().await.unwrap(), 3);
    assert!(store.cleanup_queued("q1").await.unwrap());
    assert!(!store.cleanup_queued("q4").await.unwrap());

    // only what is due, earliest first, at most `max`, with everything it was given
    let first = store.claim_cleanups(5_000, lease, 1).await.unwrap();
    assert_eq!(first, [pending("q1", 1_000)]);
    let rest = store.claim_cleanups(5_000, lease, 10).await.unwrap();
    assert_eq!(rest, [pending("q2", 2_000)], "q1 is claimed, q3 not due");
    // a claimed cleanup is not claimed again before its lease lapses, by anyone
    assert!(
        store
            .claim_cleanups(5_000, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (a, b) = tokio::join!(
        store.claim_cleanups(60_000, lease, 10),
        store.claim_cleanups(60_000, lease, 10)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.len() + b.len(),
        1,
        "q3 claimed twice at once: {a:?} {b:?}"
    );
    // after the lease (5 000 + 60 000) q1 and q2 are due again: a claimer that died
    let again = store.claim_cleanups(65_000, lease, 10).await.unwrap();
    let ids: Vec<&str> = again.iter().map(|c| c.connection_id.as_str()).collect();
    assert_eq!(ids, ["q1", "q2"]);

    // a retry keeps its attempts and new due time
    let mut retried = pending("q1", 200_000);
    retried.attempts = 4;
    assert!(store.retry_cleanup(&retried).await.unwrap());
    assert!(
        store
            .claim_cleanups(199_999, lease, 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.connection_id != "q1")
    );
    let due = store.claim_cleanups(200_000, lease, 10).await.unwrap();
    let q1 = due
        .iter()
        .find(|c| c.connection_id == "q1")
        .expect("q1 due");
    assert_eq!(q1.attempts, 4);

    // finish removes it; a retry of a finished one does not bring it back
    assert!(store.finish_cleanup("q1").await.unwrap());
    assert!(!store.finish_cleanup("q1").await.unwrap());
    assert!(!store.retry_cleanup(&retried).await.unwrap());
    assert_eq!(store.pending_cleanups().await.unwrap(), 2);
    assert!(store.finish_cleanup("q2").await.unwrap());
    assert!(store.finish_cleanup("q3").await.unwrap());
    assert_eq!(store.pending_cleanups().await.unwrap(), 0);
    assert!(!store.cleanup_queued("q3").await.unwrap());
    assert!(
        store
            .claim_cleanups(u64::MAX / 2, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// What a reaper needs: the dead nodes with connections, their connection sets, one lease
/// holder at a time, the fencing mark, and a clean shutdown's heartbeat removal.
async fn dead_node_reaping(store: &SharedStore) {
    // node-a's heartbeat expired above and it still holds c1: it is dead.
    assert_eq!(store.dead_nodes().await.unwrap(), ["node-a"]);
    let mut on_c = record("d1");
    on_c.node = "node-c".into();
    store.register(&on_c).await.unwrap();
    on_c.id = "d2".into();
    store.register(&on_c).await.unwrap();
    store.join("dg", "d1").await.unwrap();
    store
        .heartbeat("node-c", "", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !store
            .dead_nodes()
            .await
            .unwrap()
            .contains(&"node-c".to_owned()),
        "alive"
    );
    // A clean shutdown removes the heartbeat at once.
    store.remove_heartbeat("node-c").await.unwrap();
    assert!(!store.node_alive("node-c").await.unwrap());
    assert!(
        store
            .nodes()
            .await
            .unwrap()
            .iter()
            .all(|n| n.name != "node-c")
    );
    assert_eq!(store.dead_nodes().await.unwrap(), ["node-a", "node-c"]);

    // Its connection set, page by page.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .node_connections("node-c", cursor.as_deref(), 1)
            .await
            .unwrap();
        listed.extend(page.members);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    listed.sort();
    listed.dedup();
    assert_eq!(listed, ["d1", "d2"]);

    // One lease holder at a time; the holder renews it; dropped, another takes it.
    let lease = Duration::from_secs(30);
    assert!(store.reap_lease("node-c", "node-x", lease).await.unwrap());
    assert!(!store.reap_lease("node-c", "node-y", lease).await.unwrap());
    assert!(store.reap_lease("node-c", "node-x", lease).await.unwrap());
    store.drop_reap_lease("node-c", "node-y").await.unwrap();
    assert!(!store.reap_lease("node-c", "node-y", lease).await.unwrap());
    store.drop_reap_lease("node-c", "node-x").await.unwrap();
    assert!(
        store
            .reap_lease("node-c", "node-y", Duration::from_millis(200))
            .await
            .unwrap()
    );
    tests::wait::eventually("the lease to expire", Duration::from_secs(5), || {
        let store = store.clone();
        async move { store.reap_lease("node-c", "node-x", lease).await.unwrap() }
    })
    .await;
    store.drop_reap_lease("node-c", "node-x").await.unwrap();

    // The fencing mark.
    assert_eq!(store.reaped_at("node-c").await.unwrap(), None);
    store.mark_reaped("node-c", 1234, lease).await.unwrap();
    assert_eq!(store.reaped_at("node-c").await.unwrap(), Some(1234));
    store.clear_reaped("node-c").await.unwrap();
    assert_eq!(store.reaped_at("node-c").await.unwrap(), None);

    // Reaping: unregister takes the id out of its node's set and its groups.
    assert!(store.unregister("d1").await.unwrap());
    assert_eq!(store.count("dg").await.unwrap(), 0);
    let left = store.node_connections("node-c", None, 10).await.unwrap();
    assert_eq!(left.members, ["d2"]);
    assert!(store.unregister("d2").await.unwrap());
    store.release("node-c", "d2").await.unwrap();
    assert!(
        store
            .node_connections("node-c", None, 10)
            .await
            .unwrap()
            .members
            .is_empty()
    );
    assert_eq!(store.dead_nodes().await.unwrap(), ["node-a"]);
}

#[tokio::test]
async fn memory_backend() {
    behaviour_suite(Arc::new(store::MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_backend_through_open() {
    behaviour_suite(store::open("memory", "ignored").await.unwrap()).await;
}

#[tokio::test]
async fn redis_backend() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix();
    let store = store::open(&redis.url(), &prefix).await.unwrap();
    assert!(format!("{store:?}").contains("RedisStore"), "{store:?}");
    behaviour_suite(store.clone()).await;
    assert_eq!(keys_with_prefix(&redis, &prefix), Vec::<String>::new());

    // A group written without a version (by an older Switchboard) gets one when asked,
    // and keeps it until its members change.
    let group_key = format!("{prefix}:group:{{old}}");
    redis.command(&["SADD", &group_key, "c9"]).unwrap();
    let first = store
        .group_version("old")
        .await
        .unwrap()
        .expect("a version");
    assert_eq!(store.group_version("old").await.unwrap(), Some(first));
    redis.command(&["DEL", &group_key]).unwrap();
    redis.command(&["DEL", &format!("{group_key}:v")]).unwrap();
    assert_eq!(keys_with_prefix(&redis, &prefix), Vec::<String>::new());
}

#[tokio::test]
async fn redis_cluster_backend() {
    let Some(cluster) = tests::redis_cluster::require_redis_cluster() else {
        return;
    };
    let prefix = unique_prefix();
    let store = RedisStore::connect(&cluster.url(), &prefix).await.unwrap();
    assert_eq!(
        store.address(),
        cluster.url().trim_start_matches("redis+cluster://")
    );
    behaviour_suite(Arc::new(store)).await;
    assert_eq!(
        cluster.keys(&format!("{prefix}:*")).unwrap(),
        Vec::<String>::new()
    );
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("sbtest-{}", uuid::Uuid::new_v4().simple())
}

/// Every key starting with `prefix:` (`SCAN MATCH`), sorted.
pub fn keys_with_prefix(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let pattern = format!("{prefix}:*");
    let mut cursor = "0".to_owned();
    let mut keys = Vec::new();
    loop {
        let reply = redis
            .command(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])
            .unwrap();
        let Resp::Array(Some(parts)) = reply else {
            panic!("SCAN answered {reply:?}");
        };
        let [Resp::Bulk(Some(next)), Resp::Array(Some(found))] = parts.as_slice() else {
            panic!("SCAN answered {parts:?}");
        };
        for key in found {
            let Resp::Bulk(Some(key)) = key else {
                panic!("SCAN listed {key:?}");
            };
            keys.push(String::from_utf8_lossy(key).into_owned());
        }
        cursor = String::from_utf8_lossy(next).into_owned();
        if cursor == "0" {
            break;
        }
    }
    keys.sort();
    keys
}
