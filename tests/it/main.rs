//! End-to-end tests: the real gateway, real function servers and real WebSocket clients
//! on ephemeral ports (one test binary; one module per surface).

mod allocator;
mod aws_node;
mod bad_input;
mod browser;
mod chat;
mod cleanup;
mod close_codes;
mod config;
mod deploy;
mod dialect_aws;
mod dialect_tencent;
mod durable_cleanup;
mod forwarded;
mod fuzz_corpora;
mod handler_runtime;
mod limits;
mod logs;
mod metrics;
mod multi_node;
mod node_faults;
mod ordering;
mod passthrough;
mod prometheus;
mod public_http;
mod readiness;
mod redis_e2e;
mod register;
mod secrets_in_logs;
mod sendback;
mod stalled_client;
mod store_redis;
mod store_resync;
mod store_suite;
mod tls;

/// The `switchboard` binary: the gateway's own `main.rs`, built by this package as
/// `switchboard-under-test`, so the tests always run the current code.
pub fn switchboard_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_switchboard-under-test"))
}

/// The example chat functions' binary, built by this package as `chat-functions-under-test`.
pub fn chat_functions_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_chat-functions-under-test"))
}
