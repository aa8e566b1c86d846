//! Velocity counters over sliding windows (1 minute, 1 hour, 24 hours), small enough to keep one per user, address,
//! device, destination and API key.
//!
//! A [`Tally`] counts the events of one key in up to eight metrics (a failed sign-in from an address counts in the
//! address's `events` and in its `failed_sign_ins`) and sums their amounts. Most keys are quiet (a user signs in once
//! or twice a day), so while no more than [`LOG`] of its events fall within the last day a tally keeps each of them,
//! its time, metrics and amount, and its counts are exact. A busier key moves to rings: a window of `W` seconds is a
//! ring of five slots of `W / 4` seconds, and the count "in the last `W` seconds" is the sum of the five newest slots,
//! which cover between `W` and `1.25 W` seconds back. Either way a burst is never undercounted (a rule that fires at
//! the fifth failure in a minute fires at the fifth, whatever the slot boundaries) and an event is forgotten at most a
//! quarter-window late. A tally whose rings have all gone stale goes back to keeping events one by one.
//!
//! A quiet key costs 64 bytes (88 with amounts); a busy one, about 70 bytes more per metric it uses.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::small::Small;

/// The windows, in seconds, in the order features name them (`_1m`, `_1h`, `_24h`).
pub const WINDOWS_S: [u32; 3] = [60, 3_600, 86_400];

/// The suffixes of the windows in feature names.
pub const WINDOW_NAMES: [&str; 3] = ["1m", "1h", "24h"];

/// How many events within the last day a tally keeps one by one before it moves to rings.
pub const LOG: usize = 6;

const DAY_S: u32 = WINDOWS_S[2];

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
        if index >= self.newest.saturating_add(SLOTS) {
            return T::default();
        }
        let lag = index.saturating_sub(self.newest);
        (0..SLOTS - lag).map(|k| self.slots[((self.newest + SLOTS - k) % SLOTS) as usize]).sum()
    }
}

/// One metric's counts (`u32`) or sums (`u64`) over the three windows.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Windows<T>([Ring<T>; 3]);

impl<T: Copy + Default + std::iter::Sum<T> + Saturating> Windows<T> {
    fn add(&mut self, now_s: u32, value: T) {
        for (i, ring) in self.0.iter_mut().enumerate() {
            let slot = ring.advance(now_s / slot_s(i));
            *slot = slot.saturating_plus(value);
        }
    }

    fn get(&self, i: usize, now_s: u32) -> T {
        self.0[i].total(now_s / slot_s(i))
    }
}

/// Addition that stops at the type's maximum.
trait Saturating {
    fn saturating_plus(self, other: Self) -> Self;
}

impl Saturating for u32 {
    fn saturating_plus(self, other: u32) -> u32 {
        self.saturating_add(other)
    }
}

impl Saturating for u64 {
    fn saturating_plus(self, other: u64) -> u64 {
        self.saturating_add(other)
    }
}

type Counts = Windows<u32>;
type Sums = Windows<u64>;

/// What an event adds to the sums: `u64` (micro-dollars) for tallies that sum, `()` for those that only count.
pub trait Amount: Copy + Default + Eq + std::fmt::Debug + Serialize + DeserializeOwned {
    /// The amount as a number.
    fn value(self) -> u64;
}

impl Amount for () {
    fn value(self) -> u64 {
        0
    }
}

impl Amount for u64 {
    fn value(self) -> u64 {
        self
    }
}

/// The events of the last day, one by one, in the order they were counted.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log<A> {
    len: u8,
    metrics: [u8; LOG],
    times: [u32; LOG],
    amounts: [A; LOG],
}

impl<A: Amount> Log<A> {
    fn entries(&self) -> impl Iterator<Item = (u8, u32, A)> + '_ {
        (0..usize::from(self.len)).map(|i| (self.metrics[i], self.times[i], self.amounts[i]))
    }

    /// The entries of metric `m` inside window `i` at `now_s` (events stamped after `now_s`, from a clock ahead of
    /// this one, count too: as in the rings).
    fn within(&self, m: usize, i: usize, now_s: u32) -> impl Iterator<Item = A> + '_ {
        self.entries()
            .filter(move |&(ms, t, _)| ms & (1 << m) != 0 && t.saturating_add(WINDOWS_S[i]) > now_s)
            .map(|e| e.2)
    }

    /// Forgets the events a day or more before `now_s`, keeping the order of the rest.
    fn forget_before(&mut self, now_s: u32) {
        let mut kept = 0;
        for i in 0..usize::from(self.len) {
            if self.times[i].saturating_add(DAY_S) > now_s {
                self.metrics[kept] = self.metrics[i];
                self.times[kept] = self.times[i];
                self.amounts[kept] = self.amounts[i];
                kept += 1;
            }
        }
        self.len = kept as u8;
    }
}

/// A busy key's rings, by metric (only as far as the highest metric counted; sums only for metrics given amounts).
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rings {
    /// The latest time counted.
    last_s: u32,
    counts: Vec<Counts>,
    sums: Vec<Sums>,
}

impl Rings {
    fn add(&mut self, now_s: u32, metrics: u8, amount: u64) {
        self.last_s = self.last_s.max(now_s);
        let top = 8 - metrics.leading_zeros() as usize;
        if self.counts.len() < top {
            self.counts.resize(top, Counts::default());
        }
        if amount > 0 && self.sums.len() < top {
            self.sums.resize(top, Sums::default());
        }
        let mut bits = metrics;
        while bits != 0 {
            let m = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            self.counts[m].add(now_s, 1);
            if amount > 0 {
                self.sums[m].add(now_s, amount);
            }
        }
    }

    /// Whether every ring is empty at `now_s`: the day window's newest slot, the latest counted, is out of it.
    fn stale(&self, now_s: u32) -> bool {
        now_s / slot_s(2) >= (self.last_s / slot_s(2)).saturating_add(SLOTS)
    }
}

/// Counts and sums of one key's events, by metric, over the three windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tally<A> {
    /// Quiet: each event of the last day.
    Log(Log<A>),
    /// Busy: rings (inline, so that reading them follows one pointer, not two).
    Rings(Rings),
}

impl<A: Amount> Default for Tally<A> {
    fn default() -> Self {
        Tally::Log(Log::default())
    }
}

impl<A: Amount> Tally<A> {
    /// Counts one event at `now_s` in each metric whose bit is set in `metrics`, adding `amount` to their sums.
    pub fn add(&mut self, now_s: u32, metrics: u8, amount: A) {
        self.settle(now_s);
        match self {
            Tally::Rings(rings) => rings.add(now_s, metrics, amount.value()),
            Tally::Log(log) => {
                if usize::from(log.len) == LOG {
                    log.forget_before(now_s);
                }
                let len = usize::from(log.len);
                if len < LOG {
                    log.metrics[len] = metrics;
                    log.times[len] = now_s;
                    log.amounts[len] = amount;
                    log.len += 1;
                } else {
                    let mut rings = Rings::default();
                    // Sized once for every metric it will hold, rather than grown metric by metric.
                    let all = log.metrics[..LOG].iter().fold(metrics, |a, m| a | m);
                    rings.counts.reserve_exact(8 - all.leading_zeros() as usize);
                    for (ms, t, a) in log.entries() {
                        rings.add(t, ms, a.value());
                    }
                    rings.add(now_s, metrics, amount.value());
                    *self = Tally::Rings(rings);
                }
            }
        }
    }

    /// The count of metric `m` in window `i` (0 = 1 minute, 1 = 1 hour, 2 = 24 hours) at `now_s`.
    pub fn count(&self, m: usize, i: usize, now_s: u32) -> u64 {
        match self {
            Tally::Log(log) => log.within(m, i, now_s).count() as u64,
            Tally::Rings(rings) => rings.counts.get(m).map_or(0, |c| u64::from(c.get(i, now_s))),
        }
    }

    /// The sum of metric `m`'s amounts in window `i` at `now_s`.
    pub fn sum(&self, m: usize, i: usize, now_s: u32) -> u64 {
        match self {
            Tally::Log(log) => log.within(m, i, now_s).fold(0u64, |s, a| s.saturating_add(a.value())),
            Tally::Rings(rings) => rings.sums.get(m).map_or(0, |s| s.get(i, now_s)),
        }
    }

    /// When this tally last counted anything, for pruning idle keys.
    pub fn idle_since_s(&self) -> u32 {
        match self {
            Tally::Log(log) => log.entries().map(|e| e.1).max().unwrap_or(0),
            Tally::Rings(rings) => rings.last_s,
        }
    }

    /// Goes back to keeping events one by one if the rings have all gone stale by `now_s` (freeing them).
    pub fn settle(&mut self, now_s: u32) {
        if let Tally::Rings(rings) = self
            && rings.stale(now_s)
        {
            *self = Tally::default();
        }
    }

    /// Whether this tally has moved to rings.
    pub fn is_busy(&self) -> bool {
        matches!(self, Tally::Rings(_))
    }
}

/// The distinct users seen with one address, device or destination, each with when they were last seen; at most
/// [`Accounts::CAP`] are kept (the least recently seen is forgotten), so counts saturate there. The first two are kept
/// inline: most addresses and devices are seen with one user.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts(Small<(u64, u32), 2>);

impl Accounts {
    /// How many distinct users are remembered at most: above the thresholds rules use (the default rules go up to
    /// 20 accounts an hour on one address).
    pub const CAP: usize = 32;

    /// Notes `user` at `now_s`.
    pub fn see(&mut self, user: u64, now_s: u32) {
        if let Some(entry) = self.0.iter_mut().find(|(u, _)| *u == user) {
            entry.1 = entry.1.max(now_s);
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
        let mut c = Tally::<()>::default();
        for t in 1_000_020..1_000_030 {
            c.add(t, 1, ());
        }
        assert!(c.is_busy(), "ten events in a day do not fit the log");
        assert_eq!(c.count(0, 0, 1_000_030), 10);
        assert_eq!(c.count(0, 1, 1_000_030), 10);
        // Two minutes later the minute window is empty, the hour still holds them.
        assert_eq!(c.count(0, 0, 1_000_150), 0);
        assert_eq!(c.count(0, 1, 1_000_150), 10);
        // A day and more later everything is gone, and the next event goes back to the log.
        assert_eq!(c.count(0, 2, 1_000_030 + 2 * 86_400), 0);
        c.add(1_000_030 + 2 * 86_400, 1, ());
        assert!(!c.is_busy());
        assert_eq!(c.count(0, 2, 1_000_030 + 2 * 86_400), 1);
    }

    #[test]
    fn a_quiet_key_is_counted_exactly_by_metric() {
        let mut c = Tally::<u64>::default();
        c.add(7_200, 0b01, 0);
        c.add(7_210, 0b11, 5_000_000);
        c.add(7_250, 0b11, 2_000_000);
        assert!(!c.is_busy());
        assert_eq!((c.count(0, 1, 7_300), c.count(1, 1, 7_300)), (3, 2));
        assert_eq!(c.sum(1, 1, 7_300), 7_000_000);
        // Exactly a minute after the second event it has left the minute window; the third has not.
        assert_eq!((c.count(1, 0, 7_270), c.sum(1, 0, 7_270)), (1, 2_000_000));
        assert_eq!(c.count(5, 2, 7_300), 0, "a metric never counted");
    }

    #[test]
    fn sums_follow_counts_in_rings() {
        let mut s = Tally::<u64>::default();
        for k in 0..LOG as u32 {
            s.add(7_000 + k, 0b01, 0);
        }
        s.add(7_200, 0b11, 5_000_000);
        s.add(7_210, 0b11, 2_000_000);
        assert!(s.is_busy());
        assert_eq!((s.count(1, 1, 7_300), s.sum(1, 1, 7_300)), (2, 7_000_000));
        assert_eq!(s.sum(1, 0, 7_300), 0);
        assert_eq!(s.count(0, 1, 7_300), LOG as u64 + 2);
    }

    #[test]
    fn accounts_are_distinct_and_bounded() {
        let mut a = Accounts::default();
        for u in 0..80 {
            a.see(u % 40, 100 + u as u32);
        }
        assert_eq!(a.count(2, 200), Accounts::CAP as u64);
        a.see(3, 90_000);
        assert_eq!(a.count(0, 90_001), 1);
    }

    proptest! {
        /// Sliding-window counts and sums never undercount: at any time, they are at least the exact figures of the
        /// events in the last `W` seconds, and at most those of the last `1.25 W` seconds, whether the tally keeps
        /// events one by one, has moved to rings, or has gone back.
        #[test]
        fn the_estimate_is_bracketed_by_exact_counts(
            steps in proptest::collection::vec((prop_oneof![4 => 0u32..90, 1 => 0u32..40_000], 1u8..4, 0u64..1_000), 1..200),
            probe in 0u32..200,
        ) {
            let mut c = Tally::<u64>::default();
            let mut events = Vec::new();
            let mut t = 1_000_000u32;
            for (gap, metrics, amount) in steps {
                t += gap;
                c.add(t, metrics, amount);
                events.push((t, metrics, amount));
            }
            let now = t + probe;
            for (i, w) in WINDOWS_S.iter().enumerate() {
                for m in 0..2 {
                    let of = |span: u32| events.iter().filter(move |&&(x, ms, _)| ms & (1 << m) != 0 && x + span > now);
                    let (exact, wide) = (of(*w).count() as u64, of(w + w / 4).count() as u64);
                    let (exact_sum, wide_sum) = (of(*w).map(|e| e.2).sum::<u64>(), of(w + w / 4).map(|e| e.2).sum::<u64>());
                    let (est, est_sum) = (c.count(m, i, now), c.sum(m, i, now));
                    prop_assert!(est >= exact && est <= wide, "window {i} metric {m}: {est} not in [{exact}, {wide}]");
                    prop_assert!(est_sum >= exact_sum && est_sum <= wide_sum, "window {i} metric {m}: sum {est_sum} not in [{exact_sum}, {wide_sum}]");
                }
            }
        }
    }
}
