#![no_main]
//! Fuzz target: `gateway::fuzzing::sigv4` (tests/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::sigv4(data));
