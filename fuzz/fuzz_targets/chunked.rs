//! Fuzz target `chunked`: see `canarygate_fuzzing::chunked` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| canarygate_fuzzing::chunked(data));
