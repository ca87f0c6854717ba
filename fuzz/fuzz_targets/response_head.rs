//! Fuzz target `response_head`: see `canarygate_fuzzing::response_head` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| canarygate_fuzzing::response_head(data));
