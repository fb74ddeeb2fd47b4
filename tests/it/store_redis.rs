//! The Redis store beyond the behaviour suite: its key layout, prefixes that share one
//! Redis, Redis unreachable at connect, a Redis restart under a connected store, and joins
//! racing unregisters (standalone and cluster). Every Redis is private to its test, on a
//! free port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{ConnectionRecord, RedisOptions, RedisStore, SharedStore, Store, StoreError};
use tests::redis::{RedisServer, Resp};

use crate::store_suite::{keys_with_prefix, unique_prefix};

fn record(id: &str, node: &str) -> ConnectionRecord {
    ConnectionRecord {
        id: id.to_owned(),
        node: node.to_owned(),
        connected_at_ms: 1_700_000_000_000,
        source_ip: "10.0.0.1".into(),
        user_agent: None,
        context: serde_json::json!({"room": "r"}),
    }
}

fn bulk(s: &str) -> Resp {
    Resp::Bulk(Some(s.as_bytes().to_vec()))
}

/// The members of a set, sorted.
fn set_members(redis: &RedisServer, key: &str) -> Vec<String> {
    let Resp::Array(Some(items)) = redis.command(&["SMEMBERS", key]).unwrap() else {
        panic!("SMEMBERS {key} did not answer an array");
    };
    let mut out: Vec<String> = items
        .into_iter()
        .map(|item| match item {
            Resp::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
            other => panic!("SMEMBERS {key} listed {other:?}"),
        })
        .collect();
    out.sort();
    out
}

async fn connect(redis: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(&redis.url(), prefix).await.unwrap()
}

#[tokio::test]
async fn key_layout_is_the_documented_one() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let p = unique_prefix();
    let store = connect(&redis, &p).await;
    assert_eq!(store.prefix(), p);
    assert_eq!(store.address(), format!("127.0.0.1:{}", redis.port()));

    let mut rec = record("c1", "n1");
    rec.user_agent = Some("agent".into());
    store.register(&rec).await.unwrap();
    store.join("lobby", "c1").await.unwrap();
    assert_eq!(
        keys_with_prefix(&redis, &p),
        [
            format!("{p}:conn:{{c1}}"),
            format!("{p}:conn:{{c1}}:groups"),
            format!("{p}:group:{{lobby}}"),
            format!("{p}:group:{{lobby}}:v"),
            format!("{p}:node:{{n1}}:conns"),
        ]
    );
    let record_key = format!("{p}:conn:{{c1}}");
    for (field, value) in [
        ("node", "n1"),
        ("connectedAtMs", "1700000000000"),
        ("sourceIp", "10.0.0.1"),
        ("userAgent", "agent"),
        ("context", r#"{"room":"r"}"#),
    ] {
        assert_eq!(
            redis.command(&["HGET", &record_key, field]).unwrap(),
            bulk(value),
            "{field}"
        );
    }
    assert_eq!(set_members(&redis, &format!("{p}:group:{{lobby}}")), ["c1"]);
    assert_eq!(
        set_members(&redis, &format!("{p}:conn:{{c1}}:groups")),
        ["lobby"]
    );
    assert_eq!(
        set_members(&redis, &format!("{p}:node:{{n1}}:conns")),
        ["c1"]
    );

    // Re-registering on another node moves the id between the nodes' sets, keeps the
    // memberships, and drops the user agent the new record lacks.
    store.register(&record("c1", "n2")).await.unwrap();
    assert_eq!(
        set_members(&redis, &format!("{p}:node:{{n1}}:conns")),
        Vec::<String>::new()
    );
    assert_eq!(
        set_members(&redis, &format!("{p}:node:{{n2}}:conns")),
        ["c1"]
    );
    assert_eq!(store.groups_of("c1").await.unwrap(), ["lobby"]);
    assert_eq!(
        redis
            .command(&["HEXISTS", &record_key, "userAgent"])
            .unwrap(),
        Resp::Integer(0)
    );

    // Heartbeat: the node's address with a TTL, and the node in the live set.
    store
        .heartbeat("n2", "http://127.0.0.1:9", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        redis
            .command(&["GET", &format!("{p}:node:{{n2}}")])
            .unwrap(),
        Resp::Bulk(Some(b"http://127.0.0.1:9".to_vec()))
    );
    let Resp::Integer(ttl) = redis
        .command(&["PTTL", &format!("{p}:node:{{n2}}")])
        .unwrap()
    else {
        panic!("PTTL did not answer an integer");
    };
    assert!((1..=60_000).contains(&ttl), "{ttl}");

    // Unregistering leaves only the heartbeat (the key, the live set, the seen set).
    assert!(store.unregister("c1").await.unwrap());
    assert_eq!(
        keys_with_prefix(&redis, &p),
        [
            format!("{p}:node:{{n2}}"),
            format!("{p}:{{nodes}}"),
            format!("{p}:{{nodes}}:seen")
        ]
    );
}

#[tokio::test]
async fn prefixes_sharing_one_redis_do_not_see_each_other() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let (pa, pb) = (unique_prefix(), unique_prefix());
    let a = connect(&redis, &pa).await;
    let b = connect(&redis, &pb).await;
    a.register(&record("c1", "n")).await.unwrap();
    a.join("g", "c1").await.unwrap();
    // Same id and group under the other prefix: independent.
    assert_eq!(b.get("c1").await.unwrap(), None);
    assert_eq!(b.count("g").await.unwrap(), 0);
    assert!(matches!(
        b.join("g", "c1").await,
        Err(StoreError::NotRegistered(_))
    ));
    b.register(&record("c1", "n")).await.unwrap();
    b.register(&record("c2", "n")).await.unwrap();
    b.join("g", "c1").await.unwrap();
    b.join("g", "c2").await.unwrap();
    assert_eq!(a.all_members("g").await.unwrap(), ["c1"]);
    assert_eq!(b.all_members("g").await.unwrap(), ["c1", "c2"]);
    assert!(a.unregister("c1").await.unwrap());
    assert_eq!(b.all_members("g").await.unwrap(), ["c1", "c2"]);
    assert!(b.get("c1").await.unwrap().is_some());
    assert_eq!(keys_with_prefix(&redis, &pa), Vec::<String>::new());
    b.unregister("c1").await.unwrap();
    b.unregister("c2").await.unwrap();
    assert_eq!(keys_with_prefix(&redis, &pb), Vec::<String>::new());
}

#[tokio::test]
async fn unreachable_redis_at_connect_is_unavailable_naming_the_address() {
    // A port nothing listens on (bound, then released), and a redis that was stopped.
    let port = tests::redis::free_port().unwrap();
    let mut urls = vec![(
        format!("redis://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    )];
    let stopped = tests::redis::require_redis().map(|mut redis| {
        redis.stop();
        urls.push((redis.url(), format!("127.0.0.1:{}", redis.port())));
        redis
    });
    urls.push((
        format!("redis+cluster://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    ));
    for (url, address) in urls {
        let started = Instant::now();
        let err = store::open(&url, "sb").await.unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{url}: took {took:?}");
        assert!(
            matches!(&err, StoreError::Unavailable { address: a, .. } if *a == address),
            "{url}: {err:?}"
        );
        assert!(err.is_unavailable());
        assert!(err.to_string().contains(&address), "{url}: {err}");
    }
    drop(stopped);
}

#[tokio::test]
async fn a_connected_store_fails_fast_while_redis_is_down_and_recovers_after_a_restart() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix();
    let options = RedisOptions {
        prefix: prefix.clone(),
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
    };
    let bound = options.connect_timeout + options.response_timeout;
    let store: SharedStore = Arc::new(
        RedisStore::connect_with(&redis.url(), options)
            .await
            .unwrap(),
    );
    store.register(&record("c1", "n")).await.unwrap();
    store.join("g", "c1").await.unwrap();

    redis.stop();
    let address = format!("127.0.0.1:{}", redis.port());
    let calls: Vec<(&str, Result<(), StoreError>)> = vec![
        ("get", store.get("c1").await.map(drop)),
        ("get again", store.get("c1").await.map(drop)),
        ("register", store.register(&record("c2", "n")).await),
        ("join", store.join("g", "c1").await.map(drop)),
        ("leave", store.leave("g", "c1").await.map(drop)),
        ("members", store.members("g", None, 10).await.map(drop)),
        ("count", store.count("g").await.map(drop)),
        ("unregister", store.unregister("c1").await.map(drop)),
        (
            "heartbeat",
            store.heartbeat("n", "", Duration::from_secs(1)).await,
        ),
    ];
    for (what, result) in calls {
        match result {
            Err(StoreError::Unavailable { address: a, .. }) => assert_eq!(a, address, "{what}"),
            other => panic!("{what} with redis down: expected Unavailable, got {other:?}"),
        }
    }
    // Each call fails within the bound (here all of them are refused at once).
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.count("g").await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(
            started.elapsed() <= bound + Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
    }

    // Back (empty: no persistence): the same store object works again, scripts included.
    redis.restart().unwrap();
    tests::wait::eventually(
        "the store to reach redis again",
        Duration::from_secs(15),
        || {
            let store = store.clone();
            async move { store.register(&record("c1", "n")).await.is_ok() }
        },
    )
    .await;
    assert!(store.join("g", "c1").await.unwrap());
    assert_eq!(store.all_members("g").await.unwrap(), ["c1"]);
    assert!(store.get("c1").await.unwrap().is_some());
    assert!(store.unregister("c1").await.unwrap());
    assert_eq!(keys_with_prefix(&redis, &prefix), Vec::<String>::new());
}

/// The pid of the test's own redis-server (from `INFO server`).
fn redis_pid(redis: &RedisServer) -> String {
    let Resp::Bulk(Some(info)) = redis.command(&["INFO", "server"]).unwrap() else {
        panic!("INFO did not answer a bulk string");
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:").map(str::to_owned))
        .expect("INFO server lists process_id")
}

/// Sends `signal` (`-STOP`, `-CONT`) to the test's own redis-server.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

#[tokio::test]
async fn a_redis_that_stops_answering_times_out_instead_of_hanging() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix();
    let options = RedisOptions {
        prefix: prefix.clone(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
    };
    let bound = options.connect_timeout + options.response_timeout;
    let store: SharedStore = Arc::new(
        RedisStore::connect_with(&redis.url(), options)
            .await
            .unwrap(),
    );
    store.register(&record("c1", "n")).await.unwrap();

    // Paused: the socket stays open (the kernel even accepts new connections), nothing
    // answers. (If the test fails below, dropping `redis` kills the paused process.)
    let pid = redis_pid(&redis);
    signal(&pid, "-STOP");
    for what in ["get", "join", "count", "get again"] {
        let started = Instant::now();
        let result = match what {
            "join" => store.join("g", "c1").await.map(drop),
            "count" => store.count("g").await.map(drop),
            _ => store.get("c1").await.map(drop),
        };
        let took = started.elapsed();
        assert!(
            matches!(result, Err(StoreError::Unavailable { .. })),
            "{what}: {result:?}"
        );
        assert!(
            took <= bound + Duration::from_millis(500),
            "{what} took {took:?}"
        );
    }
    signal(&pid, "-CONT");
    tests::wait::eventually("the store to answer again", Duration::from_secs(15), || {
        let store = store.clone();
        async move { store.get("c1").await.is_ok_and(|r| r.is_some()) }
    })
    .await;
    store.join("g", "c1").await.unwrap();
    assert_eq!(store.all_members("g").await.unwrap(), ["c1"]);
    store.unregister("c1").await.unwrap();
    assert_eq!(keys_with_prefix(&redis, &prefix), Vec::<String>::new());
}

/// Many joins racing unregisters of the same ids, then: no group lists an id whose record
/// is gone, and what is left is consistent both ways.
async fn join_unregister_race(store: SharedStore) {
    const IDS: usize = 150;
    const GROUPS: [&str; 3] = ["ga", "gb", "gc"];
    for round in 0..3 {
        let ids: Vec<String> = (0..IDS).map(|i| format!("r{round}-{i}")).collect();
        for id in &ids {
            store.register(&record(id, "n")).await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            // Every id: three joins (one group twice: a re-join after the unregister has
            // already taken the id out of that group once) against one unregister, started
            // in a varying order.
            let groups = [GROUPS[i % 3], GROUPS[(i + 1) % 3], GROUPS[i % 3]];
            for (n, group) in groups.into_iter().enumerate() {
                let (store, id) = (store.clone(), id.clone());
                tasks.spawn(async move {
                    for _ in 0..(i + n) % 3 {
                        tokio::task::yield_now().await;
                    }
                    match store.join(group, &id).await {
                        Ok(_) | Err(StoreError::NotRegistered(_)) => {}
                        Err(e) => panic!("join {group} {id}: {e}"),
                    }
                });
            }
            let (store, id) = (store.clone(), id.clone());
            tasks.spawn(async move {
                for _ in 0..i % 2 {
                    tokio::task::yield_now().await;
                }
                store.unregister(&id).await.unwrap();
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        for group in GROUPS {
            let members = store.all_members(group).await.unwrap();
            assert!(
                members.is_empty(),
                "round {round}: {group} still lists unregistered ids {members:?}"
            );
            assert_eq!(store.count(group).await.unwrap(), 0);
        }
        for id in &ids {
            assert_eq!(store.get(id).await.unwrap(), None);
            assert!(store.groups_of(id).await.unwrap().is_empty(), "{id}");
        }
    }

    // The same race where only some ids are unregistered: every listed member is
    // registered, and lists that group.
    let ids: Vec<String> = (0..IDS).map(|i| format!("s-{i}")).collect();
    for id in &ids {
        store.register(&record(id, "n")).await.unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (s, id2) = (store.clone(), id.clone());
        tasks.spawn(async move {
            let _ = s.join("ga", &id2).await;
        });
        if i % 2 == 0 {
            let (s, id2) = (store.clone(), id.clone());
            tasks.spawn(async move {
                s.unregister(&id2).await.unwrap();
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let members = store.all_members("ga").await.unwrap();
    assert_eq!(members.len(), IDS / 2, "{members:?}");
    for id in &members {
        assert!(
            store.get(id).await.unwrap().is_some(),
            "{id} listed but gone"
        );
        assert_eq!(store.groups_of(id).await.unwrap(), ["ga"]);
    }
    for id in &ids {
        store.unregister(id).await.unwrap();
    }
    assert_eq!(store.count("ga").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_racing_unregisters_leave_no_stale_ids() {
    let Some(redis) = tests::redis::require_redis() else {
        return;
    };
    let prefix = unique_prefix();
    join_unregister_race(Arc::new(connect(&redis, &prefix).await)).await;
    assert_eq!(keys_with_prefix(&redis, &prefix), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_racing_unregisters_leave_no_stale_ids_on_a_cluster() {
    let Some(cluster) = tests::redis_cluster::require_redis_cluster() else {
        return;
    };
    let prefix = unique_prefix();
    let store = RedisStore::connect(&cluster.url(), &prefix).await.unwrap();
    join_unregister_race(Arc::new(store)).await;
    assert_eq!(
        cluster.keys(&format!("{prefix}:*")).unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_same_race() {
    join_unregister_race(Arc::new(store::MemoryStore::new())).await;
}
