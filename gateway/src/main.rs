//! The `switchboard` binary: reads config, starts tracing (text or JSON lines on stderr,
//! `log.format`; filtered by `SWITCHBOARD_LOG`), runs the gateway until SIGINT or SIGTERM.

/// jemalloc, built with its background purging threads on (`tikv-jemallocator`'s
/// `background_threads` feature, which compiles `background_thread:true` into jemalloc's
/// options): freed pages go back to the OS over the dirty decay time (10 s) even when the
/// gateway has gone idle, rather than only while it keeps allocating.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gateway::config::LogFormat;
use gateway::{Config, Gateway, Options};

#[derive(Parser, Debug)]
#[command(
    name = "switchboard",
    version,
    about = "A self-hosted WebSocket gateway for stateless HTTP functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Check a config and exit: 0 if valid, 2 with the reason if not.
    Check(ServeArgs),
    /// Print a fresh random send-back token (hex) for `sendback.token`.
    Token,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct ServeArgs {
    /// A TOML config file.
    #[arg(short, long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Public (WebSocket) listen address, overrides `public.listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Send-back API listen address, overrides `sendback.listen`.
    #[arg(long)]
    sendback_listen: Option<String>,
    /// Register function URL, overrides `functions.register`.
    #[arg(long)]
    register_url: Option<String>,
    /// Transport function URL, overrides `functions.transport`.
    #[arg(long)]
    transport_url: Option<String>,
    /// Cleanup function URL, overrides `functions.cleanup`.
    #[arg(long)]
    cleanup_url: Option<String>,
    /// Store URL, overrides `store`.
    #[arg(long)]
    store: Option<String>,
}

impl ServeArgs {
    fn load(&self) -> Result<Config, gateway::ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(gateway::config::ENV_PREFIX))
            .collect();
        let mut overrides = Vec::new();
        let flags = [
            ("public.listen", &self.listen),
            ("sendback.listen", &self.sendback_listen),
            ("functions.register", &self.register_url),
            ("functions.transport", &self.transport_url),
            ("functions.cleanup", &self.cleanup_url),
            ("store", &self.store),
        ];
        // Raw values: `Config::load` types each by its field.
        for (path, value) in flags {
            if let Some(value) = value {
                overrides.push((path.to_owned(), value.clone()));
            }
        }
        Config::load(self.config.as_deref(), &env, &overrides)
    }
}

/// Why the binary failed.
enum Failed {
    /// Before tracing started (a bad config): printed as it is.
    Early(gateway::GatewayError),
    /// After: already logged, in the configured format.
    Logged,
}

impl From<gateway::ConfigError> for Failed {
    fn from(e: gateway::ConfigError) -> Self {
        Failed::Early(e.into())
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: Result<(), Failed> = runtime.block_on(async move {
        match cli.command {
            Some(Command::Check(args)) => {
                args.load()?;
                println!("config ok");
                Ok(())
            }
            Some(Command::Token) => {
                println!("{}", fresh_token());
                Ok(())
            }
            Some(Command::Serve(args)) => serve(args).await,
            None => serve(cli.serve).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failed::Early(e)) => {
            eprintln!("switchboard: {e}");
            std::process::ExitCode::from(2)
        }
        Err(Failed::Logged) => std::process::ExitCode::from(2),
    }
}

/// Loads the config, starts tracing as it says, and runs the gateway until a signal.
async fn serve(args: ServeArgs) -> Result<(), Failed> {
    let config = args.load()?;
    init_tracing(config.log.format);
    let run = async {
        let gateway = Gateway::bind(config, Options::default()).await?;
        gateway.run(gateway::shutdown_signal()).await
    };
    run.await.map_err(|e: gateway::GatewayError| {
        tracing::error!(cause = %e, "the gateway stopped");
        Failed::Logged
    })
}

/// A fresh secret as hex: two v4 UUIDs, 244 random bits from an OS-seeded generator.
fn fresh_token() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("{}{}", a.simple(), b.simple())
}

/// Logs to stderr, filtered by `SWITCHBOARD_LOG` (default `info`; tungstenite's client
/// handshake at most at debug), as `format` says: JSON
/// lines carry `timestamp`, `level`, `fields` (`message` among them), `target`, and the
/// current span and the spans around it.
fn init_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // tungstenite's client logs a passthrough backend's whole upgrade request at trace:
    // the route's configured headers (secrets) and the client's query string. Never that.
    if let Ok(directive) = "tungstenite::handshake::client=debug".parse() {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
