//! `bench`: the benchmark orchestrator and load generator (see `tests/bench/README.md`).
//!
//! `cargo build --release -p gateway -p bench --bins && ./target/release/bench --help`

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = bench::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::cli::main(cli)) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
