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

/// A live gateway node and where its send-back API answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (`node_id`).
    pub name: String,
    /// The base URL of its send-back API (`http://host:port`); empty when it gave none.
    pub address: String,
}
