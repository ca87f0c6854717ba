//! Fuzz target `aws_patch`: see `canarygate_fuzzing::aws_patch` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| canarygate_fuzzing::aws_patch(data));
