//! The Tencent-style send-back URL: `POST /@tencent/{token}` (or `/@tencent` with a bearer
//! token) taking `{"websocket": {"action": "data send" | "closing", "secConnectionID": …}}`
//! and answering `{"errNo": 0, "errMsg": "ok"}`, as Tencent API Gateway's reverse push does.
//! Handlers written for Tencent change only the URL they post to (the token rides in it).
//! Errors keep that shape with a non-zero `errNo` equal to the HTTP status.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::outbox::{CloseRequest, PushError};
use crate::respond::{self, Body};
use crate::sendback::{limits, lookup, read_body};
use crate::{Shared, forward};

#[derive(Deserialize)]
struct Push {
    websocket: PushBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushBody {
    action: String,
    #[serde(rename = "secConnectionID")]
    sec_connection_id: String,
    #[serde(default)]
    data_type: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// The reply body, fields in Tencent's order.
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "errNo")]
    err_no: u16,
    #[serde(rename = "errMsg")]
    err_msg: &'a str,
}

/// `{"errNo": n, "errMsg": …}` with status `n` (200 for 0).
fn answer(status: StatusCode, message: &str) -> Response<Body> {
    let err_no = if status == StatusCode::OK {
        0
    } else {
        status.as_u16()
    };
    respond::json(
        status,
        &Answer {
            err_no,
            err_msg: message,
        },
    )
}

/// Whether `token` (from the path, percent-decoded) or the bearer header authorizes the
/// request.
pub(crate) fn authorized(
    shared: &Shared,
    req: &Request<Incoming>,
    path_token: Option<&str>,
) -> bool {
    match shared.config.sendback.token.as_deref() {
        None => true,
        Some(token) => {
            path_token.is_some_and(|t| {
                let t = percent_encoding::percent_decode_str(t).collect::<Vec<u8>>();
                crate::sendback::constant_time_eq(&t, token.as_bytes())
            }) || crate::sendback::bearer_matches(req, token)
        }
    }
}

/// Serves one Tencent-style push.
pub(crate) async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    path_token: Option<&str>,
) -> Response<Body> {
    if req.method() != http::Method::POST {
        let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return response;
    }
    if !authorized(shared, &req, path_token) {
        return answer(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    let headers = req.headers().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let body = match read_body(req, shared.config.sendback.max_body_bytes).await {
        Ok(body) => body,
        Err(failure) => return answer(failure.status, &failure.message),
    };
    let push: Push = match serde_json::from_slice(&body) {
        Ok(push) => push,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"websocket\": {{\"action\", \"secConnectionID\", …}}}}: {e}"),
            );
        }
    };
    let push = push.websocket;
    let id = push.sec_connection_id.as_str();
    let conn = lookup(shared, id);
    if conn.is_none() && !forward::is_forwarded(&headers) {
        if let Some(base) = forward::owner(shared, id).await {
            let method = http::Method::POST;
            return forward::relay_reply(shared, &base, &method, &target, &headers, &body).await;
        }
    }
    match push.action.as_str() {
        "data send" => {
            let Some(data) = push.data else {
                return answer(StatusCode::BAD_REQUEST, "`data send` without `data`");
            };
            let message = match push.data_type.as_deref() {
                None | Some("text") => Message::text(data),
                Some("binary") => match BASE64.decode(data.as_bytes()) {
                    Ok(bytes) => Message::Binary(Bytes::from(bytes)),
                    Err(e) => {
                        return answer(
                            StatusCode::BAD_REQUEST,
                            &format!("binary data is not base64: {e}"),
                        );
                    }
                },
                Some(other) => {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown dataType `{other}`"),
                    );
                }
            };
            if message.len() > shared.config.limits.max_message_bytes {
                return answer(StatusCode::PAYLOAD_TOO_LARGE, "message too large");
            }
            let Some(conn) = conn else {
                return answer(StatusCode::GONE, "connection gone");
            };
            match conn.outbox.push(message, limits(shared)) {
                Ok(()) => answer(StatusCode::OK, "ok"),
                Err(PushError::Closed) => answer(StatusCode::GONE, "connection gone"),
                Err(PushError::Full) => answer(StatusCode::TOO_MANY_REQUESTS, "client not reading"),
            }
        }
        "closing" => {
            let closed = conn.is_some_and(|conn| {
                conn.outbox.request_close(CloseRequest {
                    code: 1000,
                    reason: String::new(),
                })
            });
            if closed {
                debug!(
                    connection = id,
                    "closing requested through the Tencent send-back URL"
                );
                answer(StatusCode::OK, "ok")
            } else {
                answer(StatusCode::GONE, "connection gone")
            }
        }
        other => answer(
            StatusCode::BAD_REQUEST,
            &format!("unknown action `{other}` (expected `data send` or `closing`)"),
        ),
    }
}
