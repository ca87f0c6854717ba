//! Fuzz target `sigv4`: see `canarygate_fuzzing::sigv4` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| canarygate_fuzzing::sigv4(data));
