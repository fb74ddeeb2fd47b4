//! `bench-backend`: the echo WebSocket backend of the passthrough scenarios (see
//! `bench::backend`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bench::backend::main(bench::backend::Args::parse()).await
}
