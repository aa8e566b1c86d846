//! Time as an injected dependency.
//!
//! Pure code (the ledger, policy, risk scoring) never reads the clock: it takes the time as an argument. The shell
//! reads a [`Clock`] and passes the value in, so tests and simulations can drive time explicitly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Nanoseconds since 1970-01-01T00:00:00Z.
    fn now_ns(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to: for tests, simulations and the demo.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock that reads `start_ns`.
    pub fn new(start_ns: u64) -> ManualClock {
        ManualClock(AtomicU64::new(start_ns))
    }

    /// Moves the clock forward by `delta_ns`.
    pub fn advance_ns(&self, delta_ns: u64) {
        self.0.fetch_add(delta_ns, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ns`.
    pub fn set_ns(&self, now_ns: u64) {
        self.0.store(now_ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
