#![no_main]
//! Fuzz target: `gateway::fuzzing::dialect_replies` (tests/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::dialect_replies(data));
