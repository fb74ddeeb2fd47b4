//! The Tencent-style send-back URL: `POST /@tencent/{token}` (or `/@tencent` with a bearer
//! token) taking `{"websocket": {"action": "data send" | "closing", "secConnectionID": …}}`
//! and answering `{"errNo": 0, "errMsg": "ok"}`, as Tencent API Gateway's reverse push does.
//! Handlers written for Tencent change only the URL they post to (the token rides in it).
//! Errors keep that shape with a non-zero `errNo` equal to the HTTP status.

use std::sync::Arc;
use wire::codes;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::cluster::relay::Origin;
use crate::delivery::core::{Delivery, Op, Outcome};
use crate::request::{self, BodyLimits, RequestBody};
use crate::respond::{self, Body};
use crate::socket::outbox::CloseRequest;

/// What the Tencent send-back URL uses.
#[derive(Debug)]
pub(crate) struct TencentApi {
    pub delivery: Arc<Delivery>,
    /// The send-back token (`None`: `insecure_no_auth`, loopback only).
    pub token: Option<String>,
    pub limits: BodyLimits,
}

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

impl TencentApi {
    /// Whether `token` (from the path, percent-encoded) or the bearer header authorizes
    /// the request.
    fn authorized<B>(&self, req: &Request<B>, path_token: Option<&str>) -> bool {
        match self.token.as_deref() {
            None => true,
            Some(token) => {
                path_token.is_some_and(|t| {
                    let t = percent_encoding::percent_decode_str(t).collect::<Vec<u8>>();
                    request::constant_time_eq(&t, token.as_bytes())
                }) || request::bearer_matches(req.headers(), token)
            }
        }
    }

    /// Serves one Tencent-style push.
    pub async fn handle<B: RequestBody>(
        &self,
        req: Request<B>,
        path_token: Option<&str>,
    ) -> Response<Body> {
        if req.method() != Method::POST {
            let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return response;
        }
        if !self.authorized(&req, path_token) {
            return answer(StatusCode::UNAUTHORIZED, "missing or wrong token");
        }
        let headers = req.headers().clone();
        let target = request::path_and_query(&req);
        let body = match request::read_body(req, self.limits.body).await {
            Ok(body) => body,
            Err(failure) => return answer(failure.status, &failure.message),
        };
        let push: Push = match serde_json::from_slice(&body) {
            Ok(push) => push,
            Err(e) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "expected {{\"websocket\": {{\"action\", \"secConnectionID\", …}}}}: {e}"
                    ),
                );
            }
        };
        let push = push.websocket;
        let id = push.sec_connection_id.as_str();
        let op = match self.op(push.action.as_str(), push.data_type.as_deref(), push.data) {
            Ok(op) => op,
            Err((status, message)) => return answer(status, &message),
        };
        let closing = matches!(op, Op::Close(_));
        let origin = Origin {
            method: &Method::POST,
            target: &target,
            headers: &headers,
            body: &body,
        };
        match self.delivery.to_connection(id, op, origin).await {
            Outcome::Done => {
                if closing {
                    debug!(
                        connection = id,
                        "closing requested through the Tencent send-back URL"
                    );
                }
                answer(StatusCode::OK, "ok")
            }
            Outcome::Info(_) => answer(StatusCode::OK, "ok"),
            Outcome::Throttled => answer(StatusCode::TOO_MANY_REQUESTS, "client not reading"),
            Outcome::Gone => answer(StatusCode::GONE, "connection gone"),
            Outcome::Relayed(reply) => reply,
            Outcome::NodeUnavailable => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway node holding the connection not answering; retry later",
            ),
            Outcome::StoreUnavailable => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable; retry later",
            ),
        }
    }

    /// What a push asks for, or the status and message refusing it.
    fn op(
        &self,
        action: &str,
        data_type: Option<&str>,
        data: Option<String>,
    ) -> Result<Op, (StatusCode, String)> {
        match action {
            "data send" => {
                let Some(data) = data else {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "`data send` without `data`".to_owned(),
                    ));
                };
                let message = match data_type {
                    None | Some("text") => Message::text(data),
                    Some("binary") => match BASE64.decode(data.as_bytes()) {
                        Ok(bytes) => Message::Binary(Bytes::from(bytes)),
                        Err(e) => {
                            return Err((
                                StatusCode::BAD_REQUEST,
                                format!("binary data is not base64: {e}"),
                            ));
                        }
                    },
                    Some(other) => {
                        return Err((
                            StatusCode::BAD_REQUEST,
                            format!("unknown dataType `{other}`"),
                        ));
                    }
                };
                if message.len() > self.limits.message {
                    return Err((
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "message too large".to_owned(),
                    ));
                }
                Ok(Op::Send(message))
            }
            "closing" => Ok(Op::Close(CloseRequest {
                code: codes::CLOSE_NORMAL,
                reason: String::new(),
                reaped: false,
            })),
            other => Err((
                StatusCode::BAD_REQUEST,
                format!("unknown action `{other}` (expected `data send` or `closing`)"),
            )),
        }
    }
}
