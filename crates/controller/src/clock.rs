//! The controller's only source of time, injected: tests step it by hand.

use std::time::Instant;

use chrono::{DateTime, Utc};

/// The controller's time: the wall clock (events, deadlines, metric seconds) and a monotonic one
/// (watched time, the lease), both injected.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    fn instant(&self) -> Instant;
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}
