//! `bench-function`: the one benchmark function, for the gateway's native events and for
//! Pushpin's WebSocket-over-HTTP events (see `bench::function`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bench::function::main(bench::function::Args::parse()).await
}
