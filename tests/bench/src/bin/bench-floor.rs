//! `bench-floor`: the bare floors the gateway is measured against (see
//! `bench::floor`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bench::floor::main(bench::floor::Args::parse()).await
}
