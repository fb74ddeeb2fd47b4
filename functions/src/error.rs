//! The errors of this crate's boundary: [`FunctionsError`] for what the SDK itself does
//! (send-back calls, store calls, decoding event data) and [`HandlerError`] for what a
//! handler returns when it fails.

use std::fmt;

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    /// The connection is not live (410): it disconnected, or is still registering.
    #[error("connection is gone")]
    Gone,
    /// The connection's outbound queue is full (429): the client reads too slowly.
    #[error("connection is throttled: its outbound queue is full")]
    Throttled,
    /// The message, or a batch's list of ids, is larger than the gateway accepts (413).
    #[error("message or batch too large for the gateway")]
    PayloadTooLarge,
    /// The send-back token is missing or wrong (401).
    #[error("send-back API refused the token")]
    Unauthorized,
    /// The gateway cannot serve the request now (503), e.g. its store is down
    /// (`store_unavailable`); the same request may succeed later.
    #[error("send-back API unavailable ({code}): {message}")]
    Unavailable {
        /// The `error` code of the [`ApiError`](crate::api::ApiError) body, or `unknown`.
        code: String,
        /// The `message` of the body, or the raw body text (truncated).
        message: String,
    },
    /// Any other unexpected status from the send-back API.
    #[error("send-back API answered {status} {code}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The `error` code of the [`ApiError`](crate::api::ApiError) body, or `unknown`.
        code: String,
        /// The `message` of the body, or the raw body text (truncated).
        message: String,
    },
    /// The request could not be sent, or its reply could not be read.
    #[error("send-back request failed")]
    Transport(#[from] reqwest::Error),
    /// The send-back base URL cannot be used.
    #[error("invalid send-back base url `{url}`: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The id cannot name a connection in a URL (empty, `.` or `..`).
    #[error("invalid connection id `{0}`")]
    InvalidConnectionId(String),
    /// The name cannot name a group in a URL (empty, `.` or `..`). Other names the gateway
    /// refuses (containing `{` or `}`) come back as a 400 [`Http`](FunctionsError::Http).
    #[error("invalid group name `{0}`")]
    InvalidGroupName(String),
    /// The send-back token cannot be sent as an HTTP header.
    #[error("invalid send-back token: it must be visible ASCII")]
    InvalidToken,
    /// A binary event's `data` is not valid base64.
    #[error("invalid base64 in binary event data")]
    InvalidData(#[from] base64::DecodeError),
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl FunctionsError {
    /// The HTTP status the send-back API answered, if the error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FunctionsError::Gone => Some(410),
            FunctionsError::Throttled => Some(429),
            FunctionsError::PayloadTooLarge => Some(413),
            FunctionsError::Unauthorized => Some(401),
            FunctionsError::Unavailable { .. } => Some(503),
            FunctionsError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether something this call needs is down and the same call may succeed later:
    /// the send-back API answered 503 ([`Unavailable`](FunctionsError::Unavailable)), or a
    /// store call failed with [`StoreError::Unavailable`](store::StoreError::Unavailable).
    pub fn is_unavailable(&self) -> bool {
        match self {
            FunctionsError::Unavailable { .. } => true,
            FunctionsError::Store(err) => err.is_unavailable(),
            _ => false,
        }
    }
}

/// Why a handler failed; the server answers the gateway with a 500 and logs it.
///
/// Any error type converts into it with `?`; [`HandlerError::msg`] makes one from text.
pub struct HandlerError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl HandlerError {
    /// An error with just a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        HandlerError(message.to_string().into())
    }

    /// The underlying error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        HandlerError(Box::new(err))
    }
}

/// Shows an error with its chain of sources: `outer: cause: root cause`, e.g. in a log
/// line: `warn!(error = %Chain(&err), "could not announce a join")`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Shows the error with its sources (`outer: cause: root cause`).
impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Chain(&*self.0).fmt(f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_error_from_any_error_and_text() {
        let from_sdk: HandlerError = FunctionsError::Gone.into();
        assert_eq!(from_sdk.to_string(), "connection is gone");
        assert_eq!(HandlerError::msg("boom").to_string(), "boom");
    }

    #[test]
    fn handler_error_shows_the_source_chain() {
        let err: HandlerError =
            FunctionsError::InvalidData(base64::DecodeError::InvalidLength(3)).into();
        let shown = err.to_string();
        assert!(
            shown.starts_with("invalid base64 in binary event data: "),
            "{shown}"
        );
        assert!(shown.len() > "invalid base64 in binary event data: ".len());
    }

    #[test]
    fn status_of_api_errors() {
        assert_eq!(FunctionsError::Throttled.status(), Some(429));
        assert_eq!(FunctionsError::InvalidToken.status(), None);
        let unavailable = FunctionsError::Unavailable {
            code: "store_unavailable".into(),
            message: "down".into(),
        };
        assert_eq!(unavailable.status(), Some(503));
    }

    #[test]
    fn unavailable_covers_the_send_back_api_and_the_store() {
        let api = FunctionsError::Unavailable {
            code: "store_unavailable".into(),
            message: "the store is down".into(),
        };
        assert!(api.is_unavailable());
        assert_eq!(
            api.to_string(),
            "send-back API unavailable (store_unavailable): the store is down"
        );
        let store_down = FunctionsError::from(store::StoreError::Unavailable {
            address: "127.0.0.1:6379".into(),
            reason: "connection refused".into(),
        });
        assert!(store_down.is_unavailable());
        let not_registered = FunctionsError::from(store::StoreError::NotRegistered("c".into()));
        assert!(!not_registered.is_unavailable());
        assert!(!FunctionsError::Gone.is_unavailable());
    }
}
