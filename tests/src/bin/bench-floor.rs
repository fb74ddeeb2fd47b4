//! `bench-floor`: the bare floors the gateway is measured against (see
//! `tests::bench::floor`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tests::bench::floor::main(tests::bench::floor::Args::parse()).await
}
