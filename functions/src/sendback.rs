//! [`SendBack`]: the client of the gateway's send-back API, with which a function pushes
//! messages to connections or to whole groups, reads what the gateway knows about a
//! connection or a group, joins and leaves groups, or closes a connection.
//!
//! One [`SendBack`] holds a pooled keep-alive HTTP client; clone it freely (clones share
//! the pool). Error statuses map to [`FunctionsError`]: 410 [`Gone`](FunctionsError::Gone),
//! 429 [`Throttled`](FunctionsError::Throttled), 413
//! [`PayloadTooLarge`](FunctionsError::PayloadTooLarge), 401
//! [`Unauthorized`](FunctionsError::Unauthorized), 503
//! [`Unavailable`](FunctionsError::Unavailable) (e.g. the gateway's store is down), others
//! [`Http`](FunctionsError::Http).
//!
//! Given several base URLs ([`SendBack::with_urls`]: every gateway node sharing the store,
//! any of which reaches every connection), a request that no node took moves on to the
//! next URL; one that may have been acted on is never sent twice (`crate::failover`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::{self, HeaderValue};
use tracing::warn;

use crate::api::{BatchResult, BatchSend, ConnectionInfo, GroupInfo, GroupSendResult};
use crate::error::{Chain, FunctionsError};
use crate::failover::{Attempt, Urls};
use crate::message::Message;

/// Bytes kept as they are in a path segment or query value: RFC 3986 unreserved.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest error body text kept in [`FunctionsError::Http`].
const MAX_ERROR_TEXT: usize = 200;

/// Whole-request timeout of every call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of opening a new connection to the gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of the gateway's send-back API.
#[derive(Clone)]
pub struct SendBack {
    client: reqwest::Client,
    /// The base URLs without a trailing `/`, e.g. `http://127.0.0.1:9001`, and which one
    /// a request tries first.
    urls: Arc<Urls>,
    /// `Bearer <token>`, if a token was given.
    authorization: Option<HeaderValue>,
}

impl fmt::Debug for SendBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendBack")
            .field("urls", &self.urls.bases().collect::<Vec<_>>())
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SendBack {
    /// A client for the send-back API at `base_url` (`http://host:port`, optionally with a
    /// path prefix), sending `Authorization: Bearer <token>` when `token` is set and not
    /// empty. Only `http` works: this build of the client has no TLS.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, FunctionsError> {
        SendBack::with_urls([base_url], token)
    }

    /// A client for the send-back API at several base URLs, as [`SendBack::new`] takes
    /// one: each gateway node's send-back address (any node reaches every connection), in
    /// the order to try them. A request goes to the URL that last worked; it moves on to
    /// the next only when the node surely did nothing with it (its connection refused, the
    /// connect timed out, or a 503 `shutting_down`). A request that may have been acted on
    /// (the connection reset or timed out after it was written) is never sent again: it
    /// fails with [`FunctionsError::Transport`]. A URL that failed is tried after the
    /// others for a few seconds. At least one URL is needed.
    pub fn with_urls<I, S>(base_urls: I, token: Option<String>) -> Result<Self, FunctionsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let bases = base_urls
            .into_iter()
            .map(|url| parse_base(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if bases.is_empty() {
            return Err(FunctionsError::InvalidBaseUrl {
                url: String::new(),
                reason: "no send-back URL given".to_owned(),
            });
        }
        let authorization = match token.filter(|t| !t.is_empty()) {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| FunctionsError::InvalidToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Ok(SendBack {
            client,
            urls: Arc::new(Urls::new(bases)),
            authorization,
        })
    }

    /// The first base URL (no trailing `/`).
    pub fn base_url(&self) -> &str {
        self.urls.base(0)
    }

    /// Every base URL (no trailing `/`), in the order given.
    pub fn base_urls(&self) -> Vec<&str> {
        self.urls.bases().collect()
    }

    /// Sends `message` to one connection. [`FunctionsError::Gone`] if it is not live
    /// (including while its register is still running).
    pub async fn send(&self, id: &str, message: &Message) -> Result<(), FunctionsError> {
        let call = Call::new(Method::POST, connection_path(id)?).body(message);
        self.execute(call).await.map(drop)
    }

    /// Sends one `message` to many connections in one request. Ids that are not live are
    /// reported in the result (`gone`), not as an error. No request is made for no ids.
    /// More ids than the gateway's `sendback.max_batch_ids` (default 10,000) are refused
    /// whole with [`FunctionsError::PayloadTooLarge`]: split longer lists.
    pub async fn send_many(
        &self,
        ids: &[String],
        message: &Message,
    ) -> Result<BatchResult, FunctionsError> {
        if ids.is_empty() {
            return Ok(BatchResult::default());
        }
        let (data_type, data) = message.to_data();
        let batch = BatchSend {
            connection_ids: ids.to_vec(),
            data,
            data_type,
        };
        let call = Call {
            method: Method::POST,
            path: "/@connections".to_owned(),
            body: Some(Body::Json(batch)),
        };
        Ok(self.execute(call).await?.json().await?)
    }

    /// What the gateway knows about a live connection.
    pub async fn get(&self, id: &str) -> Result<ConnectionInfo, FunctionsError> {
        let call = Call::new(Method::GET, connection_path(id)?);
        Ok(self.execute(call).await?.json().await?)
    }

    /// Closes a connection, with a close `code` and `reason` if given.
    pub async fn disconnect(
        &self,
        id: &str,
        code: Option<u16>,
        reason: Option<&str>,
    ) -> Result<(), FunctionsError> {
        let mut path = connection_path(id)?;
        let mut params = Vec::new();
        if let Some(code) = code {
            params.push(format!("code={code}"));
        }
        if let Some(reason) = reason {
            params.push(format!(
                "reason={}",
                utf8_percent_encode(reason, UNRESERVED)
            ));
        }
        push_query(&mut path, &params);
        self.execute(Call::new(Method::DELETE, path))
            .await
            .map(drop)
    }

    /// Sends one `message` to every member of `group` but the ids in `exclude`, in one
    /// request: the gateway reads the members and queues the message for each. Members that
    /// are no longer live are counted as `gone`, slow ones as `throttled`, not reported as
    /// errors. [`FunctionsError::Unavailable`] if the gateway's store is down.
    pub async fn send_to_group(
        &self,
        group: &str,
        message: &Message,
        exclude: &[&str],
    ) -> Result<GroupSendResult, FunctionsError> {
        let mut path = group_path(group)?;
        let excluded: Vec<String> = exclude
            .iter()
            .map(|id| format!("exclude={}", utf8_percent_encode(id, UNRESERVED)))
            .collect();
        push_query(&mut path, &excluded);
        let call = Call::new(Method::POST, path).body(message);
        Ok(self.execute(call).await?.json().await?)
    }

    /// Adds connection `id` to `group` (nothing changes if it is already a member).
    /// [`FunctionsError::Gone`] if the connection is not registered; a group name the
    /// gateway cannot use (containing `{` or `}`) is a 400 [`FunctionsError::Http`].
    pub async fn join_group(&self, group: &str, id: &str) -> Result<(), FunctionsError> {
        let call = Call::new(Method::PUT, group_member_path(group, id)?);
        self.execute(call).await.map(drop)
    }

    /// Removes connection `id` from `group`; succeeds also when it was not a member.
    pub async fn leave_group(&self, group: &str, id: &str) -> Result<(), FunctionsError> {
        let call = Call::new(Method::DELETE, group_member_path(group, id)?);
        self.execute(call).await.map(drop)
    }

    /// The size of `group` and one page of its members. Start with `cursor = None` and pass
    /// each page's [`GroupInfo::cursor`] until it is `None`. `limit` is the page size the
    /// gateway aims for: 1 to 1000, 100 if not given (the gateway answers 400 otherwise).
    pub async fn group(
        &self,
        group: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<GroupInfo, FunctionsError> {
        let mut path = group_path(group)?;
        let mut params = Vec::new();
        if let Some(cursor) = cursor {
            params.push(format!(
                "cursor={}",
                utf8_percent_encode(cursor, UNRESERVED)
            ));
        }
        if let Some(limit) = limit {
            params.push(format!("limit={limit}"));
        }
        push_query(&mut path, &params);
        let call = Call::new(Method::GET, path);
        Ok(self.execute(call).await?.json().await?)
    }

    /// Makes `call` with the token, to the URL that last worked and, while no node took
    /// it, to the next ones; turns an error status into an error.
    async fn execute(&self, call: Call) -> Result<reqwest::Response, FunctionsError> {
        let mut not_delivered = None;
        for index in self.urls.order() {
            let base = self.urls.base(index);
            let mut request = self
                .client
                .request(call.method.clone(), format!("{base}{}", call.path));
            if let Some(authorization) = &self.authorization {
                request = request.header(header::AUTHORIZATION, authorization.clone());
            }
            match &call.body {
                Some(Body::Message(content_type, bytes)) => {
                    request = request
                        .header(header::CONTENT_TYPE, *content_type)
                        .body(bytes.clone());
                }
                Some(Body::Json(batch)) => request = request.json(batch),
                None => {}
            }
            let err = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    self.urls.worked(index);
                    return Ok(response);
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    let err = status_error(status, &body);
                    if Attempt::of_error_reply(&err) == Attempt::Answered {
                        self.urls.worked(index);
                        return Err(err);
                    }
                    err
                }
                Err(err) if Attempt::of_error(&err) == Attempt::MayHaveActed => {
                    return Err(err.into());
                }
                Err(err) => err.into(),
            };
            // The node did nothing with the request: the next URL may take it.
            self.urls.failed(index);
            if self.urls.len() > 1 {
                warn!(url = %base, error = %Chain(&err), "send-back URL did not take the request");
            }
            not_delivered = Some(err);
        }
        Err(
            not_delivered.unwrap_or_else(|| FunctionsError::InvalidBaseUrl {
                url: String::new(),
                reason: "no send-back URL given".to_owned(),
            }),
        )
    }
}

/// One send-back request, made to whichever base URL takes it.
struct Call {
    method: Method,
    /// The path and query after the base URL, starting with `/`.
    path: String,
    body: Option<Body>,
}

/// The body of a [`Call`], kept to be sent again to the next URL.
enum Body {
    /// A message: its content type and bytes.
    Message(&'static str, Bytes),
    /// A batch send, as JSON.
    Json(BatchSend),
}

impl Call {
    fn new(method: Method, path: String) -> Call {
        Call {
            method,
            path,
            body: None,
        }
    }

    /// With `message` as the body, typed as text or binary.
    fn body(mut self, message: &Message) -> Call {
        self.body = Some(Body::Message(
            message.content_type(),
            message.clone().into_bytes(),
        ));
        self
    }
}

/// `/@connections/{id}`, the id percent-encoded as one path segment.
fn connection_path(id: &str) -> Result<String, FunctionsError> {
    let id = segment(id).ok_or_else(|| FunctionsError::InvalidConnectionId(id.to_owned()))?;
    Ok(format!("/@connections/{id}"))
}

/// `/@groups/{group}`, the name percent-encoded as one path segment.
fn group_path(group: &str) -> Result<String, FunctionsError> {
    let group = segment(group).ok_or_else(|| FunctionsError::InvalidGroupName(group.to_owned()))?;
    Ok(format!("/@groups/{group}"))
}

/// `/@groups/{group}/connections/{id}`, both percent-encoded.
fn group_member_path(group: &str, id: &str) -> Result<String, FunctionsError> {
    let group_path = group_path(group)?;
    let id = segment(id).ok_or_else(|| FunctionsError::InvalidConnectionId(id.to_owned()))?;
    Ok(format!("{group_path}/connections/{id}"))
}

/// `name` percent-encoded as one path segment; `None` for names no URL path can carry:
/// empty, or a dot segment (URL parsing resolves `.` and `..` away, even percent-encoded).
fn segment(name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some(utf8_percent_encode(name, UNRESERVED).to_string())
}

/// Appends `?a&b&...` to `url`, nothing for no parameters. The parameters are encoded.
fn push_query(url: &mut String, params: &[String]) {
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
}

/// Checks a base URL and returns it without a trailing `/`.
fn parse_base(base_url: &str) -> Result<String, FunctionsError> {
    let invalid = |reason: &str| FunctionsError::InvalidBaseUrl {
        url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(base_url).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid("it must name a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The error for a non-2xx reply with this body.
fn status_error(status: u16, body: &str) -> FunctionsError {
    match status {
        401 => FunctionsError::Unauthorized,
        410 => FunctionsError::Gone,
        413 => FunctionsError::PayloadTooLarge,
        429 => FunctionsError::Throttled,
        503 => {
            let (code, message) = error_body(body);
            FunctionsError::Unavailable { code, message }
        }
        _ => {
            let (code, message) = error_body(body);
            FunctionsError::Http {
                status,
                code,
                message,
            }
        }
    }
}

/// The `error` code and `message` of an [`ApiError`](crate::api::ApiError) body (the
/// message may be missing); `unknown` and the body's text (truncated) if it is not one.
fn error_body(body: &str) -> (String, String) {
    /// [`ApiError`](crate::api::ApiError), with the message optional.
    #[derive(serde::Deserialize)]
    struct Loose {
        error: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Loose>(body) {
        Ok(api) => (api.error, api.message),
        Err(_) => (
            "unknown".to_owned(),
            body.chars().take(MAX_ERROR_TEXT).collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::api::{BatchItem, DeliveryStatus};
    use crate::event::DataType;
    use crate::test_api::{self, TestApi};

    const TOKEN: &str = "s3cret";

    /// A send-back API that checks the token and answers by path: `/@connections/gone…`
    /// → 410, `/@connections/slow…` → 429, `/@connections/bad…` → 400, else 2xx.
    async fn start_api() -> TestApi {
        test_api::start(|req| {
            if req.header("authorization") != Some("Bearer s3cret") {
                return test_api::json(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "unauthorized", "message": "no"}),
                );
            }
            let path = req.uri.path();
            if path.starts_with("/@groups/") {
                group_reply(req)
            } else if path.starts_with("/@connections/gone") {
                test_api::json(
                    StatusCode::GONE,
                    &json!({"error": "gone", "message": "no such connection"}),
                )
            } else if path.starts_with("/@connections/slow") {
                test_api::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({"error": "throttled", "message": "queue full"}),
                )
            } else if path.starts_with("/@connections/bad") {
                test_api::json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "bad_request", "message": "bad close code"}),
                )
            } else if req.method == Method::GET {
                test_api::json(
                    StatusCode::OK,
                    &json!({"connectionId": "c1", "connectedAt": "2024-01-01T00:00:00Z",
                        "lastActiveAt": "2024-01-01T00:00:01Z", "sourceIp": "10.0.0.1",
                        "context": {"room": "lobby"}, "node": "n1"}),
                )
            } else if path == "/@connections" {
                let batch: BatchSend = serde_json::from_slice(&req.body).unwrap();
                let results = batch
                    .connection_ids
                    .iter()
                    .map(|id| BatchItem {
                        connection_id: id.clone(),
                        status: if id.starts_with("gone") {
                            DeliveryStatus::Gone
                        } else {
                            DeliveryStatus::Delivered
                        },
                    })
                    .collect::<Vec<_>>();
                let gone = results
                    .iter()
                    .filter(|r| r.status == DeliveryStatus::Gone)
                    .count();
                test_api::json(
                    StatusCode::OK,
                    &BatchResult {
                        delivered: results.len() - gone,
                        gone,
                        throttled: 0,
                        unavailable: 0,
                        results,
                    },
                )
            } else if req.method == Method::DELETE {
                test_api::empty(StatusCode::NO_CONTENT)
            } else {
                test_api::empty(StatusCode::OK)
            }
        })
        .await
    }

    /// The group routes of [`start_api`]: groups named `down…` answer 503, `bad…` 400 and
    /// `big…` 413; joining an id starting with `gone` answers 410; a group send reports the
    /// excluded ids; a group read echoes its cursor and limit.
    fn group_reply(req: &test_api::Recorded) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let path = req.uri.path();
        let name = path["/@groups/".len()..]
            .split('/')
            .next()
            .unwrap_or_default();
        if name.starts_with("down") {
            return test_api::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "store_unavailable"}),
            );
        }
        if name.starts_with("bad") {
            return test_api::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad_request", "message": "invalid group name"}),
            );
        }
        if name.starts_with("big") {
            return test_api::json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "payload_too_large", "message": "too large"}),
            );
        }
        if path.contains("/connections/gone") && req.method == Method::PUT {
            return test_api::json(
                StatusCode::GONE,
                &json!({"error": "gone", "message": "not registered"}),
            );
        }
        if path.contains("/connections/") {
            return test_api::empty(StatusCode::NO_CONTENT);
        }
        let query: Vec<(String, String)> = req
            .uri
            .query()
            .map(|q| crate::event::query_pairs(q).collect())
            .unwrap_or_default();
        if req.method == Method::GET {
            let param = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            return test_api::json(
                StatusCode::OK,
                &GroupInfo {
                    group: percent_encoding::percent_decode_str(name)
                        .decode_utf8_lossy()
                        .into_owned(),
                    count: 3,
                    members: vec![param("limit").unwrap_or_else(|| "default".into())],
                    cursor: param("cursor").map(|c| format!("after {c}")),
                },
            );
        }
        let excluded = query.iter().filter(|(k, _)| k == "exclude").count();
        test_api::json(
            StatusCode::OK,
            &GroupSendResult {
                delivered: 2,
                gone: 1,
                throttled: 0,
                excluded,
                // A gateway node that did not answer: the client reads the list.
                unreachable_nodes: vec!["gw-2".into()],
            },
        )
    }

    fn client(api: &TestApi) -> SendBack {
        SendBack::new(&api.base, Some(TOKEN.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn send_text_and_binary_with_content_types() {
        let api = start_api().await;
        let sendback = client(&api);

        sendback
            .send("c 1/x", &Message::text("héllo"))
            .await
            .unwrap();
        sendback
            .send("c2", &Message::binary(vec![0u8, 1, 255]))
            .await
            .unwrap();

        let requests = api.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, Method::POST);
        assert_eq!(requests[0].uri.path(), "/@connections/c%201%2Fx");
        assert_eq!(
            requests[0].header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(requests[0].body.as_ref(), "héllo".as_bytes());
        assert_eq!(requests[1].uri.path(), "/@connections/c2");
        assert_eq!(
            requests[1].header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(requests[1].body.as_ref(), &[0u8, 1, 255]);
    }

    #[tokio::test]
    async fn send_maps_error_statuses() {
        let api = start_api().await;
        let sendback = client(&api);

        let err = sendback.send("gone-1", &Message::text("x")).await;
        assert!(matches!(err, Err(FunctionsError::Gone)), "{err:?}");
        let err = sendback.send("slow-1", &Message::text("x")).await;
        assert!(matches!(err, Err(FunctionsError::Throttled)), "{err:?}");

        let no_token = SendBack::new(&api.base, None).unwrap();
        let err = no_token.send("c1", &Message::text("x")).await;
        assert!(matches!(err, Err(FunctionsError::Unauthorized)), "{err:?}");
        assert_eq!(api.requests()[2].header("authorization"), None);

        let err = sendback
            .disconnect("bad-1", Some(1), None)
            .await
            .unwrap_err();
        match err {
            FunctionsError::Http {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code.as_str()), (400, "bad_request"));
                assert_eq!(message, "bad close code");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn send_many_posts_one_batch() {
        let api = start_api().await;
        let sendback = client(&api);
        let ids = vec!["a".to_owned(), "gone-b".to_owned()];

        let result = sendback
            .send_many(&ids, &Message::binary(vec![0u8, 1]))
            .await
            .unwrap();
        assert_eq!((result.delivered, result.gone), (1, 1));
        assert_eq!(result.results[1].status, DeliveryStatus::Gone);

        let result = sendback
            .send_many(&ids, &Message::text("hi"))
            .await
            .unwrap();
        assert_eq!(result.delivered, 1);

        let empty = sendback.send_many(&[], &Message::text("hi")).await.unwrap();
        assert_eq!(empty, BatchResult::default());

        let requests = api.requests();
        assert_eq!(requests.len(), 2, "no request for an empty batch");
        assert_eq!(requests[0].uri.path(), "/@connections");
        assert_eq!(requests[0].header("authorization"), Some("Bearer s3cret"));
        assert!(
            requests[0]
                .header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
        let binary: BatchSend = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(binary.connection_ids, ids);
        assert_eq!(
            (binary.data_type, binary.data.as_str()),
            (DataType::Binary, "AAE=")
        );
        let text: BatchSend = serde_json::from_slice(&requests[1].body).unwrap();
        assert_eq!((text.data_type, text.data.as_str()), (DataType::Text, "hi"));
    }

    #[tokio::test]
    async fn get_and_disconnect() {
        let api = start_api().await;
        let sendback = client(&api);

        let info = sendback.get("c1").await.unwrap();
        assert_eq!(info.connection_id, "c1");
        assert_eq!(info.context, json!({"room": "lobby"}));

        sendback
            .disconnect("c1", Some(4000), Some("bye now & then"))
            .await
            .unwrap();
        sendback.disconnect("c2", None, None).await.unwrap();

        let requests = api.requests();
        assert_eq!(requests[0].method, Method::GET);
        assert_eq!(requests[1].method, Method::DELETE);
        assert_eq!(requests[1].uri.path(), "/@connections/c1");
        assert_eq!(
            requests[1].uri.query(),
            Some("code=4000&reason=bye%20now%20%26%20then")
        );
        assert_eq!(requests[2].uri.query(), None);
    }

    #[test]
    fn base_urls_are_checked_and_normalised() {
        let with_prefix = SendBack::new("http://127.0.0.1:9/api/", None).unwrap();
        assert_eq!(with_prefix.base_url(), "http://127.0.0.1:9/api");
        assert_eq!(
            SendBack::new("http://h:1", None).unwrap().base_url(),
            "http://h:1"
        );
        for bad in ["", "localhost:9", "ftp://h/", "http://h/?q=1"] {
            assert!(
                matches!(
                    SendBack::new(bad, None),
                    Err(FunctionsError::InvalidBaseUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            SendBack::new("http://h", Some("bad\ntoken".into())),
            Err(FunctionsError::InvalidToken)
        ));
        let debug = format!(
            "{:?}",
            SendBack::new("http://h", Some("tok".into())).unwrap()
        );
        assert!(
            debug.contains("<redacted>") && !debug.contains("Bearer"),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn send_to_group_posts_the_message_once_with_exclusions() {
        let api = start_api().await;
        let sendback = client(&api);

        let result = sendback
            .send_to_group("room 1/a", &Message::text("héllo"), &["c 1", "c&2"])
            .await
            .unwrap();
        assert_eq!(
            result,
            GroupSendResult {
                delivered: 2,
                gone: 1,
                throttled: 0,
                excluded: 2,
                unreachable_nodes: vec!["gw-2".into()],
            }
        );
        let result = sendback
            .send_to_group("lobby", &Message::binary(vec![0u8, 255]), &[])
            .await
            .unwrap();
        assert_eq!(result.excluded, 0);

        let requests = api.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, Method::POST);
        assert_eq!(requests[0].uri.path(), "/@groups/room%201%2Fa");
        assert_eq!(requests[0].uri.query(), Some("exclude=c%201&exclude=c%262"));
        assert_eq!(requests[0].header("authorization"), Some("Bearer s3cret"));
        assert_eq!(
            requests[0].header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(requests[0].body.as_ref(), "héllo".as_bytes());
        assert_eq!(requests[1].uri.path(), "/@groups/lobby");
        assert_eq!(requests[1].uri.query(), None);
        assert_eq!(
            requests[1].header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(requests[1].body.as_ref(), &[0u8, 255]);
    }

    #[tokio::test]
    async fn group_calls_map_error_statuses() {
        let api = start_api().await;
        let sendback = client(&api);
        let text = Message::text("x");

        let err = sendback
            .send_to_group("down", &text, &[])
            .await
            .unwrap_err();
        match &err {
            FunctionsError::Unavailable { code, .. } => assert_eq!(code, "store_unavailable"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_unavailable());
        assert_eq!(err.status(), Some(503));
        let err = sendback.join_group("down", "c1").await.unwrap_err();
        assert!(matches!(err, FunctionsError::Unavailable { .. }), "{err:?}");
        let err = sendback.group("down", None, None).await.unwrap_err();
        assert!(matches!(err, FunctionsError::Unavailable { .. }), "{err:?}");

        let err = sendback.send_to_group("big", &text, &[]).await;
        assert!(
            matches!(err, Err(FunctionsError::PayloadTooLarge)),
            "{err:?}"
        );
        let err = sendback.join_group("lobby", "gone-1").await;
        assert!(matches!(err, Err(FunctionsError::Gone)), "{err:?}");
        match sendback.join_group("bad{x}", "c1").await.unwrap_err() {
            FunctionsError::Http { status, code, .. } => {
                assert_eq!((status, code.as_str()), (400, "bad_request"));
            }
            other => panic!("unexpected {other:?}"),
        }

        let no_token = SendBack::new(&api.base, None).unwrap();
        let err = no_token.send_to_group("lobby", &text, &[]).await;
        assert!(matches!(err, Err(FunctionsError::Unauthorized)), "{err:?}");
        let err = no_token.leave_group("lobby", "c1").await;
        assert!(matches!(err, Err(FunctionsError::Unauthorized)), "{err:?}");
    }

    #[tokio::test]
    async fn join_and_leave_use_put_and_delete_on_the_member() {
        let api = start_api().await;
        let sendback = client(&api);

        sendback.join_group("room/1 ü", "c 1").await.unwrap();
        sendback.leave_group("room/1 ü", "c 1").await.unwrap();

        let requests = api.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, Method::PUT);
        assert_eq!(requests[1].method, Method::DELETE);
        for request in &requests {
            assert_eq!(
                request.uri.path(),
                "/@groups/room%2F1%20%C3%BC/connections/c%201"
            );
            assert_eq!(request.uri.query(), None);
            assert_eq!(request.header("authorization"), Some("Bearer s3cret"));
            assert!(request.body.is_empty());
        }
    }

    #[tokio::test]
    async fn group_reads_one_page() {
        let api = start_api().await;
        let sendback = client(&api);

        let first = sendback.group("my room", None, None).await.unwrap();
        assert_eq!(first.group, "my room");
        assert_eq!((first.count, first.cursor), (3, None));
        assert_eq!(first.members, vec!["default"]);
        let next = sendback
            .group("my room", Some("7 & 8"), Some(1000))
            .await
            .unwrap();
        assert_eq!(next.members, vec!["1000"]);
        assert_eq!(next.cursor.as_deref(), Some("after 7 & 8"));

        let requests = api.requests();
        assert_eq!(requests[0].method, Method::GET);
        assert_eq!(requests[0].uri.path(), "/@groups/my%20room");
        assert_eq!(requests[0].uri.query(), None);
        assert_eq!(requests[0].header("authorization"), Some("Bearer s3cret"));
        assert_eq!(
            requests[1].uri.query(),
            Some("cursor=7%20%26%208&limit=1000")
        );
    }

    #[tokio::test]
    async fn unusable_group_names_and_ids_are_refused_without_a_request() {
        let api = start_api().await;
        let sendback = client(&api);
        for bad in ["", ".", ".."] {
            let err = sendback.send_to_group(bad, &Message::text("x"), &[]).await;
            assert!(
                matches!(err, Err(FunctionsError::InvalidGroupName(ref name)) if name == bad),
                "{bad:?}: {err:?}"
            );
            let err = sendback.group(bad, None, None).await;
            assert!(matches!(err, Err(FunctionsError::InvalidGroupName(_))));
            let err = sendback.join_group(bad, "c1").await;
            assert!(matches!(err, Err(FunctionsError::InvalidGroupName(_))));
            let err = sendback.leave_group("lobby", bad).await;
            assert!(matches!(err, Err(FunctionsError::InvalidConnectionId(_))));
        }
        assert!(api.requests().is_empty());
    }

    #[test]
    fn error_bodies_are_read_leniently() {
        match status_error(503, r#"{"error":"store_unavailable"}"#) {
            FunctionsError::Unavailable { code, message } => {
                assert_eq!((code.as_str(), message.as_str()), ("store_unavailable", ""));
            }
            other => panic!("unexpected {other:?}"),
        }
        match status_error(503, "Service Unavailable") {
            FunctionsError::Unavailable { code, message } => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("unknown", "Service Unavailable")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        match status_error(500, &"x".repeat(1000)) {
            FunctionsError::Http { message, .. } => assert_eq!(message.len(), MAX_ERROR_TEXT),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn dot_ids_are_refused_without_a_request() {
        let api = start_api().await;
        let err = client(&api).send("..", &Message::text("x")).await;
        assert!(matches!(err, Err(FunctionsError::InvalidConnectionId(_))));
        assert!(api.requests().is_empty());
    }
}
