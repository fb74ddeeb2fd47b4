//! Small builders for the gateway's own HTTP replies: JSON errors and bodies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The body type of every reply the gateway builds.
pub type Body = Full<Bytes>;

/// A JSON error reply: `{"error": code, "message": message}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    let body = wire::api::ApiError {
        error: code.to_owned(),
        message: message.into(),
    };
    json(status, &body)
}

/// A JSON reply.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain-text reply.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An empty reply.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}

/// A request that failed in a way the client should hear about; turned into a JSON error
/// reply in one place ([`Failure::into_response`]).
#[derive(Debug)]
pub struct Failure {
    /// The status.
    pub status: StatusCode,
    /// The machine-readable code.
    pub code: &'static str,
    /// The sentence for people.
    pub message: String,
}

impl Failure {
    /// A failure with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    /// The reply.
    pub fn into_response(self) -> Response<Body> {
        error(self.status, self.code, self.message)
    }
}
