//! Admission: the register decision for one upgrade request.
//!
//! Order matters for "nothing half-registered": the connection's store record is written
//! first (so a register function may join groups), then register is called; on refusal or
//! failure the record is removed again (with any groups joined). On acceptance the socket
//! task is spawned before the 101 goes out, and from then on cleanup is guaranteed: the
//! socket task always ends with the cleanup call and the store unregister.

use std::net::SocketAddr;
use std::sync::Arc;

use functions::event::{Event, EventKind, HandshakeRequest, RegisterReply};
use http::{Response, StatusCode, request::Parts};
use hyper::upgrade::OnUpgrade;
use store::ConnectionRecord;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use crate::invoke::{CallError, snippet};
use crate::registry::Connection;
use crate::respond::{self, Body};
use crate::{Shared, Slot, clock, connection, handshake, liveness};

/// Decides on one upgrade request and returns the reply (101 or a refusal).
pub(crate) async fn admit(
    shared: Arc<Shared>,
    parts: Parts,
    remote: SocketAddr,
    accept: String,
    on_upgrade: OnUpgrade,
    slot: Slot,
) -> Response<Body> {
    let id = Uuid::new_v4();
    let span = info_span!("conn", id = %id);
    async move {
        let connected_at_ms = clock::now_ms();
        let request = handshake_request(&parts, remote);
        let user_agent = request.header("user-agent").map(Box::from);
        let mut record = ConnectionRecord {
            id: id.to_string(),
            node: shared.node.to_string(),
            connected_at_ms,
            source_ip: request.source_ip.clone(),
            user_agent: user_agent.as_deref().map(str::to_owned),
            context: serde_json::Value::Null,
        };
        if let Err(e) = shared.store.register(&record).await {
            warn!(cause = %e, "refusing connection: store unavailable");
            return respond::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the gateway's store is unavailable",
            );
        }
        let reply = match decide(&shared, &record, request).await {
            Ok(reply) => reply,
            Err(refusal) => {
                forget(&shared, &record.id).await;
                return refusal;
            }
        };
        let conn = Arc::new(Connection::new(
            id,
            connected_at_ms,
            remote.ip(),
            user_agent,
            reply.context.clone(),
        ));
        let mut upgrade = Some(on_upgrade);
        let mut response = handshake::switching_protocols(&accept, reply.subprotocol.as_deref());
        if !reply.context.is_null() {
            record.context = reply.context;
            if let Err(e) = shared.store.register(&record).await {
                // Register accepted, so the function may hold state for this id: the socket
                // task still runs (without a socket) to send cleanup.
                warn!(cause = %e, "store unavailable after register accepted; closing");
                upgrade = None;
                response = respond::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the gateway's store is unavailable",
                );
            }
        }
        if upgrade.is_some() {
            shared.registry.insert(conn.clone());
            info!(source_ip = %remote.ip(), "connection accepted");
        }
        shared.tracker.spawn(
            connection::run(shared.clone(), conn, upgrade, slot)
                .instrument(tracing::Span::current()),
        );
        response
    }
    .instrument(span)
    .await
}

/// Calls register (if configured) and judges its reply: `Ok` accepts, `Err` is the
/// refusal to send.
async fn decide(
    shared: &Shared,
    record: &ConnectionRecord,
    request: HandshakeRequest,
) -> Result<RegisterReply, Response<Body>> {
    let Some(url) = shared.config.functions.register.as_deref() else {
        return Ok(RegisterReply::default());
    };
    let offered = request.subprotocols.clone();
    let event = Event {
        connection_id: record.id.clone(),
        seq: 0,
        node: record.node.clone(),
        timestamp: clock::now_ms(),
        context: serde_json::Value::Null,
        kind: EventKind::Register { request },
    };
    let fail = |e: CallError| {
        warn!(cause = %e, "refusing connection: register function failed");
        let status = StatusCode::from_u16(e.upgrade_status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let code = if status == StatusCode::GATEWAY_TIMEOUT {
            "function_timeout"
        } else {
            "function_failed"
        };
        respond::error(status, code, "the register function did not answer usably")
    };
    let reply = shared.invoker.call_once(url, &event).await.map_err(fail)?;
    if !reply.is_success() {
        let status = match StatusCode::from_u16(reply.status) {
            Ok(s) if s.is_client_error() || s.is_server_error() => s,
            _ => {
                return Err(fail(CallError::BadReply(format!(
                    "status {} is neither success nor error",
                    reply.status
                ))));
            }
        };
        info!(
            status = reply.status,
            "connection refused by register function"
        );
        return Err(respond::text(status, snippet(&reply.body)));
    }
    let parsed: RegisterReply = if reply.body.iter().all(u8::is_ascii_whitespace) {
        RegisterReply::default()
    } else {
        serde_json::from_slice(&reply.body).map_err(|e| {
            fail(CallError::BadReply(format!(
                "register reply is not a RegisterReply: {e}"
            )))
        })?
    };
    let context_len = serde_json::to_vec(&parsed.context).map_or(0, |v| v.len());
    if !parsed.context.is_null() && context_len > shared.config.functions.max_context_bytes {
        return Err(fail(CallError::BadReply(format!(
            "context of {context_len} bytes exceeds functions.max_context_bytes ({})",
            shared.config.functions.max_context_bytes
        ))));
    }
    if let Some(p) = &parsed.subprotocol {
        if !offered.iter().any(|o| o == p) {
            return Err(fail(CallError::BadReply(format!(
                "subprotocol `{p}` was not offered by the client"
            ))));
        }
    }
    debug!("register accepted");
    Ok(parsed)
}

/// Removes a refused connection's record (and any groups its register function joined).
async fn forget(shared: &Shared, id: &str) {
    liveness::forget(shared, id.to_owned()).await;
}

fn handshake_request(parts: &Parts, remote: SocketAddr) -> HandshakeRequest {
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
        source_ip: remote.ip().to_string(),
        subprotocols: handshake::offered_subprotocols(&parts.headers),
    }
}
