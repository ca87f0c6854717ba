//! Rollouts and alarms of canarygate.
//!
//! [`engine`] is the rollout state machine, pure: `step(state, rollout, input) -> effects`, unit-tested
//! in simulated time. [`alarms`] evaluates alarm rules over the gateway's per-variant metrics.
//! [`driver`] is the thin async loop that runs both against the store with an injected clock and makes
//! the hook calls. With several replicas, [`cluster_metrics`] holds the whole cluster's recent
//! metrics, which alarms and the analysis then read instead of the process's own.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod alarms;
pub mod cluster_metrics;
pub mod driver;
pub mod engine;
mod feed;
pub mod lease;
mod notify;
mod prom;

pub use driver::{Clock, Controller, SystemClock};

#[cfg(test)]
mod engine_tests;
