//! The store behaviour suite, written once and run against every backend.

use std::time::Duration;

use store::{ConnectionRecord, SharedStore, StoreError};

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

    // node liveness
    assert!(!store.node_alive("node-a").await.unwrap());
    store
        .heartbeat("node-a", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(store.node_alive("node-a").await.unwrap());
    tests::wait::eventually("the heartbeat to expire", Duration::from_secs(5), || {
        let store = store.clone();
        async move { !store.node_alive("node-a").await.unwrap() }
    })
    .await;

    store.unregister("c1").await.unwrap();
    assert_eq!(store.count("g").await.unwrap(), 0);
}

#[tokio::test]
async fn memory_backend() {
    behaviour_suite(std::sync::Arc::new(store::MemoryStore::new())).await;
}
