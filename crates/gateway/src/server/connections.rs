//! Client connections as a whole: how many are open (`server.maxConnections`), which are idle, and
//! the worker's handle on each for graceful shutdown and eviction.
//!
//! Every client connection may hold an upstream connection too, so the process's descriptors bound
//! how many it can serve. Past `max_connections` a new connection takes the place of the oldest idle
//! one of its worker (an HTTP/1.1 connection waiting for a request head, an HTTP/2 connection with no
//! open stream), as nginx drains its reusable connections; with none idle it is closed at once. Either
//! way the clients at work and the admin API keep their descriptors, and each is counted in `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

/// Counts of the gateway's client connections, across its workers.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicUsize,
    refused: AtomicU64,
    evicted: AtomicU64,
}

impl ConnectionStats {
    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// New connections closed at once because `max_connections` were open and none was idle.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Idle connections closed to make room for a new one.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// A worker's handle on one of its connections, for graceful shutdown and eviction. Counted open in
/// [`ConnectionStats`] while it lives.
pub(crate) struct ConnCtl {
    closing: AtomicBool,
    /// Closing because a new connection needed its place (close now, whatever a graceful close would wait for).
    evicted: AtomicBool,
    /// Waiting for a request (HTTP/1.1) or with no open stream (HTTP/2): may be evicted.
    idle: AtomicBool,
    /// Woken when `closing` turns true; registered while the connection waits.
    waker: AtomicWaker,
    stats: Arc<ConnectionStats>,
}

impl ConnCtl {
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Marks the connection idle (or not); only idle connections are evicted.
    pub(crate) fn set_idle(&self, idle: bool) {
        if self.idle.load(Ordering::Relaxed) != idle {
            self.idle.store(idle, Ordering::Relaxed);
        }
    }

    /// Registers the waker to be told when the connection is to close.
    pub(crate) fn register(&self, cx: &mut Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// Ready once the worker is shutting down or the connection is evicted (registers the waker).
    pub(crate) fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.register(cx);
        if self.closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn close(&self, evicted: bool) {
        if evicted {
            self.evicted.store(true, Ordering::Release);
        }
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Drop for ConnCtl {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's live connections.
pub(crate) struct Conns {
    all: Vec<Weak<ConnCtl>>,
    accepted: usize,
    stats: Arc<ConnectionStats>,
}

impl Conns {
    pub(crate) fn new(stats: Arc<ConnectionStats>) -> Conns {
        Conns {
            all: Vec::new(),
            accepted: 0,
            stats,
        }
    }

    /// Takes a new connection if there is room (`max` open across the workers), making room by
    /// evicting this worker's oldest idle connection if need be; `None` when it is to be refused.
    pub(crate) fn admit(&mut self, max: usize) -> Option<Arc<ConnCtl>> {
        if self.stats.open() >= max {
            if !self.evict_oldest_idle() {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        Some(self.add())
    }

    pub(crate) fn add(&mut self) -> Arc<ConnCtl> {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(ConnCtl {
            closing: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            stats: self.stats.clone(),
        });
        self.accepted += 1;
        if self.accepted & 1023 == 0 {
            self.all.retain(|w| w.strong_count() > 0);
        }
        self.all.push(Arc::downgrade(&ctl));
        ctl
    }

    /// Closes the oldest connection that is idle and not already closing; whether there was one.
    fn evict_oldest_idle(&mut self) -> bool {
        self.all.retain(|w| w.strong_count() > 0);
        let oldest = self
            .all
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.idle.load(Ordering::Relaxed) && !c.closing());
        match oldest {
            Some(c) => {
                c.close(true);
                true
            }
            None => false,
        }
    }

    /// Closes idle connections now and busy ones after their current request.
    pub(crate) fn close_all(&self) {
        for ctl in self.all.iter().filter_map(Weak::upgrade) {
            ctl.close(false);
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.all.iter().filter(|w| w.strong_count() > 0).count()
    }
}

/// How long an accept loop waits after a failed accept (out of descriptors, and the like): doubling
/// from 10 ms to 1 s while it keeps failing.
#[derive(Default)]
pub(crate) struct Backoff(u32);

impl Backoff {
    pub(crate) fn failed(&mut self) -> Duration {
        let wait = Duration::from_millis(10u64 << self.0.min(7)).min(Duration::from_secs(1));
        self.0 = self.0.saturating_add(1);
        wait
    }

    pub(crate) fn succeeded(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_the_oldest_idle_connection_makes_room_else_it_is_refused() {
        let stats = Arc::new(ConnectionStats::default());
        let mut conns = Conns::new(stats.clone());
        let a = conns.admit(3).unwrap();
        let b = conns.admit(3).unwrap();
        let c = conns.admit(3).unwrap();
        assert_eq!(stats.open(), 3);
        // None idle: refused.
        assert!(conns.admit(3).is_none());
        assert_eq!((stats.refused(), stats.evicted()), (1, 0));
        // b and c idle: b, the older, is closed (evicted) for the new one.
        b.set_idle(true);
        c.set_idle(true);
        let d = conns.admit(3).unwrap();
        assert!(b.closing() && b.evicted() && !c.closing() && !a.closing());
        assert_eq!((stats.refused(), stats.evicted(), stats.open()), (1, 1, 4));
        // b is already closing; c goes next.
        let _e = conns.admit(3).unwrap();
        assert!(c.evicted());
        drop((b, c));
        assert_eq!(stats.open(), 3);
        // A shutdown closes without evicting.
        conns.close_all();
        assert!(a.closing() && !a.evicted() && d.closing());
    }

    #[test]
    fn accept_back_off_doubles_to_a_second() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }
}
