//! The gateway's error types: [`GatewayError`] at the crate boundary (start-up and run),
//! [`ConfigError`] for configuration, each naming what went wrong and where.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the gateway could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// A function URL the HTTP client cannot call.
    #[error("function URL `{0}` is not an http:// or https:// URL with a host")]
    FunctionUrl(String),
    /// A TLS setting rustls refuses.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A configuration that cannot be used. The message names the field or the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file, a variable or a flag does not parse or has an unknown or mistyped field.
    #[error("invalid config ({origin}): {message}")]
    Invalid {
        /// The file, variable or flag.
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A certificate, key or CA file that cannot be used.
    #[error("invalid config: `{field}`: {source}")]
    Tls {
        /// The dotted field naming the file, e.g. `public.tls.key_file`.
        field: String,
        /// The file and what is wrong with it.
        source: crate::tls::server::CertError,
    },
    /// A field has a value that is not allowed.
    #[error("invalid config{}: `{field}` {message}", from_note(.origin.as_deref()))]
    Field {
        /// The dotted field name, e.g. `limits.idle_timeout`.
        field: String,
        /// What is wrong with it (never the value of a secret).
        message: String,
        /// The variable or flag that set it; `None` for the file or the defaults.
        origin: Option<String>,
    },
}

/// ` (environment variable X)` when a field came from a variable or flag.
fn from_note(origin: Option<&str>) -> String {
    origin.map(|o| format!(" ({o})")).unwrap_or_default()
}
