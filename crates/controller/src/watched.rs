//! Watched time, pure: how long the controller has watched a rollout's current step (or mirroring
//! phase), which is what a step's wait counts.
//!
//! The record holds a checkpoint (`watchedMs`, written at least every [`crate::engine::CHECKPOINT_MS`]);
//! between checkpoints the controller counts the time between its ticks on top of it, in memory. A gap
//! between two ticks longer than [`MAX_TICK_GAP`] is not counted (the controller was not watching: a
//! stalled process, a lost lease), nor is time while the rollout is paused. A controller that starts
//! (or takes over) begins from the record: the time since the last checkpoint is lost, never counted
//! twice. Time is the injected clock's monotonic instant, so a wall-clock jump changes nothing.

use std::time::{Duration, Instant};

use canarygate_model::rollout::{Phase, Rollout};

/// A gap between ticks longer than this is not counted as watched time.
pub const MAX_TICK_GAP: Duration = Duration::from_secs(2);

/// What a tick learns of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Watched time of the current step so far.
    pub watched_ms: u64,
    /// This controller sees the rollout for the first time (it has just started or taken over).
    pub resumed: bool,
}

/// The record's checkpoint the counted time adds to: which phase and step, and its `watchedMs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    phase: std::mem::Discriminant<Phase>,
    step: Option<usize>,
    watched_ms: u64,
}

impl Checkpoint {
    fn of(r: &Rollout) -> Checkpoint {
        let (step, watched_ms) = match r.phase {
            Phase::Shifting { step, watched_ms } => (Some(step), watched_ms),
            Phase::Mirroring { watched_ms } => (None, watched_ms),
            _ => (None, 0),
        };
        Checkpoint {
            phase: std::mem::discriminant(&r.phase),
            step,
            watched_ms,
        }
    }
}

/// One rollout's watched time as this controller counts it.
#[derive(Debug, Default)]
pub struct WatchedTime {
    checkpoint: Option<Checkpoint>,
    counted_ms: u64,
    last_tick: Option<Instant>,
}

impl WatchedTime {
    /// Takes in a tick at `at` that read record `r`.
    pub fn observe(&mut self, r: &Rollout, at: Instant) -> Observed {
        let resumed = self.last_tick.is_none();
        let checkpoint = Checkpoint::of(r);
        if self.checkpoint != Some(checkpoint) {
            // A new step, or a checkpoint written: the record holds what was counted.
            self.checkpoint = Some(checkpoint);
            self.counted_ms = 0;
        }
        if let Some(last) = self.last_tick {
            let d = at.saturating_duration_since(last);
            if d <= MAX_TICK_GAP && r.paused.is_none() {
                self.counted_ms += d.as_millis() as u64;
            }
        }
        self.last_tick = Some(at);
        Observed {
            watched_ms: checkpoint.watched_ms + self.counted_ms,
            resumed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use canarygate_model::rollout::Pause;

    fn rollout(phase: Phase) -> Rollout {
        let mut s = crate::testing::state();
        let req = serde_json::from_value(serde_json::json!({"deploymentId": "d-two", "deploymentConfig": "Canary10Percent5Minutes"}))
            .unwrap_or_else(|e| panic!("a rollout request: {e}"));
        let mut r = s
            .create_rollout("orders", "prod", req, "r-1".into(), crate::testing::t0())
            .unwrap_or_else(|e| panic!("a rollout: {e}"));
        r.phase = phase;
        r
    }

    #[test]
    fn counts_ticks_on_top_of_the_checkpoint_and_skips_gaps_and_pauses() {
        let t0 = crate::clock::SystemClock.instant();
        let ms = Duration::from_millis;
        let mut r = rollout(Phase::Shifting {
            step: 0,
            watched_ms: 4_000,
        });
        let mut w = WatchedTime::default();
        assert_eq!(
            w.observe(&r, t0),
            Observed {
                watched_ms: 4_000,
                resumed: true
            }
        );
        assert_eq!(w.observe(&r, t0 + ms(1_000)).watched_ms, 5_000);
        // A gap longer than two seconds is not counted.
        assert_eq!(w.observe(&r, t0 + ms(4_000)).watched_ms, 5_000);
        assert_eq!(
            w.observe(&r, t0 + ms(5_500)),
            Observed {
                watched_ms: 6_500,
                resumed: false
            }
        );
        // Paused: nothing counts.
        r.paused = Some(Pause {
            by: "a".into(),
            at: crate::testing::t0(),
        });
        assert_eq!(w.observe(&r, t0 + ms(6_500)).watched_ms, 6_500);
        r.paused = None;
        // A checkpoint written (at the last tick): counted time starts again from it.
        r.phase = Phase::Shifting {
            step: 0,
            watched_ms: 6_500,
        };
        assert_eq!(w.observe(&r, t0 + ms(7_000)).watched_ms, 7_000);
        // The next step (entered at the last tick) counts from its own checkpoint.
        r.phase = Phase::Shifting { step: 1, watched_ms: 0 };
        assert_eq!(w.observe(&r, t0 + ms(8_000)).watched_ms, 1_000);
        assert_eq!(w.observe(&r, t0 + ms(9_000)).watched_ms, 2_000);
    }
}
