//! The send-back API: how functions and backends reach connections. Served on its own
//! listener (loopback by default), every request authenticated by the bearer token.
//! Routes and bodies are documented in `wire::api`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use wire::api::{
    BatchItem, BatchResult, BatchSend, ConnectionInfo, DeliveryStatus, GroupInfo, GroupSendResult,
};
use wire::event::{DataType, query_pairs};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use store::StoreError;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::group_cache::Members;
use crate::outbox::{CloseRequest, PushError, QueueLimits};
use crate::registry::{Connection, IdHasher};
use crate::respond::{self, Body, Failure};
use crate::{Shared, aws_management, clock, forward, listener, tencent_sendback};

/// Serves the send-back API until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    listener::accept_loop(shared, listener, "send-back", serve_connection).await;
}

/// Serves one HTTP/1.1 connection of the send-back API (keep-alive).
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = service_shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%remote, cause = %e, "send-back connection ended with an error");
    }
}

/// One send-back request.
async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        return respond::text(StatusCode::OK, "ok\n");
    }
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/@tencent") {
        let token = rest.strip_prefix('/').filter(|t| !t.is_empty());
        return tencent_sendback::handle(shared, req, token).await;
    }
    if let Some(rest) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(shared.config.aws.stage.as_str()))
        .and_then(|p| p.strip_prefix("/@connections/"))
    {
        return aws_management::handle(shared, req, &decode_id(rest)).await;
    }
    if let Err(failure) = authorize(shared, &req) {
        let mut response = failure.into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["@connections"]) => batch_send(shared, req).await,
        (method @ (Method::POST | Method::GET | Method::DELETE), ["@connections", id]) => {
            let id = decode_id(id);
            // A bad close code is refused whether or not the connection is here.
            let close = match method {
                Method::DELETE => match close_request(req.uri().query().unwrap_or_default()) {
                    Ok(close) => Some(close),
                    Err(failure) => return failure.into_response(),
                },
                _ => None,
            };
            let Some(conn) = lookup(shared, &id) else {
                return elsewhere(shared, &id, req).await;
            };
            match close {
                Some(close) => disconnect(&id, &conn, close),
                None if method == Method::GET => info(shared, &conn),
                None => send_one(shared, &id, &conn, req).await,
            }
        }
        (Method::POST, ["@groups", group]) => {
            let group = decode_id(group);
            let excluded = excluded(req.uri().query().unwrap_or_default());
            reply(group_send(shared, &group, &excluded, req).await)
        }
        (Method::GET, ["@groups", group]) => {
            let query = req.uri().query().unwrap_or_default().to_owned();
            reply(group_info(shared, &decode_id(group), &query).await)
        }
        (Method::PUT, ["@groups", group, "connections", id]) => {
            reply(group_join(shared, &decode_id(group), &decode_id(id)).await)
        }
        (Method::DELETE, ["@groups", group, "connections", id]) => {
            reply(group_leave(shared, &decode_id(group), &decode_id(id)).await)
        }
        (
            _,
            ["@connections"]
            | ["@connections", _]
            | ["@groups", _]
            | ["@groups", _, "connections", _],
        ) => respond::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        ),
        _ => respond::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}"),
        ),
    }
}

/// Whether the request carries `Authorization: Bearer <token>`.
pub(crate) fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn authorize(shared: &Shared, req: &Request<Incoming>) -> Result<(), Failure> {
    let Some(token) = shared.config.sendback.token.as_deref() else {
        return Ok(()); // insecure_no_auth, validated to be loopback-only
    };
    if bearer_matches(req, token) {
        return Ok(());
    }
    Err(Failure::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token",
    ))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_id(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn lookup(shared: &Shared, id: &str) -> Option<Arc<Connection>> {
    let id = Uuid::parse_str(id).ok()?;
    shared.registry.get(&id).filter(|c| !c.outbox.is_closed())
}

fn gone(id: &str) -> Response<Body> {
    respond::error(StatusCode::GONE, "gone", format!("connection {id} is gone"))
}

pub(crate) fn limits(shared: &Shared) -> QueueLimits {
    QueueLimits {
        messages: shared.config.limits.outbound_queue_messages,
        bytes: shared.config.limits.outbound_queue_bytes,
    }
}

/// Reads a body up to `max` bytes; a larger one is a 413.
pub(crate) async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds {max} bytes"),
        )
    };
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("could not read the body: {e}"),
        )),
    }
}

/// The message a send-back body carries: binary if the content type says
/// `application/octet-stream`, else UTF-8 text; at most `limits.max_message_bytes`.
async fn read_message(shared: &Shared, req: Request<Incoming>) -> Result<Message, Failure> {
    let binary = is_binary(req.headers());
    let body = read_body(req, shared.config.limits.max_message_bytes).await?;
    message_of(body, binary)
}

fn is_binary(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/octet-stream"))
}

/// A body as a message: binary as is, else UTF-8 text.
fn message_of(body: Bytes, binary: bool) -> Result<Message, Failure> {
    if binary {
        return Ok(Message::Binary(body));
    }
    match String::from_utf8(body.to_vec()) {
        Ok(text) => Ok(Message::text(text)),
        Err(_) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a text message must be UTF-8 (send binary with Content-Type: application/octet-stream)",
        )),
    }
}

/// A request for a connection this node does not hold: relayed to the node that holds it,
/// else 410.
async fn elsewhere(shared: &Shared, id: &str, req: Request<Incoming>) -> Response<Body> {
    if forward::is_forwarded(req.headers()) {
        return gone(id);
    }
    match forward::owner(shared, id).await {
        Some(base) => relay(shared, &base, req).await,
        None => gone(id),
    }
}

/// Relays a request, body included, to the node at `base` and answers with its reply.
async fn relay(shared: &Shared, base: &str, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let target = path_and_query(&req);
    let headers = req.headers().clone();
    match read_body(req, shared.config.sendback.max_body_bytes).await {
        Ok(body) => forward::relay_reply(shared, base, &method, &target, &headers, &body).await,
        Err(failure) => failure.into_response(),
    }
}

fn path_and_query(req: &Request<Incoming>) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned())
}

async fn send_one(
    shared: &Shared,
    id: &str,
    conn: &Connection,
    req: Request<Incoming>,
) -> Response<Body> {
    let message = match read_message(shared, req).await {
        Ok(message) => message,
        Err(failure) => return failure.into_response(),
    };
    match conn.outbox.push(message, limits(shared)) {
        Ok(()) => respond::empty(StatusCode::OK),
        Err(PushError::Closed) => gone(id),
        Err(PushError::Full) => throttled(id),
    }
}

fn throttled(id: &str) -> Response<Body> {
    debug!(connection = id, "send-back throttled: outbound queue full");
    respond::error(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        format!("connection {id} is not reading fast enough: its outbound queue is full"),
    )
}

async fn batch_send(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let forwarded = forward::is_forwarded(req.headers());
    let headers = req.headers().clone();
    let body = match read_body(req, shared.config.sendback.max_body_bytes).await {
        Ok(body) => body,
        Err(failure) => return failure.into_response(),
    };
    let batch: BatchSend = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            return respond::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body is not a batch send: {e}"),
            );
        }
    };
    let message = match batch.data_type {
        DataType::Text => Message::text(batch.data.as_str()),
        DataType::Binary => match BASE64.decode(batch.data.as_bytes()) {
            Ok(bytes) => Message::Binary(Bytes::from(bytes)),
            Err(e) => {
                return respond::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("binary data is not valid base64: {e}"),
                );
            }
        },
    };
    if message.len() > shared.config.limits.max_message_bytes {
        return respond::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the message exceeds {} bytes",
                shared.config.limits.max_message_bytes
            ),
        );
    }
    let limits = limits(shared);
    let mut items = Vec::with_capacity(batch.connection_ids.len());
    // Positions of the ids this node does not hold.
    let mut elsewhere = Vec::new();
    for id in &batch.connection_ids {
        let status = match lookup(shared, id) {
            None => {
                elsewhere.push(items.len());
                DeliveryStatus::Gone
            }
            Some(conn) => match conn.outbox.push(message.clone(), limits) {
                Ok(()) => DeliveryStatus::Delivered,
                Err(PushError::Closed) => DeliveryStatus::Gone,
                Err(PushError::Full) => DeliveryStatus::Throttled,
            },
        };
        items.push(BatchItem {
            connection_id: id.clone(),
            status,
        });
    }
    if !forwarded && !elsewhere.is_empty() {
        relay_batch(shared, &headers, &batch, &mut items, &elsewhere).await;
    }
    let mut result = BatchResult::default();
    for item in &items {
        match item.status {
            DeliveryStatus::Delivered => result.delivered += 1,
            DeliveryStatus::Gone => result.gone += 1,
            DeliveryStatus::Throttled => result.throttled += 1,
        }
    }
    result.results = items;
    respond::json(StatusCode::OK, &result)
}

/// Sends the part of a batch for connections other nodes hold to those nodes (one batch
/// per node, concurrently) and takes their statuses into `items`.
async fn relay_batch(
    shared: &Shared,
    headers: &http::HeaderMap,
    batch: &BatchSend,
    items: &mut [BatchItem],
    elsewhere: &[usize],
) {
    let owners = futures_util::future::join_all(
        elsewhere
            .iter()
            .map(|&i| forward::owner(shared, &items[i].connection_id)),
    )
    .await;
    let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
    for (&i, owner) in elsewhere.iter().zip(owners) {
        if let Some(base) = owner {
            by_node.entry(base).or_default().push(i);
        }
    }
    let sends = by_node.iter().map(|(base, positions)| {
        let part = BatchSend {
            connection_ids: positions
                .iter()
                .map(|&i| items[i].connection_id.clone())
                .collect(),
            data: batch.data.clone(),
            data_type: batch.data_type,
        };
        async move {
            let body = Bytes::from(serde_json::to_vec(&part).unwrap_or_default());
            let reply =
                forward::relay(shared, base, &Method::POST, "/@connections", headers, &body).await;
            (positions, reply)
        }
    });
    for (positions, reply) in futures_util::future::join_all(sends).await {
        match forward::json_answer::<BatchResult>(reply) {
            Ok(answer) => {
                for (&i, item) in positions.iter().zip(answer.results) {
                    if item.connection_id == items[i].connection_id {
                        items[i].status = item.status;
                    }
                }
            }
            Err(cause) => {
                warn!(%cause, "a node did not take its part of a batch send: reported as gone");
            }
        }
    }
}

fn info(shared: &Shared, conn: &Connection) -> Response<Body> {
    respond::json(
        StatusCode::OK,
        &ConnectionInfo {
            connection_id: conn.id.to_string(),
            connected_at: clock::rfc3339_ms(conn.connected_at_ms),
            last_active_at: clock::rfc3339_ms(conn.last_active_ms()),
            source_ip: conn.source_ip.to_string(),
            user_agent: conn.user_agent.as_deref().map(str::to_owned),
            context: conn.context.clone(),
            node: shared.node.to_string(),
        },
    )
}

/// The close a `DELETE` asks for (`?code=…&reason=…`), or the 400 refusing it.
fn close_request(query: &str) -> Result<CloseRequest, Failure> {
    let mut code = 1000u16;
    let mut reason = String::new();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "code" => match value.parse::<u16>() {
                Ok(c) if c == 1000 || (3000..=4999).contains(&c) => code = c,
                _ => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "code must be 1000 or 3000-4999",
                    ));
                }
            },
            "reason" if value.len() <= 123 => reason = value,
            "reason" => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "reason must be at most 123 bytes",
                ));
            }
            _ => {}
        }
    }
    Ok(CloseRequest { code, reason })
}

fn disconnect(id: &str, conn: &Connection, close: CloseRequest) -> Response<Body> {
    let code = close.code;
    if conn.outbox.request_close(close) {
        info!(
            connection = id,
            code, "disconnect requested through send-back"
        );
        respond::empty(StatusCode::NO_CONTENT)
    } else {
        gone(id)
    }
}

fn reply(result: Result<Response<Body>, Failure>) -> Response<Body> {
    result.unwrap_or_else(Failure::into_response)
}

/// The ids a group send skips (`?exclude=a&exclude=b`).
fn excluded(query: &str) -> HashSet<String> {
    query_pairs(query)
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v)
        .collect()
}

/// A store failure as the caller should see it.
fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::NotRegistered(id) => {
            Failure::new(StatusCode::GONE, "gone", format!("connection {id} is gone"))
        }
        StoreError::InvalidName { .. } => {
            Failure::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
        }
        other => {
            warn!(cause = %other, "send-back request failed: store unavailable");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the gateway's store is unavailable; retry later",
            )
        }
    }
}

/// Sends one message to every member of a group held by this node. The members come from
/// the node's [`GroupCache`] when the store's version of the group still matches, else from
/// a walk of the group (then kept under that version).
async fn group_send(
    shared: &Shared,
    group: &str,
    excluded: &HashSet<String>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let forwarded = forward::is_forwarded(req.headers());
    let binary = is_binary(req.headers());
    let target = path_and_query(&req);
    let headers = req.headers().clone();
    let body = read_body(req, shared.config.limits.max_message_bytes).await?;
    let message = message_of(body.clone(), binary)?;
    // The other nodes deliver to the members they hold; a relayed send stays here.
    let (members, peers) = if forwarded {
        (group_members(shared, group).await?, Vec::new())
    } else {
        let (members, peers) = tokio::join!(group_members(shared, group), forward::peers(shared));
        (members?, peers)
    };
    let relayed = futures_util::future::join_all(
        peers
            .iter()
            .map(|base| forward::relay(shared, base, &Method::POST, &target, &headers, &body)),
    );
    let limits = limits(shared);
    let mut result = GroupSendResult::default();
    let excluded_ids: HashSet<Uuid, BuildHasherDefault<IdHasher>> = excluded
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    for other in &members.others {
        if excluded.contains(other) {
            result.excluded += 1;
        } else {
            // Not one of ours (another node's or a stale key): gone for this node.
            result.gone += 1;
        }
    }
    let mut page = Vec::new();
    for chunk in members.ids.chunks(GROUP_PAGE) {
        let ids = if excluded_ids.is_empty() {
            chunk
        } else {
            page.clear();
            page.extend(chunk.iter().filter(|id| !excluded_ids.contains(id)));
            result.excluded += chunk.len() - page.len();
            &page[..]
        };
        // One lock of the registry per page, not per member.
        shared.registry.with_each(ids, |conn| {
            match conn.map(|c| c.outbox.push(message.clone(), limits)) {
                Some(Ok(())) => result.delivered += 1,
                Some(Err(PushError::Full)) => result.throttled += 1,
                Some(Err(PushError::Closed)) | None => result.gone += 1,
            }
        });
    }
    if !peers.is_empty() {
        for (base, reply) in peers.iter().zip(relayed.await) {
            match forward::json_answer::<GroupSendResult>(reply) {
                Ok(theirs) => {
                    result.delivered += theirs.delivered;
                    result.throttled += theirs.throttled;
                }
                Err(cause) => {
                    warn!(node = %base, %cause, group, "a node did not take a group send: its members are reported as gone");
                }
            }
        }
        // Each node counts the members it does not hold as gone: count them once, here.
        let listed = members.ids.len() + members.others.len();
        result.gone = listed.saturating_sub(result.excluded + result.delivered + result.throttled);
    }
    debug!(
        group,
        delivered = result.delivered,
        gone = result.gone,
        "group send"
    );
    Ok(respond::json(StatusCode::OK, &result))
}

/// The members of `group`: kept ones if the store's version of the group matches, else a
/// walk (kept if the store gave a version).
async fn group_members(shared: &Shared, group: &str) -> Result<Arc<Members>, Failure> {
    let version = shared
        .store
        .group_version(group)
        .await
        .map_err(store_failure)?;
    if let Some(members) = version.and_then(|v| shared.groups.get(group, v)) {
        return Ok(members);
    }
    let members = Arc::new(walk_members(shared, group).await?);
    if let Some(version) = version {
        shared.groups.insert(group, version, members.clone());
    }
    Ok(members)
}

/// Reads every member of `group` from the store, page by page.
async fn walk_members(shared: &Shared, group: &str) -> Result<Members, Failure> {
    let mut members = Members::default();
    let mut seen: HashSet<Uuid, BuildHasherDefault<IdHasher>> = HashSet::default();
    let mut others: HashSet<String> = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = shared
            .store
            .members(group, cursor.as_deref(), GROUP_PAGE)
            .await
            .map_err(store_failure)?;
        for id in page.members {
            // A walk may list a member twice.
            match Uuid::parse_str(&id) {
                Ok(uuid) if seen.insert(uuid) => members.ids.push(uuid),
                Ok(_) => {}
                Err(_) => {
                    if others.insert(id.clone()) {
                        members.others.push(id);
                    }
                }
            }
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(members),
        }
    }
}

/// Members read per store round trip in a group walk.
const GROUP_PAGE: usize = 1000;

async fn group_info(shared: &Shared, group: &str, query: &str) -> Result<Response<Body>, Failure> {
    let mut cursor = None;
    let mut limit = 100usize;
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "cursor" if !value.is_empty() => cursor = Some(value),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        Failure::new(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "limit must be 1-1000",
                        )
                    })?;
            }
            _ => {}
        }
    }
    let count = shared.store.count(group).await.map_err(store_failure)?;
    let page = shared
        .store
        .members(group, cursor.as_deref(), limit)
        .await
        .map_err(store_failure)?;
    Ok(respond::json(
        StatusCode::OK,
        &GroupInfo {
            group: group.to_owned(),
            count,
            members: page.members,
            cursor: page.cursor,
        },
    ))
}

async fn group_join(shared: &Shared, group: &str, id: &str) -> Result<Response<Body>, Failure> {
    shared.store.join(group, id).await.map_err(store_failure)?;
    Ok(respond::empty(StatusCode::NO_CONTENT))
}

async fn group_leave(shared: &Shared, group: &str, id: &str) -> Result<Response<Body>, Failure> {
    shared.store.leave(group, id).await.map_err(store_failure)?;
    Ok(respond::empty(StatusCode::NO_CONTENT))
}
