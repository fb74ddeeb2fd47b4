//! The one error type of the store boundary.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection is not registered (it never was, or it has gone).
    #[error("connection {0} is not registered")]
    NotRegistered(String),
    /// The store URL cannot be used.
    #[error("invalid store url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The backend cannot be reached now; the same call may succeed later.
    #[error("store unavailable at {address}: {reason}")]
    Unavailable { address: String, reason: String },
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
