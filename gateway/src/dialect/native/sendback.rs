//! The native send-back API (routes and bodies in `wire::api`): parses each request,
//! calls the delivery core, and answers with `ApiError` bodies and the statuses that
//! name them. Group membership (join, leave, list) goes to the store directly.
//!
//! A batch's ids are counted before they are parsed (no id is kept for the count) and a
//! batch naming more than `sendback.max_batch_ids` is refused whole with 413: its cost
//! (parsing, one lookup and one reply entry per id) stays bounded, and nothing is
//! delivered for it.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use wire::codes;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use store::{SharedStore, StoreError};
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};
use wire::api::{BatchSend, ConnectionInfo, GroupInfo};
use wire::event::{DataType, query_pairs};

use crate::clock;
use crate::cluster::relay::Origin;
use crate::delivery::core::{Delivery, Op, Outcome};
use crate::request::{self, BodyLimits, RequestBody};
use crate::respond::{self, Body, Failure};
use crate::socket::outbox::CloseRequest;

/// What the native API uses.
#[derive(Debug)]
pub(crate) struct NativeApi {
    pub delivery: Arc<Delivery>,
    pub store: SharedStore,
    pub limits: BodyLimits,
    /// The most ids a batch may name (`sendback.max_batch_ids`).
    pub max_batch_ids: usize,
    /// This node's name (in connection info).
    pub node: Arc<str>,
}

impl NativeApi {
    /// Serves one authenticated native request.
    pub async fn handle<B: RequestBody>(&self, req: Request<B>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let decode = request::decode_segment;
        let result = match (req.method().clone(), segments.as_slice()) {
            (Method::POST, ["@connections"]) => self.batch_send(req).await,
            (method @ (Method::POST | Method::GET | Method::DELETE), ["@connections", id]) => {
                self.to_connection(&method, &decode(id), req).await
            }
            (Method::POST, ["@groups", group]) => self.group_send(&decode(group), req).await,
            (Method::GET, ["@groups", group]) => {
                let query = req.uri().query().unwrap_or_default().to_owned();
                self.group_info(&decode(group), &query).await
            }
            (Method::PUT, ["@groups", group, "connections", id]) => {
                let joined = self.store.join(&decode(group), &decode(id)).await;
                joined.map(|_| no_content()).map_err(store_failure)
            }
            (Method::DELETE, ["@groups", group, "connections", id]) => {
                let left = self.store.leave(&decode(group), &decode(id)).await;
                left.map(|_| no_content()).map_err(store_failure)
            }
            (
                _,
                ["@connections"]
                | ["@connections", _]
                | ["@groups", _]
                | ["@groups", _, "connections", _],
            ) => Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                codes::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {path}", req.method()),
            )),
            _ => Err(Failure::new(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!("no route for {path}"),
            )),
        };
        result.unwrap_or_else(Failure::into_response)
    }

    /// `POST`, `GET` or `DELETE /@connections/{id}`.
    async fn to_connection<B: RequestBody>(
        &self,
        method: &Method,
        id: &str,
        req: Request<B>,
    ) -> Result<Response<Body>, Failure> {
        let target = request::path_and_query(&req);
        let headers = req.headers().clone();
        let (op, body) = match *method {
            // A bad close code is refused whether or not the connection is here.
            Method::DELETE => (
                Op::Close(close_request(req.uri().query().unwrap_or_default())?),
                Bytes::new(),
            ),
            Method::GET => (Op::Info, Bytes::new()),
            _ => {
                let binary = request::is_binary(req.headers());
                let body = request::read_body(req, self.limits.message).await?;
                (Op::Send(request::message_of(body.clone(), binary)?), body)
            }
        };
        let code = match &op {
            Op::Close(close) => Some(close.code),
            _ => None,
        };
        let origin = Origin {
            method,
            target: &target,
            headers: &headers,
            body: &body,
        };
        Ok(match self.delivery.to_connection(id, op, origin).await {
            Outcome::Done => match code {
                Some(code) => {
                    info!(
                        connection = id,
                        code, "disconnect requested through send-back"
                    );
                    respond::empty(StatusCode::NO_CONTENT)
                }
                None => respond::empty(StatusCode::OK),
            },
            Outcome::Info(conn) => respond::json(
                StatusCode::OK,
                &ConnectionInfo {
                    connection_id: conn.id.to_string(),
                    connected_at: clock::rfc3339_ms(conn.connected_at_ms),
                    last_active_at: clock::rfc3339_ms(conn.last_active_ms()),
                    source_ip: conn.source_ip.to_string(),
                    user_agent: conn.user_agent.as_deref().map(str::to_owned),
                    context: conn.context.clone(),
                    node: self.node.to_string(),
                },
            ),
            Outcome::Throttled => respond::error(
                StatusCode::TOO_MANY_REQUESTS,
                codes::THROTTLED,
                format!("connection {id} is not reading fast enough: its outbound queue is full"),
            ),
            Outcome::Gone => gone(id),
            Outcome::Relayed(reply) => reply,
            Outcome::NodeUnavailable => node_unavailable(),
            Outcome::StoreUnavailable => store_unavailable(),
        })
    }

    /// `POST /@connections`: one message to many connections.
    async fn batch_send<B: RequestBody>(&self, req: Request<B>) -> Result<Response<Body>, Failure> {
        let target = request::path_and_query(&req);
        let headers = req.headers().clone();
        let body = request::read_body(req, self.limits.body).await?;
        // A body that is not a batch counts no ids here: the parse below says why.
        let ids = serde_json::from_slice::<IdCount>(&body).map_or(0, |c| c.connection_ids.0);
        if ids > self.max_batch_ids {
            return Err(Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "the batch names {ids} connection ids; at most {} are allowed \
                     (sendback.max_batch_ids): split it",
                    self.max_batch_ids
                ),
            ));
        }
        let batch: BatchSend = serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                format!("body is not a batch send: {e}"),
            )
        })?;
        let message = match batch.data_type {
            DataType::Text => Message::text(batch.data.as_str()),
            DataType::Binary => match BASE64.decode(batch.data.as_bytes()) {
                Ok(bytes) => Message::Binary(Bytes::from(bytes)),
                Err(e) => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        codes::BAD_REQUEST,
                        format!("binary data is not valid base64: {e}"),
                    ));
                }
            },
        };
        if message.len() > self.limits.message {
            return Err(Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                format!("the message exceeds {} bytes", self.limits.message),
            ));
        }
        let origin = Origin {
            method: &Method::POST,
            target: &target,
            headers: &headers,
            body: &body,
        };
        let result = self.delivery.batch(&batch, message, origin).await;
        Ok(respond::json(StatusCode::OK, &result))
    }

    /// `POST /@groups/{group}`: one message to every member.
    async fn group_send<B: RequestBody>(
        &self,
        group: &str,
        req: Request<B>,
    ) -> Result<Response<Body>, Failure> {
        let excluded = excluded(req.uri().query().unwrap_or_default());
        let binary = request::is_binary(req.headers());
        let target = request::path_and_query(&req);
        let headers = req.headers().clone();
        let body = request::read_body(req, self.limits.message).await?;
        let message = request::message_of(body.clone(), binary)?;
        let origin = Origin {
            method: &Method::POST,
            target: &target,
            headers: &headers,
            body: &body,
        };
        let result = self
            .delivery
            .group(group, &excluded, message, origin)
            .await
            .map_err(store_failure)?;
        Ok(respond::json(StatusCode::OK, &result))
    }

    /// `GET /@groups/{group}?cursor=&limit=`: one page of members.
    async fn group_info(&self, group: &str, query: &str) -> Result<Response<Body>, Failure> {
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
                                codes::BAD_REQUEST,
                                "limit must be 1-1000",
                            )
                        })?;
                }
                _ => {}
            }
        }
        let count = self.store.count(group).await.map_err(store_failure)?;
        let page = self
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
}

/// The ids of a batch body, counted without being kept.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdCount {
    #[serde(default)]
    connection_ids: Count,
}

/// The length of a JSON array whose elements are skipped.
#[derive(Default)]
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> Visitor<'de> for Counter {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of connection ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        deserializer.deserialize_seq(Counter)
    }
}

fn no_content() -> Response<Body> {
    respond::empty(StatusCode::NO_CONTENT)
}

fn gone(id: &str) -> Response<Body> {
    respond::error(
        StatusCode::GONE,
        codes::GONE,
        format!("connection {id} is gone"),
    )
}

/// The reply when the node holding a connection is down or did not answer a relayed
/// request: retryable.
fn node_unavailable() -> Response<Body> {
    respond::error(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::NODE_UNAVAILABLE,
        "the gateway node holding this connection is not answering; retry later",
    )
}

/// The reply when the store could not say where a connection is: retryable.
fn store_unavailable() -> Response<Body> {
    respond::error(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::STORE_UNAVAILABLE,
        "the gateway's store is unavailable; retry later",
    )
}

/// The close a `DELETE` asks for (`?code=…&reason=…`), or the 400 refusing it.
fn close_request(query: &str) -> Result<CloseRequest, Failure> {
    let mut code = codes::CLOSE_NORMAL;
    let mut reason = String::new();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "code" => match value.parse::<u16>() {
                Ok(c)
                    if c == codes::CLOSE_NORMAL
                        || (codes::CLOSE_APPLICATION_MIN..=codes::CLOSE_APPLICATION_MAX)
                            .contains(&c) =>
                {
                    code = c
                }
                _ => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        codes::BAD_REQUEST,
                        "code must be 1000 or 3000-4999",
                    ));
                }
            },
            "reason" if value.len() <= codes::MAX_CLOSE_REASON_BYTES => reason = value,
            "reason" => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "reason must be at most 123 bytes",
                ));
            }
            _ => {}
        }
    }
    Ok(CloseRequest {
        code,
        reason,
        reaped: false,
    })
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
        StoreError::NotRegistered(id) => Failure::new(
            StatusCode::GONE,
            codes::GONE,
            format!("connection {id} is gone"),
        ),
        StoreError::InvalidName { .. } => {
            Failure::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e.to_string())
        }
        other => {
            warn!(cause = %other, "send-back request failed: store unavailable");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::STORE_UNAVAILABLE,
                "the gateway's store is unavailable; retry later",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_counted_without_the_rest_of_the_body() {
        let count = |body: &str| {
            serde_json::from_slice::<IdCount>(body.as_bytes()).map(|c| c.connection_ids.0)
        };
        assert_eq!(
            count(r#"{"data":"x","connectionIds":["a","b",{"c":[1]}],"dataType":"text"}"#).ok(),
            Some(3)
        );
        assert_eq!(count(r#"{"connectionIds":[],"data":"x"}"#).ok(), Some(0));
        assert_eq!(count(r#"{"data":"x"}"#).ok(), Some(0));
        assert!(count(r#"{"connectionIds":"a"}"#).is_err());
        assert!(count("not json").is_err());
    }
}
