#![no_main]
//! Fuzz target: `gateway::fuzzing::config` (tests/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::config(data));
