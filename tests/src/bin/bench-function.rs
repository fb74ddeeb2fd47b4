//! `bench-function`: the one benchmark function, for the gateway's native events and for
//! Pushpin's WebSocket-over-HTTP events (see `tests::bench::function`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tests::bench::function::main(tests::bench::function::Args::parse()).await
}
