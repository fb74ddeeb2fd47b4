//! Helpers every send-back adapter uses to read a request: the body within a limit, the
//! message a body carries, the bearer token, path segments. A leaf: it imports nothing of
//! the send-back side, so any adapter may use it without a loop.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use subtle::ConstantTimeEq;
use tokio_tungstenite::tungstenite::Message;
use wire::codes;

use crate::respond::Failure;

/// The size limits of send-back bodies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// A message to clients (`limits.max_message_bytes`).
    pub message: usize,
    /// A JSON request body such as a batch (`sendback.max_body_bytes`).
    pub body: usize,
}

/// Whether the request carries `Authorization: Bearer <token>` (the scheme matched without
/// regard to case, RFC 7235 section 2.1).
pub(crate) fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim_start_matches(' '))
        .unwrap_or_default();
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Compares two secrets in time that depends on their lengths only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A path segment, percent-decoded.
pub(crate) fn decode_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// The connection id of an AWS management API path, `/{stage}/@connections/{id}`
/// (percent-decoded), if `path` is one.
pub(crate) fn management_id(path: &str, stage: &str) -> Option<String> {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(stage))
        .and_then(|p| p.strip_prefix("/@connections/"))
        .map(decode_segment)
}

/// The request's path and query, as it came (what a relay sends on).
pub(crate) fn path_and_query<B>(req: &Request<B>) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned())
}

/// What the send-back adapters accept as a request body: hyper's `Incoming` when served,
/// an already collected body when fuzzed (`crate::fuzzing`).
pub(crate) trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>>
{
}

impl<B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>>> RequestBody for B {}

/// The error of a body that could not be read.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Reads a body up to `max` bytes; a larger one is a 413.
pub(crate) async fn read_body<B: RequestBody>(
    req: Request<B>,
    max: usize,
) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
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
            codes::BAD_REQUEST,
            format!("could not read the body: {e}"),
        )),
    }
}

/// Whether the content type asks for a binary frame (`application/octet-stream`).
pub(crate) fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/octet-stream"))
}

/// A body as a message: binary as is, else UTF-8 text.
pub(crate) fn message_of(body: Bytes, binary: bool) -> Result<Message, Failure> {
    if binary {
        return Ok(Message::Binary(body));
    }
    match String::from_utf8(body.to_vec()) {
        Ok(text) => Ok(Message::text(text)),
        Err(_) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "a text message must be UTF-8 (send binary with Content-Type: application/octet-stream)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn bearer_is_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "t0ken"));
        headers.insert(header::AUTHORIZATION, "Bearer t0ken".parse().unwrap());
        assert!(bearer_matches(&headers, "t0ken"));
        assert!(!bearer_matches(&headers, "t0ke"));
        for value in ["bearer t0ken", "BEARER t0ken", "Bearer  t0ken"] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert!(bearer_matches(&headers, "t0ken"), "{value}");
        }
        for value in ["Basic t0ken", "Bearert0ken", "t0ken"] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert!(!bearer_matches(&headers, "t0ken"), "{value}");
        }
    }
}
