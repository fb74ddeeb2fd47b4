//! [`Authenticator`]: what a passthrough route holds to check a client's upgrade request,
//! whatever its `auth` kind, and the refusal it answers with. `auth = "register"` is not
//! here: that route asks its register function, as every WebSocket route does.

use http::Response;
use http::request::Parts;

use super::api_key::ApiKeys;
use super::error::AuthFailure;
use super::jwt::JwtCheck;
use super::source::Source;
use crate::config::{PassthroughAuth, PassthroughRoute};
use crate::error::ConfigError;
use crate::respond::Body;

/// A route's credential check.
#[derive(Debug)]
pub(crate) enum Authenticator {
    /// `auth = "none"`: everyone.
    None,
    /// `auth = "api_key"`.
    ApiKey(ApiKeys),
    /// `auth = "jwt"`.
    Jwt(JwtCheck),
}

impl Authenticator {
    /// Whether the request may connect: the token's claims for a JWT (the connection's
    /// context), nothing for a key or `none`.
    pub(crate) fn check(&self, parts: &Parts) -> Result<Option<serde_json::Value>, AuthFailure> {
        match self {
            Authenticator::None => Ok(None),
            Authenticator::ApiKey(keys) => keys.check(parts).map(|()| None),
            Authenticator::Jwt(jwt) => jwt.check(parts).map(Some),
        }
    }

    /// Where clients present their credential (none for `none`): what a passthrough
    /// leaves out of the request it forwards, if it should not reach the backend.
    pub(crate) fn source(&self) -> Option<&Source> {
        match self {
            Authenticator::None => None,
            Authenticator::ApiKey(keys) => Some(keys.source()),
            Authenticator::Jwt(jwt) => Some(jwt.source()),
        }
    }

    /// The reply to a refused upgrade: `WWW-Authenticate: Bearer ...` for a JWT, or a key
    /// read from `Authorization`.
    pub(crate) fn reply(&self, failure: AuthFailure) -> Response<Body> {
        let bearer = match self {
            Authenticator::Jwt(_) => true,
            other => other.source().is_some_and(Source::is_authorization),
        };
        failure.reply(bearer)
    }
}

/// The check a passthrough route's `auth` asks for (`register` asks the register
/// function instead, and `none` nobody), loaded from its section; `at` names the route
/// (`passthrough[0]`) in the error, which never holds a secret.
pub(crate) fn for_route(route: &PassthroughRoute, at: &str) -> Result<Authenticator, ConfigError> {
    let missing = |section: &str| ConfigError::Field {
        field: format!("{at}.{section}"),
        message: format!("is required by auth = \"{section}\""),
        origin: None,
    };
    match route.auth {
        PassthroughAuth::None | PassthroughAuth::Register => Ok(Authenticator::None),
        PassthroughAuth::ApiKey => {
            let config = route.api_key.as_ref().ok_or_else(|| missing("api_key"))?;
            ApiKeys::load(config)
                .map(Authenticator::ApiKey)
                .map_err(|e| e.in_route(&format!("{at}.api_key")))
        }
        PassthroughAuth::Jwt => {
            let config = route.jwt.as_ref().ok_or_else(|| missing("jwt"))?;
            JwtCheck::load(config)
                .map(Authenticator::Jwt)
                .map_err(|e| e.in_route(&format!("{at}.jwt")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use http::{StatusCode, header};

    use super::*;
    use crate::config::passthrough::{ApiKeyConfig, JwtAlgorithm, JwtConfig};

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri("/v1/realtime");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn api_key(header: &str) -> Authenticator {
        Authenticator::ApiKey(
            ApiKeys::load(&ApiKeyConfig {
                header: Some(header.into()),
                keys: vec!["k1".into()],
                ..ApiKeyConfig::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn none_lets_everyone_in() {
        assert_eq!(Authenticator::None.check(&parts(&[])), Ok(None));
        assert!(Authenticator::None.source().is_none());
    }

    #[test]
    fn a_key_gives_no_claims() {
        let auth = api_key("x-api-key");
        assert_eq!(auth.check(&parts(&[("x-api-key", "k1")])), Ok(None));
        let failure = auth.check(&parts(&[("x-api-key", "k2")])).unwrap_err();
        let reply = auth.reply(failure);
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
        assert!(reply.headers().get(header::WWW_AUTHENTICATE).is_none());
        let bearer_key = api_key("authorization");
        let reply = bearer_key.reply(AuthFailure::Missing);
        assert_eq!(reply.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn a_token_gives_its_claims_and_a_refusal_challenges() {
        let dir = std::env::temp_dir().join(format!("sb-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret: PathBuf = dir.join("secret");
        std::fs::write(&secret, b"0123456789abcdef0123456789abcdef").unwrap();
        let auth = Authenticator::Jwt(
            JwtCheck::load(&JwtConfig {
                algorithm: JwtAlgorithm::Hs256,
                key_file: secret,
                audience: None,
                issuer: None,
                leeway: std::time::Duration::ZERO,
                header: None,
                query: None,
            })
            .unwrap(),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let claims =
            serde_json::json!({"sub": "u1", "exp": jsonwebtoken::get_current_timestamp() + 60});
        let key =
            jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        let authorization = format!("Bearer {token}");
        assert_eq!(
            auth.check(&parts(&[("authorization", &authorization)])),
            Ok(Some(claims))
        );
        let failure = auth.check(&parts(&[])).unwrap_err();
        let reply = auth.reply(failure);
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(reply.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let reply = auth.reply(AuthFailure::Expired);
        let challenge = reply.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{challenge}");
    }
}
