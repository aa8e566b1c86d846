//! Velocity counters over sliding windows (1 minute, 1 hour, 24 hours), small enough to keep one per user, address,
//! device and destination.
//!
//! A window of `W` seconds is kept as a ring of five slots of `W / 4` seconds each. The count "in the last `W`
//! seconds" is the sum of the five newest slots, which cover between `W` and `1.25 W` seconds back: a burst is never
//! undercounted (a rule that fires at 5 failures in a minute fires at the fifth failure whatever the slot
//! boundaries), and an event is forgotten at most a quarter-window late. 24 bytes a window for counts.

use serde::{Deserialize, Serialize};

use crate::small::Small;

/// The windows, in seconds, in the order features name them (`_1m`, `_1h`, `_24h`).
pub const WINDOWS_S: [u32; 3] = [60, 3_600, 86_400];

/// The suffixes of the windows in feature names.
pub const WINDOW_NAMES: [&str; 3] = ["1m", "1h", "24h"];

const SLOTS: u32 = 5;

/// The slot length of window `i`.
const fn slot_s(i: usize) -> u32 {
    WINDOWS_S[i] / (SLOTS - 1)
}

/// One window's ring: `newest` is the index (time / slot length) of the newest slot, which lives at
/// `newest % SLOTS`.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Ring<T> {
    newest: u32,
    slots: [T; SLOTS as usize],
}

impl<T: Copy + Default + std::iter::Sum<T>> Ring<T> {
    fn advance(&mut self, index: u32) -> &mut T {
        if index > self.newest {
            let stale = (index - self.newest).min(SLOTS);
            for k in 0..stale {
                self.slots[((index - k) % SLOTS) as usize] = T::default();
            }
            self.newest = index;
        }
        // An event older than the newest slot (clocks of two nodes) lands in its own slot while it is in the ring.
        let index = if self.newest - index < SLOTS { index } else { self.newest };
        &mut self.slots[(index % SLOTS) as usize]
    }

    fn total(&self, index: u32) -> T {
        if index >= self.newest + SLOTS {
            return T::default();
        }
        let lag = index.saturating_sub(self.newest);
        (0..SLOTS - lag).map(|k| self.slots[((self.newest + SLOTS - k) % SLOTS) as usize]).sum()
    }
}

/// Event counts over the three windows.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts([Ring<u32>; 3]);

impl Counts {
    /// Counts one event at `now_s`.
    pub fn add(&mut self, now_s: u32) {
        for (i, ring) in self.0.iter_mut().enumerate() {
            let slot = ring.advance(now_s / slot_s(i));
            *slot = slot.saturating_add(1);
        }
    }

    /// The count in window `i` (0 = 1 minute, 1 = 1 hour, 2 = 24 hours) at `now_s`.
    pub fn get(&self, i: usize, now_s: u32) -> u64 {
        u64::from(self.0[i].total(now_s / slot_s(i)))
    }

    /// When this counter last counted anything, to the quarter-hour (for pruning idle counters).
    pub fn idle_since_s(&self) -> u32 {
        self.0[1].newest.saturating_mul(slot_s(1))
    }
}

/// Sums (of micro-dollars) over the three windows, with their counts.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    counts: Counts,
    sums: [Ring<u64>; 3],
}

impl Sums {
    /// Adds `value` at `now_s`.
    pub fn add(&mut self, now_s: u32, value: u64) {
        self.counts.add(now_s);
        for (i, ring) in self.sums.iter_mut().enumerate() {
            let slot = ring.advance(now_s / slot_s(i));
            *slot = slot.saturating_add(value);
        }
    }

    /// The count in window `i` at `now_s`.
    pub fn count(&self, i: usize, now_s: u32) -> u64 {
        self.counts.get(i, now_s)
    }

    /// The sum in window `i` at `now_s`.
    pub fn sum(&self, i: usize, now_s: u32) -> u64 {
        self.sums[i].total(now_s / slot_s(i))
    }

    /// When this counter last counted anything, to the quarter-hour.
    pub fn idle_since_s(&self) -> u32 {
        self.counts.idle_since_s()
    }
}

/// The distinct users seen with one address, device or destination, each with when they were last seen; at most
/// [`Accounts::CAP`] are kept (the least recently seen is forgotten), so counts saturate there. The first two are kept
/// inline: most addresses and devices are seen with one user.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts(Small<(u64, u32), 2>);

impl Accounts {
    /// How many distinct users are remembered at most.
    pub const CAP: usize = 16;

    /// Notes `user` at `now_s`.
    pub fn see(&mut self, user: u64, now_s: u32) {
        if let Some(entry) = self.0.iter_mut().find(|(u, _)| *u == user) {
            entry.1 = now_s;
            return;
        }
        if self.0.len() < Self::CAP {
            self.0.push((user, now_s));
        } else if let Some(oldest) = self.0.iter_mut().min_by_key(|(_, t)| *t) {
            *oldest = (user, now_s);
        }
    }

    /// Distinct users seen in window `i` before `now_s`.
    pub fn count(&self, i: usize, now_s: u32) -> u64 {
        self.0.iter().filter(|(_, t)| t.saturating_add(WINDOWS_S[i]) > now_s).count() as u64
    }

    /// When a user was last seen here.
    pub fn idle_since_s(&self) -> u32 {
        self.0.iter().map(|(_, t)| *t).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_inside_one_bucket_is_counted_exactly() {
        let mut c = Counts::default();
        for t in 1_000_020..1_000_025 {
            c.add(t);
        }
        assert_eq!(c.get(0, 1_000_025), 5);
        assert_eq!(c.get(1, 1_000_025), 5);
        // Two minutes later the minute window is empty, the hour still holds them.
        assert_eq!(c.get(0, 1_000_145), 0);
        assert_eq!(c.get(1, 1_000_145), 5);
        // A day and more later everything is gone.
        assert_eq!(c.get(2, 1_000_025 + 2 * 86_400), 0);
    }

    #[test]
    fn sums_follow_counts() {
        let mut s = Sums::default();
        s.add(7_200, 5_000_000);
        s.add(7_210, 2_000_000);
        assert_eq!((s.count(1, 7_300), s.sum(1, 7_300)), (2, 7_000_000));
        assert_eq!(s.sum(0, 7_300), 0);
    }

    #[test]
    fn accounts_are_distinct_and_bounded() {
        let mut a = Accounts::default();
        for u in 0..40 {
            a.see(u % 20, 100 + u as u32);
        }
        assert_eq!(a.count(2, 200), Accounts::CAP as u64);
        a.see(3, 90_000);
        assert_eq!(a.count(0, 90_001), 1);
    }

    proptest! {
        /// Sliding-window counts never undercount: at any time, the count is at least the exact number of events in
        /// the last `W` seconds, and at most the exact number in the last `1.25 W` seconds.
        #[test]
        fn the_estimate_is_bracketed_by_exact_counts(gaps in proptest::collection::vec(0u32..90, 1..200), probe in 0u32..200) {
            let mut c = Counts::default();
            let mut times = Vec::new();
            let mut t = 1_000_000u32;
            for g in gaps {
                t += g;
                c.add(t);
                times.push(t);
            }
            let now = t + probe;
            for (i, w) in WINDOWS_S.iter().enumerate() {
                let exact = times.iter().filter(|&&x| x + w > now).count() as u64;
                let wide = times.iter().filter(|&&x| x + w + w / 4 > now).count() as u64;
                let est = c.get(i, now);
                prop_assert!(est >= exact, "window {i}: estimate {est} < exact {exact}");
                prop_assert!(est <= wide, "window {i}: estimate {est} > {wide}");
            }
        }
    }
}
