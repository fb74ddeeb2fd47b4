//! `[[passthrough]]`: WebSocket routes whose frames go to a backend WebSocket service as
//! they are, the gateway authenticating, naming, limiting and cleaning up the connection.
//! The route table and its checks (`validate`, run by `Config::validate` before any port
//! is bound). The values of `headers`, `api_key.keys` and the HS256 secret are secrets:
//! the `Debug` impls show them as `<redacted>` and no error names them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use crate::error::ConfigError;

/// One `[[passthrough]]` route.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughRoute {
    /// The path prefix, matched on a segment boundary (`/v1` matches `/v1` and `/v1/x`, not
    /// `/v10`); `/` matches every path.
    pub path: String,
    /// The backend: `ws://` or `wss://` (`wss` trusts the system roots and
    /// `functions.ca_file`). The client's path after `path` is appended to its path, the
    /// client's query string passed on.
    pub backend: String,
    /// Headers added to the backend's upgrade request. Their values are secrets: never
    /// logged or shown.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Who may connect: `register` (the register function decides, as for other
    /// connections), `api_key`, `jwt` or `none`.
    pub auth: PassthroughAuth,
    /// The largest message either side may send (default 12 MiB); a larger one closes the
    /// sender with 1009.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The backend's TCP connect, TLS handshake and 101 within this, else 504 to the client.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// With `auth = "api_key"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyConfig>,
    /// With `auth = "jwt"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

/// How a passthrough route authenticates its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassthroughAuth {
    /// The register function decides (`functions.register` required).
    Register,
    /// A key from `api_key`.
    ApiKey,
    /// A JWT checked against `jwt`.
    Jwt,
    /// Anyone.
    None,
}

/// `[passthrough.api_key]`: where the key is read and which keys are good.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The header holding the key (exactly one of `header` and `query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The query parameter holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The good keys (secrets).
    #[serde(default)]
    pub keys: Vec<String>,
    /// A file of good keys, one per line, `#` comments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_file: Option<PathBuf>,
}

/// The signature algorithms a JWT may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (a shared secret).
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

/// `[passthrough.jwt]`: how a client's token is checked.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256: the secret's file (raw bytes, a trailing newline trimmed); RS256 / ES256: the
    /// PEM public key.
    pub key_file: PathBuf,
    /// The `aud` required, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The `iss` required, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 30 s).
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// The header holding `Bearer <token>` (exactly one of `header` and `query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The query parameter holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

fn default_max_message_bytes() -> usize {
    12 * 1024 * 1024
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// A map's keys with every value redacted.
struct Redacted<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl fmt::Debug for PassthroughRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassthroughRoute")
            .field("path", &self.path)
            .field("backend", &self.backend)
            .field("headers", &Redacted(&self.headers))
            .field("auth", &self.auth)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("api_key", &self.api_key)
            .field("jwt", &self.jwt)
            .finish()
    }
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("header", &self.header)
            .field("query", &self.query)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("keys_file", &self.keys_file)
            .finish()
    }
}

impl fmt::Debug for JwtConfig {
    // The key file's path is no secret; its content is never read into the config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("key_file", &self.key_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("header", &self.header)
            .field("query", &self.query)
            .finish()
    }
}

/// A route with every optional field set, for `Config`'s field typing and its test.
pub(super) fn with_every_field() -> PassthroughRoute {
    PassthroughRoute {
        path: String::new(),
        backend: String::new(),
        headers: BTreeMap::new(),
        auth: PassthroughAuth::None,
        max_message_bytes: default_max_message_bytes(),
        connect_timeout: default_connect_timeout(),
        api_key: Some(ApiKeyConfig {
            header: Some(String::new()),
            query: Some(String::new()),
            keys: vec![String::new()],
            keys_file: Some(PathBuf::new()),
        }),
        jwt: Some(JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            key_file: PathBuf::new(),
            audience: Some(String::new()),
            issuer: Some(String::new()),
            leeway: default_leeway(),
            header: Some(String::new()),
            query: Some(String::new()),
        }),
    }
}

/// Whether route path `prefix` takes request path `path`: equal, or `path` goes on below
/// it after a `/`; `/` takes every path.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Checks every route; `register` says whether `functions.register` is set.
pub(super) fn validate(routes: &[PassthroughRoute], register: bool) -> Result<(), ConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let field = |name: &str| format!("passthrough[{i}].{name}");
        let bad = |name: &str, message: String| {
            Err(ConfigError::Field {
                field: field(name),
                message,
                origin: None,
            })
        };
        let path = route.path.as_str();
        if !path.starts_with('/')
            || (path.len() > 1 && path.ends_with('/'))
            || path.contains(['?', '#', ' '])
            || path.contains("//")
        {
            return bad(
                "path",
                "must be a path starting with `/`, without a trailing `/`, query or fragment"
                    .into(),
            );
        }
        if let Some(other) = seen
            .iter()
            .find(|other| path_matches(other, path) || path_matches(path, other))
        {
            return bad(
                "path",
                format!("`{path}` overlaps the route `{other}`: a request would match both"),
            );
        }
        seen.push(path);
        match url::Url::parse(&route.backend) {
            Ok(url)
                if matches!(url.scheme(), "ws" | "wss")
                    && url.host_str().is_some_and(|h| !h.is_empty())
                    && url.fragment().is_none()
                    && url.username().is_empty()
                    && url.password().is_none() => {}
            _ => {
                return bad(
                    "backend",
                    "must be a ws:// or wss:// URL with a host, without credentials or a \
                     fragment"
                        .into(),
                );
            }
        }
        for (name, value) in &route.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return bad("headers", format!("`{name}` is not a header name"));
            }
            if http::HeaderValue::from_str(value).is_err() {
                // The name only: the value is a secret.
                return bad(
                    "headers",
                    format!("the value of `{name}` is not a valid header value"),
                );
            }
        }
        if route.max_message_bytes == 0 {
            return bad("max_message_bytes", "must be at least 1".into());
        }
        if route.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than zero".into());
        }
        if route.auth != PassthroughAuth::ApiKey && route.api_key.is_some() {
            return bad("api_key", "is read only with auth = \"api_key\"".into());
        }
        if route.auth != PassthroughAuth::Jwt && route.jwt.is_some() {
            return bad("jwt", "is read only with auth = \"jwt\"".into());
        }
        match route.auth {
            PassthroughAuth::Register if !register => {
                return bad(
                    "auth",
                    "is \"register\" but functions.register is not set".into(),
                );
            }
            PassthroughAuth::ApiKey => {
                let Some(keys) = &route.api_key else {
                    return bad("api_key", "is required with auth = \"api_key\"".into());
                };
                one_place(keys.header.as_deref(), keys.query.as_deref())
                    .map_err(|message| field_error(field("api_key"), message))?;
                let mut count = keys.keys.iter().filter(|k| !k.is_empty()).count();
                if let Some(file) = &keys.keys_file {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        field_error(
                            field("api_key.keys_file"),
                            format!("cannot be read ({}): {e}", file.display()),
                        )
                    })?;
                    count += text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .count();
                }
                if count == 0 {
                    return bad(
                        "api_key.keys",
                        "no key: set keys or a keys_file with at least one".into(),
                    );
                }
            }
            PassthroughAuth::Jwt => {
                let Some(jwt) = &route.jwt else {
                    return bad("jwt", "is required with auth = \"jwt\"".into());
                };
                // Neither: the token is a bearer token of `Authorization`.
                if jwt.header.is_some() || jwt.query.is_some() {
                    one_place(jwt.header.as_deref(), jwt.query.as_deref())
                        .map_err(|message| field_error(field("jwt"), message))?;
                }
                let key = std::fs::read(&jwt.key_file).map_err(|e| {
                    field_error(
                        field("jwt.key_file"),
                        format!("cannot be read ({}): {e}", jwt.key_file.display()),
                    )
                })?;
                let pem = matches!(jwt.algorithm, JwtAlgorithm::Rs256 | JwtAlgorithm::Es256);
                if pem && !key.windows(11).any(|w| w == b"-----BEGIN ") {
                    return bad(
                        "jwt.key_file",
                        format!("({}) holds no PEM public key", jwt.key_file.display()),
                    );
                }
                if !pem && key.trim_ascii().is_empty() {
                    return bad(
                        "jwt.key_file",
                        format!("({}) is empty", jwt.key_file.display()),
                    );
                }
            }
            PassthroughAuth::Register | PassthroughAuth::None => {}
        }
    }
    Ok(())
}

fn field_error(field: String, message: String) -> ConfigError {
    ConfigError::Field {
        field,
        message,
        origin: None,
    }
}

/// Exactly one of `header` and `query`.
fn one_place(header: Option<&str>, query: Option<&str>) -> Result<(), String> {
    match (header, query) {
        (Some(h), None) if !h.is_empty() => Ok(()),
        (None, Some(q)) if !q.is_empty() => Ok(()),
        _ => Err("needs exactly one of `header` and `query`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_on_segment_boundaries() {
        assert!(path_matches("/v1", "/v1"));
        assert!(path_matches("/v1", "/v1/realtime"));
        assert!(!path_matches("/v1", "/v10"));
        assert!(!path_matches("/v1", "/"));
        assert!(path_matches("/", "/anything"));
    }

    fn route(path: &str, backend: &str) -> PassthroughRoute {
        PassthroughRoute {
            path: path.into(),
            backend: backend.into(),
            headers: BTreeMap::new(),
            auth: PassthroughAuth::None,
            max_message_bytes: default_max_message_bytes(),
            connect_timeout: default_connect_timeout(),
            api_key: None,
            jwt: None,
        }
    }

    fn field_of(result: Result<(), ConfigError>) -> String {
        match result {
            Err(ConfigError::Field { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes_are_checked_naming_the_field() {
        assert!(validate(&[route("/a", "ws://h/x")], false).is_ok());
        let http = route("/a", "http://h/x");
        assert_eq!(field_of(validate(&[http], false)), "passthrough[0].backend");
        let overlap = [route("/a", "ws://h"), route("/a/b", "ws://h")];
        assert_eq!(field_of(validate(&overlap, false)), "passthrough[1].path");
        let dup = [route("/a", "ws://h"), route("/a", "ws://h")];
        assert_eq!(field_of(validate(&dup, false)), "passthrough[1].path");
        assert_eq!(
            field_of(validate(&[route("a", "ws://h")], false)),
            "passthrough[0].path"
        );
        let mut register = route("/a", "ws://h");
        register.auth = PassthroughAuth::Register;
        assert_eq!(
            field_of(validate(std::slice::from_ref(&register), false)),
            "passthrough[0].auth"
        );
        assert!(validate(&[register], true).is_ok());
        let mut keys = route("/a", "ws://h");
        keys.auth = PassthroughAuth::ApiKey;
        assert_eq!(
            field_of(validate(std::slice::from_ref(&keys), false)),
            "passthrough[0].api_key"
        );
        keys.api_key = Some(ApiKeyConfig {
            header: Some("x-api-key".into()),
            query: Some("k".into()),
            keys: vec!["k1".into()],
            keys_file: None,
        });
        assert_eq!(
            field_of(validate(std::slice::from_ref(&keys), false)),
            "passthrough[0].api_key"
        );
        if let Some(k) = keys.api_key.as_mut() {
            k.query = None;
        }
        assert!(validate(std::slice::from_ref(&keys), false).is_ok());
        if let Some(k) = keys.api_key.as_mut() {
            k.keys.clear();
        }
        assert_eq!(
            field_of(validate(std::slice::from_ref(&keys), false)),
            "passthrough[0].api_key.keys"
        );
        let mut jwt = route("/a", "ws://h");
        jwt.auth = PassthroughAuth::Jwt;
        jwt.jwt = Some(JwtConfig {
            algorithm: JwtAlgorithm::Rs256,
            key_file: PathBuf::from("/nonexistent/key.pem"),
            audience: None,
            issuer: None,
            leeway: default_leeway(),
            header: Some("authorization".into()),
            query: None,
        });
        assert_eq!(
            field_of(validate(&[jwt], false)),
            "passthrough[0].jwt.key_file"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_errors() {
        let mut r = route("/a", "ws://h");
        r.headers
            .insert("x-upstream-key".into(), "s3cret-value".into());
        r.auth = PassthroughAuth::ApiKey;
        r.api_key = Some(ApiKeyConfig {
            header: Some("x-api-key".into()),
            query: None,
            keys: vec!["key-s3cret".into()],
            keys_file: None,
        });
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("x-upstream-key"), "{shown}");
        r.headers.insert("x-bad".into(), "s3cret\nvalue".into());
        let message = validate(&[r], false).unwrap_err().to_string();
        assert!(message.contains("x-bad"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
