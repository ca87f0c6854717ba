//! Shared parts of canarygate's benchmarks: starting the real binary and small real backends.
#![forbid(unsafe_code)]

pub mod analysis;
