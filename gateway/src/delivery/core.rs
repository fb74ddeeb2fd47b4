//! The one place that delivers a send-back request: to one connection (send, close, read
//! its info), to a batch of connections, to a group. It decides whether this node holds
//! the connection or another node does (then it relays the request there, as it came),
//! pushes to outboxes, keeps group member lists, and merges what other nodes answered.
//! The send-back adapters (native, AWS, Tencent) parse and authenticate, call this, and
//! map the typed outcome to their own statuses and bodies.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use store::{SharedStore, StoreError};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};
use uuid::Uuid;
use wire::api::{BatchItem, BatchResult, BatchSend, DeliveryStatus, GroupSendResult};

use crate::cluster::relay::{self, Origin, Owner, Relay};
use crate::delivery::group_cache::{GroupCache, Members};
use crate::metrics::registry::Metrics;
use crate::respond::Body;
use crate::socket::frame::Frame;
use crate::socket::outbox::{CloseRequest, PushError, Pushed, QueueLimits};
use crate::socket::registry::{Connection, IdHasher, Registry};

/// What a request asks of one connection.
#[derive(Debug)]
pub(crate) enum Op {
    /// Queue this message for it.
    Send(Message),
    /// Close it with this code and reason.
    Close(CloseRequest),
    /// Read what is known of it.
    Info,
}

/// How a request for one connection ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Done here: the message is queued, or the close requested.
    Done,
    /// The connection, for [`Op::Info`].
    Info(Arc<Connection>),
    /// Its outbound queue is full: the client is not reading fast enough.
    Throttled,
    /// No node holds it: no record (or its record names this node, which no longer
    /// holds it).
    Gone,
    /// Another node holds it and answered: its reply, passed on as it is.
    Relayed(Response<Body>),
    /// Its node stopped heartbeating, or did not answer the relay in time: retry later
    /// (503). It is [`Outcome::Gone`] once a reaper has cleaned up after that node.
    NodeUnavailable,
    /// The store could not say where it is (503, retry later): never "gone".
    StoreUnavailable,
}

/// The delivery core of one node.
#[derive(Debug)]
pub(crate) struct Delivery {
    registry: Arc<Registry>,
    store: SharedStore,
    relay: Relay,
    groups: GroupCache,
    limits: QueueLimits,
    /// Counts throttled sends and group sends.
    metrics: Arc<Metrics>,
}

/// Members read per store round trip in a group walk.
const GROUP_PAGE: usize = 1000;

type IdSet = HashSet<Uuid, BuildHasherDefault<IdHasher>>;

impl Delivery {
    pub fn new(
        registry: Arc<Registry>,
        store: SharedStore,
        relay: Relay,
        limits: QueueLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Delivery {
            registry,
            store,
            relay,
            groups: GroupCache::default(),
            limits,
            metrics,
        }
    }

    /// The live connection `id` if this node holds it.
    fn local(&self, id: &str) -> Option<Arc<Connection>> {
        let id = Uuid::parse_str(id).ok()?;
        self.registry.get(&id).filter(|c| !c.outbox.is_closed())
    }

    /// Queues `frame` for `conn`.
    fn push(&self, conn: &Connection, frame: &Frame) -> Result<Pushed, PushError> {
        conn.outbox.push(&frame.bytes, self.limits)
    }

    /// Counts `count` copies of `frame` queued as messages out: once per send, not per
    /// member (the counters are shared by the whole node).
    fn count_out(&self, count: u64, frame: &Frame) {
        if count > 0 {
            self.metrics.messages_out.inc_by(count);
            self.metrics
                .bytes_out
                .inc_by(count * frame.payload_len as u64);
        }
    }

    /// Carries out `op` on connection `id`: here if this node holds it, else relayed (as
    /// `origin` came) to the node that does. A relayed request is never relayed again.
    pub async fn to_connection(&self, id: &str, op: Op, origin: Origin<'_>) -> Outcome {
        let Some(conn) = self.local(id) else {
            if origin.is_forwarded() {
                return Outcome::Gone;
            }
            let base = match self.relay.owner(id).await {
                Owner::At(base) => base,
                Owner::Here | Owner::NoRecord => return Outcome::Gone,
                Owner::Down(node) => {
                    debug!(
                        connection = id,
                        node, "the node holding the connection is down"
                    );
                    return Outcome::NodeUnavailable;
                }
                Owner::StoreUnavailable => return Outcome::StoreUnavailable,
            };
            return match self.relay.send(&base, origin, None, Some(id)).await {
                Ok(reply) => Outcome::Relayed(relay::into_response(reply)),
                Err(cause) => {
                    warn!(connection = id, %cause, "could not relay a send-back request to the node holding the connection");
                    Outcome::NodeUnavailable
                }
            };
        };
        match op {
            Op::Send(message) => {
                let frame = Frame::of(&message);
                match self.push(&conn, &frame) {
                    Ok(pushed) => {
                        self.count_out(1, &frame);
                        if pushed == Pushed::Flush {
                            conn.outbox.flush();
                        }
                        Outcome::Done
                    }
                    Err(PushError::Closed) => Outcome::Gone,
                    Err(PushError::Full) => {
                        debug!(connection = id, "send-back throttled: outbound queue full");
                        self.metrics.throttled.inc();
                        Outcome::Throttled
                    }
                }
            }
            Op::Close(close) => {
                if conn.outbox.request_close(close) {
                    Outcome::Done
                } else {
                    Outcome::Gone
                }
            }
            Op::Info => Outcome::Info(conn),
        }
    }

    /// Sends `message` (decoded from `batch`) to every connection `batch` names: those
    /// this node holds directly, the others in one relayed batch per node holding some.
    pub async fn batch(
        &self,
        batch: &BatchSend,
        message: Message,
        origin: Origin<'_>,
    ) -> BatchResult {
        let mut items = Vec::with_capacity(batch.connection_ids.len());
        // Positions of the ids this node does not hold.
        let mut elsewhere = Vec::new();
        let mut throttled = 0;
        let frame = Frame::of(&message);
        let mut flush = Flush::default();
        for id in &batch.connection_ids {
            let status = match self.local(id) {
                None => {
                    elsewhere.push(items.len());
                    DeliveryStatus::Gone
                }
                Some(conn) => match self.push(&conn, &frame) {
                    Ok(pushed) => {
                        flush.add(&conn, pushed);
                        DeliveryStatus::Delivered
                    }
                    Err(PushError::Closed) => DeliveryStatus::Gone,
                    Err(PushError::Full) => {
                        throttled += 1;
                        DeliveryStatus::Throttled
                    }
                },
            };
            items.push(BatchItem {
                connection_id: id.clone(),
                status,
            });
        }
        self.count_out(flush.queued, &frame);
        flush.start();
        if throttled > 0 {
            self.metrics.throttled.inc_by(throttled);
        }
        if !origin.is_forwarded() && !elsewhere.is_empty() {
            self.relay_batch(batch, &mut items, &elsewhere, origin)
                .await;
        }
        let mut result = BatchResult::default();
        for item in &items {
            match item.status {
                DeliveryStatus::Delivered => result.delivered += 1,
                DeliveryStatus::Gone => result.gone += 1,
                DeliveryStatus::Throttled => result.throttled += 1,
                DeliveryStatus::Unavailable => result.unavailable += 1,
            }
        }
        result.results = items;
        result
    }

    /// Sends the part of a batch for connections other nodes hold to those nodes (one
    /// batch per node, concurrently) and takes their statuses into `items`.
    async fn relay_batch(
        &self,
        batch: &BatchSend,
        items: &mut [BatchItem],
        elsewhere: &[usize],
        origin: Origin<'_>,
    ) {
        let owners = futures_util::future::join_all(
            elsewhere
                .iter()
                .map(|&i| self.relay.owner(&items[i].connection_id)),
        )
        .await;
        let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
        for (&i, owner) in elsewhere.iter().zip(owners) {
            match owner {
                Owner::At(base) => by_node.entry(base).or_default().push(i),
                Owner::Down(_) | Owner::StoreUnavailable => {
                    items[i].status = DeliveryStatus::Unavailable;
                }
                Owner::Here | Owner::NoRecord => {}
            }
        }
        let post = Origin {
            method: &Method::POST,
            target: "/@connections",
            ..origin
        };
        let sends = by_node.iter().map(|(base, positions)| {
            let part = BatchSend {
                connection_ids: positions
                    .iter()
                    .map(|&i| items[i].connection_id.clone())
                    .collect(),
                data: batch.data.clone(),
                data_type: batch.data_type,
            };
            async move {
                let body = Bytes::from(serde_json::to_vec(&part).unwrap_or_default());
                let answer = self
                    .relay
                    .send_for_json::<BatchResult>(base, post, Some(&body))
                    .await;
                (positions, answer)
            }
        });
        for (positions, answer) in futures_util::future::join_all(sends).await {
            match answer {
                Ok(answer) => {
                    for (&i, item) in positions.iter().zip(answer.results) {
                        if item.connection_id == items[i].connection_id {
                            items[i].status = item.status;
                        }
                    }
                }
                Err(cause) => {
                    warn!(%cause, "a node did not take its part of a batch send: reported as unavailable");
                    for &i in positions {
                        items[i].status = DeliveryStatus::Unavailable;
                    }
                }
            }
        }
    }

    /// Sends `message` to every member of `group` but the `excluded` ids: this node's
    /// members from the kept member list (or a walk of the group), the other nodes' by
    /// relaying `origin` to every other live node and adding up their answers.
    pub async fn group(
        &self,
        group: &str,
        excluded: &HashSet<String>,
        message: Message,
        origin: Origin<'_>,
    ) -> Result<GroupSendResult, StoreError> {
        // The other nodes deliver to the members they hold; a relayed send stays here.
        let (members, peers) = if origin.is_forwarded() {
            (self.group_members(group).await?, Vec::new())
        } else {
            let (members, peers) = tokio::join!(self.group_members(group), self.relay.peers());
            (members?, peers)
        };
        let relayed = futures_util::future::join_all(peers.iter().map(|peer| {
            self.relay
                .send_for_json::<GroupSendResult>(&peer.address, origin, None)
        }));
        let mut result = GroupSendResult::default();
        let excluded_ids: IdSet = excluded
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        for other in &members.others {
            if excluded.contains(other) {
                result.excluded += 1;
            } else {
                // Not one of ours (another node's or a stale key): gone for this node.
                result.gone += 1;
            }
        }
        let mut page = Vec::new();
        let mut throttled_here = 0;
        let frame = Frame::of(&message);
        let mut flush = Flush::default();
        for chunk in members.ids.chunks(GROUP_PAGE) {
            let ids = if excluded_ids.is_empty() {
                chunk
            } else {
                page.clear();
                page.extend(chunk.iter().filter(|id| !excluded_ids.contains(id)));
                result.excluded += chunk.len() - page.len();
                &page[..]
            };
            // One lock of the registry per page, not per member.
            self.registry
                .with_each(ids, |conn| match conn.map(|c| (c, self.push(c, &frame))) {
                    Some((conn, Ok(pushed))) => {
                        result.delivered += 1;
                        flush.add(conn, pushed);
                    }
                    Some((_, Err(PushError::Full))) => {
                        result.throttled += 1;
                        throttled_here += 1;
                    }
                    Some((_, Err(PushError::Closed))) | None => result.gone += 1,
                });
        }
        // The writes happen after the pushes (and after this request is answered): a
        // member a burst of sends reaches before its writer does gets them in one write.
        self.count_out(flush.queued, &frame);
        flush.start();
        if throttled_here > 0 {
            self.metrics.throttled.inc_by(throttled_here);
        }
        if !peers.is_empty() {
            // Each relay is bounded by `relay_timeout`: a silent node costs that, once.
            for (peer, answer) in peers.iter().zip(relayed.await) {
                match answer {
                    Ok(theirs) => {
                        result.delivered += theirs.delivered;
                        result.throttled += theirs.throttled;
                    }
                    Err(cause) => {
                        warn!(%cause, group, node = peer.name, "a node did not take a group send: listed as unreachable");
                        result.unreachable_nodes.push(peer.name.clone());
                    }
                }
            }
            // Each node counts the members it does not hold as gone: count them once, here.
            let listed = members.ids.len() + members.others.len();
            result.gone =
                listed.saturating_sub(result.excluded + result.delivered + result.throttled);
        }
        debug!(
            group,
            delivered = result.delivered,
            gone = result.gone,
            "group send"
        );
        if !origin.is_forwarded() {
            self.metrics.group_send(result.delivered as u64);
        }
        Ok(result)
    }

    /// The members of `group`: kept ones if the store's version of the group matches, else
    /// a walk (kept if the store gave a version).
    async fn group_members(&self, group: &str) -> Result<Arc<Members>, StoreError> {
        let version = self.store.group_version(group).await?;
        if let Some(members) = version.and_then(|v| self.groups.get(group, v)) {
            return Ok(members);
        }
        let members = Arc::new(self.walk_members(group).await?);
        if let Some(version) = version {
            self.groups.insert(group, version, members.clone());
        }
        Ok(members)
    }

    /// Reads every member of `group` from the store, page by page.
    async fn walk_members(&self, group: &str) -> Result<Members, StoreError> {
        let mut members = Members::default();
        let mut seen: IdSet = HashSet::default();
        let mut others: HashSet<String> = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .store
                .members(group, cursor.as_deref(), GROUP_PAGE)
                .await?;
            for id in page.members {
                // A walk may list a member twice.
                match Uuid::parse_str(&id) {
                    Ok(uuid) if seen.insert(uuid) => members.ids.push(uuid),
                    Ok(_) => {}
                    Err(_) => {
                        if others.insert(id.clone()) {
                            members.others.push(id);
                        }
                    }
                }
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(members),
            }
        }
    }
}

/// The members one send queued its frame for, and of those the ones whose sockets the
/// sender writes itself ([`Pushed::Flush`]), written after every member's frame is
/// queued, on tasks of their own.
#[derive(Default)]
struct Flush {
    conns: Vec<Arc<Connection>>,
    /// Members the frame was queued for (counted once per send).
    queued: u64,
}

/// Members per writing task: a large group is written by several tasks, on every core.
const FLUSH_SHARE: usize = 2048;
/// Members a writing task writes before it lets the runtime run other tasks (the next send
/// among them: frames it queues for members not written yet go out with theirs).
const FLUSH_TURN: usize = 16;

impl Flush {
    fn add(&mut self, conn: &Arc<Connection>, pushed: Pushed) {
        self.queued += 1;
        if pushed == Pushed::Flush {
            self.conns.push(Arc::clone(conn));
        }
    }

    /// Spawns the writes. Each member's socket is written without waiting; what a socket
    /// does not take is left to its own task.
    fn start(self) {
        let mut conns = self.conns;
        while !conns.is_empty() {
            let share = conns.split_off(conns.len().saturating_sub(FLUSH_SHARE));
            tokio::spawn(async move {
                for (i, conn) in share.into_iter().enumerate() {
                    if i > 0 && i % FLUSH_TURN == 0 {
                        tokio::task::yield_now().await;
                    }
                    conn.outbox.flush();
                }
            });
        }
    }
}
