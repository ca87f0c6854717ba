//! Rollouts and alarms of canarygate.
//!
//! [`engine`] is the rollout state machine, pure: `step(state, rollout, input) -> effects`;
//! [`watched`] counts a step's watched time, pure too. [`alarms`] evaluates alarm rules over the
//! gateway's per-variant metrics. [`driver`] is the thin async loop that runs them against the store
//! with an injected clock and makes the hook calls; its tests drive it with a fake clock over a
//! temporary SQLite store, so day-long plans run in milliseconds. With several replicas, [`cluster_metrics`] holds the whole cluster's recent
//! metrics, which alarms and the analysis then read instead of the process's own.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod alarms;
pub mod clock;
pub mod cluster_metrics;
pub mod driver;
pub mod engine;
mod feed;
pub mod lease;
mod notify;
mod prom;
pub mod watched;

pub use clock::{Clock, SystemClock};
pub use driver::Controller;

#[cfg(test)]
mod driver_tests;
#[cfg(test)]
mod testing;
