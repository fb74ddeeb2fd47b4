//! The native event contract: what the gateway POSTs to a function, and what a function
//! may reply. Both sides use these types, so this module depends on serde alone.
//!
//! Every event is one JSON object with `type` (`register`, `transport` or `cleanup`),
//! `connectionId`, `seq` (0 for register, then +1 per event of that connection, so cleanup
//! has the highest), `node`, `timestamp` (ms since the Unix epoch) and `context` (what the
//! register reply returned; absent on register), and `eventId`. The rest depends on the
//! type; see [`EventKind`].
//!
//! # Event ids and delivery
//!
//! Every event carries a stable `eventId`: the same on every retry of that event, and, for a
//! cleanup, from every gateway node (a cleanup may be retried for hours, from the durable
//! queue, by whichever node drains it). Delivery is at least once; a function that drops an
//! event whose id it has already handled sees each exactly once. The ids are built by
//! [`register_event_id`], [`transport_event_id`] and [`cleanup_event_id`].

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One event about one connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The connection's id (a UUID).
    pub connection_id: String,
    /// Per-connection sequence number: 0 for register, +1 for each later event.
    /// A function can use it to drop a retried duplicate.
    pub seq: u64,
    /// The gateway node that holds the connection.
    pub node: String,
    /// When the gateway emitted the event, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// What the register function returned as context; absent on register.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub context: serde_json::Value,
    /// The event's stable id: the same on every retry (and, for a cleanup, from every node),
    /// so a function drops a duplicate by it. `<connectionId>:register`,
    /// `<connectionId>:<seq>` for transport, `<connectionId>:cleanup`.
    #[serde(default)]
    pub event_id: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened to the connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EventKind {
    /// A client asks to connect. A 2xx reply accepts (see [`RegisterReply`]); any other
    /// status refuses the upgrade with that status.
    Register {
        /// The handshake request.
        request: HandshakeRequest,
    },
    /// The client sent a message. A 2xx reply with a body sends that body back to the client.
    #[serde(rename_all = "camelCase")]
    Transport {
        /// `text` or `binary`.
        data_type: DataType,
        /// The message: as is for text, base64 (standard alphabet, padded) for binary.
        data: String,
    },
    /// The connection ended. Sent exactly once for every accepted connection.
    #[serde(rename_all = "camelCase")]
    Cleanup {
        /// Why it ended.
        reason: DisconnectReason,
        /// The close code sent or received, if a close frame was exchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        close_code: Option<u16>,
        /// The close reason text (may be empty).
        #[serde(default)]
        close_reason: String,
        /// On a passthrough route: what went through, each way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<PassthroughStats>,
    },
}

/// What went through a passthrough connection (cleanup's `stats`): `in` from the client to
/// the backend, `out` from the backend to the client (text and binary messages, their
/// payload bytes; pushes through the send-back API not included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PassthroughStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The id of a connection's register event: `<connectionId>:register`.
pub fn register_event_id(connection_id: &str) -> String {
    format!("{connection_id}:register")
}

/// The id of a connection's transport event number `seq`: `<connectionId>:<seq>`.
pub fn transport_event_id(connection_id: &str, seq: u64) -> String {
    // One allocation of the right size (one per message on the gateway's hot path).
    let mut id = String::with_capacity(connection_id.len() + 21);
    id.push_str(connection_id);
    id.push(':');
    let _ = write!(id, "{seq}"); // writing to a String cannot fail
    id
}

/// The id of a connection's cleanup event: `<connectionId>:cleanup`. It depends on the
/// connection id alone, so every node (the one that held the connection, or one cleaning
/// up after it died) gives the same id.
pub fn cleanup_event_id(connection_id: &str) -> String {
    format!("{connection_id}:cleanup")
}

impl EventKind {
    /// The stable id of this event of `connection_id` with sequence number `seq`.
    pub fn event_id(&self, connection_id: &str, seq: u64) -> String {
        match self {
            EventKind::Register { .. } => register_event_id(connection_id),
            EventKind::Transport { .. } => transport_event_id(connection_id, seq),
            EventKind::Cleanup { .. } => cleanup_event_id(connection_id),
        }
    }

    /// `register`, `transport` or `cleanup`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Register { .. } => "register",
            EventKind::Transport { .. } => "transport",
            EventKind::Cleanup { .. } => "cleanup",
        }
    }
}

/// The WebSocket handshake request, as the register function sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeRequest {
    /// The request path, e.g. `/chat`.
    pub path: String,
    /// The raw query string without `?` (empty if none).
    #[serde(default)]
    pub query: String,
    /// Request headers, names lower-cased, in the order received; a repeated header appears
    /// once per value.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The client's IP address: the TCP peer's, or behind a trusted proxy the client that
    /// its PROXY protocol or forwarding header names.
    pub source_ip: String,
    /// Subprotocols the client offered (`Sec-WebSocket-Protocol`), in its order.
    #[serde(default)]
    pub subprotocols: Vec<String>,
}

impl HandshakeRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter, percent-decoded (`+` as space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(&self.query)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Decodes `a=1&b=two+words` into pairs, percent-decoding names and values.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(k), decode_component(v))
    })
}

fn decode_component(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// The kind of a WebSocket data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A text frame (UTF-8).
    Text,
    /// A binary frame; carried as base64 in JSON.
    Binary,
}

/// Why a connection ended, as reported in a cleanup event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client sent a close frame.
    ClientClose,
    /// The connection broke without a close frame (reset, EOF, protocol error).
    ConnectionLost,
    /// The client broke the protocol (bad frame, invalid UTF-8, oversize message).
    ProtocolError,
    /// Nothing arrived from the client for the idle timeout.
    IdleTimeout,
    /// The client stopped answering pings.
    PingTimeout,
    /// The connection reached its maximum duration.
    MaxDuration,
    /// Closed through the send-back API.
    ServerDisconnect,
    /// A transport function failed after its retries.
    FunctionFailed,
    /// The gateway is shutting down.
    Shutdown,
    /// The WebSocket upgrade did not complete after register accepted.
    UpgradeFailed,
    /// The gateway node holding the connection stopped (its heartbeat expired); another
    /// node sent this cleanup for it. No close frame was exchanged that the gateway saw.
    NodeLost,
}

/// What a register function may reply with a 2xx status. An empty body accepts with no
/// subprotocol and no context.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterReply {
    /// The subprotocol to answer with; must be one the client offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subprotocol: Option<String>,
    /// A small JSON value the gateway keeps and sends as `context` on every later event.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub context: serde_json::Value,
    /// On a passthrough route with `auth = "register"`: headers added to the backend's
    /// upgrade request (say, the user the function identified). The route's configured
    /// headers win over these; hop-by-hop and handshake headers are ignored. Ignored
    /// elsewhere.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_event_json_shape() {
        let ev = Event {
            connection_id: "c1".into(),
            seq: 3,
            node: "n".into(),
            timestamp: 5,
            context: serde_json::json!({"room": "lobby"}),
            event_id: "c1:3".into(),
            kind: EventKind::Transport {
                data_type: DataType::Binary,
                data: "AAE=".into(),
            },
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "transport", "connectionId": "c1", "seq": 3, "node": "n",
                "timestamp": 5, "context": {"room": "lobby"}, "eventId": "c1:3", "dataType": "binary", "data": "AAE="})
        );
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn event_ids_are_stable_per_event() {
        let cleanup = EventKind::Cleanup {
            reason: DisconnectReason::ClientClose,
            close_code: None,
            close_reason: String::new(),
            stats: None,
        };
        assert_eq!(cleanup.event_id("c1", 7), "c1:cleanup");
        assert_eq!(cleanup.event_id("c1", 9), cleanup_event_id("c1"));
        let transport = EventKind::Transport {
            data_type: DataType::Text,
            data: String::new(),
        };
        assert_eq!(transport.event_id("c1", 4), "c1:4");
        assert_eq!(register_event_id("c1"), "c1:register");
    }

    #[test]
    fn query_params_decode() {
        let req = HandshakeRequest {
            query: "room=a%20b&name=x+y&flag".into(),
            ..Default::default()
        };
        assert_eq!(req.query_param("room").as_deref(), Some("a b"));
        assert_eq!(req.query_param("name").as_deref(), Some("x y"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("none"), None);
    }
}
