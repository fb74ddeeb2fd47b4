//! Send-back requests for connections another gateway node holds. Nodes sharing a store
//! find each other through it: every node's heartbeat carries its send-back address
//! (`sendback.advertise`), and every connection's record names its node. A request for a
//! connection this node does not hold is relayed, as it came (method, path, query,
//! headers, body: so a bearer token, a Tencent token in the path and an AWS signature all
//! still verify), to the node that holds it; a group send also goes to every other live
//! node, each delivering to the members it holds. Relayed requests carry
//! [`FORWARDED`] and are never relayed again.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use tracing::{debug, warn};

use crate::Shared;
use crate::http_client::HttpReply;
use crate::respond::{self, Body};

/// The header a relayed request carries: the name of the node that relayed it.
pub(crate) const FORWARDED: &str = "x-switchboard-forwarded";

/// The largest reply read from a peer.
const MAX_PEER_REPLY: usize = 16 << 20;

/// How long a relayed request may take: a peer slower than this counts as unreachable.
pub(crate) const RELAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether another node relayed this request (answer it here; never relay it again).
pub(crate) fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// The send-back address of the other live node that holds connection `id`, if any.
/// Store failures count as "none": the caller answers as for a connection that is gone.
pub(crate) async fn owner(shared: &Shared, id: &str) -> Option<String> {
    let record = match shared.store.get(id).await {
        Ok(Some(record)) => record,
        Ok(None) => return None,
        Err(e) => {
            debug!(connection = id, cause = %e, "cannot look up the node of a connection");
            return None;
        }
    };
    if *record.node == *shared.node {
        return None;
    }
    match shared.store.node_address(&record.node).await {
        Ok(address) => address.filter(|a| relayable(a)),
        Err(e) => {
            debug!(node = %record.node, cause = %e, "cannot look up a node's address");
            None
        }
    }
}

/// The send-back addresses of every other live node that gave one.
pub(crate) async fn peers(shared: &Shared) -> Vec<String> {
    match shared.store.nodes().await {
        Ok(nodes) => nodes
            .into_iter()
            .filter(|n| *n.name != *shared.node && relayable(&n.address))
            .map(|n| n.address)
            .collect(),
        Err(e) => {
            warn!(cause = %e, "cannot list the other nodes: a group send reaches this node only");
            Vec::new()
        }
    }
}

/// Whether a heartbeat's address is one to relay to: an `http://` URL. (A node of an
/// older version writes `alive` there; it neither relays nor is relayed to.)
fn relayable(address: &str) -> bool {
    address.starts_with("http://")
}

/// Sends a request to the node at `base`, as it came, marked as relayed.
pub(crate) async fn relay(
    shared: &Shared,
    base: &str,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<HttpReply, String> {
    let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
    let endpoint = shared
        .peers
        .endpoint(&url)
        .map_err(|e| format!("{url}: {e}"))?;
    let mut pass: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    pass.push((FORWARDED, &shared.node));
    let sent = endpoint.send(method.as_str(), &pass, body, MAX_PEER_REPLY);
    match tokio::time::timeout(RELAY_TIMEOUT, sent).await {
        Ok(reply) => reply.map_err(|e| format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: no answer within {RELAY_TIMEOUT:?}")),
    }
}

/// A relayed request's 200 JSON answer.
pub(crate) fn json_answer<T: serde::de::DeserializeOwned>(
    reply: Result<HttpReply, String>,
) -> Result<T, String> {
    let reply = reply?;
    if reply.status != 200 {
        return Err(format!("status {}", reply.status));
    }
    serde_json::from_slice(&reply.body).map_err(|e| format!("unreadable answer: {e}"))
}

/// [`relay`], answering with the peer's reply, or 502 when the peer cannot be reached.
pub(crate) async fn relay_reply(
    shared: &Shared,
    base: &str,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response<Body> {
    match relay(shared, base, method, path_and_query, headers, body).await {
        Ok(reply) => into_response(reply),
        Err(cause) => {
            warn!(%cause, "could not relay a send-back request to the node holding the connection");
            respond::error(
                StatusCode::BAD_GATEWAY,
                "node_unreachable",
                "the gateway node holding this connection did not answer",
            )
        }
    }
}

/// A peer's reply as ours.
fn into_response(reply: HttpReply) -> Response<Body> {
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    if let Some(value) = reply
        .content_type
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in reply.kept {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

/// Headers of one hop that a relay must not pass on (the client sets its own length).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "expect"
    ) || name.as_str() == FORWARDED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_addresses_are_relayed_to() {
        assert!(relayable("http://10.0.0.5:9090"));
        assert!(!relayable(""), "a node that gave no address");
        assert!(!relayable("alive"), "an older node's heartbeat");
    }

    #[test]
    fn hop_by_hop_headers_and_the_mark_are_not_passed_on() {
        for name in [
            "connection",
            "content-length",
            "transfer-encoding",
            FORWARDED,
        ] {
            assert!(hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["authorization", "host", "content-type", "x-amz-date"] {
            assert!(!hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }
}
