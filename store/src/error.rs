//! The one error type of the store boundary.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection is not registered (it never was, or it has gone).
    #[error("connection {0} is not registered")]
    NotRegistered(String),
    /// The store URL cannot be used.
    #[error("invalid store url `{}`: {reason}", redact_password(url))]
    InvalidUrl { url: String, reason: String },
    /// The backend cannot be reached now; the same call may succeed later.
    #[error("store unavailable at {address}: {reason}")]
    Unavailable { address: String, reason: String },
    /// A connection id, group name, node name or key prefix the store cannot use: empty, or
    /// containing `{` or `}` (the Redis backend builds hash-tagged keys from them). Both
    /// backends refuse the same names, so a name that works in development works in
    /// production too.
    #[error("invalid {what} `{name}`: {reason}")]
    InvalidName {
        /// What the name is for: `connection id`, `group name`, `node name` or `key prefix`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// The backend answered with something this crate cannot use.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether retrying later can help (the backend is down, not the request wrong).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Userinfo ends at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{}", &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_password("redis://user:secret@h:1/0"),
            "redis://user:***@h:1/0"
        );
        assert_eq!(redact_password("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_password("redis://h:1"), "redis://h:1");
        let e = StoreError::InvalidUrl {
            url: "redis+cluster://u:pw@a:1,b:2".into(),
            reason: "x".into(),
        };
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
