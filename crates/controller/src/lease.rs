//! The controller lease as one replica sees it: a pure state machine over the outcomes of its attempts
//! to take or renew the lease, and the injected time. The replica acts as the controller only while it
//! holds the lease and the lease has more than a margin left, so it stops shortly before the lease can
//! expire — even when it cannot reach the database to learn that another replica took over (a write made
//! after that is refused by the fence anyway).

use std::time::{Duration, Instant};

use canarygate_store::Fence;

/// What one attempt to take or renew the lease found.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The lease is ours at this epoch and runs this long from the attempt's start.
    Held { epoch: u64, runs_for: Duration },
    /// Another replica holds it.
    Taken,
    /// The database could not be asked.
    Failed,
}

/// The lease as this replica holds it, if it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Leadership {
    pub fence: Fence,
    /// When this replica stops acting as the controller unless it renews first.
    pub until: Instant,
}

/// This replica's view of the lease.
#[derive(Debug)]
pub struct LeaseView {
    holder: String,
    margin: Duration,
    held: Option<Leadership>,
}

impl LeaseView {
    /// `holder` is this replica's name; it stops acting `margin` before the lease would expire.
    pub fn new(holder: &str, margin: Duration) -> LeaseView {
        LeaseView {
            holder: holder.to_string(),
            margin,
            held: None,
        }
    }

    /// Takes in an attempt's outcome; `started` is when the attempt began (the lease's time is
    /// counted from then, so time spent waiting on the database is not counted as held).
    pub fn observe(&mut self, attempt: Attempt, started: Instant) {
        match attempt {
            Attempt::Held { epoch, runs_for } => {
                self.held = Some(Leadership {
                    fence: Fence {
                        holder: self.holder.clone(),
                        epoch,
                    },
                    until: started + runs_for.saturating_sub(self.margin),
                });
            }
            Attempt::Taken => self.held = None,
            // Unknown: keep what we had; it runs out by itself.
            Attempt::Failed => {}
        }
    }

    /// The lease, while this replica may act on it.
    pub fn leadership(&self, now: Instant) -> Option<&Leadership> {
        self.held.as_ref().filter(|l| now < l.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn held_until_a_margin_before_expiry_and_lost_when_taken() {
        let t0 = crate::clock::SystemClock.instant();
        let s = Duration::from_secs;
        let mut v = LeaseView::new("a", s(1));
        assert!(v.leadership(t0).is_none());
        v.observe(Attempt::Held { epoch: 3, runs_for: s(10) }, t0);
        let l = v.leadership(t0 + s(8)).expect("held");
        assert_eq!((l.fence.holder.as_str(), l.fence.epoch), ("a", 3));
        // 9 s: the margin before the 10 s lease ends.
        assert!(v.leadership(t0 + s(9)).is_none());
        // A renewal at 3 s extends it; the database unreachable at 6 s changes nothing.
        v.observe(Attempt::Held { epoch: 3, runs_for: s(10) }, t0 + s(3));
        v.observe(Attempt::Failed, t0 + s(6));
        assert!(v.leadership(t0 + s(11)).is_some());
        assert!(
            v.leadership(t0 + s(12)).is_none(),
            "stops before the lease can expire, unreachable database or not"
        );
        // Another replica took it: at once.
        v.observe(Attempt::Held { epoch: 3, runs_for: s(10) }, t0 + s(13));
        v.observe(Attempt::Taken, t0 + s(14));
        assert!(v.leadership(t0 + s(14)).is_none());
        // Taken back later: a new epoch.
        v.observe(Attempt::Held { epoch: 4, runs_for: s(10) }, t0 + s(20));
        assert_eq!(v.leadership(t0 + s(20)).unwrap().fence.epoch, 4);
    }
}
