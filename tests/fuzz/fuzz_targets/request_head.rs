#![no_main]
//! Fuzz target: `gateway::fuzzing::request_head` (tests/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::request_head(data));
