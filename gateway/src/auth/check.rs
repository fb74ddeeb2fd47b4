//! The check a passthrough route runs on an upgrade request before anything else
//! (placeholder: only [`Authenticator::None`] so far).

use http::StatusCode;
use http::request::Parts;

/// A route's built-in check.
#[derive(Debug)]
pub(crate) enum Authenticator {
    /// Anyone may connect.
    None,
}

/// Why a request was refused: the status and a short message that never holds the
/// credential.
#[derive(Debug)]
pub(crate) struct AuthFailure {
    pub status: StatusCode,
    pub message: &'static str,
}

impl Authenticator {
    /// Checks a request: the token's claims when there is a token, else `None`.
    pub fn check(&self, _parts: &Parts) -> Result<Option<serde_json::Value>, AuthFailure> {
        match self {
            Authenticator::None => Ok(None),
        }
    }
}

/// The check a passthrough route's `auth` asks for (`register` is the register function's,
/// not one of these): `Err` says why it cannot be built, naming no secret.
pub(crate) fn for_route(
    route: &crate::config::PassthroughRoute,
) -> Result<Authenticator, &'static str> {
    match route.auth {
        crate::config::PassthroughAuth::None | crate::config::PassthroughAuth::Register => {
            Ok(Authenticator::None)
        }
        crate::config::PassthroughAuth::ApiKey | crate::config::PassthroughAuth::Jwt => {
            Err("is not supported by this build yet")
        }
    }
}
