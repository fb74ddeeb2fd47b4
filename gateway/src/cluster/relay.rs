//! Send-back requests for connections another gateway node holds. Nodes sharing a store
//! find each other through it: every node's heartbeat carries its send-back address
//! (`sendback.advertise`), and every connection's record names its node. A request for a
//! connection this node does not hold is relayed, as it came (method, path, query,
//! headers, body: so a bearer token, a Tencent token in the path and an AWS signature all
//! still verify), to the node that holds it; a group send also goes to every other live
//! node, each delivering to the members it holds. Relayed requests carry
//! [`FORWARDED`] and are never relayed again. A node that advertises `https://` is reached
//! over TLS (verified against the system's roots and `functions.ca_file`), so the bearer
//! token a request carries is encrypted on the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use store::{NodeInfo, SharedStore};
use tracing::{Instrument, debug, debug_span, warn};

use crate::function::http_client::{HttpClient, HttpError, HttpReply};
use crate::metrics::registry::{Metrics, RelayOutcome};
use crate::respond::Body;

/// The header a relayed request carries: the name of the node that relayed it.
pub(crate) const FORWARDED: &str = "x-switchboard-forwarded";

/// The largest reply read from a peer.
const MAX_PEER_REPLY: usize = 16 << 20;

/// Whether another node relayed this request (answer it here; never relay it again).
pub(crate) fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// A send-back request as it came, to relay to another node unchanged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

impl Origin<'_> {
    /// Whether another node relayed this request (answer it here; never relay it again).
    pub fn is_forwarded(&self) -> bool {
        is_forwarded(self.headers)
    }
}

/// Why a relayed request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// The node's address is not a URL the client can reach. (The URL it made is not kept:
    /// its path may carry a send-back token, and this error is logged.)
    #[error("node {node}: its address is not an http:// or https:// URL with a host")]
    Address { node: String },
    /// Sending or reading failed.
    #[error("node {node}: {source}")]
    Http { node: String, source: HttpError },
    /// No answer within `relay_timeout`.
    #[error("node {node}: no answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
    /// An answer that is not a 200 with the expected JSON.
    #[error("node {node}: unexpected answer: {what}")]
    Answer { node: String, what: String },
}

/// Which node holds a connection this node does not, as the store tells.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Its record names this node: it has ended here (its record is on its way out).
    Here,
    /// Another live node, at this send-back address.
    At(String),
    /// Its record names a node whose heartbeat expired (or that gave no address to reach
    /// it): unavailable until that node is reaped and the record removed.
    Down(String),
    /// No record: no node holds it.
    NoRecord,
    /// The store could not say (record or address lookup failed).
    StoreUnavailable,
}

/// The other nodes, as this node reaches them: the store says who is alive, where, and
/// which node holds a connection; requests go over keep-alive connections.
#[derive(Debug)]
pub(crate) struct Relay {
    node: Arc<str>,
    store: SharedStore,
    peers: HttpClient,
    /// `relay_timeout`.
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Relay {
    /// Relays through keep-alive connections, over TLS (with `tls`) to `https://` nodes;
    /// counts each relay in `metrics`.
    pub fn new(
        node: Arc<str>,
        store: SharedStore,
        timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Relay {
            node,
            store,
            peers: HttpClient::new(64, Duration::from_secs(30), tls),
            timeout,
            metrics,
        }
    }

    /// Which node holds connection `id` (one this node does not hold).
    pub async fn owner(&self, id: &str) -> Owner {
        let record = match self.store.get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Owner::NoRecord,
            Err(e) => {
                debug!(connection = id, cause = %e, "cannot look up the node of a connection");
                return Owner::StoreUnavailable;
            }
        };
        if *record.node == *self.node {
            return Owner::Here;
        }
        match self.store.node_address(&record.node).await {
            Ok(Some(address)) if relayable(&address) => Owner::At(address),
            Ok(_) => Owner::Down(record.node),
            Err(e) => {
                debug!(node = %record.node, cause = %e, "cannot look up a node's address");
                Owner::StoreUnavailable
            }
        }
    }

    /// Every other live node that gave a send-back address.
    pub async fn peers(&self) -> Vec<NodeInfo> {
        match self.store.nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .filter(|n| *n.name != *self.node && relayable(&n.address))
                .collect(),
            Err(e) => {
                warn!(cause = %e, "cannot list the other nodes: a group send reaches this node only");
                Vec::new()
            }
        }
    }

    /// Sends `origin` to the node at `base`, as it came, marked as relayed; `body` replaces
    /// its body when given (a batch's part for that node). `connection`: the one connection
    /// it is for, if it is for one (named in its span). Its end is logged at debug with the
    /// outcome and duration; the caller logs a failure with its consequence.
    pub async fn send(
        &self,
        base: &str,
        origin: Origin<'_>,
        body: Option<&Bytes>,
        connection: Option<&str>,
    ) -> Result<HttpReply, RelayError> {
        let span = debug_span!("relay", node = base, connection);
        let started = std::time::Instant::now();
        let result = self
            .send_unlogged(base, origin, body)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(_) => "answered",
            Err(RelayError::Timeout { .. }) => "timeout",
            Err(RelayError::Http { .. }) => "failed",
            Err(RelayError::Address { .. }) => "bad_address",
            Err(RelayError::Answer { .. }) => "bad_answer",
        };
        debug!(
            parent: &span,
            outcome,
            status = result.as_ref().ok().map(|reply| reply.status),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "relay ended"
        );
        result
    }

    async fn send_unlogged(
        &self,
        base: &str,
        origin: Origin<'_>,
        body: Option<&Bytes>,
    ) -> Result<HttpReply, RelayError> {
        let started = Instant::now();
        let sent = self.send_uncounted(base, origin, body).await;
        let outcome = match &sent {
            Ok(_) => RelayOutcome::Answered,
            Err(RelayError::Address { .. }) => RelayOutcome::BadAddress,
            Err(RelayError::Timeout { .. }) => RelayOutcome::Timeout,
            Err(RelayError::Http { .. } | RelayError::Answer { .. }) => RelayOutcome::Failed,
        };
        self.metrics.relay(outcome, started.elapsed());
        sent
    }

    /// [`Relay::send`], uncounted.
    async fn send_uncounted(
        &self,
        base: &str,
        origin: Origin<'_>,
        body: Option<&Bytes>,
    ) -> Result<HttpReply, RelayError> {
        let node = || base.to_owned();
        let url = format!("{}{}", base.trim_end_matches('/'), origin.target);
        let endpoint = self
            .peers
            .endpoint(&url)
            .map_err(|_| RelayError::Address { node: node() })?;
        let mut pass: Vec<(&str, &str)> = origin
            .headers
            .iter()
            .filter(|(name, _)| !hop_by_hop(name))
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        pass.push((FORWARDED, &self.node));
        let body = body.unwrap_or(origin.body);
        let sent = endpoint.send(origin.method.as_str(), &pass, body, MAX_PEER_REPLY);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(reply) => reply.map_err(|source| RelayError::Http {
                node: node(),
                source,
            }),
            Err(_) => Err(RelayError::Timeout {
                node: node(),
                timeout: self.timeout,
            }),
        }
    }

    /// [`Relay::send`] for a 200 JSON answer.
    pub async fn send_for_json<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        origin: Origin<'_>,
        body: Option<&Bytes>,
    ) -> Result<T, RelayError> {
        let reply = self.send(base, origin, body, None).await?;
        let answer = |what: String| RelayError::Answer {
            node: base.to_owned(),
            what,
        };
        if reply.status != 200 {
            return Err(answer(format!("status {}", reply.status)));
        }
        serde_json::from_slice(&reply.body).map_err(|e| answer(format!("unreadable: {e}")))
    }
}

/// Whether a heartbeat's address is one to relay to: an `http://` or `https://` URL. (A
/// node of an older version writes `alive` there; it neither relays nor is relayed to.)
fn relayable(address: &str) -> bool {
    address.starts_with("http://") || address.starts_with("https://")
}

/// A peer's reply as ours.
pub(crate) fn into_response(reply: HttpReply) -> Response<Body> {
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

    #[tokio::test]
    async fn a_relay_error_never_names_the_path_it_tried() {
        let relay = Relay::new(
            "gw-a".into(),
            std::sync::Arc::new(store::MemoryStore::new()),
            Duration::from_millis(100),
            crate::tls::client::client_config(None).unwrap(),
            Arc::new(Metrics::new()),
        );
        let headers = HeaderMap::new();
        let body = Bytes::new();
        let origin = Origin {
            method: &Method::POST,
            target: "/@tencent/s3cret-token",
            headers: &headers,
            body: &body,
        };
        // An address that is no URL, and one where nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for base in [
            "http//nowhere".to_owned(),
            format!("http://127.0.0.1:{port}"),
        ] {
            let error = relay.send(&base, origin, None, None).await.unwrap_err();
            assert!(!error.to_string().contains("s3cret"), "{base}: {error}");
        }
    }

    #[test]
    fn only_http_addresses_are_relayed_to() {
        assert!(relayable("http://10.0.0.5:9090"));
        assert!(relayable("https://10.0.0.5:9090"));
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
