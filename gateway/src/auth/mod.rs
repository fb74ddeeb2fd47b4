//! Built-in client authentication for passthrough routes (`api_key`, `jwt`).
//!
//! A placeholder until the API key and JWT checks land: only `Authenticator::None`.

pub(crate) mod check;
