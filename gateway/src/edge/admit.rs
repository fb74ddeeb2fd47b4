//! Admission: the register decision for one upgrade request.
//!
//! Order matters for "nothing half-registered": the connection's store record is written
//! first (so a register function may join groups), then register is called; on refusal or
//! failure the record is removed again (with any groups joined). On acceptance the caller
//! (the public listener's task for this client) writes the 101 and then runs the socket
//! task, `socket::task::run`, whatever became of the 101: from then on cleanup is guaranteed,
//! since the socket task always ends with the cleanup call and the store unregister.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use wire::codes;

use http::{Response, StatusCode, request::Parts};
use store::ConnectionRecord;
use tracing::{Instrument, Span, debug, info, info_span, warn};
use uuid::Uuid;
use wire::event::{Event, EventKind, HandshakeRequest, RegisterReply};

use store::SharedStore;

use crate::clock;
use crate::cluster::liveness::Removals;
use crate::config::Config;
use crate::dialect::{self, model::Facts, model::Verdict};
use crate::edge::handshake;
use crate::edge::slots::Slot;
use crate::function::invoke::{Call, CallError, Invoker};
use crate::metrics::registry::{FunctionEvent, Refusal};
use crate::respond::{self, Body};
use crate::socket::registry::{Connection, Registry};

/// What admission uses.
#[derive(Debug)]
pub(crate) struct Admitter {
    /// This node's name (in records and events).
    pub node: Arc<str>,
    /// `functions` (the register target, its dialect, `max_context_bytes`) and what the
    /// dialects' encoders read.
    pub config: Arc<Config>,
    pub store: SharedStore,
    pub invoker: Invoker,
    pub registry: Arc<Registry>,
    pub removals: Arc<Removals>,
}

/// The register decision on one upgrade request.
pub(crate) enum Admission {
    /// Not admitted (refused, or register or the store failed): why, and the reply to
    /// send. Nothing is left to clean up.
    Refused(Refusal, Response<Body>),
    /// Register accepted: the caller must send the reply, then run `socket::task::run`.
    Accepted(Admitted),
}

/// A connection register accepted.
pub(crate) struct Admitted {
    pub conn: Arc<Connection>,
    pub slot: Slot,
    /// The connection's `conn` span.
    pub span: Span,
    /// The 101, or (the store failed after register accepted) the error reply: then the
    /// socket task runs without a socket, to send cleanup.
    pub reply: Result<Response<Body>, Response<Body>>,
    /// The `Sec-WebSocket-Accept` value (a passthrough route's 101 is made again with the
    /// backend's subprotocol).
    pub accept: String,
    /// Headers the register reply asked for on a passthrough backend's upgrade request.
    pub backend_headers: std::collections::BTreeMap<String, String>,
    /// Whether the register function was called (and accepted).
    pub registered: bool,
}

/// Who decides on an upgrade request.
pub(crate) enum Decider {
    /// The register function, if one is configured (else every request is accepted).
    Register,
    /// Decided already (a passthrough route's built-in check): accepted, with this context.
    Decided(serde_json::Value),
}

/// Where an upgrade request came from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Origin {
    /// The client, behind any trusted proxies.
    pub source_ip: IpAddr,
    /// The TCP connection's peer.
    pub peer: SocketAddr,
    /// It came over TLS (`wss://`).
    pub tls: bool,
}

impl Admitter {
    /// Decides on one upgrade request from `origin`.
    pub async fn admit(
        &self,
        parts: Parts,
        origin: Origin,
        accept: String,
        slot: Slot,
        decider: Decider,
    ) -> Admission {
        let Origin {
            source_ip,
            peer,
            tls,
        } = origin;
        let id = Uuid::new_v4();
        let span = info_span!("conn", id = %id);
        async move {
            let connected_at_ms = clock::now_ms();
            let request = handshake_request(&parts, source_ip);
            let user_agent = request.header("user-agent").map(Box::from);
            let host = request.header("host").map(|h| Box::from(domain(h, tls)));
            let mut record = ConnectionRecord {
                id: id.to_string(),
                node: self.node.to_string(),
                connected_at_ms,
                source_ip: request.source_ip.clone(),
                user_agent: user_agent.as_deref().map(str::to_owned),
                context: serde_json::Value::Null,
            };
            if let Err(e) = self.store.register(&record).await {
                warn!(cause = %e, "refusing connection: store unavailable");
                return Admission::Refused(
                    Refusal::StoreUnavailable,
                    respond::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        codes::STORE_UNAVAILABLE,
                        "the gateway's store is unavailable",
                    ),
                );
            }
            let registered =
                matches!(decider, Decider::Register) && self.config.functions.register.is_some();
            let decided = match decider {
                Decider::Register => self.decide(&record, request, tls).await,
                Decider::Decided(context) => Ok(RegisterReply {
                    context,
                    ..RegisterReply::default()
                }),
            };
            let reply = match decided {
                Ok(reply) => reply,
                Err((reason, refusal)) => {
                    // The refused connection's record goes (with any groups register joined).
                    self.removals.forget(record.id.clone()).await;
                    return Admission::Refused(reason, refusal);
                }
            };
            let conn = Arc::new(Connection::new(
                id,
                connected_at_ms,
                source_ip,
                user_agent,
                host,
                reply.context.clone(),
            ));
            let mut response = Ok(handshake::switching_protocols(
                &accept,
                reply.subprotocol.as_deref(),
            ));
            if !reply.context.is_null() {
                record.context = reply.context;
                if let Err(e) = self.store.register(&record).await {
                    // Register accepted, so the function may hold state for this id: the socket
                    // task still runs (without a socket) to send cleanup.
                    warn!(cause = %e, "store unavailable after register accepted; closing");
                    response = Err(respond::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        codes::STORE_UNAVAILABLE,
                        "the gateway's store is unavailable",
                    ));
                }
            }
            if response.is_ok() {
                self.registry.insert(conn.clone());
                info!(%source_ip, %peer, "connection accepted");
            }
            Admission::Accepted(Admitted {
                conn,
                slot,
                span: Span::current(),
                reply: response,
                accept,
                backend_headers: reply.headers,
                registered,
            })
        }
        .instrument(span)
        .await
    }

    /// Calls register (if configured) and judges its reply: `Ok` accepts, `Err` is why not
    /// and the refusal to send.
    async fn decide(
        &self,
        record: &ConnectionRecord,
        request: HandshakeRequest,
        tls: bool,
    ) -> Result<RegisterReply, (Refusal, Response<Body>)> {
        let Some(target) = self.config.functions.register.as_ref() else {
            return Ok(RegisterReply::default());
        };
        let dialect = target.dialect(self.config.functions.dialect);
        let offered = request.subprotocols.clone();
        let host = request.header("host").map(|h| domain(h, tls).to_owned());
        let event = Event {
            connection_id: record.id.clone(),
            seq: 0,
            node: record.node.clone(),
            timestamp: clock::now_ms(),
            context: serde_json::Value::Null,
            event_id: wire::event::register_event_id(&record.id),
            kind: EventKind::Register { request },
        };
        let facts = Facts {
            connected_at_ms: record.connected_at_ms,
            source_ip: &record.source_ip,
            user_agent: record.user_agent.as_deref(),
            host: host.as_deref(),
        };
        let call = Call {
            event: FunctionEvent::Register,
            dialect,
            connection_id: &record.id,
            body: dialect::encode(dialect, &self.config, &event, facts, "$connect").into(),
        };
        let fail = |e: CallError| {
            warn!(cause = %e, "refusing connection: register function failed");
            let status =
                StatusCode::from_u16(e.upgrade_status()).unwrap_or(StatusCode::BAD_GATEWAY);
            let (reason, code) = if status == StatusCode::GATEWAY_TIMEOUT {
                (Refusal::FunctionTimeout, codes::FUNCTION_TIMEOUT)
            } else {
                (Refusal::FunctionFailed, codes::FUNCTION_FAILED)
            };
            let reply = respond::error(status, code, "the register function did not answer usably");
            (reason, reply)
        };
        let reply = self
            .invoker
            .call_once(target.url(), &call)
            .await
            .map_err(fail)?;
        let max_context = self.config.functions.max_context_bytes;
        match dialect::register_verdict(dialect, &reply, &offered, max_context).map_err(fail)? {
            Verdict::Accept(accept) => {
                debug!("register accepted");
                Ok(accept)
            }
            Verdict::Refuse { status, body } => {
                info!(status, "connection refused by register function");
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                Err((Refusal::RegisterRefused, respond::text(status, body)))
            }
        }
    }
}

/// The domain a client asked for, as AWS events name it (`domainName`): its `Host`, without
/// the port when that is the scheme's default (443 for `wss://`, 80 for `ws://`), with it
/// otherwise, so that `https://{domainName}/…` leads back to the listener it came to.
fn domain(host: &str, tls: bool) -> &str {
    let default = if tls { ":443" } else { ":80" };
    match host.strip_suffix(default) {
        // `[::1]:443`, `example.com:443`; not the end of an IPv6 address without brackets.
        Some(rest) if !rest.is_empty() && (rest.ends_with(']') || !rest.contains(':')) => rest,
        _ => host,
    }
}

fn handshake_request(parts: &Parts, source_ip: IpAddr) -> HandshakeRequest {
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    HandshakeRequest {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        source_ip: source_ip.to_string(),
        subprotocols: handshake::offered_subprotocols(&parts.headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_keeps_a_port_that_is_not_the_schemes_default() {
        assert_eq!(domain("ws.example.com", true), "ws.example.com");
        assert_eq!(domain("ws.example.com:443", true), "ws.example.com");
        assert_eq!(domain("ws.example.com:8443", true), "ws.example.com:8443");
        assert_eq!(domain("ws.example.com:80", true), "ws.example.com:80");
        assert_eq!(domain("ws.example.com:80", false), "ws.example.com");
        assert_eq!(domain("ws.example.com:8080", false), "ws.example.com:8080");
        assert_eq!(domain("[::1]:443", true), "[::1]");
        assert_eq!(domain("[::1]:8443", true), "[::1]:8443");
    }
}
