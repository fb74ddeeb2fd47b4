//! The example chat functions: rooms of named people, with presence.
//!
//! Clients connect to `/chat?room=<room>&name=<name>` (see [`CHAT_PAGE`]). Register joins
//! the store group named after the room and tells the others; every text message is
//! broadcast to the rest of the room with one batch send; `/who` answers the sender with
//! the room's members; `ping` answers `pong`; cleanup leaves the room and tells the others.
//!
//! Messages the clients get are JSON text:
//! - `{"type":"message","from":name,"text":text,"online":N}`
//! - `{"type":"presence","event":"join"|"leave","name":name,"online":N,"members":[...]}`
//! - `{"type":"presence","event":"who","online":N,"members":[...]}`
//! - `{"type":"error","message":...}`
//!
//! `online` is the room's size; `members` lists the names of at most
//! [`MAX_LISTED_MEMBERS`] of them.

use serde_json::{Value, json};
use store::{SharedStore, StoreError};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::error::{Chain, FunctionsError, HandlerError};
use crate::event::{DisconnectReason, Event, HandshakeRequest, RegisterReply};
use crate::handler::{Handler, Refusal};
use crate::message::Message;
use crate::sendback::SendBack;

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

/// The chat functions, over a store (rooms are its groups) and the send-back API.
#[derive(Clone, Debug)]
pub struct Chat {
    store: SharedStore,
    sendback: SendBack,
}

impl Chat {
    /// Chat functions that keep rooms in `store` and send through `sendback`.
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
        let result = self
            .announce("join", &room, &name, id, Some((id, &name)))
            .await;
        if let Err(err) = result {
            warn!(%room, error = %Chain(&err), "could not announce a join");
        }
        Ok(RegisterReply {
            subprotocol: None,
            context: json!({"room": room, "name": name}),
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
        match text.as_str() {
            "ping" => return Ok(Some(Message::text("pong"))),
            "/who" => {
                let members = self.store.all_members(&seat.room).await?;
                let who = self
                    .presence("who", None, &seat.room, &members, None)
                    .await?;
                return Ok(Some(Message::text(who)));
            }
            _ => {}
        }
        let members = self.store.all_members(&seat.room).await?;
        let online = self.store.count(&seat.room).await?;
        let chat = json!({"type": "message", "from": seat.name, "text": text, "online": online});
        self.broadcast(&members, &event.connection_id, chat.to_string())
            .await?;
        Ok(None)
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
    /// Tells every member of `room` but `except` that `name` joined or left.
    /// `joiner` is the (id, name) of a member whose record has no context yet.
    async fn announce(
        &self,
        event: &str,
        room: &str,
        name: &str,
        except: &str,
        joiner: Option<(&str, &str)>,
    ) -> Result<(), FunctionsError> {
        let members = self.store.all_members(room).await?;
        if members.iter().all(|m| m == except) {
            return Ok(());
        }
        let presence = self
            .presence(event, Some(name), room, &members, joiner)
            .await?;
        self.broadcast(&members, except, presence).await
    }

    /// A presence message about `room`, whose members are `members`.
    async fn presence(
        &self,
        event: &str,
        name: Option<&str>,
        room: &str,
        members: &[String],
        joiner: Option<(&str, &str)>,
    ) -> Result<String, StoreError> {
        let online = self.store.count(room).await?;
        let names = self.member_names(members, joiner).await?;
        let mut presence = json!({"type": "presence", "event": event});
        if let Some(name) = name {
            presence["name"] = json!(name);
        }
        presence["online"] = json!(online);
        presence["members"] = json!(names);
        Ok(presence.to_string())
    }

    /// The names of the first [`MAX_LISTED_MEMBERS`] members, read from their records'
    /// contexts concurrently. Members without a record or a name yet are left out.
    async fn member_names(
        &self,
        members: &[String],
        joiner: Option<(&str, &str)>,
    ) -> Result<Vec<String>, StoreError> {
        let listed = &members[..members.len().min(MAX_LISTED_MEMBERS)];
        let mut names: Vec<Option<String>> = vec![None; listed.len()];
        let mut lookups = JoinSet::new();
        for (index, id) in listed.iter().enumerate() {
            match joiner {
                Some((joiner_id, joiner_name)) if joiner_id == id => {
                    names[index] = Some(joiner_name.to_owned());
                }
                _ => {
                    let (store, id) = (SharedStore::clone(&self.store), id.clone());
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

    /// Sends `text` to every member but `except`, in one batch (none if nobody else).
    async fn broadcast(
        &self,
        members: &[String],
        except: &str,
        text: String,
    ) -> Result<(), FunctionsError> {
        let others: Vec<String> = members.iter().filter(|m| *m != except).cloned().collect();
        if others.is_empty() {
            return Ok(());
        }
        let result = self
            .sendback
            .send_many(&others, &Message::text(text))
            .await?;
        if result.gone > 0 {
            debug!(gone = result.gone, "some members had already disconnected");
        }
        if result.throttled > 0 {
            warn!(
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

/// The `room` query parameter, checked; [`DEFAULT_ROOM`] if absent.
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

    use http::StatusCode;
    use store::{ConnectionRecord, MemoryStore, Store};

    use super::*;
    use crate::api::{BatchResult, BatchSend};
    use crate::event::{DataType, EventKind};
    use crate::test_api::{self, TestApi};

    /// A chat over a memory store and a send-back API that accepts every batch, or fails
    /// every one with 500 when `failing`.
    async fn setup(failing: bool) -> (Chat, Arc<MemoryStore>, TestApi) {
        let api = test_api::start(move |_req| {
            if failing {
                test_api::json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": "unavailable", "message": "down"}),
                )
            } else {
                test_api::json(StatusCode::OK, &BatchResult::default())
            }
        })
        .await;
        let store = Arc::new(MemoryStore::new());
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

    /// Registers like the gateway: record first, register, then the record's context.
    async fn connect(
        chat: &Chat,
        store: &MemoryStore,
        id: &str,
        query: &str,
    ) -> Result<Value, Refusal> {
        let mut record = ConnectionRecord {
            id: id.into(),
            node: "n1".into(),
            connected_at_ms: 0,
            source_ip: "127.0.0.1".into(),
            user_agent: None,
            context: Value::Null,
        };
        store.register(&record).await.unwrap();
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
        store.register(&record).await.unwrap();
        Ok(reply.context)
    }

    async fn say(chat: &Chat, id: &str, context: &Value, text: &str) -> Option<Message> {
        let ev = event(
            id,
            context.clone(),
            EventKind::Transport {
                data_type: DataType::Text,
                data: text.into(),
            },
        );
        chat.transport(&ev, Message::text(text)).await.unwrap()
    }

    fn batch(request: &test_api::Recorded) -> (Vec<String>, Value) {
        assert_eq!(request.uri.path(), "/@connections");
        let batch: BatchSend = serde_json::from_slice(&request.body).unwrap();
        let payload = serde_json::from_str(&batch.data).unwrap();
        (batch.connection_ids, payload)
    }

    fn json_of(message: Option<Message>) -> Value {
        let message = message.expect("a reply");
        serde_json::from_str(message.as_text().expect("a text reply")).unwrap()
    }

    #[tokio::test]
    async fn register_checks_room_and_name() {
        let (chat, store, api) = setup(false).await;

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
        let (chat, store, api) = setup(false).await;
        connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();

        let requests = api.requests();
        assert_eq!(requests.len(), 1);
        let (ids, presence) = batch(&requests[0]);
        assert_eq!(ids, vec!["a"]);
        assert_eq!(
            presence,
            json!({"type": "presence", "event": "join", "name": "Bob", "online": 2,
                "members": ["Ann", "Bob"]})
        );
    }

    #[tokio::test]
    async fn messages_go_to_the_others_in_one_batch() {
        let (chat, store, api) = setup(false).await;
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

        assert_eq!(say(&chat, "a", &ann, "hi <b>all</b>").await, None);
        let requests = api.requests();
        assert_eq!(requests.len(), before + 1);
        let (ids, message) = batch(&requests[before]);
        assert_eq!(ids, vec!["b", "c"]);
        assert_eq!(
            message,
            json!({"type": "message", "from": "Ann", "text": "hi <b>all</b>", "online": 3})
        );
    }

    #[tokio::test]
    async fn who_ping_and_binary_answer_the_sender_only() {
        let (chat, store, api) = setup(false).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();
        let before = api.requests().len();

        let who = json_of(say(&chat, "a", &ann, "/who").await);
        assert_eq!(
            who,
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
    async fn cleanup_leaves_and_tells_the_rest() {
        let (chat, store, api) = setup(false).await;
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
            },
        );
        chat.cleanup(&ev, DisconnectReason::ClientClose)
            .await
            .unwrap();

        assert_eq!(store.all_members("r").await.unwrap(), vec!["a"]);
        let requests = api.requests();
        assert_eq!(requests.len(), before + 1);
        let (ids, presence) = batch(&requests[before]);
        assert_eq!(ids, vec!["a"]);
        assert_eq!(
            presence,
            json!({"type": "presence", "event": "leave", "name": "Bob", "online": 1,
                "members": ["Ann"]})
        );
    }

    #[tokio::test]
    async fn send_back_failure_fails_transport() {
        let (chat, store, _api) = setup(true).await;
        let ann = connect(&chat, &store, "a", "room=r&name=Ann")
            .await
            .unwrap();
        // Register still accepts when the join cannot be announced.
        connect(&chat, &store, "b", "room=r&name=Bob")
            .await
            .unwrap();

        let ev = event(
            "a",
            ann,
            EventKind::Transport {
                data_type: DataType::Text,
                data: "hi".into(),
            },
        );
        let err = chat.transport(&ev, Message::text("hi")).await.unwrap_err();
        assert!(err.to_string().contains("500"), "{err}");
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
}
