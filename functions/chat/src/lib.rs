//! The example chat: chat functions written with the `functions` SDK, their web page and
//! a one-command demo.
//!
//! - [`Chat`]: the chat functions (a [`functions::Handler`]); the `chat-functions` binary
//!   serves them as a process of their own, beside a gateway sharing a Redis store;
//! - [`CHAT_PAGE`]: the chat web page;
//! - [`demo`]: the gateway, the chat functions and the page in one process on the
//!   embedded store; the `chat-demo` binary runs it.
//!
//! Clients connect to `/chat?room=<room>&name=<name>` (see [`CHAT_PAGE`]). Register joins
//! the store group named after the room and tells the others; every text message goes to
//! the rest of the room with one group send (`POST /@groups/{room}?exclude={sender}`: the
//! gateway reads the members, not the function); `/who` answers the sender with the room's
//! members; `ping` answers `pong`; cleanup leaves the room and tells the others.
//!
//! Messages the clients get are JSON text:
//! - `{"type":"message","from":name,"text":text,"online":N}`
//! - `{"type":"presence","event":"join"|"leave","name":name,"online":N,"members":[...],"at":ms}`
//! - `{"type":"presence","event":"who","online":N,"members":[...],"at":ms}`
//! - `{"type":"error","message":...}`
//!
//! `online` is the room's size (the store's count); `members` lists the names of at most
//! [`MAX_LISTED_MEMBERS`] of them, read from their records. `at` is when the list was read
//! (Unix ms): a `who` answer read before a join can reach the client after that join's
//! message, so the page keeps the newest list, not the last to arrive.
//!
//! When the store is down (or the gateway answers a group send with 503 because its store
//! is down), a message is not delivered, but the transport event does not fail (that would
//! close the sender's connection with 1011): the sender gets [`STORE_DOWN_MESSAGE`] as an
//! error message instead, and may try again. Register refuses with 503 then. Likewise when
//! no gateway node can be reached to send it (every send-back URL refused the connection:
//! [`GATEWAY_DOWN_MESSAGE`]), or the node that took the send stopped answering
//! ([`GATEWAY_UNSURE_MESSAGE`]: the SDK never sends twice what may have been delivered).

pub mod demo;

use functions::error::Chain;
use functions::event::{DisconnectReason, Event, HandshakeRequest, RegisterReply};
use functions::{
    FunctionsError, Handler, HandlerError, Message, Refusal, SendBack, SharedStore, StoreError,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// The chat web page: plain HTML, CSS and JS with no external resources. It connects to
/// `/chat` on the host that served it.
pub const CHAT_PAGE: &str = include_str!("chat.html");

/// The room of a client that names none.
pub const DEFAULT_ROOM: &str = "lobby";
/// The longest room name, in characters (`[A-Za-z0-9_-]`).
pub const MAX_ROOM_CHARS: usize = 64;
/// The longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// The most member names a presence message lists.
pub const MAX_LISTED_MEMBERS: usize = 50;

/// The `message` of the error a sender gets when its chat message could not be delivered
/// because the store is unavailable.
pub const STORE_DOWN_MESSAGE: &str =
    "message not delivered: the chat store is unavailable, try again";
/// The `message` of the error a sender gets when no gateway node could be reached to send
/// its chat message (every send-back URL refused the connection): nothing was sent.
pub const GATEWAY_DOWN_MESSAGE: &str =
    "message not delivered: the gateway cannot be reached, try again";
/// The `message` of the error a sender gets when the gateway node took the send and then
/// failed to answer (it stopped, or the network broke): the message may have reached the
/// room or not, and the SDK does not send it twice.
pub const GATEWAY_UNSURE_MESSAGE: &str =
    "message may not have been delivered: the gateway did not answer";
/// The `message` of the error a `/who` gets when the store is unavailable.
pub const STORE_DOWN_WHO_MESSAGE: &str =
    "cannot list the room: the chat store is unavailable, try again";

/// The chat functions, over a store (rooms are its groups) and the send-back API.
#[derive(Clone, Debug)]
pub struct Chat {
    store: SharedStore,
    sendback: SendBack,
}

impl Chat {
    /// Chat functions that keep rooms in `store` and send through `sendback`. The store
    /// must be the one the gateway uses (same URL and key prefix), since the gateway reads
    /// the room's members for every group send.
    pub fn new(store: SharedStore, sendback: SendBack) -> Self {
        Chat { store, sendback }
    }
}

#[async_trait::async_trait]
impl Handler for Chat {
    async fn register(
        &self,
        event: &Event,
        request: &HandshakeRequest,
    ) -> Result<RegisterReply, Refusal> {
        let id = &event.connection_id;
        let room = room_param(request)?;
        let name = name_param(request, id)?;
        self.store
            .join(&room, id)
            .await
            .map_err(|err| store_refusal(&err))?;
        // The joiner's record has no context yet: its name comes from here.
        let result = self.announce("join", &room, &name, id, Some(&name)).await;
        if let Err(err) = result {
            warn!(%room, error = %Chain(&err), "could not announce a join");
        }
        Ok(RegisterReply {
            subprotocol: None,
            context: json!({"room": room, "name": name}),
            headers: Default::default(),
        })
    }

    async fn transport(
        &self,
        event: &Event,
        message: Message,
    ) -> Result<Option<Message>, HandlerError> {
        let Message::Text(text) = message else {
            return Ok(Some(error_message(
                "binary messages are not supported by the chat",
            )));
        };
        let seat = Seat::of(event);
        let (result, store_down) = match text.as_str() {
            "ping" => return Ok(Some(Message::text("pong"))),
            "/who" => (self.who(&seat.room).await.map(Some), STORE_DOWN_WHO_MESSAGE),
            _ => (
                self.say(&seat, &event.connection_id, &text)
                    .await
                    .map(|()| None),
                STORE_DOWN_MESSAGE,
            ),
        };
        match result {
            Ok(reply) => Ok(reply),
            // Failing the event would close the sender with 1011; it may just try again.
            Err(err) if err.is_unavailable() => {
                warn!(
                    room = %seat.room,
                    error = %Chain(&err),
                    "store unavailable: told the sender to try again"
                );
                Ok(Some(error_message(store_down)))
            }
            // The gateway out of reach (a node stopping, every URL refused): failing the
            // event would close the sender with 1011 through a node that works; it is
            // told instead, and may send again.
            Err(FunctionsError::Transport(err)) => {
                let told = if err.is_connect() {
                    GATEWAY_DOWN_MESSAGE
                } else {
                    GATEWAY_UNSURE_MESSAGE
                };
                warn!(room = %seat.room, error = %Chain(&err), "send-back failed: told the sender");
                Ok(Some(error_message(told)))
            }
            // A balancer in front of the nodes (deploy/nginx) answers 502 or 504 when the
            // node it passed the send to went away: the gateway itself never does.
            Err(
                err @ FunctionsError::Http {
                    status: 502 | 504, ..
                },
            ) => {
                warn!(room = %seat.room, error = %Chain(&err), "send-back failed: told the sender");
                Ok(Some(error_message(GATEWAY_UNSURE_MESSAGE)))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn cleanup(&self, event: &Event, _reason: DisconnectReason) -> Result<(), HandlerError> {
        let seat = Seat::of(event);
        self.store.leave(&seat.room, &event.connection_id).await?;
        // Presence is best effort: the gateway may be closing everything at once.
        let result = self
            .announce("leave", &seat.room, &seat.name, &event.connection_id, None)
            .await;
        if let Err(err) = result {
            warn!(room = %seat.room, error = %Chain(&err), "could not announce a leave");
        }
        Ok(())
    }
}

impl Chat {
    /// Sends a chat message from `sender` to the rest of its room, in one group send.
    async fn say(&self, seat: &Seat, sender: &str, text: &str) -> Result<(), FunctionsError> {
        let online = self.store.count(&seat.room).await?;
        // The sender is a member from register to cleanup: a room of one is the sender.
        if online <= 1 {
            return Ok(());
        }
        let chat = json!({"type": "message", "from": seat.name, "text": text, "online": online});
        self.send_to_room(&seat.room, chat.to_string(), sender)
            .await
    }

    /// The answer to `/who`: the room's size and names.
    async fn who(&self, room: &str) -> Result<Message, FunctionsError> {
        let online = self.store.count(room).await?;
        let who = self.presence("who", None, room, online, None).await?;
        Ok(Message::text(who))
    }

    /// Tells every member of `room` but `subject` (the connection that joined or left)
    /// that `name` joined or left. `joiner_name` is set for a join: the joiner is then a
    /// member already, and its record has no context (so no name) yet.
    async fn announce(
        &self,
        event: &str,
        room: &str,
        name: &str,
        subject: &str,
        joiner_name: Option<&str>,
    ) -> Result<(), FunctionsError> {
        let online = self.store.count(room).await?;
        let others = if joiner_name.is_some() {
            online.saturating_sub(1)
        } else {
            online
        };
        if others == 0 {
            return Ok(());
        }
        let joiner = joiner_name.map(|joiner_name| (subject, joiner_name));
        let presence = self
            .presence(event, Some(name), room, online, joiner)
            .await?;
        self.send_to_room(room, presence, subject).await
    }

    /// A presence message about `room`, which has `online` members.
    async fn presence(
        &self,
        event: &str,
        name: Option<&str>,
        room: &str,
        online: u64,
        joiner: Option<(&str, &str)>,
    ) -> Result<String, StoreError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let names = self.member_names(room, joiner).await?;
        let mut presence = json!({"type": "presence", "event": event});
        if let Some(name) = name {
            presence["name"] = json!(name);
        }
        presence["online"] = json!(online);
        presence["members"] = json!(names);
        presence["at"] = json!(at);
        Ok(presence.to_string())
    }

    /// The names of at most [`MAX_LISTED_MEMBERS`] members of `room`, read from their
    /// records' contexts concurrently. Members without a record or a name yet are left out;
    /// `joiner` is the (id, name) of a member whose record has no context yet.
    async fn member_names(
        &self,
        room: &str,
        joiner: Option<(&str, &str)>,
    ) -> Result<Vec<String>, StoreError> {
        let listed = self.listed_members(room).await?;
        let mut names: Vec<Option<String>> = vec![None; listed.len()];
        let mut lookups = JoinSet::new();
        for (index, id) in listed.into_iter().enumerate() {
            match joiner {
                Some((joiner_id, joiner_name)) if joiner_id == id => {
                    names[index] = Some(joiner_name.to_owned());
                }
                _ => {
                    let store = SharedStore::clone(&self.store);
                    lookups.spawn(async move { (index, store.get(&id).await) });
                }
            }
        }
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok((index, record)) => {
                    names[index] = record?.and_then(|r| context_name(&r.context))
                }
                Err(err) => warn!(error = %err, "a member lookup failed"),
            }
        }
        Ok(names.into_iter().flatten().collect())
    }

    /// At most [`MAX_LISTED_MEMBERS`] member ids of `room`, sorted: pages are read only
    /// until that many are found, so a large room costs no more than a small one.
    async fn listed_members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .store
                .members(room, cursor.as_deref(), MAX_LISTED_MEMBERS)
                .await?;
            ids.extend(page.members);
            // A walk may list a member twice.
            ids.sort_unstable();
            ids.dedup();
            match page.cursor {
                Some(next) if ids.len() < MAX_LISTED_MEMBERS => cursor = Some(next),
                _ => break,
            }
        }
        ids.truncate(MAX_LISTED_MEMBERS);
        Ok(ids)
    }

    /// Sends `text` to every member of `room` but `except`, in one group send.
    async fn send_to_room(
        &self,
        room: &str,
        text: String,
        except: &str,
    ) -> Result<(), FunctionsError> {
        let result = self
            .sendback
            .send_to_group(room, &Message::text(text), &[except])
            .await?;
        if result.gone > 0 {
            debug!(%room, gone = result.gone, "some members had already disconnected");
        }
        if result.throttled > 0 {
            warn!(
                %room,
                throttled = result.throttled,
                "some members read too slowly and missed a message"
            );
        }
        Ok(())
    }
}

/// Where a connection sits, from its event's context.
struct Seat {
    room: String,
    name: String,
}

impl Seat {
    /// The room and name register put in the context; `lobby` and the id if absent.
    fn of(event: &Event) -> Self {
        let field = |key: &str| event.context.get(key).and_then(Value::as_str);
        Seat {
            room: field("room").unwrap_or(DEFAULT_ROOM).to_owned(),
            name: field("name").unwrap_or(&event.connection_id).to_owned(),
        }
    }
}

/// The `name` in a record's context.
fn context_name(context: &Value) -> Option<String> {
    context
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The `room` query parameter, checked; [`DEFAULT_ROOM`] if absent. `chat.html` checks
/// room and name by the same rules before it connects.
fn room_param(request: &HandshakeRequest) -> Result<String, Refusal> {
    let Some(room) = request.query_param("room") else {
        return Ok(DEFAULT_ROOM.to_owned());
    };
    let valid = (1..=MAX_ROOM_CHARS).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(room)
    } else {
        Err(Refusal::bad_request(format!(
            "room must be 1 to {MAX_ROOM_CHARS} characters of A-Z, a-z, 0-9, _ and -"
        )))
    }
}

/// The `name` query parameter, trimmed and checked; `guest-` and the id's first four
/// characters if absent or blank.
fn name_param(request: &HandshakeRequest, id: &str) -> Result<String, Refusal> {
    let given = request.query_param("name").unwrap_or_default();
    let name = given.trim();
    if name.is_empty() {
        return Ok(format!("guest-{}", id.chars().take(4).collect::<String>()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Refusal::bad_request(format!(
            "name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Refusal::bad_request(
            "name must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Register's answer when the store fails.
fn store_refusal(err: &StoreError) -> Refusal {
    warn!(error = %err, "could not join the room");
    if err.is_unavailable() {
        Refusal::unavailable("the chat is unavailable, try again later")
    } else {
        Refusal::internal("could not join the room")
    }
}

/// An error message for the client.
fn error_message(message: &str) -> Message {
    Message::text(json!({"type": "error", "message": message}).to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use functions::store::{self, ConnectionRecord, MembersPage, MemoryStore, Store};
    use http::{Method, StatusCode};

    use super::*;
    use functions::api::GroupSendResult;
    use functions::event::{DataType, EventKind};
    use functions::test_api::{self, TestApi};

    /// How the test send-back API answers.
    #[derive(Clone, Copy)]
    enum Api {
        /// 200 with a [`GroupSendResult`].
        Ok,
        /// 500 to everything.
        Failing,
        /// 503 `store_unavailable` to everything, as the gateway does with its store down.
        StoreDown,
    }

    /// A memory store that can be taken down (every call then fails with
    /// [`StoreError::Unavailable`]) and counts the member pages read.
    #[derive(Debug, Default)]
    struct TestStore {
        inner: MemoryStore,
        down: AtomicBool,
        member_pages: AtomicUsize,
    }

    impl TestStore {
        fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        fn up(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable {
                    address: "127.0.0.1:6379".into(),
                    reason: "connection refused".into(),
                });
            }
            Ok(())
        }

        fn member_pages(&self) -> usize {
            self.member_pages.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl Store for TestStore {
        async fn register(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
            self.up()?;
            self.inner.register(record).await
        }
        async fn get(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError> {
            self.up()?;
            self.inner.get(id).await
        }
        async fn unregister(&self, id: &str) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.unregister(id).await
        }
        async fn join(&self, group: &str, id: &str) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.join(group, id).await
        }
        async fn leave(&self, group: &str, id: &str) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.leave(group, id).await
        }
        async fn members(
            &self,
            group: &str,
            cursor: Option<&str>,
            count: usize,
        ) -> Result<MembersPage, StoreError> {
            self.up()?;
            self.member_pages.fetch_add(1, Ordering::SeqCst);
            self.inner.members(group, cursor, count).await
        }
        async fn count(&self, group: &str) -> Result<u64, StoreError> {
            self.up()?;
            self.inner.count(group).await
        }
        async fn groups_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
            self.up()?;
            self.inner.groups_of(id).await
        }
        async fn heartbeat(
            &self,
            node: &str,
            address: &str,
            ttl: Duration,
        ) -> Result<(), StoreError> {
            self.up()?;
            self.inner.heartbeat(node, address, ttl).await
        }
        async fn node_alive(&self, node: &str) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.node_alive(node).await
        }
        async fn node_address(&self, node: &str) -> Result<Option<String>, StoreError> {
            self.up()?;
            self.inner.node_address(node).await
        }
        async fn nodes(&self) -> Result<Vec<store::NodeInfo>, StoreError> {
            self.up()?;
            self.inner.nodes().await
        }
        async fn queue_cleanup(&self, cleanup: &store::PendingCleanup) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.queue_cleanup(cleanup).await
        }
        async fn claim_cleanups(
            &self,
            now_ms: u64,
            lease: std::time::Duration,
            max: usize,
        ) -> Result<Vec<store::PendingCleanup>, StoreError> {
            self.up()?;
            self.inner.claim_cleanups(now_ms, lease, max).await
        }
        async fn retry_cleanup(&self, cleanup: &store::PendingCleanup) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.retry_cleanup(cleanup).await
        }
        async fn finish_cleanup(&self, connection_id: &str) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.finish_cleanup(connection_id).await
        }
        async fn pending_cleanups(&self) -> Result<u64, StoreError> {
            self.up()?;
            self.inner.pending_cleanups().await
        }
        async fn cleanup_queued(&self, connection_id: &str) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.cleanup_queued(connection_id).await
        }
        async fn remove_heartbeat(&self, node: &str) -> Result<(), StoreError> {
            self.up()?;
            self.inner.remove_heartbeat(node).await
        }
        async fn dead_nodes(&self) -> Result<Vec<String>, StoreError> {
            self.up()?;
            self.inner.dead_nodes().await
        }
        async fn node_connections(
            &self,
            node: &str,
            cursor: Option<&str>,
            count: usize,
        ) -> Result<MembersPage, StoreError> {
            self.up()?;
            self.inner.node_connections(node, cursor, count).await
        }
        async fn release(&self, node: &str, id: &str) -> Result<(), StoreError> {
            self.up()?;
            self.inner.release(node, id).await
        }
        async fn reap_lease(
            &self,
            node: &str,
            holder: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            self.up()?;
            self.inner.reap_lease(node, holder, ttl).await
        }
        async fn drop_reap_lease(&self, node: &str, holder: &str) -> Result<(), StoreError> {
            self.up()?;
            self.inner.drop_reap_lease(node, holder).await
        }
        async fn mark_reaped(
            &self,
            node: &str,
            at_ms: u64,
            ttl: Duration,
        ) -> Result<(), StoreError> {
            self.up()?;
            self.inner.mark_reaped(node, at_ms, ttl).await
        }
        async fn reaped_at(&self, node: &str) -> Result<Option<u64>, StoreError> {
            self.up()?;
            self.inner.reaped_at(node).await
        }
        async fn clear_reaped(&self, node: &str) -> Result<(), StoreError> {
            self.up()?;
            self.inner.clear_reaped(node).await
        }
        async fn mark_node(&self, node: &str, keep: Duration) -> Result<(), StoreError> {
            self.up()?;
            self.inner.mark_node(node, keep).await
        }
        async fn node_check(
            &self,
            node: &str,
            keep: Duration,
        ) -> Result<functions::store::NodeCheck, StoreError> {
            self.up()?;
            self.inner.node_check(node, keep).await
        }
    }

    /// A chat over a test store and a send-back API that answers as `mode` says.
    async fn setup(mode: Api) -> (Chat, Arc<TestStore>, TestApi) {
        let api = test_api::start(move |_req| match mode {
            Api::Ok => test_api::json(
                StatusCode::OK,
                &GroupSendResult {
                    delivered: 1,
                    ..GroupSendResult::default()
                },
            ),
            Api::Failing => test_api::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal", "message": "boom"}),
            ),
            Api::StoreDown => test_api::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "store_unavailable", "message": "the store is down"}),
            ),
        })
        .await;
        let store = Arc::new(TestStore::default());
        let sendback = SendBack::new(&api.base, None).unwrap();
        (Chat::new(store.clone(), sendback), store, api)
    }

    fn event(id: &str, context: Value, kind: EventKind) -> Event {
        Event {
            connection_id: id.into(),
            seq: 0,
            node: "n1".into(),
            timestamp: 0,
            context,
            event_id: kind.event_id(id, 0),
            kind,
        }
    }

    fn handshake(query: &str) -> HandshakeRequest {
        HandshakeRequest {
            path: "/chat".into(),
            query: query.into(),
            ..Default::default()
        }
    }

    fn record(id: &str, context: Value) -> ConnectionRecord {
        ConnectionRecord {
            id: id.into(),
            node: "n1".into(),
            connected_at_ms: 0,
            source_ip: "127.0.0.1".into(),
            user_agent: None,
            context,
        }
    }

    /// Registers like the gateway: record first, register, then the record's context.
    async fn connect(
        chat: &Chat,
        store: &TestStore,
        id: &str,
        query: &str,
    ) -> Result<Value, Refusal> {
        let mut record = record(id, Value::Null);
        store.inner.register(&record).await.unwrap();
        let request = handshake(query);
        let ev = event(
            id,
            Value::Null,
            EventKind::Register {
                request: request.clone(),
            },
        );
        let reply = chat.register(&ev, &request).await?;
        record.context = reply.context.clone();
        store.inner.register(&record).await.unwrap();
        Ok(reply.context)
    }

    fn transport_event(id: &str, context: &Value, text: &str) -> Event {
        event(
            id,
            context.clone(),
            EventKind::Transport {
                data_type: DataType::Text,
                data: text.into(),
            },
        )
    }

    async fn say(chat: &Chat, id: &str, context: &Value, text: &str) -> Option<Message> {
        let ev = transport_event(id, context, text);
        chat.transport(&ev, Message::text(text)).await.unwrap()
    }

    /// A group send: the group, the excluded ids and the JSON payload.
    fn group_send(request: &test_api::Recorded) -> (String, Vec<String>, Value) {
        assert_eq!(request.method, Method::POST);
        let group = request
            .uri
            .path()
            .strip_prefix("/@groups/")
            .expect("a group send")
            .to_owned();
        let excluded = request
            .uri
            .query()
            .map(|q| {
                functions::event::query_pairs(q)
                    .map(|(k, v)| {
                        assert_eq!(k, "exclude");
                        v
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            request.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let payload = serde_json::from_slice(&request.body).unwrap();
        (group, excluded, payload)
    }

    fn json_of(message: Option<Message>) -> Value {
        let message = message.expect("a reply");
        serde_json::from_str(message.as_text().expect("a text reply")).unwrap()
    }

    /// A presence message without its `at`, which must be a plausible Unix time in ms.
    fn without_at(mut presence: serde_json::Value) -> serde_json::Value {
        let at = presence.as_object_mut().and_then(|m| m.remove("at"));
        assert!(
            at.as_ref()
                .and_then(serde_json::Value::as_u64)
                .is_some_and(|ms| ms > 1_700_000_000_000),
            "presence `at`: {at:?}"
        );
        presence
    }

    #[tokio::test]
    async fn register_checks_room_and_name() {
        let (chat, store, api) = setup(Api::Ok).await;

        let context = connect(&chat, &store, "abcdef", "").await.unwrap();
        assert_eq!(context, json!({"room": "lobby", "name": "guest-abcd"}));
        let context = connect(&chat, &store, "c2", "room=r_1-X&name=%20Ann%20")
            .await
            .unwrap();
        assert_eq!(context, json!({"room": "r_1-X", "name": "Ann"}));
        assert_eq!(store.all_members("r_1-X").await.unwrap(), vec!["c2"]);

        let long_room = format!("room={}", "r".repeat(MAX_ROOM_CHARS + 1));
        let long_name = format!("name={}", "é".repeat(MAX_NAME_CHARS + 1));
        for bad in [
            "room=",
            "room=a%20b",
            "room=caf%C3%A9",
            &long_room,
            &long_name,
        ] {
            let refusal = connect(&chat, &store, "c3", bad).await.unwrap_err();
            assert_eq!(refusal.status, 400, "{bad}");
        }
        let ok_name = format!("room=solo&name={}", "é".repeat(MAX_NAME_CHARS));
        assert!(connect(&chat, &store, "c4", &ok_name).await.is_ok());
        assert!(
            api.requests().is_empty(),
            "nobody else was in those rooms to tell"
        );
    }

    #[tokio::test]
    async fn join_is_announced_to_the_others() {
        let (chat, store, api) = setup(Api::Ok).await;
        connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();

        let requests = api.requests();
        assert_eq!(requests.len(), 1);
        let (group, excluded, presence) = group_send(&requests[0]);
        assert_eq!((group.as_str(), excluded), ("r", vec!["b".to_owned()]));
        assert_eq!(
            without_at(presence),
            json!({"type": "presence", "event": "join", "name": "Bob", "online": 2,
                "members": ["Ann", "Bob"]})
        );
    }

    #[tokio::test]
    async fn messages_go_to_the_others_in_one_group_send() {
        let (chat, store, api) = setup(Api::Ok).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        assert_eq!(say(&chat, "a", &ann, "alone").await, None);
        assert!(api.requests().is_empty(), "no request with nobody to tell");

        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();
        connect(&chat, &store, "c", "room=r&name=Cy").await.unwrap();
        connect(&chat, &store, "d", "room=elsewhere").await.unwrap();
        let before = api.requests().len();
        let pages_before = store.member_pages();

        assert_eq!(say(&chat, "a", &ann, "hi <b>all</b>").await, None);
        let requests = api.requests();
        assert_eq!(requests.len(), before + 1, "one request per message");
        let (group, excluded, message) = group_send(&requests[before]);
        assert_eq!((group.as_str(), excluded), ("r", vec!["a".to_owned()]));
        assert_eq!(
            message,
            json!({"type": "message", "from": "Ann", "text": "hi <b>all</b>", "online": 3})
        );
        assert_eq!(
            store.member_pages(),
            pages_before,
            "a message does not read the room's members"
        );
    }

    #[tokio::test]
    async fn room_names_are_percent_encoded_in_the_group_path() {
        let (chat, store, api) = setup(Api::Ok).await;
        // Register accepts only [A-Za-z0-9_-]; a context set elsewhere may hold anything.
        let context = json!({"room": "a b/c", "name": "Ann"});
        for id in ["s", "x"] {
            store
                .inner
                .register(&record(id, context.clone()))
                .await
                .unwrap();
            store.inner.join("a b/c", id).await.unwrap();
        }

        assert_eq!(say(&chat, "s", &context, "hi").await, None);
        let requests = api.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].uri.path(), "/@groups/a%20b%2Fc");
        assert_eq!(requests[0].uri.query(), Some("exclude=s"));
    }

    #[tokio::test]
    async fn who_ping_and_binary_answer_the_sender_only() {
        let (chat, store, api) = setup(Api::Ok).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();
        let before = api.requests().len();

        let who = json_of(say(&chat, "a", &ann, "/who").await);
        assert_eq!(
            without_at(who),
            json!({"type": "presence", "event": "who", "online": 2, "members": ["Ann", "Bob"]})
        );
        assert_eq!(
            say(&chat, "a", &ann, "ping").await,
            Some(Message::text("pong"))
        );

        let ev = event(
            "a",
            ann.clone(),
            EventKind::Transport {
                data_type: DataType::Binary,
                data: "AA==".into(),
            },
        );
        let reply = chat.transport(&ev, Message::binary(vec![0u8])).await;
        assert_eq!(json_of(reply.unwrap())["type"], "error");
        assert_eq!(api.requests().len(), before, "nothing was broadcast");
    }

    #[tokio::test]
    async fn presence_lists_at_most_fifty_names_but_counts_everyone() {
        let (chat, store, api) = setup(Api::Ok).await;
        let total = MAX_LISTED_MEMBERS + 10;
        for i in 0..total {
            connect(
                &chat,
                &store,
                &format!("c{i:03}"),
                &format!("room=big&name=n{i}"),
            )
            .await
            .unwrap();
        }
        let requests = api.requests();
        assert_eq!(requests.len(), total - 1, "every join but the first told");
        let (_, excluded, presence) = group_send(&requests[total - 2]);
        assert_eq!(excluded, vec![format!("c{:03}", total - 1)]);
        assert_eq!(presence["online"], json!(total));
        let names = presence["members"].as_array().unwrap();
        assert_eq!(names.len(), MAX_LISTED_MEMBERS);
        assert_eq!(names[0], "n0");
    }

    #[tokio::test]
    async fn cleanup_leaves_and_tells_the_rest() {
        let (chat, store, api) = setup(Api::Ok).await;
        connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        let bob = connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();
        let before = api.requests().len();

        let ev = event(
            "b",
            bob,
            EventKind::Cleanup {
                reason: DisconnectReason::ClientClose,
                close_code: Some(1000),
                close_reason: String::new(),
                stats: None,
            },
        );
        chat.cleanup(&ev, DisconnectReason::ClientClose)
            .await
            .unwrap();

        assert_eq!(store.all_members("r").await.unwrap(), vec!["a"]);
        let requests = api.requests();
        assert_eq!(requests.len(), before + 1);
        let (group, excluded, presence) = group_send(&requests[before]);
        assert_eq!((group.as_str(), excluded), ("r", vec!["b".to_owned()]));
        assert_eq!(
            without_at(presence),
            json!({"type": "presence", "event": "leave", "name": "Bob", "online": 1,
                "members": ["Ann"]})
        );
    }

    #[tokio::test]
    async fn the_last_one_out_tells_nobody() {
        let (chat, store, api) = setup(Api::Ok).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        let ev = event(
            "a",
            ann,
            EventKind::Cleanup {
                reason: DisconnectReason::ClientClose,
                close_code: Some(1000),
                close_reason: String::new(),
                stats: None,
            },
        );
        chat.cleanup(&ev, DisconnectReason::ClientClose)
            .await
            .unwrap();
        assert_eq!(store.count("r").await.unwrap(), 0);
        assert!(api.requests().is_empty());
    }

    #[tokio::test]
    async fn send_back_failure_fails_transport() {
        let (chat, store, _api) = setup(Api::Failing).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        // Register still accepts when the join cannot be announced.
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();

        let ev = transport_event("a", &ann, "hi");
        let err = chat.transport(&ev, Message::text("hi")).await.unwrap_err();
        assert!(err.to_string().contains("500"), "{err}");
    }

    /// A chat whose send-back URL is `base`, with Ann and Bob in room `r`; Ann's context.
    async fn chat_sending_to(base: &str) -> (Chat, Value) {
        let store = Arc::new(TestStore::default());
        let chat = Chat::new(store.clone(), SendBack::new(base, None).unwrap());
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();
        (chat, ann)
    }

    #[tokio::test]
    async fn a_gateway_out_of_reach_answers_the_sender_instead_of_failing() {
        // Nothing listens: the connection is refused, so nothing was sent.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let (chat, ann) = chat_sending_to(&base).await;
        assert_eq!(
            json_of(say(&chat, "a", &ann, "hello?").await),
            json!({"type": "error", "message": GATEWAY_DOWN_MESSAGE})
        );

        // A node that takes the request and goes away: it may have acted on it.
        let taker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", taker.local_addr().unwrap());
        let takes = tokio::spawn(async move {
            let mut taken = 0;
            loop {
                let (mut socket, _) = taker.accept().await.unwrap();
                let mut head = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut head).await;
                taken += 1;
                if taken == 2 {
                    return taken;
                }
            }
        });
        let (chat, ann) = chat_sending_to(&base).await;
        assert_eq!(
            json_of(say(&chat, "a", &ann, "hello?").await),
            json!({"type": "error", "message": GATEWAY_UNSURE_MESSAGE})
        );
        takes.abort();

        // A balancer's 502: its node went away with the request.
        let api = test_api::start(|_req| {
            test_api::json(
                StatusCode::BAD_GATEWAY,
                &json!({"error": "bad_gateway", "message": "upstream went away"}),
            )
        })
        .await;
        let (chat, ann) = chat_sending_to(&api.base).await;
        assert_eq!(
            json_of(say(&chat, "a", &ann, "hello?").await),
            json!({"type": "error", "message": GATEWAY_UNSURE_MESSAGE})
        );
    }

    #[tokio::test]
    async fn store_down_answers_the_sender_instead_of_failing() {
        let (chat, store, api) = setup(Api::Ok).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();
        let before = api.requests().len();
        store.set_down(true);

        let reply = json_of(say(&chat, "a", &ann, "hello?").await);
        assert_eq!(
            reply,
            json!({"type": "error",
                "message": "message not delivered: the chat store is unavailable, try again"})
        );
        let who = json_of(say(&chat, "a", &ann, "/who").await);
        assert_eq!(
            who,
            json!({"type": "error", "message": STORE_DOWN_WHO_MESSAGE})
        );
        assert_eq!(
            say(&chat, "a", &ann, "ping").await,
            Some(Message::text("pong")),
            "ping needs no store"
        );
        assert_eq!(api.requests().len(), before, "nothing was sent");

        store.set_down(false);
        assert_eq!(say(&chat, "a", &ann, "back").await, None);
        assert_eq!(api.requests().len(), before + 1);
    }

    #[tokio::test]
    async fn gateway_store_down_answers_the_sender_instead_of_failing() {
        let (chat, store, api) = setup(Api::StoreDown).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        // Register still accepts when the join cannot be announced.
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();
        let before = api.requests().len();

        let ev = transport_event("a", &ann, "hi");
        let reply = chat.transport(&ev, Message::text("hi")).await.unwrap();
        assert_eq!(
            json_of(reply),
            json!({"type": "error", "message": STORE_DOWN_MESSAGE})
        );
        assert_eq!(api.requests().len(), before + 1, "the one group send");
    }

    #[tokio::test]
    async fn register_with_the_store_down_refuses_with_503() {
        let (chat, store, api) = setup(Api::Ok).await;
        store
            .inner
            .register(&record("a", Value::Null))
            .await
            .unwrap();
        store.set_down(true);
        let request = handshake("room=r&name=Ann");
        let ev = event(
            "a",
            Value::Null,
            EventKind::Register {
                request: request.clone(),
            },
        );
        let refusal = chat.register(&ev, &request).await.unwrap_err();
        assert_eq!(refusal.status, 503);
        assert!(api.requests().is_empty());
    }

    #[tokio::test]
    async fn cleanup_with_the_store_down_fails_so_the_gateway_retries() {
        let (chat, store, _api) = setup(Api::Ok).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        store.set_down(true);
        let ev = event(
            "a",
            ann,
            EventKind::Cleanup {
                reason: DisconnectReason::ClientClose,
                close_code: Some(1000),
                close_reason: String::new(),
                stats: None,
            },
        );
        let err = chat
            .cleanup(&ev, DisconnectReason::ClientClose)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("store unavailable"), "{err}");
    }

    #[test]
    fn context_fallbacks() {
        let ev = event(
            "id-1",
            Value::Null,
            EventKind::Transport {
                data_type: DataType::Text,
                data: String::new(),
            },
        );
        let seat = Seat::of(&ev);
        assert_eq!((seat.room.as_str(), seat.name.as_str()), ("lobby", "id-1"));
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(CHAT_PAGE.contains("/chat?room="));
        assert!(!CHAT_PAGE.contains("http://") && !CHAT_PAGE.contains("https://"));
        assert!(!CHAT_PAGE.contains(".innerHTML"));
    }

    #[test]
    fn the_page_checks_room_and_name_as_register_does() {
        // chat.html refuses what `room_param` and `name_param` refuse, without connecting.
        let room_rule = format!("/^[A-Za-z0-9_-]{{1,{MAX_ROOM_CHARS}}}$/");
        assert!(CHAT_PAGE.contains(&room_rule), "{room_rule}");
        let name_rule = format!("MAX_NAME_CHARS = {MAX_NAME_CHARS};");
        assert!(CHAT_PAGE.contains(&name_rule), "{name_rule}");
    }
}
