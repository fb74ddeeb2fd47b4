//! Who may open a passthrough connection: the credential a client presents at the upgrade
//! (an API key or a JSON Web Token), checked before the backend is dialled. `check`
//! (`Authenticator`) is what a route holds; `api_key` and `jwt` load and check each kind;
//! `source` reads a credential from a header or the query; `error` has the two errors,
//! `AuthConfigError` (a route's settings cannot be used: caught by `Config::validate`) and
//! `AuthFailure` (a client's credential is refused: 401 or 403).

pub(crate) mod api_key;
pub(crate) mod check;
pub(crate) mod error;
pub(crate) mod jwt;
pub(crate) mod source;
