//! `chat-functions`: the example chat functions ([`chat::Chat`]) as a process of their
//! own, for deployments where the gateway and the functions run separately and share a
//! Redis store.
//!
//! It opens the store (the gateway's `store` URL and `store_prefix`), serves register,
//! transport and cleanup on `--listen` (any path), pushes through the gateway's send-back
//! API at `--sendback-url`, and stops gracefully on SIGINT or SIGTERM. Every flag can also
//! come from a `CHAT_*` environment variable; `CHAT_LOG` sets the log filter (default
//! `info`). Logs go to stderr.
//!
//! With several gateway nodes, give the send-back address of each (`--sendback-url`
//! repeated, or comma-separated: `CHAT_SENDBACK_URL=http://10.0.0.11:9090,http://10.0.0.12:9090`),
//! or one balanced address over all of them (deploy/nginx). A request goes to the URL that
//! last worked and moves on to the next only when its node surely did nothing with it
//! (connection refused, connect timeout, a node shutting down): a node that stops costs
//! one failed connect, not the chat.
//!
//! ```sh
//! CHAT_SENDBACK_TOKEN=… chat-functions --listen 127.0.0.1:9101 \
//!     --store redis://127.0.0.1:6379 --store-prefix switchboard \
//!     --sendback-url http://10.0.0.11:9090 --sendback-url http://10.0.0.12:9090
//! ```

use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use chat::Chat;
use clap::Parser;
use functions::{FunctionsError, SendBack, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The flags, each also read from its `CHAT_*` environment variable.
#[derive(Parser, Debug)]
#[command(
    name = "chat-functions",
    version,
    about = "The Switchboard example chat functions, served on their own"
)]
struct Args {
    /// Where to serve the chat functions (register, transport and cleanup, on any path).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// The store the gateway uses: `redis://host:port[/db]` or
    /// `redis+cluster://host:port,host:port`. `memory` lives in this process only, so it
    /// works only when the gateway runs in this same process (never with this binary).
    #[arg(long, env = "CHAT_STORE", default_value = "memory")]
    store: String,
    /// The key prefix of the store: the gateway's `store_prefix`.
    #[arg(long, env = "CHAT_STORE_PREFIX", default_value = functions::store::DEFAULT_PREFIX)]
    store_prefix: String,
    /// The gateway's send-back API: one URL per gateway node (repeat the flag, or separate
    /// them with commas), or one balanced address. Requests go to the one that last worked.
    #[arg(
        long,
        env = "CHAT_SENDBACK_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9090"
    )]
    sendback_url: Vec<String>,
    /// The send-back token (the gateway's `sendback.token`); prefer the environment
    /// variable, which other users cannot read from the process list.
    #[arg(long, env = "CHAT_SENDBACK_TOKEN", hide_env_values = true)]
    sendback_token: Option<String>,
}

/// Why the process cannot start or stopped with an error.
///
/// `Display` is written by hand: the `tests` package also builds this file (as
/// `chat-functions-under-test`) with its own dependencies, which have no `thiserror`.
#[derive(Debug)]
enum Fatal {
    /// The async runtime cannot start.
    Runtime(std::io::Error),
    /// The store cannot be opened (unreachable, bad URL, bad prefix).
    Store {
        /// The URL without any password.
        url: String,
        /// Why, naming the address for an unreachable Redis.
        reason: String,
    },
    /// The send-back URL or token cannot be used.
    SendBack(FunctionsError),
    /// The listen address cannot be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    Serve(std::io::Error),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Runtime(err) => write!(f, "cannot start the runtime: {err}"),
            Fatal::Store { url, reason } => write!(f, "cannot open the store `{url}`: {reason}"),
            Fatal::SendBack(err) => write!(f, "cannot use the send-back API: {err}"),
            Fatal::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Fatal::Serve(err) => write!(f, "serving failed: {err}"),
        }
    }
}

impl std::error::Error for Fatal {}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let result = tokio::runtime::Runtime::new()
        .map_err(Fatal::Runtime)
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat-functions: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store, binds, and serves the chat until SIGINT or SIGTERM.
async fn run(args: Args) -> Result<(), Fatal> {
    if matches!(args.store.as_str(), "" | "memory" | "memory://") {
        warn!(
            "the `memory` store lives in this process only: the gateway cannot share it, so \
             joins will fail; pass the gateway's store with --store redis://host:port"
        );
    }
    let store = functions::open_store(&args.store, &args.store_prefix)
        .await
        .map_err(|err| store_error(&args.store, err))?;
    let sendback_urls: Vec<&str> = args
        .sendback_url
        .iter()
        .map(|url| url.trim())
        .filter(|url| !url.is_empty())
        .collect();
    let sendback =
        SendBack::with_urls(&sendback_urls, args.sendback_token).map_err(Fatal::SendBack)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Fatal::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    let signal = shutdown_signal();
    info!(
        %addr,
        store = %redact(&args.store),
        sendback = %sendback_urls.join(","),
        "chat functions listening"
    );

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        signal.await;
        info!("shutdown signal received");
        on_signal.cancel();
    });
    functions::serve(listener, Arc::new(Chat::new(store, sendback)), shutdown)
        .await
        .map_err(Fatal::Serve)
}

/// The error for a store that cannot be opened, never showing a password of the URL.
fn store_error(url: &str, err: FunctionsError) -> Fatal {
    let reason = match err {
        // Its message repeats the URL as given.
        FunctionsError::Store(StoreError::InvalidUrl { reason, .. }) => reason,
        other => other.to_string(),
    };
    Fatal::Store {
        url: redact(url),
        reason,
    }
}

/// `url` with the user information (`user:password@`) of each host replaced by `***@`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let hosts: Vec<String> = authority
        .split(',')
        .map(|host| match host.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => host.to_owned(),
        })
        .collect();
    format!("{scheme}://{}{path}", hosts.join(","))
}

/// Logs to stderr, filtered by `CHAT_LOG` (default `info`), in colour only on a terminal.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Starts listening for SIGINT and SIGTERM now (so a signal sent once "listening" is
/// logged is never missed); the future completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn recv(signal: std::io::Result<Signal>, name: &str) {
        match signal {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for {name}");
                std::future::pending::<()>().await;
            }
        }
    }
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        tokio::select! {
            () = recv(interrupt, "SIGINT") => {}
            () = recv(terminate, "SIGTERM") => {}
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl Future<Output = ()> {
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            warn!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_the_documented_defaults() {
        let args = Args::try_parse_from(["chat-functions"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(args.store, "memory");
        assert_eq!(args.store_prefix, functions::store::DEFAULT_PREFIX);
        assert_eq!(args.sendback_url, ["http://127.0.0.1:9090"]);
    }

    #[test]
    fn sendback_urls_repeat_or_come_comma_separated() {
        let args = Args::try_parse_from([
            "chat-functions",
            "--sendback-url",
            "http://a:1",
            "--sendback-url",
            "http://b:2,http://c:3",
        ])
        .unwrap();
        assert_eq!(
            args.sendback_url,
            ["http://a:1", "http://b:2", "http://c:3"]
        );
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("memory"), "memory");
        assert_eq!(redact("redis://127.0.0.1:6380"), "redis://127.0.0.1:6380");
        assert_eq!(
            redact("redis://user:s3cret@h:6379/2"),
            "redis://***@h:6379/2"
        );
        assert_eq!(
            redact("redis+cluster://:pw@a:1,:pw@b:2"),
            "redis+cluster://***@a:1,***@b:2"
        );
        let err = store_error(
            "rediss://:pw@h:1",
            FunctionsError::Store(StoreError::InvalidUrl {
                url: "rediss://:pw@h:1".into(),
                reason: "no TLS".into(),
            }),
        );
        assert_eq!(
            err.to_string(),
            "cannot open the store `rediss://***@h:1`: no TLS"
        );
    }
}
