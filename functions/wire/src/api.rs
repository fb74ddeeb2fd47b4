//! Bodies of the gateway's send-back API, shared by the gateway (which serves them) and the
//! SDK's client.
//!
//! Routes (all under the send-back listener, `Authorization: Bearer <token>`):
//! - `POST /@connections/{id}`: the body is the message, as is; `Content-Type:
//!   application/octet-stream` sends a binary frame, anything else a text frame (UTF-8).
//! - `GET /@connections/{id}`: [`ConnectionInfo`].
//! - `DELETE /@connections/{id}`: closes it; optional query `code` and `reason`.
//! - `POST /@connections`: [`BatchSend`] in, [`BatchResult`] out. At most
//!   `sendback.max_batch_ids` ids (default 10,000): a batch naming more is refused whole
//!   with 413 `payload_too_large`.
//!
//! - `POST /@groups/{group}`: the body is the message (as for one connection), sent to every
//!   member of the group held by this gateway; `?exclude={id}` (repeatable) skips ids.
//!   [`GroupSendResult`] out.
//! - `PUT /@groups/{group}/connections/{id}`: joins (204; 410 if the connection is not
//!   registered). `DELETE` leaves (204, also when it was not a member).
//! - `GET /@groups/{group}?cursor=&limit=`: [`GroupInfo`], one page of members.
//!
//! - `GET /healthz`: 200 while the process runs. `GET /readyz`: [`Readiness`], 200 when
//!   the node takes new clients, else 503 with the reason. Both need no token, and both are
//!   also on the public listener.
//!
//! Errors are [`ApiError`] bodies with the status that names them (410 for a gone
//! connection, 413 too large, 429 the client's outbound queue is full, 401 no or wrong token,
//! 503 `node_unavailable` when the node holding it is down or silent, or `store_unavailable`).

use serde::{Deserialize, Serialize};

use crate::event::DataType;

/// What the gateway knows about one live connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    /// The connection id.
    pub connection_id: String,
    /// When it connected (RFC 3339, UTC).
    pub connected_at: String,
    /// When the client last sent a message (RFC 3339, UTC).
    pub last_active_at: String,
    /// The client's address.
    pub source_ip: String,
    /// The client's `User-Agent`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The context register returned.
    #[serde(default)]
    pub context: serde_json::Value,
    /// The gateway node holding it.
    pub node: String,
}

/// One payload for many connections (at most the gateway's `sendback.max_batch_ids` ids).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSend {
    /// Who to send to.
    pub connection_ids: Vec<String>,
    /// The message: text as is, binary as base64.
    pub data: String,
    /// `text` (default) or `binary`.
    #[serde(default = "text")]
    pub data_type: DataType,
}

fn text() -> DataType {
    DataType::Text
}

/// The outcome of a batch send, one entry per id in request order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    /// How many were queued for delivery.
    pub delivered: usize,
    /// How many ids named no live connection.
    pub gone: usize,
    /// How many connections' outbound queues were full.
    pub throttled: usize,
    /// How many ids named a connection held by a node that is down or did not answer, or
    /// could not be looked up (store unavailable): not delivered, retry later.
    #[serde(default)]
    pub unavailable: usize,
    /// Per id outcome, in request order.
    pub results: Vec<BatchItem>,
}

/// The outcome for one id of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    /// The id as given.
    pub connection_id: String,
    /// What happened.
    pub status: DeliveryStatus,
}

/// What happened to one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Queued on the connection; it is written to the socket in order.
    Delivered,
    /// No such live connection.
    Gone,
    /// The connection's outbound queue is full (slow client); not queued.
    Throttled,
    /// Its node is down or did not answer, or the store could not say where it is: not
    /// queued, retry later (it is `gone` once its node's connections are cleaned up).
    Unavailable,
}

/// The outcome of a group send.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSendResult {
    /// Members the message was queued for.
    pub delivered: usize,
    /// Members listed in the group that are not live (anymore).
    pub gone: usize,
    /// Members whose outbound queue was full.
    pub throttled: usize,
    /// Members skipped because the request excluded them.
    pub excluded: usize,
    /// The gateway nodes that did not answer within the relay timeout: their members are
    /// counted in `gone`, and did not get the message. Omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<String>,
}

/// A group's size and one page of its members.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
    /// How many members it has.
    pub count: u64,
    /// One page of member ids.
    pub members: Vec<String>,
    /// Pass as `?cursor=` for the next page; `null` after the last.
    pub cursor: Option<String>,
}

/// The JSON body of every error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable machine-readable code, one of [`crate::codes`]: `gone`, `unauthorized`,
    /// `payload_too_large`, `throttled`, `bad_request`, `not_found`, `method_not_allowed`,
    /// `store_unavailable`, `node_unreachable`, … .
    pub error: String,
    /// A sentence for people.
    pub message: String,
}

/// The body of `GET /readyz` (either listener, no token): 200 `{"ready":true}` when the node
/// takes new clients; 503 with why not, when a load balancer should send them elsewhere.
/// `Cache-Control: no-store`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether the node takes new clients.
    pub ready: bool,
    /// Why not (absent when ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotReady>,
    /// A sentence for people (absent when ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a node is not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReady {
    /// Shutdown started: it admits no new connection and closes the ones it holds.
    Draining,
    /// Its heartbeat has not reached the store lately (a failed write, or none within
    /// `node_heartbeat_ttl`): it could not admit a connection, and the other nodes may
    /// soon count it dead.
    StoreUnreachable,
    /// No heartbeat has reached the store yet since the process started.
    Starting,
}
