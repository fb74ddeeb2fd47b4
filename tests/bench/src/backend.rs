//! `bench-backend`: the WebSocket service the passthrough scenarios put a proxy in front
//! of (the gateway's `[[passthrough]]` route, nginx's `proxy_pass`, Pushpin's WebSocket
//! proxy mode). It echoes every text and binary message on every path, and announces its
//! port on stdout as `{"port":…}`.
//!
//! It is the floor's WebSocket echo ([`crate::floor::ws_echo`]) on a listener of its own,
//! in a process of its own, so that one backend serves every proxy of a run and its memory
//! is never counted as a proxy's: a multi-threaded tokio runtime, one task per
//! connection, tungstenite's buffers at 4 KiB so tens of thousands of idle connections stay
//! small.

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;

use super::floor::{accept_each, ws_echo};

/// `bench-backend` flags.
#[derive(Parser, Debug)]
#[command(
    name = "bench-backend",
    about = "Echo WebSocket backend for the passthrough scenarios"
)]
pub struct Args {
    /// The address to listen on (port 0: a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// The port `bench-backend` announces.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackendPort {
    /// The WebSocket echo's port.
    pub port: u16,
}

/// `bench-backend`'s main: serves until killed.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let port = listener.local_addr()?.port();
    println!("{}", serde_json::to_string(&BackendPort { port })?);
    accept_each(listener, ws_echo).await;
    Ok(())
}
