#![no_main]
//! Fuzz target: `gateway::fuzzing::sendback_bodies` (tests/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::sendback_bodies(data));
