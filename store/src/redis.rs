//! The Redis backend: one standalone Redis or a Redis Cluster, shared by many gateway nodes.
//!
//! # Key layout
//!
//! Every key starts with a configurable prefix (`switchboard` by default, see
//! [`RedisOptions::prefix`]), so several deployments can share one Redis. `<...>` marks a
//! placeholder; the braces are literal: they are the Redis Cluster hash tag, and every key
//! that one Lua script touches has the same tag, so one script never spans two slots.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<prefix>:conn:{<id>}` | hash | the connection record: `node`, `connectedAtMs`, `sourceIp`, `userAgent` (absent when the client sent none), `context` (JSON text) |
//! | `<prefix>:conn:{<id>}:groups` | set | the groups the connection joined (same tag as its record) |
//! | `<prefix>:group:{<name>}` | set | the group's member ids |
//! | `<prefix>:group:{<name>}:v` | string | the group's version token (see [`Store::group_version`]); absent while the group is empty |
//! | `<prefix>:node:{<node>}` | string with a TTL (`PX`) | the node's heartbeat: its send-back address (empty for none) |
//! | `<prefix>:{nodes}` | sorted set with a TTL | live node names, scored by heartbeat expiry (Unix ms); expires with the longest heartbeat |
//! | `<prefix>:node:{<node>}:conns` | set | the ids registered by that node: what a cleanup after a dead node walks |
//! | `<prefix>:{cleanups}` | sorted set | the durable cleanup queue: connection ids scored by when each is due next (Unix ms; while claimed, when the claim lapses) |
//! | `<prefix>:{cleanups}:data` | hash | connection id to its [`PendingCleanup`] as JSON (same tag as the queue) |
//! | `<prefix>:{nodes}:seen` | sorted set with a TTL (a day after the last heartbeat of any node) | every node that has beaten, scored by heartbeat expiry (Unix ms; 0 once removed): where [`Store::dead_nodes`] looks; a node is dropped once expired with an empty connection set |
//! | `<prefix>:node:{<node>}:reaper` | string with a TTL | the lease on reaping dead node `<node>`: the holder's name |
//! | `<prefix>:node:{<node>}:reaped` | string with a TTL | the fencing mark: when `<node>` was reaped (Unix ms) |
//! | `<prefix>:node:{<node>}:mark` | string with a TTL (renewed by each check) | the node's own mark ([`Store::mark_node`]): written only by that node, so its absence tells the node that Redis lost what it wrote |
//!
//! Ids, group names and node names must be non-empty and free of `{` and `}` (see
//! [`StoreError::InvalidName`]), so the tag is always exactly the name. Empty sets vanish
//! in Redis, so a store whose connections are all unregistered (and whose heartbeats have
//! expired) leaves no key behind.
//!
//! # What is atomic
//!
//! A round trip is one command, one Lua script (Redis runs a script alone: atomic), or one
//! pipeline. On standalone Redis a pipeline is one round trip; on Redis Cluster its commands
//! are split by hash tag and the parts are sent concurrently. No operation makes one round
//! trip per group member. Per operation:
//!
//! - **register**: `SADD` the id to its node's set; then one script on the `{id}` slot
//!   replaces the record hash (`DEL` + `HSET`, the groups set untouched, so memberships are
//!   kept) and returns the node it had; if that node differs, `SREM` from the old node's set.
//!   The record is replaced atomically. The node's set is written first, so it lists every
//!   registered id (at worst also an id whose record is not written yet).
//! - **join**: `SADD` to the group first, then one script on the `{id}` slot adds the group to
//!   the connection's groups set only if the record exists; if it does not, `SREM` from the
//!   group again and [`StoreError::NotRegistered`]. Why this order: see [`RedisStore`]'s
//!   `join`; in short, once both steps are done no group lists an id whose record is gone.
//! - **unregister**: `SMEMBERS` of the groups set; one pipeline `SREM`s the id from those
//!   groups; one script on the `{id}` slot atomically deletes the record and its groups set and
//!   returns the node and the groups the set held by then; one last pipeline `SREM`s the id
//!   from those groups (again: a `join` may have slipped in) and from its node's set.
//!   The record and its groups set go together (a reader never sees one without the other);
//!   group sets are emptied before that step and once more after it.
//! - **leave**: `SREM` from the group and from the groups set, in one pipeline (two parts
//!   on a cluster).
//! - Every add to or removal from a group set is a script on the `{group}` slot that also
//!   gives the group a new random version token (or deletes the token when the set
//!   empties), in the same step. **group_version** is a script too: it reads the token, and
//!   gives a non-empty group without one (written by an older version) a new one. So a
//!   reader that reads the token and then walks the members has a list at least as new as
//!   the token: a change after the read changes the token.
//! - **members** (`SSCAN` with `COUNT`), **count** (`SCARD`), **groups_of** (`SMEMBERS`),
//!   **get** (`HGETALL`), **node_alive** (`EXISTS`), **node_address** (`GET`): one command.
//! - **queue_cleanup**, **claim_cleanups**, **retry_cleanup**, **finish_cleanup**: one
//!   script each on the `{cleanups}` slot, over the queue and its data hash together. A
//!   claim reads the due ids and moves each one's score to the end of the lease in the same
//!   step, so two nodes never claim one cleanup at once. **pending_cleanups**: `HLEN`.
//! - **heartbeat**: `SET .. PX` of the node's key and a script on `{nodes}` (add the node
//!   with its expiry to the live set and to `seen`, drop expired ones from the live set,
//!   extend its TTL), in one pipeline. **remove_heartbeat**: `DEL` of the node's key and a
//!   script on `{nodes}` (out of the live set, expired in `seen`).
//! - **dead_nodes**: `ZRANGEBYSCORE` of `seen` up to now, one pipeline of `SCARD`s of those
//!   nodes' connection sets, and a script on `{nodes}` dropping from `seen` the ones with
//!   none that are still expired. **reap_lease** / **drop_reap_lease**: one script on the
//!   node's slot (`SET NX PX`, or `PEXPIRE` / `DEL` by its holder). **node_connections**:
//!   `SSCAN`; **release**: `SREM`; the fencing mark: `SET PX`, `GET`, `DEL`.
//!   **nodes**: `ZRANGEBYSCORE` of the unexpired names, then one pipeline of `GET`s.
//! - **groups_of_many**: one pipeline of `SMEMBERS` (one part per tag on a cluster).
//!   **mark_node**: `SET PX`. **node_check**: `PEXPIRE` of the mark (0 when it is gone) and
//!   `SCARD` of the node's set, in one pipeline on the node's slot. **remove_heartbeat**
//!   also deletes the mark.
//!
//! Multi-step operations are not atomic as a whole. Interrupted between two steps (the
//! calling process dies, or Redis becomes unreachable in the middle of a call), they leave:
//!
//! - register: the id in its node's set, maybe without a record yet (the node's set lists a
//!   superset of the node's connections: whoever walks it must expect ids with no record);
//! - join: cut between its `SADD` and its script, the id in the group but not in the
//!   connection's groups set (a failed script is undone where Redis still answers), so a
//!   later unregister does not take it out of that group;
//! - unregister: cut before its script, the record and groups set still there and some
//!   groups already left: calling unregister again finishes the job (this is why the groups
//!   are left first); cut after it, the id in its node's set and in a group joined
//!   concurrently;
//! - leave: on a cluster its two `SREM`s go to different nodes; one may be done alone.
//!
//! So a `members` page may list an id whose record is gone; callers already tolerate an id
//! that goes away between listing and using it.
//!
//! # Failures and reconnection
//!
//! Connecting is bounded by [`RedisOptions::connect_timeout`] per attempt, each answer by
//! [`RedisOptions::response_timeout`], and every round trip as a whole (reconnecting
//! included) by their sum, so with Redis down calls fail fast. Errors that mean Redis cannot
//! be reached (refused, reset, I/O, timeouts, `CLUSTERDOWN`, `LOADING`, ...) are
//! [`StoreError::Unavailable`] naming the address; anything else is [`StoreError::Backend`].
//! A standalone store reconnects on demand (redis's `ConnectionManager`), so the same
//! [`RedisStore`] works again once Redis is back (tested: kill and restart, pause and
//! resume); a cluster store relies on the redis crate's cluster client, which reconnects
//! to nodes and re-reads the slot map (not exercised by this crate's tests). Scripts are
//! loaded again after a restart (`NOSCRIPT` is handled).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Script,
    ScriptInvocation, ServerErrorKind, Value,
};

use crate::{
    ConnectionRecord, DEFAULT_PREFIX, MembersPage, NodeCheck, NodeInfo, PendingCleanup, Store,
    StoreError, names,
};

const STANDALONE_SCHEME: &str = "redis://";
const CLUSTER_SCHEME: &str = "redis+cluster://";
const DEFAULT_PORT: u16 = 6379;
/// How often a standalone store retries a failed (re)connection attempt before failing the
/// calls waiting for it (the next call starts a new attempt).
const STANDALONE_RETRIES: usize = 2;
/// How often the cluster client retries a request (redirections, a node that went away).
const CLUSTER_RETRIES: u32 = 3;

/// Whether `url` names a Redis store (`redis://` or `redis+cluster://`).
pub(crate) fn is_redis_url(url: &str) -> bool {
    url.starts_with(STANDALONE_SCHEME) || url.starts_with(CLUSTER_SCHEME)
}

/// Writes the record hash, keeping the groups set; returns the node it had (nil if new).
/// KEYS: record. ARGV: field, value, field, value, ...
const REGISTER_LUA: &str = r"
local previous = redis.call('HGET', KEYS[1], 'node')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return previous
";

/// Adds the group to the connection's groups set if the record exists: 1, else 0.
/// KEYS: record, groups set. ARGV: group.
const JOIN_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Deletes the record and its groups set; returns {existed, node or '', groups}.
/// KEYS: record, groups set.
const UNREGISTER_LUA: &str = r"
local node = redis.call('HGET', KEYS[1], 'node')
local groups = redis.call('SMEMBERS', KEYS[2])
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return {existed, node or '', groups}
";

/// Adds a member to a group set; a new member gives the group a new version token.
/// Returns 1 if added. KEYS: group set, version. ARGV: id, token.
const GROUP_ADD_LUA: &str = r"
local added = redis.call('SADD', KEYS[1], ARGV[1])
if added == 1 then
  redis.call('SET', KEYS[2], ARGV[2])
end
return added
";

/// Removes a member from a group set; a removal gives the group a new version token, or
/// deletes the token with the last member. Returns 1 if removed.
/// KEYS: group set, version. ARGV: id, token.
const GROUP_REMOVE_LUA: &str = r"
local removed = redis.call('SREM', KEYS[1], ARGV[1])
if removed == 1 then
  if redis.call('SCARD', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], ARGV[2])
  end
end
return removed
";

/// The group's version token; a non-empty group without one gets `ARGV[1]`. Nil when the
/// group is empty. KEYS: group set, version. ARGV: token.
const GROUP_VERSION_LUA: &str = r"
local version = redis.call('GET', KEYS[2])
if version then
  return version
end
if redis.call('SCARD', KEYS[1]) == 0 then
  return false
end
redis.call('SET', KEYS[2], ARGV[1])
return ARGV[1]
";

/// Adds a node to the live set and to `seen` with its expiry, drops expired ones from the
/// live set, and keeps it alive at least as long as this heartbeat. KEYS: the live set,
/// `seen`. ARGV: node, expiry ms, now ms, ttl ms.
const NODES_LUA: &str = r"
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], 86400000)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
";

/// Queues a cleanup unless one for that connection is queued: 1 if added, else 0.
/// KEYS: queue, data. ARGV: id, due ms, JSON.
const CLEANUP_QUEUE_LUA: &str = r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
";

/// Claims up to ARGV[3] cleanups due at ARGV[1]: each one's score becomes ARGV[2] (the end
/// of the lease); returns their JSON. KEYS: queue, data. ARGV: now ms, lease end ms, max.
const CLEANUP_CLAIM_LUA: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local data = redis.call('HGET', KEYS[2], id)
  if data then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, data)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Puts a queued cleanup back with new data and due time: 1, or 0 if it is not queued.
/// KEYS: queue, data. ARGV: id, due ms, JSON.
const CLEANUP_RETRY_LUA: &str = r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
";

/// Removes a cleanup from the queue: 1 if it was queued. KEYS: queue, data. ARGV: id.
const CLEANUP_FINISH_LUA: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
";

/// Takes a node out of the live set and marks it expired in `seen`. KEYS: the live set,
/// `seen`. ARGV: node.
const NODE_GONE_LUA: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
";

/// Drops from `seen` the named nodes whose expiry is still before now. KEYS: `seen`.
/// ARGV: now ms, node, node, ...
const FORGET_NODES_LUA: &str = r"
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 1
";

/// Takes or renews a lease: 1 if `ARGV[1]` holds it now. KEYS: lease. ARGV: holder, ttl ms.
const LEASE_LUA: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Drops a lease held by `ARGV[1]`. KEYS: lease.
const DROP_LEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
";

/// How a [`RedisStore`] connects and names its keys.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Starts every key; several deployments can share a Redis with different prefixes.
    /// Must be non-empty and free of `{` and `}`.
    pub prefix: String,
    /// Bound on each attempt to connect (to each node, on a cluster).
    pub connect_timeout: Duration,
    /// Bound on each answer. A whole round trip, reconnecting included, is bounded by
    /// `connect_timeout + response_timeout`.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    /// Prefix [`DEFAULT_PREFIX`], 2 s to connect, 2 s per answer.
    fn default() -> Self {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// A [`Store`] in Redis (standalone or Cluster); see the [module docs](crate::redis) for the key
/// layout and what is atomic. Cheap to share in an `Arc`; every call is independent
/// (connections are multiplexed).
pub struct RedisStore {
    link: Link,
    keys: Keys,
    scripts: Scripts,
    /// `host:port` (a comma-separated list for a cluster), for error messages.
    address: String,
    /// Bound on one round trip, reconnecting included.
    round_trip_limit: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("prefix", &self.keys.prefix)
            .field("cluster", &matches!(self.link, Link::Cluster(_)))
            .finish()
    }
}

impl RedisStore {
    /// Connects with the default timeouts (see [`RedisOptions::default`]) and key `prefix`.
    ///
    /// `url` is `redis://[user:password@]host[:port][/db]` for a standalone Redis, or
    /// `redis+cluster://[user:password@]host:port,host:port,...` for a Redis Cluster (some
    /// reachable nodes of it; the client discovers the rest).
    ///
    /// Errors: [`StoreError::InvalidUrl`] for a URL it cannot use,
    /// [`StoreError::InvalidName`] for a bad prefix, [`StoreError::Unavailable`] (naming
    /// `host:port`) when Redis cannot be reached within the timeouts.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let options = RedisOptions {
            prefix: prefix.to_owned(),
            ..RedisOptions::default()
        };
        RedisStore::connect_with(url, options).await
    }

    /// Connects with explicit [`RedisOptions`]; otherwise as [`RedisStore::connect`].
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<RedisStore, StoreError> {
        names::prefix(&options.prefix)?;
        let (client, address) = Client::new(url, &options)?;
        let round_trip_limit = options.connect_timeout + options.response_timeout;
        let connecting = async {
            match client {
                Client::Standalone(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(options.connect_timeout))
                        .set_response_timeout(Some(options.response_timeout))
                        .set_number_of_retries(STANDALONE_RETRIES)
                        .set_min_delay(Duration::from_millis(50))
                        .set_max_delay(Duration::from_millis(500));
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map(Link::Standalone)
                }
                Client::Cluster(client) => client.get_async_connection().await.map(Link::Cluster),
            }
        };
        let link = match tokio::time::timeout(round_trip_limit, connecting).await {
            Ok(link) => link.map_err(|e| classify(&address, e))?,
            Err(_) => {
                return Err(StoreError::Unavailable {
                    address,
                    reason: format!("could not connect within {round_trip_limit:?}"),
                });
            }
        };
        Ok(RedisStore {
            link,
            keys: Keys {
                prefix: options.prefix,
            },
            scripts: Scripts {
                register: Script::new(REGISTER_LUA),
                join: Script::new(JOIN_LUA),
                unregister: Script::new(UNREGISTER_LUA),
                group_version: Script::new(GROUP_VERSION_LUA),
                cleanup_queue: Script::new(CLEANUP_QUEUE_LUA),
                cleanup_claim: Script::new(CLEANUP_CLAIM_LUA),
                cleanup_retry: Script::new(CLEANUP_RETRY_LUA),
                cleanup_finish: Script::new(CLEANUP_FINISH_LUA),
            },
            address,
            round_trip_limit,
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.keys.prefix
    }

    /// The address errors name: `host:port`, or `host:port,host:port,...` for a cluster.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Runs one round trip within the bound, mapping its error.
    async fn round_trip<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.round_trip_limit, call).await {
            Ok(result) => result.map_err(|e| classify(&self.address, e)),
            Err(_) => Err(StoreError::Unavailable {
                address: self.address.clone(),
                reason: format!("no answer within {:?}", self.round_trip_limit),
            }),
        }
    }

    /// One command.
    /// One `SSCAN` page of a set: its members and the cursor of the next page (`None`
    /// after the last).
    async fn scan_page(
        &self,
        key: String,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError> {
        let (next, members): (String, Vec<String>) = self
            .query(
                ::redis::cmd("SSCAN")
                    .arg(key)
                    .arg(cursor.unwrap_or("0"))
                    .arg("COUNT")
                    .arg(count.max(1)),
            )
            .await?;
        Ok(MembersPage {
            members,
            cursor: (next != "0").then_some(next),
        })
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut link = self.link.clone();
        self.round_trip(cmd.query_async(&mut link)).await
    }

    /// One script (atomic; all its keys share a hash tag).
    async fn eval<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut link = self.link.clone();
        self.round_trip(invocation.invoke_async(&mut link)).await
    }

    /// Commands on keys that may lie in different slots, each given with its key's hash tag:
    /// one pipeline on standalone Redis; on a cluster one pipeline per tag, sent concurrently.
    /// Answers in the order of `commands`. Not atomic.
    async fn batch<T: FromRedisValue>(
        &self,
        commands: Vec<(&str, Cmd)>,
    ) -> Result<Vec<T>, StoreError> {
        let total = commands.len();
        let cluster = matches!(self.link, Link::Cluster(_));
        let mut parts: BTreeMap<&str, (Vec<usize>, Pipeline)> = BTreeMap::new();
        for (index, (tag, cmd)) in commands.into_iter().enumerate() {
            let part = parts
                .entry(if cluster { tag } else { "" })
                .or_insert_with(|| (Vec::new(), ::redis::pipe()));
            part.0.push(index);
            part.1.add_command(cmd);
        }
        let sends = parts.into_values().map(|(indices, pipe)| {
            let mut link = self.link.clone();
            async move {
                let answers: Vec<Value> = pipe.query_async(&mut link).await?;
                Ok::<_, RedisError>((indices, answers))
            }
        });
        let answered = self
            .round_trip(futures_util::future::try_join_all(sends))
            .await?;
        let mut out: Vec<Option<Value>> = vec![None; total];
        for (indices, answers) in answered {
            for (index, answer) in indices.into_iter().zip(answers) {
                out[index] = Some(answer);
            }
        }
        out.into_iter()
            .map(|answer| {
                let answer = answer
                    .ok_or_else(|| StoreError::Backend("a pipeline answered too few".into()))?;
                ::redis::from_redis_value(answer)
                    .map_err(|e| StoreError::Backend(format!("unexpected answer: {e}")))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn register(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
        let id = record.id.as_str();
        names::id(id)?;
        names::node(&record.node)?;
        let context = serde_json::to_string(&record.context)
            .map_err(|e| StoreError::Backend(format!("context of {id}: {e}")))?;
        // The node's set first: it must list every registered id (see the module docs).
        let _: i64 = self
            .query(&command("SADD", self.keys.node_conns(&record.node), id))
            .await?;
        let mut write = self.scripts.register.key(self.keys.conn(id));
        write
            .arg("node")
            .arg(&record.node)
            .arg("connectedAtMs")
            .arg(record.connected_at_ms)
            .arg("sourceIp")
            .arg(&record.source_ip)
            .arg("context")
            .arg(context);
        if let Some(user_agent) = &record.user_agent {
            write.arg("userAgent").arg(user_agent);
        }
        let previous: Option<String> = self.eval(&write).await?;
        if let Some(previous) = previous.filter(|node| *node != record.node) {
            let _: i64 = self
                .query(&command("SREM", self.keys.node_conns(&previous), id))
                .await?;
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        names::id(id)?;
        let fields: HashMap<String, String> = self
            .query(::redis::cmd("HGETALL").arg(self.keys.conn(id)))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode(id, fields).map(Some)
    }

    async fn unregister(&self, id: &str) -> Result<bool, StoreError> {
        names::id(id)?;
        let (record_key, groups_key) = (self.keys.conn(id), self.keys.conn_groups(id));
        // 1-2. Leave the groups it has joined while the record (and so the list of its
        // groups) still exists: if this call is cut short here, another unregister can
        // still find everything.
        let before: Vec<String> = self
            .query(::redis::cmd("SMEMBERS").arg(&groups_key))
            .await?;
        let leaving = before
            .iter()
            .map(|g| (g.as_str(), self.keys.group_remove(g, id)))
            .collect();
        let _: Vec<i64> = self.batch(leaving).await?;
        // 3. Atomically: the record and its groups set go; what the set held by now comes
        // back (a join may have added a group since step 1).
        let mut delete = self.scripts.unregister.key(&record_key);
        delete.key(&groups_key);
        let (existed, node, after): (i64, String, Vec<String>) = self.eval(&delete).await?;
        // 4. Leave those groups too (all of them: a concurrent join of a group left in step 2
        // may have added the id again), and the node's set. No join can add the id to a group
        // for good from now on: its script finds no record and takes the id out again.
        let mut last: Vec<(&str, Cmd)> = after
            .iter()
            .map(|g| (g.as_str(), self.keys.group_remove(g, id)))
            .collect();
        if !node.is_empty() {
            last.push((
                node.as_str(),
                command("SREM", self.keys.node_conns(&node), id),
            ));
        }
        let _: Vec<i64> = self.batch(last).await?;
        Ok(existed > 0)
    }

    /// Adds the id to the group first, then (one script on the `{id}` slot) the group to the
    /// connection's groups set if its record exists, else takes the id out of the group again.
    ///
    /// Against an `unregister` on another node (U1 reads the groups set, U2 `SREM`s from
    /// those groups, U3 atomically deletes the record and groups set and returns what the set
    /// held, U4 `SREM`s from those), with J1 = `SADD group id`, J2 = the script, J3 = the
    /// `SREM` when J2 finds no record:
    ///
    /// - J2 before U3: J2 put the group in the groups set, so U3 returns it and U4 takes the
    ///   id out of the group, wherever J1 fell (even after U2).
    /// - J2 after U3: the record is gone, J2 returns 0, J3 takes the id out (whether J1 came
    ///   before or after U4), and the caller gets [`StoreError::NotRegistered`].
    ///
    /// J2 and U3 are atomic scripts on the same slot, so one of the two holds. Doing J2
    /// before J1 would not be safe: J2, U3, U4 (no-op), J1 would leave the id in the group
    /// for good. Between J1 and J2/J3 the group may list the id for a moment.
    async fn join(&self, group: &str, id: &str) -> Result<bool, StoreError> {
        names::group(group)?;
        names::id(id)?;
        let added: i64 = self.query(&self.keys.group_add(group, id)).await?;
        let mut note = self.scripts.join.key(self.keys.conn(id));
        note.key(self.keys.conn_groups(id)).arg(group);
        let registered: i64 = match self.eval(&note).await {
            Ok(registered) => registered,
            Err(err) => {
                // Unknown whether the script ran: undo what this call added (best effort;
                // if Redis is gone this fails too), so that the failed join leaves nothing.
                if added > 0 {
                    let undo = vec![
                        (group, self.keys.group_remove(group, id)),
                        (id, command("SREM", self.keys.conn_groups(id), group)),
                    ];
                    let _ = self.batch::<i64>(undo).await;
                }
                return Err(err);
            }
        };
        if registered == 0 {
            let _: i64 = self.query(&self.keys.group_remove(group, id)).await?;
            return Err(StoreError::NotRegistered(id.to_owned()));
        }
        Ok(added > 0)
    }

    async fn leave(&self, group: &str, id: &str) -> Result<bool, StoreError> {
        names::group(group)?;
        names::id(id)?;
        let removed: Vec<i64> = self
            .batch(vec![
                (group, self.keys.group_remove(group, id)),
                (id, command("SREM", self.keys.conn_groups(id), group)),
            ])
            .await?;
        Ok(removed.first().is_some_and(|n| *n > 0))
    }

    async fn members(
        &self,
        group: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError> {
        names::group(group)?;
        self.scan_page(self.keys.group(group), cursor, count).await
    }

    async fn count(&self, group: &str) -> Result<u64, StoreError> {
        names::group(group)?;
        self.query(::redis::cmd("SCARD").arg(self.keys.group(group)))
            .await
    }

    async fn group_version(&self, group: &str) -> Result<Option<u64>, StoreError> {
        names::group(group)?;
        let mut read = self.scripts.group_version.key(self.keys.group(group));
        read.key(self.keys.group_version(group)).arg(fresh_token());
        let token: Option<String> = self.eval(&read).await?;
        token
            .map(|t| {
                t.parse()
                    .map_err(|_| StoreError::Backend(format!("group {group}: version {t:?}")))
            })
            .transpose()
    }

    async fn groups_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        names::id(id)?;
        let mut groups: Vec<String> = self
            .query(::redis::cmd("SMEMBERS").arg(self.keys.conn_groups(id)))
            .await?;
        groups.sort_unstable();
        Ok(groups)
    }

    async fn groups_of_many(&self, ids: &[String]) -> Result<Vec<Vec<String>>, StoreError> {
        for id in ids {
            names::id(id)?;
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let reads = ids
            .iter()
            .map(|id| {
                let mut read = ::redis::cmd("SMEMBERS");
                read.arg(self.keys.conn_groups(id));
                (id.as_str(), read)
            })
            .collect();
        let mut all: Vec<Vec<String>> = self.batch(reads).await?;
        for groups in &mut all {
            groups.sort_unstable();
        }
        Ok(all)
    }

    fn can_lose_data(&self) -> bool {
        true
    }

    async fn mark_node(&self, node: &str, keep: Duration) -> Result<(), StoreError> {
        names::node(node)?;
        let _: () = self
            .query(
                ::redis::cmd("SET")
                    .arg(self.keys.mark(node))
                    .arg(now_ms())
                    .arg("PX")
                    .arg(millis(keep)),
            )
            .await?;
        Ok(())
    }

    async fn node_check(&self, node: &str, keep: Duration) -> Result<NodeCheck, StoreError> {
        names::node(node)?;
        let mut renew = ::redis::cmd("PEXPIRE");
        renew.arg(self.keys.mark(node)).arg(millis(keep));
        let mut count = ::redis::cmd("SCARD");
        count.arg(self.keys.node_conns(node));
        let answers: Vec<u64> = self.batch(vec![(node, renew), (node, count)]).await?;
        match answers[..] {
            [marked, connections] => Ok(NodeCheck {
                marked: marked > 0,
                connections,
            }),
            _ => Err(StoreError::Backend("a pipeline answered too few".into())),
        }
    }

    async fn heartbeat(&self, node: &str, address: &str, ttl: Duration) -> Result<(), StoreError> {
        names::node(node)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let now_ms = now_ms();
        let mut beat = ::redis::cmd("SET");
        beat.arg(self.keys.node(node))
            .arg(address)
            .arg("PX")
            .arg(ttl_ms);
        let mut listed = ::redis::cmd("EVAL");
        listed
            .arg(NODES_LUA)
            .arg(2)
            .arg(self.keys.nodes())
            .arg(self.keys.nodes_seen())
            .arg(node)
            .arg(now_ms.saturating_add(ttl_ms))
            .arg(now_ms)
            .arg(ttl_ms);
        let _: Vec<Value> = self.batch(vec![(node, beat), ("nodes", listed)]).await?;
        Ok(())
    }

    async fn node_alive(&self, node: &str) -> Result<bool, StoreError> {
        names::node(node)?;
        let exists: i64 = self
            .query(::redis::cmd("EXISTS").arg(self.keys.node(node)))
            .await?;
        Ok(exists > 0)
    }

    async fn node_address(&self, node: &str) -> Result<Option<String>, StoreError> {
        names::node(node)?;
        let address: Option<String> = self
            .query(::redis::cmd("GET").arg(self.keys.node(node)))
            .await?;
        Ok(address.filter(|a| !a.is_empty()))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut names: Vec<String> = self
            .query(
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.nodes())
                    .arg(now_ms())
                    .arg("+inf"),
            )
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        names.sort_unstable();
        let reads = names
            .iter()
            .map(|name| {
                let mut get = ::redis::cmd("GET");
                get.arg(self.keys.node(name));
                (name.as_str(), get)
            })
            .collect();
        let addresses: Vec<Option<String>> = self.batch(reads).await?;
        Ok(names
            .into_iter()
            .zip(addresses)
            .filter_map(|(name, address)| address.map(|address| NodeInfo { name, address }))
            .collect())
    }

    async fn queue_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError> {
        let id = cleanup.connection_id.as_str();
        names::id(id)?;
        let mut script = self.scripts.cleanup_queue.key(self.keys.cleanups());
        script
            .key(self.keys.cleanups_data())
            .arg(id)
            .arg(cleanup.next_attempt_ms)
            .arg(cleanup_json(cleanup)?);
        let added: i64 = self.eval(&script).await?;
        Ok(added == 1)
    }

    async fn claim_cleanups(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingCleanup>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let until = now_ms.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let mut script = self.scripts.cleanup_claim.key(self.keys.cleanups());
        script
            .key(self.keys.cleanups_data())
            .arg(now_ms)
            .arg(until)
            .arg(max);
        let claimed: Vec<String> = self.eval(&script).await?;
        claimed
            .iter()
            .map(|json| {
                serde_json::from_str(json)
                    .map_err(|e| StoreError::Backend(format!("a queued cleanup: {e}")))
            })
            .collect()
    }

    async fn retry_cleanup(&self, cleanup: &PendingCleanup) -> Result<bool, StoreError> {
        let id = cleanup.connection_id.as_str();
        names::id(id)?;
        let mut script = self.scripts.cleanup_retry.key(self.keys.cleanups());
        script
            .key(self.keys.cleanups_data())
            .arg(id)
            .arg(cleanup.next_attempt_ms)
            .arg(cleanup_json(cleanup)?);
        let kept: i64 = self.eval(&script).await?;
        Ok(kept == 1)
    }

    async fn finish_cleanup(&self, connection_id: &str) -> Result<bool, StoreError> {
        names::id(connection_id)?;
        let mut script = self.scripts.cleanup_finish.key(self.keys.cleanups());
        script.key(self.keys.cleanups_data()).arg(connection_id);
        let removed: i64 = self.eval(&script).await?;
        Ok(removed == 1)
    }

    async fn pending_cleanups(&self) -> Result<u64, StoreError> {
        self.query(::redis::cmd("HLEN").arg(self.keys.cleanups_data()))
            .await
    }

    async fn cleanup_queued(&self, connection_id: &str) -> Result<bool, StoreError> {
        names::id(connection_id)?;
        self.query(
            ::redis::cmd("HEXISTS")
                .arg(self.keys.cleanups_data())
                .arg(connection_id),
        )
        .await
    }
    async fn remove_heartbeat(&self, node: &str) -> Result<(), StoreError> {
        names::node(node)?;
        let mut delete = ::redis::cmd("DEL");
        delete.arg(self.keys.node(node)).arg(self.keys.mark(node));
        let mut unlist = ::redis::cmd("EVAL");
        unlist
            .arg(NODE_GONE_LUA)
            .arg(2)
            .arg(self.keys.nodes())
            .arg(self.keys.nodes_seen())
            .arg(node);
        let _: Vec<Value> = self.batch(vec![(node, delete), ("nodes", unlist)]).await?;
        Ok(())
    }

    async fn dead_nodes(&self) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let expired: Vec<String> = self
            .query(
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.nodes_seen())
                    .arg("-inf")
                    .arg(format!("({now}")),
            )
            .await?;
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let sizes: Vec<u64> = self
            .batch(
                expired
                    .iter()
                    .map(|node| {
                        let mut card = ::redis::cmd("SCARD");
                        card.arg(self.keys.node_conns(node));
                        (node.as_str(), card)
                    })
                    .collect(),
            )
            .await?;
        let (mut dead, empty): (Vec<(String, u64)>, Vec<(String, u64)>) = expired
            .into_iter()
            .zip(sizes)
            .partition(|(_, size)| *size > 0);
        if !empty.is_empty() {
            let mut forget = ::redis::cmd("EVAL");
            forget
                .arg(FORGET_NODES_LUA)
                .arg(1)
                .arg(self.keys.nodes_seen())
                .arg(now);
            for (node, _) in &empty {
                forget.arg(node);
            }
            let _: i64 = self.query(&forget).await?;
        }
        dead.sort_unstable();
        Ok(dead.into_iter().map(|(node, _)| node).collect())
    }

    async fn node_connections(
        &self,
        node: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<MembersPage, StoreError> {
        names::node(node)?;
        self.scan_page(self.keys.node_conns(node), cursor, count)
            .await
    }

    async fn release(&self, node: &str, id: &str) -> Result<(), StoreError> {
        names::node(node)?;
        names::id(id)?;
        let _: i64 = self
            .query(&command("SREM", self.keys.node_conns(node), id))
            .await?;
        Ok(())
    }

    async fn reap_lease(
        &self,
        node: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        names::node(node)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut take = ::redis::cmd("EVAL");
        take.arg(LEASE_LUA)
            .arg(1)
            .arg(self.keys.reaper(node))
            .arg(holder)
            .arg(ttl_ms);
        let held: i64 = self.query(&take).await?;
        Ok(held == 1)
    }

    async fn drop_reap_lease(&self, node: &str, holder: &str) -> Result<(), StoreError> {
        names::node(node)?;
        let mut drop = ::redis::cmd("EVAL");
        drop.arg(DROP_LEASE_LUA)
            .arg(1)
            .arg(self.keys.reaper(node))
            .arg(holder);
        let _: i64 = self.query(&drop).await?;
        Ok(())
    }

    async fn mark_reaped(&self, node: &str, at_ms: u64, ttl: Duration) -> Result<(), StoreError> {
        names::node(node)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: () = self
            .query(
                ::redis::cmd("SET")
                    .arg(self.keys.reaped(node))
                    .arg(at_ms)
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await?;
        Ok(())
    }

    async fn reaped_at(&self, node: &str) -> Result<Option<u64>, StoreError> {
        names::node(node)?;
        let at: Option<String> = self
            .query(::redis::cmd("GET").arg(self.keys.reaped(node)))
            .await?;
        at.map(|at| {
            at.parse()
                .map_err(|_| StoreError::Backend(format!("node {node}: reaped mark {at:?}")))
        })
        .transpose()
    }

    async fn clear_reaped(&self, node: &str) -> Result<(), StoreError> {
        names::node(node)?;
        let _: i64 = self
            .query(::redis::cmd("DEL").arg(self.keys.reaped(node)))
            .await?;
        Ok(())
    }
}

/// A pending cleanup as the JSON the queue's data hash holds.
fn cleanup_json(cleanup: &PendingCleanup) -> Result<String, StoreError> {
    serde_json::to_string(cleanup)
        .map_err(|e| StoreError::Backend(format!("cleanup of {}: {e}", cleanup.connection_id)))
}

/// Checks a `redis://` or `redis+cluster://` URL without connecting.
pub(crate) fn check_url(url: &str) -> Result<(), StoreError> {
    Client::new(url, &RedisOptions::default()).map(drop)
}

/// A client for the URL, not connected yet.
enum Client {
    Standalone(::redis::Client),
    Cluster(::redis::cluster::ClusterClient),
}

impl Client {
    /// The client, and the address errors name.
    fn new(url: &str, options: &RedisOptions) -> Result<(Client, String), StoreError> {
        let (target, address) = parse_url(url)?;
        let invalid = |err: RedisError| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: err.to_string(),
        };
        let client = match target {
            Target::Standalone(url) => {
                Client::Standalone(::redis::Client::open(url.as_str()).map_err(invalid)?)
            }
            Target::Cluster(nodes) => Client::Cluster(
                ClusterClientBuilder::new(nodes)
                    .connection_timeout(options.connect_timeout)
                    .response_timeout(options.response_timeout)
                    .retries(CLUSTER_RETRIES)
                    .build()
                    .map_err(invalid)?,
            ),
        };
        Ok((client, address))
    }
}

/// The connection: one body for every method, whichever kind of Redis.
#[derive(Clone)]
enum Link {
    /// Multiplexed, reconnects on demand.
    Standalone(ConnectionManager),
    /// Routes each command by its key's slot; reconnects and follows slot moves.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Standalone(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Standalone(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The scripts, each hashed once.
struct Scripts {
    register: Script,
    join: Script,
    unregister: Script,
    group_version: Script,
    cleanup_queue: Script,
    cleanup_claim: Script,
    cleanup_retry: Script,
    cleanup_finish: Script,
}

/// Builds the keys (see the table in the module docs).
#[derive(Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn conn(&self, id: &str) -> String {
        format!("{}:conn:{{{id}}}", self.prefix)
    }

    fn conn_groups(&self, id: &str) -> String {
        format!("{}:conn:{{{id}}}:groups", self.prefix)
    }

    fn group(&self, group: &str) -> String {
        format!("{}:group:{{{group}}}", self.prefix)
    }

    fn group_version(&self, group: &str) -> String {
        format!("{}:group:{{{group}}}:v", self.prefix)
    }

    /// Adds `id` to the group and renews its version, in one script.
    fn group_add(&self, group: &str, id: &str) -> Cmd {
        group_script(
            GROUP_ADD_LUA,
            [self.group(group), self.group_version(group)],
            id,
        )
    }

    /// Removes `id` from the group and renews (or drops) its version, in one script.
    fn group_remove(&self, group: &str, id: &str) -> Cmd {
        group_script(
            GROUP_REMOVE_LUA,
            [self.group(group), self.group_version(group)],
            id,
        )
    }

    fn node(&self, node: &str) -> String {
        format!("{}:node:{{{node}}}", self.prefix)
    }

    fn nodes(&self) -> String {
        format!("{}:{{nodes}}", self.prefix)
    }

    fn node_conns(&self, node: &str) -> String {
        format!("{}:node:{{{node}}}:conns", self.prefix)
    }

    fn cleanups(&self) -> String {
        format!("{}:{{cleanups}}", self.prefix)
    }

    fn cleanups_data(&self) -> String {
        format!("{}:{{cleanups}}:data", self.prefix)
    }

    fn nodes_seen(&self) -> String {
        format!("{}:{{nodes}}:seen", self.prefix)
    }

    fn reaper(&self, node: &str) -> String {
        format!("{}:node:{{{node}}}:reaper", self.prefix)
    }

    fn reaped(&self, node: &str) -> String {
        format!("{}:node:{{{node}}}:reaped", self.prefix)
    }

    fn mark(&self, node: &str) -> String {
        format!("{}:node:{{{node}}}:mark", self.prefix)
    }
}

/// A duration in whole milliseconds, at least 1 (what `PX` and `PEXPIRE` take).
fn millis(span: Duration) -> u64 {
    u64::try_from(span.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `NAME key member`.
fn command(name: &str, key: String, member: &str) -> Cmd {
    let mut cmd = ::redis::cmd(name);
    cmd.arg(key).arg(member);
    cmd
}

/// `EVAL` of a group script (a plain command, so that it fits in a pipeline).
fn group_script(lua: &str, keys: [String; 2], id: &str) -> Cmd {
    let mut cmd = ::redis::cmd("EVAL");
    cmd.arg(lua)
        .arg(2)
        .arg(&keys[..])
        .arg(id)
        .arg(fresh_token());
    cmd
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new random version token. Tokens only need to differ from the ones a group had
/// before: 64 random bits (std's per-process random hash keys over a counter and the
/// clock) are plenty.
fn fresh_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// What to connect to.
#[derive(Debug, PartialEq)]
enum Target {
    /// The URL, as the redis crate reads it.
    Standalone(String),
    /// One `redis://` URL per seed node.
    Cluster(Vec<String>),
}

/// Splits a store URL into what to connect to and the address errors name.
fn parse_url(url: &str) -> Result<(Target, String), StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
        let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        if !(tail.is_empty() || tail == "/") {
            return Err(invalid(
                "a cluster URL takes no database or options: \
                 `redis+cluster://host:port,host:port`"
                    .into(),
            ));
        }
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(invalid("empty node in the cluster's node list".into()));
            }
            let node = format!("{STANDALONE_SCHEME}{userinfo}{host}");
            addresses.push(address_of(&node).map_err(invalid)?);
            nodes.push(node);
        }
        Ok((Target::Cluster(nodes), addresses.join(",")))
    } else if url.starts_with(STANDALONE_SCHEME) {
        let address = address_of(url).map_err(invalid)?;
        Ok((Target::Standalone(url.to_owned()), address))
    } else {
        Err(invalid(
            "expected `redis://host:port[/db]` or `redis+cluster://host:port,host:port`".into(),
        ))
    }
}

/// `host:port` of a `redis://` URL (port 6379 if it names none).
fn address_of(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or("no host")?;
    Ok(format!("{host}:{}", parsed.port().unwrap_or(DEFAULT_PORT)))
}

/// Maps a redis error: cannot reach Redis (now) is `Unavailable`, anything else `Backend`.
fn classify(address: &str, err: RedisError) -> StoreError {
    let unreachable = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::BusyLoading
                )
        );
    if unreachable {
        StoreError::Unavailable {
            address: address.to_owned(),
            reason: err.to_string(),
        }
    } else {
        StoreError::Backend(format!("redis at {address}: {err}"))
    }
}

/// A record from its hash fields.
fn decode(id: &str, mut fields: HashMap<String, String>) -> Result<ConnectionRecord, StoreError> {
    let bad = |what: String| StoreError::Backend(format!("record of connection {id}: {what}"));
    let mut field = |name: &str| {
        fields
            .remove(name)
            .ok_or_else(|| bad(format!("no `{name}` field")))
    };
    let node = field("node")?;
    let connected_at_ms = field("connectedAtMs")?
        .parse()
        .map_err(|e| bad(format!("`connectedAtMs`: {e}")))?;
    let source_ip = field("sourceIp")?;
    let user_agent = field("userAgent").ok();
    let context = match field("context") {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| bad(format!("`context` is not JSON: {e}")))?
        }
        Err(_) => serde_json::Value::Null,
    };
    Ok(ConnectionRecord {
        id: id.to_owned(),
        node,
        connected_at_ms,
        source_ip,
        user_agent,
        context,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn keys_share_a_hash_tag_where_one_script_touches_them() {
        let keys = Keys {
            prefix: "sb".into(),
        };
        assert_eq!(keys.conn("c1"), "sb:conn:{c1}");
        assert_eq!(keys.conn_groups("c1"), "sb:conn:{c1}:groups");
        assert_eq!(keys.group("lobby"), "sb:group:{lobby}");
        assert_eq!(keys.node("n1"), "sb:node:{n1}");
        assert_eq!(keys.node_conns("n1"), "sb:node:{n1}:conns");
        assert_eq!(keys.cleanups(), "sb:{cleanups}");
        assert_eq!(keys.cleanups_data(), "sb:{cleanups}:data");
    }

    #[test]
    fn parses_standalone_and_cluster_urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:7000/2").unwrap(),
            (
                Target::Standalone("redis://127.0.0.1:7000/2".into()),
                "127.0.0.1:7000".into()
            )
        );
        assert_eq!(
            parse_url("redis://redis.internal").unwrap().1,
            "redis.internal:6379"
        );
        assert_eq!(
            parse_url("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/").unwrap(),
            (
                Target::Cluster(vec![
                    "redis://u:p@10.0.0.1:7000".into(),
                    "redis://u:p@10.0.0.2:7001".into()
                ]),
                "10.0.0.1:7000,10.0.0.2:7001".into()
            )
        );
        for bad in [
            "redis://",
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/3",
            "rediss://a:1",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn checks_urls_without_connecting() {
        // Nothing listens on port 1: checking must not try.
        check_url("redis://127.0.0.1:1/3").unwrap();
        check_url("redis+cluster://127.0.0.1:1,127.0.0.1:2").unwrap();
        for bad in [
            "redis://127.0.0.1:1/not-a-db",
            "redis+cluster://a:1/2",
            "redis://",
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn decodes_records_and_rejects_broken_ones() {
        let fields = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let record = decode(
            "c1",
            fields(&[
                ("node", "n"),
                ("connectedAtMs", "42"),
                ("sourceIp", "10.0.0.1"),
                ("context", r#"{"a":1}"#),
            ]),
        )
        .unwrap();
        assert_eq!(record.user_agent, None);
        assert_eq!(record.context["a"], 1);
        assert_eq!(record.connected_at_ms, 42);
        let err = decode("c1", fields(&[("node", "n")])).unwrap_err();
        assert!(err.to_string().contains("connectedAtMs"), "{err}");
        let err = decode(
            "c1",
            fields(&[("node", "n"), ("connectedAtMs", "x"), ("sourceIp", "ip")]),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
    }

    #[tokio::test]
    async fn unreachable_at_connect_is_unavailable_naming_the_address() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "sb")
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        match &err {
            StoreError::Unavailable { address, .. } => {
                assert_eq!(*address, format!("127.0.0.1:{port}"))
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_prefix_is_refused_before_connecting() {
        let err = RedisStore::connect("redis://127.0.0.1:1", "a{b")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InvalidName {
                    what: "key prefix",
                    ..
                }
            ),
            "{err}"
        );
    }
}
