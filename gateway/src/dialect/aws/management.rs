//! The AWS API Gateway management API (`@connections`) on the send-back listener:
//! `POST|GET|DELETE /{stage}/@connections/{id}`, authenticated by SigV4 signatures made
//! with the access keys in `aws.credentials`, answering with AWS's statuses and error
//! shapes, so that an AWS SDK client pointed at the gateway works unchanged
//! (`boto3.client("apigatewaymanagementapi", endpoint_url="http://gateway:9090/prod")`).
//!
//! | request | answer |
//! |---|---|
//! | `POST` body = the message (≤ `limits.max_message_bytes`) | 200, empty |
//! | `GET` | 200 `{"connectedAt","identity":{"sourceIp","userAgent"},"lastActiveAt"}` |
//! | `DELETE` | 204; the client is closed with 1000 |
//!
//! Errors carry `x-amzn-ErrorType: <Name>` (what SDKs read the error code from) and a
//! `{"message": …}` body: 410 `GoneException`, 413 `PayloadTooLargeException`, 429
//! `LimitExceededException` (the client's outbound queue is full), 403
//! `ForbiddenException` (no, bad or expired signature, unknown key). Every reply has an
//! `x-amzn-RequestId`.
//!
//! With `sendback.insecure_no_auth` (loopback only) and no `aws.credentials`, requests
//! are not checked, for local development; otherwise every request must be signed.
//!
//! With `aws.management_api_on_public`, the public listeners route the same paths here
//! too (as AWS serves the API on the WebSocket API's domain); requests are always signed
//! there (the config refuses the option without `aws.credentials`).

use std::sync::Arc;
use std::time::SystemTime;
use wire::codes;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::clock;
use crate::cluster::relay::Origin;
use crate::config::AwsConfig;
use crate::delivery::core::{Delivery, Op, Outcome};
use crate::dialect::aws::sigv4::{EXECUTE_API, Rejection, SignedRequest, Verifier};
use crate::request::{self, RequestBody};
use crate::respond::{self, Body};
use crate::socket::outbox::CloseRequest;

/// What the management API uses.
#[derive(Debug)]
pub(crate) struct ManagementApi {
    pub delivery: Arc<Delivery>,
    /// `aws`: the region and the access keys signatures are checked against.
    pub aws: AwsConfig,
    /// Whether requests must be signed (not with `insecure_no_auth` and no credentials).
    pub check: bool,
    /// `limits.max_message_bytes`.
    pub max_message: usize,
}

/// An error as the management API reports it.
#[derive(Debug)]
struct AwsError {
    status: StatusCode,
    /// The `x-amzn-ErrorType`, e.g. `GoneException`.
    kind: &'static str,
    message: String,
}

impl AwsError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn gone(id: &str) -> Self {
        AwsError::new(
            StatusCode::GONE,
            "GoneException",
            format!("connection {id} is gone"),
        )
    }

    fn forbidden(message: impl Into<String>) -> Self {
        AwsError::new(StatusCode::FORBIDDEN, "ForbiddenException", message)
    }

    fn into_response(self) -> Response<Body> {
        let mut response = respond::json(self.status, &json!({ "message": self.message }));
        response
            .headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        response
    }
}

impl ManagementApi {
    /// Serves one management API request for connection `id` (already percent-decoded).
    pub async fn handle<B: RequestBody>(&self, req: Request<B>, id: &str) -> Response<Body> {
        let mut response = match self.serve(req, id).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-amzn-requestid", value);
        }
        response
    }

    async fn serve<B: RequestBody>(
        &self,
        req: Request<B>,
        id: &str,
    ) -> Result<Response<Body>, AwsError> {
        let verifier = Verifier {
            region: &self.aws.region,
            service: EXECUTE_API,
            credentials: &self.aws.credentials,
        };
        if self.check {
            // Unsigned requests and unknown keys are refused before the body is read.
            verifier.precheck(req.headers()).map_err(|rejection| {
                refused(&rejection);
                AwsError::forbidden(rejection.to_string())
            })?;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let target = request::path_and_query(&req);
        let headers = req.headers().clone();
        let max = self.max_message;
        let body = request::read_body(req, max).await.map_err(|failure| {
            if failure.status == StatusCode::PAYLOAD_TOO_LARGE {
                AwsError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PayloadTooLargeException",
                    format!("Message too long: the data exceeds {max} bytes"),
                )
            } else {
                AwsError::new(
                    StatusCode::BAD_REQUEST,
                    "BadRequestException",
                    failure.message,
                )
            }
        })?;
        if self.check {
            let signed = SignedRequest {
                method: method.as_str(),
                path: &path,
                query: &query,
                headers: &headers,
                body: &body,
            };
            let key = verifier
                .verify(&signed, SystemTime::now())
                .map_err(|rejection| {
                    refused(&rejection);
                    AwsError::forbidden(rejection.to_string())
                })?;
            debug!(access_key = %key, %method, connection = id, "management API request verified");
        }
        let op = match method {
            // PostToConnection: a text frame when the body is UTF-8, else a binary frame.
            Method::POST => Op::Send(match std::str::from_utf8(&body) {
                Ok(text) => Message::text(text),
                Err(_) => Message::Binary(body.clone()),
            }),
            Method::GET => Op::Info,
            // DeleteConnection: the client is closed with 1000, then `$disconnect` runs.
            Method::DELETE => Op::Close(CloseRequest {
                code: codes::CLOSE_NORMAL,
                reason: String::new(),
                reaped: false,
            }),
            _ => {
                return Err(AwsError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowedException",
                    format!(
                        "{method} is not allowed on @connections/{{connectionId}}: use POST, GET or DELETE"
                    ),
                ));
            }
        };
        let origin = Origin {
            method: &method,
            target: &target,
            headers: &headers,
            body: &body,
        };
        // Held by another node: relayed there as it came (its signature verifies there too).
        match self.delivery.to_connection(id, op, origin).await {
            Outcome::Done if method == Method::DELETE => {
                info!(
                    connection = id,
                    "disconnect requested through the management API"
                );
                Ok(respond::empty(StatusCode::NO_CONTENT))
            }
            Outcome::Done => Ok(respond::empty(StatusCode::OK)),
            Outcome::Info(conn) => Ok(respond::json(
                StatusCode::OK,
                &json!({
                    "connectedAt": clock::rfc3339_ms(conn.connected_at_ms),
                    "identity": {
                        "sourceIp": conn.source_ip.to_string(),
                        "userAgent": conn.user_agent.as_deref().unwrap_or_default(),
                    },
                    "lastActiveAt": clock::rfc3339_ms(conn.last_active_ms()),
                }),
            )),
            Outcome::Throttled => Err(AwsError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "LimitExceededException",
                format!("connection {id} is not reading fast enough: its outbound buffer is full"),
            )),
            Outcome::Gone => Err(AwsError::gone(id)),
            Outcome::Relayed(reply) => Ok(reply),
            // 5xx: AWS SDKs retry it.
            Outcome::NodeUnavailable => Err(AwsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                format!("the gateway node holding connection {id} is not answering; retry later"),
            )),
            Outcome::StoreUnavailable => Err(AwsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                "the gateway's store is unavailable; retry later",
            )),
        }
    }
}

/// Logs why a request was refused (the caller gets the same text).
fn refused(rejection: &Rejection) {
    match rejection {
        Rejection::Mismatch {
            canonical_request, ..
        } => warn!(
            canonical_request = %without_credentials(canonical_request),
            "management API request refused: signature mismatch (wrong secret, or a proxy changed the request)"
        ),
        Rejection::UnknownAccessKey(key) => {
            warn!(access_key = %key, "management API request refused: unknown access key")
        }
        other => warn!(reason = %other, "management API request refused"),
    }
}

/// Headers whose values are credentials: signed requests may carry them (a session token
/// from temporary AWS credentials is signed), and the log must not.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "x-amz-security-token",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

/// A canonical request fit for the log: the values of credential headers replaced.
fn without_credentials(canonical_request: &str) -> String {
    canonical_request
        .split('\n')
        .map(|line| match line.split_once(':') {
            Some((name, _)) if CREDENTIAL_HEADERS.contains(&name) => format!("{name}:<redacted>"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
