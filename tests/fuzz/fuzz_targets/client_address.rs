#![no_main]
//! Fuzz target: `gateway::fuzzing::client_address` (tests/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::client_address(data));
