//! What the engine remembers of each user: the addresses, networks, devices, countries and destinations they use,
//! their usual hours, running statistics of their amounts, when they last signed in or changed a security setting,
//! and their velocity counters. Every collection is bounded, so a profile stays at about 400 bytes however long the
//! history (its velocity counters move to the heap, about 600 bytes more, only while the user is busy).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::small::Small;
use crate::window::Tally;

/// A remembered key (address, network, device, country or destination) with when it was first and last seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The key.
    pub key: u64,
    /// First seen, in seconds since the epoch.
    pub first_s: u32,
    /// Last seen.
    pub last_s: u32,
}

/// A bounded set of keys; when full, the least recently seen is forgotten. The first two are kept inline: most users
/// have one or two addresses, devices, countries and destinations.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenSet(Small<Seen, 2>);

impl SeenSet {
    /// The entry for `key`, if remembered.
    pub fn get(&self, key: u64) -> Option<&Seen> {
        self.0.iter().find(|s| s.key == key)
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Remembers `key` at `now_s`, keeping at most `cap` keys.
    pub fn see(&mut self, key: u64, now_s: u32, cap: usize) {
        if let Some(s) = self.0.iter_mut().find(|s| s.key == key) {
            s.last_s = s.last_s.max(now_s);
            return;
        }
        let entry = Seen { key, first_s: now_s, last_s: now_s };
        if self.0.len() < cap {
            self.0.push(entry);
        } else if let Some(oldest) = self.0.iter_mut().min_by_key(|s| s.last_s) {
            *oldest = entry;
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A running mean and mean absolute deviation (exponentially weighted, α = 1/8) of amounts in micro-dollars, in
/// integers.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ewma {
    /// How many amounts were seen.
    pub n: u32,
    /// The running mean.
    pub mean: u64,
    /// The running mean absolute deviation from the mean.
    pub deviation: u64,
}

impl Ewma {
    /// Adds an amount.
    pub fn add(&mut self, x: u64) {
        if self.n == 0 {
            self.mean = x;
            self.deviation = 0;
        } else {
            let distance = x.abs_diff(self.mean);
            self.deviation = ewma_step(self.deviation, distance);
            self.mean = ewma_step(self.mean, x);
        }
        self.n = self.n.saturating_add(1);
    }

    /// How many deviations `x` lies from the mean, in millionths (0 with fewer than three amounts seen). The deviation
    /// is floored at a tenth of the mean and at one dollar, so a user who always moves the same amount is not
    /// flagged for a cent more.
    pub fn score_micro(&self, x: u64) -> i64 {
        if self.n < 3 {
            return 0;
        }
        let floor = (self.mean / 10).max(crate::event::MICRO_USD_PER_USD);
        let d = self.deviation.max(floor);
        let z = u128::from(x.abs_diff(self.mean)) * 1_000_000 / u128::from(d);
        i64::try_from(z).unwrap_or(i64::MAX)
    }
}

fn ewma_step(current: u64, x: u64) -> u64 {
    // current + (x − current) / 8, in u128 so that neither side overflows.
    let (c, x) = (i128::from(current), i128::from(x));
    u64::try_from(c + (x - c) / 8).unwrap_or(u64::MAX)
}

/// The metrics of a user's [`Tally`], as bit positions: every event counts in `EVENTS` and at most one other.
pub mod metric {
    /// Every event.
    pub const EVENTS: usize = 0;
    /// Completed sign-ins (a second factor, or a passkey).
    pub const SIGN_INS: usize = 1;
    /// Failed sign-in steps.
    pub const FAILED_SIGN_INS: usize = 2;
    /// API-key requests.
    pub const API_REQUESTS: usize = 3;
    /// Security changes.
    pub const SECURITY_CHANGES: usize = 4;
    /// Withdrawal requests, with their values.
    pub const WITHDRAWALS: usize = 5;
    /// Deposits, with their values.
    pub const DEPOSITS: usize = 6;
}

/// One user's profile.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Events seen.
    pub events: u32,
    /// Sign-ins learned from (successful and accepted, or whose challenge was passed).
    pub sign_ins: u32,
    /// The first event's time.
    pub first_seen_s: u32,
    /// The last learned sign-in (0: never).
    pub last_sign_in_s: u32,
    /// The last security change (0: never).
    pub last_security_change_s: u32,
    /// The last sign-in from a device never seen before in a country never seen before (0: never).
    pub last_new_device_abroad_s: u32,
    /// The country of the last event that had one (its code, 0: none) and when.
    pub last_country: u16,
    /// When the last event with a country happened.
    pub last_country_s: u32,
    /// Client addresses.
    pub ips: SeenSet,
    /// Their networks (/24 for IPv4, /48 for IPv6).
    pub networks: SeenSet,
    /// Devices.
    pub devices: SeenSet,
    /// Countries.
    pub countries: SeenSet,
    /// Withdrawal destinations.
    pub destinations: SeenSet,
    /// Sign-ins per hour of the day (UTC), halved when one reaches 255.
    pub hours: [u8; 24],
    /// Withdrawal amounts.
    pub withdrawal_amounts: Ewma,
    /// Deposit amounts.
    pub deposit_amounts: Ewma,
    /// Velocity counters keyed by this user (see [`metric`]), with the amounts of withdrawals and deposits.
    pub counters: Tally<u64>,
}

/// Bounds of a profile's collections.
pub const IPS_CAP: usize = 8;
/// Networks remembered.
pub const NETWORKS_CAP: usize = 8;
/// Devices remembered.
pub const DEVICES_CAP: usize = 8;
/// Countries remembered.
pub const COUNTRIES_CAP: usize = 8;
/// Destinations remembered.
pub const DESTINATIONS_CAP: usize = 16;

impl Profile {
    /// Whether the hour is one this user signs in at: the hour and its neighbours hold at least a sixteenth of their
    /// sign-ins (always true before five sign-ins: too little to tell).
    pub fn hour_usual(&self, hour: usize) -> bool {
        let total: u32 = self.hours.iter().map(|&h| u32::from(h)).sum();
        if total < 5 {
            return true;
        }
        let near = u32::from(self.hours[(hour + 23) % 24])
            + u32::from(self.hours[hour % 24])
            + u32::from(self.hours[(hour + 1) % 24]);
        near * 16 >= total
    }

    /// Counts a sign-in at `hour`.
    pub fn learn_hour(&mut self, hour: usize) {
        let h = &mut self.hours[hour % 24];
        if *h == u8::MAX {
            for h in &mut self.hours {
                *h /= 2;
            }
        }
        self.hours[hour % 24] += 1;
    }
}

/// The key of an address.
pub fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => (1 << 32) | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return ip_key(IpAddr::V4(v4));
            }
            hash64(&u128::from(v6)) | (1 << 63)
        }
    }
}

/// The key of an address's network: its /24 for IPv4, its /48 for IPv6.
pub fn network_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => (2 << 32) | u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return network_key(IpAddr::V4(v4));
            }
            let top48 = u64::try_from(u128::from(v6) >> 80).unwrap_or(0);
            (3 << 48) | top48
        }
    }
}

/// A stable 64-bit hash (destinations, IPv6 addresses). FxHash is deterministic across runs and machines, so
/// snapshots and back-tests agree.
pub fn hash64<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_sets_forget_the_least_recent() {
        let mut s = SeenSet::default();
        for k in 0..10u64 {
            s.see(k, 100 + k as u32, 4);
        }
        assert_eq!(s.len(), 4);
        assert!(s.contains(9) && !s.contains(0));
        s.see(9, 500, 4);
        assert_eq!(s.get(9).map(|e| (e.first_s, e.last_s)), Some((109, 500)));
    }

    #[test]
    fn amount_scores_need_history_and_grow_with_distance() {
        let mut e = Ewma::default();
        e.add(100_000_000);
        assert_eq!(e.score_micro(10_000_000_000), 0, "no score before three amounts");
        for x in [110_000_000, 90_000_000, 105_000_000, 95_000_000] {
            e.add(x);
        }
        let usual = e.score_micro(100_000_000);
        let large = e.score_micro(5_000_000_000);
        assert!(usual < 1_000_000, "{usual}");
        assert!(large > 50_000_000, "{large}");
    }

    #[test]
    fn networks_group_addresses() {
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.200".parse().unwrap();
        let c: IpAddr = "203.0.114.7".parse().unwrap();
        assert_eq!(network_key(a), network_key(b));
        assert_ne!(network_key(a), network_key(c));
        assert_ne!(ip_key(a), ip_key(b));
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:ffff::9".parse().unwrap();
        assert_eq!(network_key(v6a), network_key(v6b));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(ip_key(mapped), ip_key(a));
    }

    #[test]
    fn usual_hours_follow_the_history() {
        let mut p = Profile::default();
        for _ in 0..20 {
            p.learn_hour(9);
        }
        assert!(p.hour_usual(9) && p.hour_usual(10) && !p.hour_usual(3));
    }
}
