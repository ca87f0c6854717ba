//! Warnings that one cause can repeat many times a second (a client reconnecting, an accept that
//! keeps failing, a log file that cannot be written): each call site writes at most one line a
//! second, saying how many it left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// A warning that may come many times a second from one cause (a client reconnecting, an accept that
/// keeps failing): written at most once a second, with how many were left out since the last one.
pub(crate) struct Every {
    /// The second of the last line written (since the epoch), and how many were left out since.
    last: AtomicU64,
    left_out: AtomicU64,
}

impl Every {
    pub(crate) const fn second() -> Every {
        Every {
            last: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now (`n` were left out since the last one), else `None`
    /// (and this one is counted as left out).
    pub(crate) fn check(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        if now > last && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_written_at_most_once_a_second_with_what_was_left_out() {
        let w = Every::second();
        assert_eq!(w.check(), Some(0));
        let mut left = 0;
        let mut written = None;
        for _ in 0..1000 {
            match w.check() {
                None => left += 1,
                Some(n) => {
                    written = Some(n);
                    break;
                }
            }
        }
        // Within one second nothing more is written (unless the second turned: then it says how many).
        if let Some(n) = written {
            assert_eq!(n, left);
        } else {
            assert_eq!(left, 1000);
        }
    }
}
