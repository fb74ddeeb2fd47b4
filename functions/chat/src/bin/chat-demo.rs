//! `chat-demo`: the one-command demo ([`chat::demo`]): the gateway, the example chat
//! functions (called over real loopback HTTP) and the chat page in one process, on the
//! embedded store. It prints where to open the page, and stops on SIGINT or SIGTERM.
//!
//! ```sh
//! cargo run --release --bin chat-demo                               # http://127.0.0.1:8080/
//! cargo run --release --bin chat-demo -- --listen 0.0.0.0:8080      # from other machines
//! ```
//!
//! `CHAT_LOG` sets the log filter (default `info`). Logs go to stderr.

use std::io::IsTerminal;
use std::process::ExitCode;

use chat::demo::{self, DemoArgs};
use clap::Parser;

/// The flags.
#[derive(Parser, Debug)]
#[command(
    name = "chat-demo",
    version,
    about = "The Switchboard demo: the gateway, the example chat functions and the chat page, \
             on the embedded store"
)]
struct Cli {
    #[command(flatten)]
    demo: DemoArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chat-demo: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo::run(cli.demo, gateway::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat-demo: {err}");
            ExitCode::FAILURE
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_on_loopback_8080_by_default() {
        let cli = Cli::try_parse_from(["chat-demo"]).unwrap();
        assert_eq!(cli.demo.listen, "127.0.0.1:8080".parse().unwrap());
        let cli = Cli::try_parse_from(["chat-demo", "--listen", "0.0.0.0:9000"]).unwrap();
        assert_eq!(cli.demo.listen, "0.0.0.0:9000".parse().unwrap());
    }
}
