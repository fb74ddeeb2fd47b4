//! Which passthrough route a request takes, and the backend's upgrade request for it: the
//! backend URL (its path, then the client's path after the route's prefix; the client's
//! query string after the backend's own), the client's end-to-end headers without the
//! hop-by-hop ones and the WebSocket handshake's own (tungstenite makes fresh ones),
//! `X-Forwarded-For` with the client's address, `Sec-WebSocket-Protocol` as the client
//! offered it, then the register reply's headers, then the route's configured headers
//! (these win: a function cannot replace an operator's credential).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use url::Url;

use crate::auth::check::{self, Authenticator};
use crate::config::{PassthroughAuth, PassthroughRoute, path_matches};
use crate::error::ConfigError;

/// Every passthrough route, in config order (paths never overlap: `Config::validate`).
#[derive(Debug, Default)]
pub(crate) struct Routes {
    routes: Vec<Arc<Route>>,
}

/// One route, ready to serve.
#[derive(Debug)]
pub(crate) struct Route {
    /// The route as configured.
    pub config: PassthroughRoute,
    backend: Url,
    /// The built-in check (`None` for `auth = "register"`: the register function decides).
    pub auth: Option<Authenticator>,
    /// The configured headers, parsed (values are secrets: never logged).
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Headers never passed to the backend: hop-by-hop (RFC 9110 section 7.6.1), the
/// WebSocket handshake's own (the backend's handshake is a new one), and `Host`.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-forwarded-for",
];

impl Routes {
    /// Builds the routes of a validated config.
    pub fn new(config: &[PassthroughRoute]) -> Result<Routes, ConfigError> {
        let mut routes = Vec::with_capacity(config.len());
        for (i, route) in config.iter().enumerate() {
            let bad = |name: &str, message: &str| ConfigError::Field {
                field: format!("passthrough[{i}].{name}"),
                message: message.to_owned(),
                origin: None,
            };
            let backend = Url::parse(&route.backend)
                .map_err(|_| bad("backend", "is not a ws:// or wss:// URL"))?;
            let auth = match route.auth {
                PassthroughAuth::Register => None,
                _ => Some(check::for_route(route, &format!("passthrough[{i}]"))?),
            };
            let mut headers = Vec::with_capacity(route.headers.len());
            for (name, value) in &route.headers {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad("headers", "holds a bad header name"))?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| bad("headers", "holds a bad header value"))?;
                headers.push((name, value));
            }
            routes.push(Arc::new(Route {
                config: route.clone(),
                backend,
                auth,
                headers,
            }));
        }
        Ok(Routes { routes })
    }

    /// The route a request path takes, if any.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| path_matches(&r.config.path, path))
    }
}

impl Route {
    /// The backend's host (for logs: the URL's path and query may carry what a client sent).
    pub fn backend_host(&self) -> &str {
        self.backend.host_str().unwrap_or_default()
    }

    /// The backend URL for a client's `path` and `query`.
    pub fn backend_url(&self, path: &str, query: Option<&str>) -> Url {
        let mut url = self.backend.clone();
        let prefix = if self.config.path == "/" {
            ""
        } else {
            self.config.path.as_str()
        };
        let rest = path.strip_prefix(prefix).unwrap_or_default();
        if !rest.is_empty() && rest != "/" {
            let joined = format!(
                "{}/{}",
                url.path().trim_end_matches('/'),
                rest.trim_start_matches('/')
            );
            url.set_path(&joined);
        } else if rest == "/" && !url.path().ends_with('/') {
            let joined = format!("{}/", url.path());
            url.set_path(&joined);
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            let joined = match url.query() {
                Some(own) if !own.is_empty() => format!("{own}&{query}"),
                _ => query.to_owned(),
            };
            url.set_query(Some(&joined));
        }
        url
    }

    /// The backend's upgrade request for a client's request `parts` from `source_ip`.
    pub fn backend_request(
        &self,
        parts: &Parts,
        source_ip: IpAddr,
    ) -> Result<http::Request<()>, BadHeader> {
        // The gateway's credential is the gateway's: the backend gets neither the key nor
        // the token (a JWT's claims reach functions as the connection's context).
        let source = self.auth.as_ref().and_then(Authenticator::source);
        let query = match (parts.uri.query(), source) {
            (Some(query), Some(source)) => Some(source.strip_query(query)),
            (query, _) => query.map(str::to_owned),
        };
        let url = self.backend_url(parts.uri.path(), query.as_deref());
        let mut request = url.as_str().into_client_request().map_err(|_| BadHeader)?;
        let out = request.headers_mut();
        // Headers named in `Connection` are hop-by-hop too.
        let listed: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in &parts.headers {
            let lower = name.as_str();
            if NOT_FORWARDED.contains(&lower) || listed.iter().any(|l| l == lower) {
                continue;
            }
            if source.and_then(|s| s.header()) == Some(name) {
                continue;
            }
            out.append(name.clone(), value.clone());
        }
        let offered = offered_subprotocols(&parts.headers);
        if !offered.is_empty() {
            let value = HeaderValue::from_str(&offered.join(", ")).map_err(|_| BadHeader)?;
            out.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        let xff = HeaderValue::from_str(&source_ip.to_string()).map_err(|_| BadHeader)?;
        out.insert(HeaderName::from_static("x-forwarded-for"), xff);
        for (name, value) in &self.headers {
            out.insert(name.clone(), value.clone());
        }
        Ok(request)
    }

    /// Adds the register reply's `extra` headers to a backend request; the configured
    /// ones stay as they are.
    pub fn add_headers(
        &self,
        request: &mut http::Request<()>,
        extra: &BTreeMap<String, String>,
    ) -> Result<(), BadHeader> {
        let out = request.headers_mut();
        for (name, value) in extra {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| BadHeader)?;
            if NOT_FORWARDED.contains(&name.as_str()) {
                continue;
            }
            if self.headers.iter().any(|(own, _)| *own == name) {
                continue;
            }
            out.insert(name, HeaderValue::from_str(value).map_err(|_| BadHeader)?);
        }
        Ok(())
    }
}

/// The subprotocols a client offered, in its order (`Sec-WebSocket-Protocol`, repeated
/// or comma-separated).
fn offered_subprotocols(headers: &http::HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// A header the register reply asked for that is not a valid header.
#[derive(Debug, thiserror::Error)]
#[error("a header for the backend is not a valid header")]
pub(crate) struct BadHeader;

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, backend: &str) -> Route {
        let config = PassthroughRoute {
            path: path.into(),
            backend: backend.into(),
            headers: [("x-upstream-key".to_owned(), "s3cret".to_owned())].into(),
            auth: PassthroughAuth::None,
            max_message_bytes: 1024,
            connect_timeout: std::time::Duration::from_secs(1),
            api_key: None,
            jwt: None,
        };
        Routes::new(&[config])
            .unwrap()
            .routes
            .pop()
            .and_then(|r| Arc::try_unwrap(r).ok())
            .unwrap()
    }

    #[test]
    fn the_backend_url_appends_the_path_and_passes_the_query() {
        let r = route("/v1/realtime", "ws://b:9000/ws");
        let url = |p, q| r.backend_url(p, q).to_string();
        assert_eq!(url("/v1/realtime", None), "ws://b:9000/ws");
        assert_eq!(
            url("/v1/realtime/x/y", Some("a=1")),
            "ws://b:9000/ws/x/y?a=1"
        );
        assert_eq!(url("/v1/realtime/", None), "ws://b:9000/ws/");
        let root = route("/", "wss://b/base/?k=v");
        assert_eq!(
            root.backend_url("/chat", Some("a=1")).to_string(),
            "wss://b/base/chat?k=v&a=1"
        );
        assert_eq!(
            route("/", "ws://b").backend_url("/", None).to_string(),
            "ws://b/"
        );
    }

    #[test]
    fn the_backend_request_drops_hop_by_hop_and_adds_the_configured_headers() {
        let r = route("/v1", "ws://b/ws");
        let (parts, ()) = http::Request::get("/v1/x?q=1")
            .header("host", "gw")
            .header("connection", "Upgrade, x-hop")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-extensions", "permessage-deflate")
            .header("sec-websocket-protocol", "a, b")
            .header("x-hop", "1")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-upstream-key", "from-client")
            .header("authorization", "Bearer t")
            .body(())
            .unwrap()
            .into_parts();
        let extra = [
            ("x-user".to_owned(), "u1".to_owned()),
            ("x-upstream-key".to_owned(), "from-function".to_owned()),
            ("connection".to_owned(), "close".to_owned()),
        ]
        .into();
        let mut req = r
            .backend_request(&parts, "10.0.0.1".parse().unwrap())
            .unwrap();
        r.add_headers(&mut req, &extra).unwrap();
        let h = req.headers();
        assert_eq!(req.uri().to_string(), "ws://b/ws/x?q=1");
        assert_eq!(h["host"], "b");
        assert!(h.get("x-hop").is_none());
        assert!(h.get("sec-websocket-extensions").is_none());
        assert_ne!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h["sec-websocket-protocol"], "a, b");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-upstream-key"], "s3cret");
        assert_eq!(h.get_all("x-upstream-key").iter().count(), 1);
        assert_eq!(h["authorization"], "Bearer t");
        assert_eq!(h["x-user"], "u1");
        assert_eq!(h["upgrade"], "websocket");
    }
}
