//! The errors of `auth`: [`AuthConfigError`] when a route's credential settings cannot be
//! used (a start-up error, naming the field and file, never a key), and [`AuthFailure`]
//! when a client's credential is refused (the status, a stable code and a short sentence,
//! never the token or key the client sent).

use http::{HeaderValue, Response, StatusCode, header};

use crate::error::ConfigError;
use crate::respond::{self, Body};

/// A route's `api_key` or `jwt` settings that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{field}` {message}")]
pub(crate) struct AuthConfigError {
    /// The field, relative to the route: `api_key.keys_file`, `jwt.key_file`, ...
    pub field: &'static str,
    /// What is wrong (a file's path and why, never its content).
    pub message: String,
}

impl AuthConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        AuthConfigError {
            field,
            message: message.into(),
        }
    }

    /// The config error, the field named under its route (`route` such as
    /// `passthrough[0]`).
    pub(crate) fn in_route(self, route: &str) -> ConfigError {
        ConfigError::Field {
            field: format!("{route}.{}", self.field),
            message: self.message,
            origin: None,
        }
    }
}

/// Why a client's credential was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No credential where the route reads it.
    Missing,
    /// A credential that is not a known key, or a token that does not parse, is not
    /// signed by the configured key with the configured algorithm, or lacks `exp`.
    Invalid,
    /// A token past its `exp` (and the leeway).
    Expired,
    /// A token before its `nbf` (less the leeway).
    NotYetValid,
    /// A valid token for another audience (or none, when the route requires one).
    WrongAudience,
    /// A valid token from another issuer (or none, when the route requires one).
    WrongIssuer,
}

impl AuthFailure {
    /// 401 when the client has no usable credential, 403 when it has a valid token that is
    /// not meant for this route.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            AuthFailure::Missing
            | AuthFailure::Invalid
            | AuthFailure::Expired
            | AuthFailure::NotYetValid => StatusCode::UNAUTHORIZED,
            AuthFailure::WrongAudience | AuthFailure::WrongIssuer => StatusCode::FORBIDDEN,
        }
    }

    /// A stable snake_case name for logs, metrics and the reply's `error` field.
    pub(crate) fn code(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_credential",
            AuthFailure::Invalid => "invalid_credential",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::WrongIssuer => "wrong_issuer",
        }
    }

    /// A short sentence for people; never the credential.
    pub(crate) fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "a credential is required",
            AuthFailure::Invalid => "the credential is not valid",
            AuthFailure::Expired => "the token has expired",
            AuthFailure::NotYetValid => "the token is not valid yet",
            AuthFailure::WrongAudience => "the token is not meant for this service",
            AuthFailure::WrongIssuer => "the token's issuer is not trusted here",
        }
    }

    /// The `WWW-Authenticate` value of a bearer credential's refusal (RFC 6750 section
    /// 3): `Bearer` alone when none was sent (3.1: no error code then), `invalid_token`
    /// for one that cannot be used; none for a 403.
    pub(crate) fn bearer_challenge(self) -> Option<HeaderValue> {
        match self {
            AuthFailure::Missing => Some(HeaderValue::from_static("Bearer")),
            AuthFailure::Invalid => Some(HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"the credential is not valid\"",
            )),
            AuthFailure::Expired => Some(HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"the token has expired\"",
            )),
            AuthFailure::NotYetValid => Some(HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"the token is not valid yet\"",
            )),
            AuthFailure::WrongAudience | AuthFailure::WrongIssuer => None,
        }
    }

    /// The reply to the upgrade request: a JSON error (`{"error": code, "message": ..}`),
    /// with the bearer challenge when `bearer` (the credential is a bearer token).
    pub(crate) fn reply(self, bearer: bool) -> Response<Body> {
        let mut response = respond::error(self.status(), self.code(), self.message());
        if let Some(challenge) = self.bearer_challenge().filter(|_| bearer) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [AuthFailure; 6] = [
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::WrongAudience,
        AuthFailure::WrongIssuer,
    ];

    #[test]
    fn no_credential_is_401_and_a_foreign_token_403() {
        for failure in ALL {
            let forbidden = matches!(
                failure,
                AuthFailure::WrongAudience | AuthFailure::WrongIssuer
            );
            let expected = if forbidden { 403 } else { 401 };
            assert_eq!(failure.status().as_u16(), expected, "{failure:?}");
        }
    }

    #[test]
    fn codes_are_distinct_snake_case() {
        let codes: std::collections::HashSet<_> = ALL.iter().map(|f| f.code()).collect();
        assert_eq!(codes.len(), ALL.len());
        for code in codes {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
    }

    #[test]
    fn replies_challenge_bearer_clients_per_rfc_6750() {
        let missing = AuthFailure::Missing.reply(true);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let expired = AuthFailure::Expired.reply(true);
        let challenge = expired.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{challenge}"
        );
        let forbidden = AuthFailure::WrongAudience.reply(true);
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(forbidden.headers().get(header::WWW_AUTHENTICATE).is_none());
        let key = AuthFailure::Invalid.reply(false);
        assert!(key.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn replies_are_json_errors_with_the_code() {
        use http_body_util::BodyExt;
        let reply = AuthFailure::Expired.reply(true);
        assert_eq!(reply.headers()[header::CONTENT_TYPE], "application/json");
        let body = futures_util::FutureExt::now_or_never(reply.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "expired");
        assert_eq!(body["message"], "the token has expired");
    }

    #[test]
    fn config_errors_name_the_field_under_its_route() {
        let e = AuthConfigError::new("jwt.key_file", "/etc/k.pem: no such file");
        let message = e.in_route("passthrough[2]").to_string();
        assert!(
            message.contains("`passthrough[2].jwt.key_file`"),
            "{message}"
        );
    }
}
