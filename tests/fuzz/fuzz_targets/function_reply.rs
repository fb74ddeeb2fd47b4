#![no_main]
//! Fuzz target: `gateway::fuzzing::function_reply` (tests/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::function_reply(data));
