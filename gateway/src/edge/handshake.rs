//! The WebSocket opening handshake (RFC 6455 section 4.2): checking a client's upgrade
//! request and building the 101 reply. The register decision lives in `admit`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request that is not a valid WebSocket upgrade: the status and message to answer with.
#[derive(Debug)]
pub struct Rejection {
    /// The status.
    pub status: StatusCode,
    /// A sentence for the client.
    pub message: &'static str,
}

/// Whether the request asks for a WebSocket upgrade at all (`Upgrade: websocket`).
pub fn wants_websocket<B>(req: &Request<B>) -> bool {
    header_has_token(req.headers(), header::UPGRADE, "websocket")
}

/// Checks an upgrade request; returns the `Sec-WebSocket-Accept` value to reply with.
pub fn check<B>(req: &Request<B>) -> Result<String, Rejection> {
    let reject = |status, message| Err(Rejection { status, message });
    if req.method() != http::Method::GET {
        return reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade must use GET",
        );
    }
    if req.version() != http::Version::HTTP_11 {
        return reject(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "a WebSocket upgrade needs HTTP/1.1",
        );
    }
    let headers = req.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return reject(
            StatusCode::BAD_REQUEST,
            "missing `Connection: Upgrade` header",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return reject(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version (only 13)",
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return reject(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key header");
    };
    // The key is a base64-encoded 16-byte nonce (section 4.2.1): 24 characters that decode
    // to 16 bytes.
    if key.len() != 24 || BASE64.decode(key.as_bytes()).map(|k| k.len()) != Ok(16) {
        return reject(
            StatusCode::BAD_REQUEST,
            "malformed Sec-WebSocket-Key header (the base64 of 16 bytes)",
        );
    }
    // The frames follow the 101 on this connection: a body here would be read as frames.
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0");
    if content_length || headers.contains_key(header::TRANSFER_ENCODING) {
        return reject(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade request carries no body",
        );
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// The subprotocols a client offered, in its order.
pub fn offered_subprotocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The 101 reply.
pub fn switching_protocols(
    accept: &str,
    subprotocol: Option<&str>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut response = http::Response::new(http_body_util::Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = subprotocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response
}

/// Whether a comma-separated header (`Connection`, `Upgrade`) lists `token`, in any case.
pub fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade() -> http::request::Builder {
        Request::get("/chat")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn accepts_the_rfc_example() {
        let req = upgrade().body(()).unwrap();
        assert!(wants_websocket(&req));
        assert_eq!(check(&req).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rejects_bad_requests() {
        let req = upgrade().header("sec-websocket-version", "8").body(());
        let mut req = req.unwrap();
        req.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(
            check(&req).unwrap_err().status,
            StatusCode::UPGRADE_REQUIRED
        );
        let mut req = upgrade().body(()).unwrap();
        req.headers_mut()
            .insert("sec-websocket-key", HeaderValue::from_static("short"));
        assert_eq!(check(&req).unwrap_err().status, StatusCode::BAD_REQUEST);
        // 24 characters, but not the base64 of 16 bytes.
        for key in ["!!!!!!!!!!!!!!!!!!!!!!!!", "dGhlIHNhbXBsZSBub25jZQ=A"] {
            let mut req = upgrade().body(()).unwrap();
            req.headers_mut()
                .insert("sec-websocket-key", HeaderValue::from_static(key));
            assert_eq!(
                check(&req).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{key}"
            );
        }
        // A body would be read as frames.
        for (name, value) in [("content-length", "46"), ("transfer-encoding", "chunked")] {
            let req = upgrade().header(name, value).body(()).unwrap();
            assert_eq!(
                check(&req).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{name}"
            );
        }
        let req = upgrade().header("content-length", "0").body(()).unwrap();
        assert!(check(&req).is_ok(), "an empty body is no body");
        let mut req = upgrade().body(()).unwrap();
        *req.method_mut() = http::Method::POST;
        assert_eq!(
            check(&req).unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn lists_subprotocols() {
        let req = upgrade()
            .header("sec-websocket-protocol", "chat, binary")
            .header("sec-websocket-protocol", "v2")
            .body(())
            .unwrap();
        assert_eq!(
            offered_subprotocols(req.headers()),
            ["chat", "binary", "v2"]
        );
    }
}
