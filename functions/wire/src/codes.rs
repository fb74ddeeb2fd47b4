//! The codes of the contract: the WebSocket close codes the gateway sends its clients (and
//! reports in cleanup events), and the `error` codes of its [`ApiError`] replies.
//!
//! Close codes are RFC 6455's; each constant says when this gateway uses it. A cleanup
//! event's `closeCode` is the code of the close frame sent or received, so besides these it
//! may be any code a client sent.
//!
//! Error codes are stable and machine-readable; the status of the reply goes with each
//! (listed on each constant), and the `message` beside it is for people.
//!
//! [`ApiError`]: crate::api::ApiError

// Close codes.

/// 1000, normal closure: a close asked for through the send-back API (`DELETE
/// /@connections/{id}` without `code`, the AWS dialect's `DeleteConnection`, the Tencent
/// send-back URL's `closing`).
pub const CLOSE_NORMAL: u16 = 1000;

/// 1001, going away: the gateway is shutting down, or the connection reached its idle
/// timeout (`limits.idle_timeout`), its ping timeout (no pong within
/// `limits.ping_interval` of the ping) or its maximum
/// duration (`limits.max_duration`).
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// 1002, protocol error: the client broke the WebSocket protocol (other than the cases of
/// [`CLOSE_INVALID_PAYLOAD`] and [`CLOSE_MESSAGE_TOO_BIG`]).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// 1003, unsupported data: the client sent a message but no transport function is
/// configured and no custom route matches it ("this gateway accepts no messages").
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;

/// 1005, no status: never sent (RFC 6455 forbids it in a frame). The AWS dialect's
/// `$disconnect` event reports it as `disconnectStatusCode` when the client's close frame
/// had no code, as AWS does.
pub const CLOSE_NO_STATUS: u16 = 1005;

/// 1006, abnormal closure: never sent (RFC 6455 forbids it in a frame). The AWS dialect's
/// `$disconnect` event reports it as `disconnectStatusCode` when the connection ended
/// without a close frame (lost), as AWS does.
pub const CLOSE_ABNORMAL: u16 = 1006;

/// 1007, invalid payload: a text message from the client is not valid UTF-8.
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;

/// 1009, message too big: a message or frame from the client exceeds
/// `limits.max_message_bytes`.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// 1011, internal error: the transport function failed after its retries (native and
/// Tencent dialects; the AWS dialect tells the client with a message and keeps the
/// connection).
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// The first code a send-back `DELETE /@connections/{id}?code=` may ask for besides
/// [`CLOSE_NORMAL`]: 3000-4999 is the range RFC 6455 leaves to applications; the gateway
/// answers [`BAD_REQUEST`] to any other code.
pub const CLOSE_APPLICATION_MIN: u16 = 3000;

/// The last code of the application range (see [`CLOSE_APPLICATION_MIN`]).
pub const CLOSE_APPLICATION_MAX: u16 = 4999;

/// The longest close reason, in bytes, a send-back `DELETE /@connections/{id}?reason=` may
/// ask for (what fits a close frame); a longer one is answered [`BAD_REQUEST`].
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

// Error codes of the send-back API (the send-back listener).

/// 410: the connection is gone (closed, closing, or not registered for a group join).
pub const GONE: &str = "gone";

/// 429: the connection's outbound queue is full; its client is not reading fast enough.
pub const THROTTLED: &str = "throttled";

/// 401: the `Authorization: Bearer` token is missing or wrong.
pub const UNAUTHORIZED: &str = "unauthorized";

/// 400: the request cannot be used (an unreadable body, a text message that is not UTF-8,
/// a malformed batch, bad base64, an invalid group name, a close `code` or `reason` out of
/// range, a `limit` out of range). On the public listener: a malformed HTTP request (with
/// 400, 431 or 505).
pub const BAD_REQUEST: &str = "bad_request";

/// 413: the request body exceeds `sendback.max_body_bytes`, the message exceeds
/// `limits.max_message_bytes`, or a batch send names more than `sendback.max_batch_ids`
/// connection ids (default 10,000; nothing of it is sent).
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";

/// 503: the gateway's store is unavailable; retry later. On the public listener: a
/// connection refused because the store is down.
pub const STORE_UNAVAILABLE: &str = "store_unavailable";

/// 502: the gateway node holding the connection did not answer a relayed request.
/// (Kept for older gateways; this one answers [`NODE_UNAVAILABLE`].)
pub const NODE_UNREACHABLE: &str = "node_unreachable";

/// 503: the gateway node holding the connection stopped heartbeating or did not answer in
/// time; retry later. Once another node has cleaned up after it, the connection is
/// [`GONE`].
pub const NODE_UNAVAILABLE: &str = "node_unavailable";

/// 404: no route for the path.
pub const NOT_FOUND: &str = "not_found";

/// 405: the route exists but not with this method.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";

// Error codes of the public listener (refused upgrades and plain HTTP requests).

/// 400, 405 or 426: the WebSocket upgrade request is malformed (wrong method, version,
/// missing or invalid headers).
pub const BAD_HANDSHAKE: &str = "bad_handshake";

/// 426: a plain HTTP request to a path that serves only WebSocket connections.
pub const UPGRADE_REQUIRED: &str = "upgrade_required";

/// 503: the gateway is shutting down and admits no new connections.
pub const SHUTTING_DOWN: &str = "shutting_down";

/// 503: the gateway holds `limits.max_connections` connections, or
/// `limits.max_pending_connections` connections not upgraded yet.
pub const AT_CAPACITY: &str = "at_capacity";

/// 502 (or the function's own status): the register function did not answer usably.
pub const FUNCTION_FAILED: &str = "function_failed";

/// 504: the register function did not answer in time.
pub const FUNCTION_TIMEOUT: &str = "function_timeout";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_distinct_snake_case() {
        let codes = [
            GONE,
            THROTTLED,
            UNAUTHORIZED,
            BAD_REQUEST,
            PAYLOAD_TOO_LARGE,
            STORE_UNAVAILABLE,
            NODE_UNREACHABLE,
            NOT_FOUND,
            METHOD_NOT_ALLOWED,
            BAD_HANDSHAKE,
            UPGRADE_REQUIRED,
            SHUTTING_DOWN,
            AT_CAPACITY,
            FUNCTION_FAILED,
            FUNCTION_TIMEOUT,
        ];
        for (i, code) in codes.iter().enumerate() {
            assert!(
                !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
            assert!(!codes[..i].contains(code), "{code} twice");
        }
    }
}
