//! The records the store keeps.

use serde::{Deserialize, Serialize};

/// What the store keeps about one connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRecord {
    /// The connection id the gateway gave it.
    pub id: String,
    /// The gateway node that holds the socket.
    pub node: String,
    /// When the WebSocket handshake arrived, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// The client's address as the gateway saw it (or as a trusted proxy reported it).
    pub source_ip: String,
    /// The client's `User-Agent` header, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The context the register function returned (`null` if none).
    #[serde(default)]
    pub context: serde_json::Value,
}

/// One page of a group's members.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MembersPage {
    /// Member connection ids.
    pub members: Vec<String>,
    /// Where the next page starts; `None` after the last page.
    pub cursor: Option<String>,
}

/// What the store holds of one gateway node's own state ([`crate::Store::node_check`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCheck {
    /// Whether the node's mark ([`crate::Store::mark_node`]) is there: written by the node
    /// itself and by nothing else, its absence means the store lost what the node wrote.
    pub marked: bool,
    /// How many ids the node's connection set lists.
    pub connections: u64,
}

/// A live gateway node and where its send-back API answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (`node_id`).
    pub name: String,
    /// The base URL of its send-back API (`http://host:port`); empty when it gave none.
    pub address: String,
}

/// A connection's cleanup waiting in the store's durable queue: everything needed to encode
/// the cleanup event later, on any node, and where it stands in its retries.
///
/// The queue holds at most one per connection (keyed by [`PendingCleanup::connection_id`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingCleanup {
    /// The connection id.
    pub connection_id: String,
    /// The cleanup's stable event id: the same on every retry and from every node.
    pub event_id: String,
    /// The node that held the connection.
    pub node: String,
    /// The cleanup's per-connection sequence number (`0` when the node that queued it did
    /// not know it).
    #[serde(default)]
    pub seq: u64,
    /// When the connection was accepted (ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// The client's address.
    pub source_ip: String,
    /// The client's `User-Agent`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The `Host` the client asked for, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The context the register function returned (`null` if none).
    #[serde(default)]
    pub context: serde_json::Value,
    /// Why the connection ended (the native event's `reason`, e.g. `client_close`).
    pub reason: String,
    /// The close code sent or received, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// The close reason text.
    #[serde(default)]
    pub close_reason: String,
    /// A passthrough connection's message and byte counts (the native event's `stats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
    /// When it was first queued (ms since the Unix epoch): its age counts from here.
    pub queued_at_ms: u64,
    /// Failed delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// When it is due next (ms since the Unix epoch); while claimed, when the claim lapses.
    pub next_attempt_ms: u64,
}
