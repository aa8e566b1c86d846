//! The engine: scores an event against the user's profile and the velocity counters, decides, then learns.
//!
//! For each event, in order: the counters of the user, address, device, destination and API key count it (so a rule
//! at "the fifth failure in a minute" sees five); the features are computed from the profile *as it was* (so a new
//! device is new); every rule that looks at this kind of event is evaluated; the outcome is the most severe of the
//! enforced rules' outcomes and of the score threshold reached; and only then does the profile learn from the event,
//! and only from what the user has proven: a completed sign-in that was allowed, a passed challenge, an allowed
//! request. A failed or refused attempt teaches the profile nothing, so an attacker cannot make their address
//! familiar by trying.
//!
//! The engine is deterministic: it reads no clock (time is the event's) and no randomness, so the same events in the
//! same order give the same decisions.

use std::borrow::Borrow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{Change, Country, Event, EventKind, Factor, Kind};
use crate::features::{self, COUNT, Features, NEVER_S, SCALE, VELOCITY, f, velocity_index};
use crate::geo;
use crate::profile::{self, Profile, hash64, ip_key, metric, network_key};
use crate::rules::{Mode, Outcome, RuleSet};
use crate::sharded::Sharded;
use crate::window::{Accounts, Amount, Tally, WINDOWS_S};

/// Why a decision is what it is: one matching rule, with the features it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// The rule's name.
    pub rule: Arc<str>,
    /// What it is for.
    pub description: Arc<str>,
    /// Its outcome.
    pub outcome: Outcome,
    /// What it added to the score.
    pub score: u32,
    /// Whether it is a shadow rule (recorded, not enforced).
    pub shadow: bool,
    /// The features its condition read, with their values: (feature index, value).
    pub values: Vec<(usize, i64)>,
}

impl Reason {
    /// The features read, as (name, value) for people.
    pub fn display_values(&self) -> Vec<(String, String)> {
        let all = features::all();
        self.values.iter().map(|&(i, v)| (all[i].name.clone(), features::display(i, v))).collect()
    }
}

/// A decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub outcome: Outcome,
    /// The sum of the enforced matching rules' scores.
    pub score: u32,
    /// The rule set's version.
    pub rules_version: u32,
    /// Every matching rule, enforced or shadow, in file order.
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// The enforced reasons.
    pub fn enforced(&self) -> impl Iterator<Item = &Reason> {
        self.reasons.iter().filter(|r| !r.shadow)
    }

    /// One line for people: the outcome and the names of the enforced rules that matched.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.enforced().map(|r| &*r.rule).collect();
        if names.is_empty() {
            self.outcome.name().to_owned()
        } else {
            format!("{} ({})", self.outcome.name(), names.join(", "))
        }
    }
}

/// The counters of an address, a device or a destination, and the users seen with it. The tally's metrics follow
/// the scope's velocity features: an address's are events, sign-ins, failed sign-ins and API requests; a device's
/// events and failed sign-ins; a destination's withdrawals, with their values (`A = u64`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct KeyStats<A> {
    tally: Tally<A>,
    accounts: Accounts,
}

impl<A: Amount> Default for KeyStats<A> {
    fn default() -> Self {
        KeyStats { tally: Tally::default(), accounts: Accounts::default() }
    }
}

/// How many events [`Engine::evaluate_batch`] prepares at once.
pub const AHEAD: usize = 8;

/// How many of each thing an engine holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Users' profiles.
    pub profiles: usize,
    /// Profiles whose counters have moved to rings (more events within a day than a quiet user's log holds).
    pub busy_profiles: usize,
    /// Addresses with counters.
    pub ips: usize,
    /// Devices with counters.
    pub devices: usize,
    /// Withdrawal destinations with counters.
    pub destinations: usize,
    /// API keys with counters.
    pub api_keys: usize,
}

/// The engine's whole state, as a snapshot stores it (read back).
#[derive(Default, Deserialize)]
struct State {
    format: u32,
    profiles: Vec<(u64, Profile)>,
    ips: Vec<(u64, KeyStats<()>)>,
    devices: Vec<(u64, KeyStats<()>)>,
    destinations: Vec<(u64, KeyStats<u64>)>,
    api_keys: Vec<(u64, Tally<()>)>,
}

/// The same, borrowed from the engine to be written: serialises to exactly the bytes [`State`] reads, without
/// copying every profile first (at a million users the copy took most of a snapshot's seconds and a gigabyte).
#[derive(Serialize)]
struct StateRef<'a> {
    format: u32,
    profiles: Vec<(u64, &'a Profile)>,
    ips: Vec<(u64, &'a KeyStats<()>)>,
    devices: Vec<(u64, &'a KeyStats<()>)>,
    destinations: Vec<(u64, &'a KeyStats<u64>)>,
    api_keys: Vec<(u64, &'a Tally<()>)>,
}

/// 2: velocity counters keep a quiet key's events one by one ([`Tally`]).
const SNAPSHOT_FORMAT: u32 = 2;

/// An error restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a snapshot of this format.
    #[error("the risk snapshot cannot be read: {0}")]
    Corrupt(String),
}

/// The risk engine: profiles, counters and the rule set in force.
pub struct Engine {
    rules: Arc<RuleSet>,
    /// For each kind of event (in [`Kind::ALL`] order), the features that some rule looking at it reads, as a bit
    /// set: [`Engine::evaluate`] computes only the velocity features among them.
    needed: [u128; Kind::ALL.len()],
    /// Boxed: a profile is over a kilobyte, and a hash table keeps up to half its slots empty, so profiles stored
    /// inline cost about twice their size (2.1 GB instead of 1.2 GB for a million). Every map is sharded, so that
    /// growing one never stalls a decision for long (see [`Sharded`]).
    profiles: Sharded<Box<Profile>>,
    ips: Sharded<KeyStats<()>>,
    devices: Sharded<KeyStats<()>>,
    destinations: Sharded<KeyStats<u64>>,
    api_keys: Sharded<Tally<()>>,
}

fn since(now_s: u32, then_s: u32) -> i64 {
    if then_s == 0 { NEVER_S * SCALE } else { i64::from(now_s.saturating_sub(then_s)) * SCALE }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// The features the rules read, for each kind of event.
fn needed_features(rules: &RuleSet) -> [u128; Kind::ALL.len()] {
    const _: () = assert!(COUNT <= 128, "the feature masks are u128");
    let mut needed = [0u128; Kind::ALL.len()];
    for rule in &rules.rules {
        for (k, kind) in Kind::ALL.iter().enumerate() {
            if rule.on & kind.bit() != 0 {
                for &i in rule.when.reads() {
                    needed[k] |= 1 << i;
                }
            }
        }
    }
    needed
}

impl Engine {
    /// An engine with no history.
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        Engine {
            needed: needed_features(&rules),
            rules,
            profiles: Sharded::default(),
            ips: Sharded::default(),
            devices: Sharded::default(),
            destinations: Sharded::default(),
            api_keys: Sharded::default(),
        }
    }

    /// The rule set in force.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Replaces the rule set (a reload); profiles and counters are kept.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.needed = needed_features(&rules);
        self.rules = rules;
    }

    /// A user's profile.
    pub fn profile(&self, user: u64) -> Option<&Profile> {
        self.profiles.get(user).map(|p| &**p)
    }

    /// How many users have a profile.
    pub fn users(&self) -> usize {
        self.profiles.len()
    }

    /// How much the engine holds.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            profiles: self.profiles.len(),
            busy_profiles: self.profiles.iter().filter(|(_, p)| p.counters.is_busy()).count(),
            ips: self.ips.len(),
            devices: self.devices.len(),
            destinations: self.destinations.len(),
            api_keys: self.api_keys.len(),
        }
    }

    /// Scores `event`, decides, and learns from it.
    pub fn evaluate(&mut self, event: &Event) -> Decision {
        let mut features = [0i64; COUNT];
        // Only the velocity features some rule reads for this kind are computed: the others cannot change the
        // decision, and reading every counter of the user, address and device is much of an event's cost.
        let needed = self.needed[event.kind() as usize];
        self.evaluate_with(event, &mut features, needed)
    }

    /// Scores `events` in order, exactly as [`Engine::evaluate`] on each would (the same decisions, the same state
    /// after), handing each decision to `decided` with the event's index. Faster on a stream: before scoring each
    /// group of [`AHEAD`] events it reads the profile, address and device state they will need, so that their cache
    /// misses (a million profiles do not fit in any cache) are waited for together rather than one after another.
    pub fn evaluate_batch<E: Borrow<Event>>(&mut self, events: &[E], mut decided: impl FnMut(usize, Decision)) {
        for (c, chunk) in events.chunks(AHEAD).enumerate() {
            let touched = chunk.iter().fold(0u64, |t, e| t.wrapping_add(self.touch(e.borrow())));
            std::hint::black_box(touched);
            for (i, e) in chunk.iter().enumerate() {
                decided(c * AHEAD + i, self.evaluate(e.borrow()));
            }
        }
    }

    /// Reads a little of each part of the state `event` will use (the answer is meaningless: it only makes the reads
    /// happen).
    fn touch(&self, event: &Event) -> u64 {
        let mut t = self.profiles.get(event.user.0).map_or(0, |p| {
            u64::from(p.events) ^ u64::from(p.counters.idle_since_s()) ^ p.ips.len() as u64 ^ p.devices.len() as u64
        });
        if let Some(ip) = event.ip {
            t ^= self.ips.get(ip_key(ip)).map_or(0, |s| u64::from(s.tally.idle_since_s()));
        }
        if let Some(device) = event.device {
            t ^= self.devices.get(device).map_or(0, |s| u64::from(s.tally.idle_since_s()));
        }
        t
    }

    /// Like [`Engine::evaluate`], leaving every feature computed for the event in `features`.
    pub fn evaluate_into(&mut self, event: &Event, features: &mut Features) -> Decision {
        self.evaluate_with(event, features, u128::MAX)
    }

    /// Scores, decides and learns; computes the velocity features whose bits are set in `needed` (others are left
    /// as they are in `features`).
    fn evaluate_with(&mut self, event: &Event, features: &mut Features, needed: u128) -> Decision {
        let now_s = event.at_s();
        let kind = event.kind();
        let user = event.user.0;
        let ip = event.ip.map(ip_key);
        let destination = match &event.kind {
            EventKind::Withdrawal { destination, .. } | EventKind::WhitelistChange { destination, .. } => {
                Some(hash64(destination.as_str()))
            }
            _ => None,
        };
        let amount = event.amount_micro_usd();
        let failed = matches!(event.kind, EventKind::SignIn { success: false, .. });
        let signed_in = matches!(event.kind, EventKind::SignIn { success: true, factor } if factor != Factor::Password);

        let Engine { rules, needed: _, profiles, ips, devices, destinations, api_keys } = self;
        let rules: &RuleSet = rules;
        let profile = profiles.get_or_default(user);

        // 1. Count the event.
        let user_metric = match &event.kind {
            EventKind::SignIn { success: false, .. } => Some(metric::FAILED_SIGN_INS),
            EventKind::SignIn { success: true, factor } if *factor != Factor::Password => Some(metric::SIGN_INS),
            EventKind::ApiRequest { .. } => Some(metric::API_REQUESTS),
            EventKind::SecurityChange { .. } => Some(metric::SECURITY_CHANGES),
            EventKind::Withdrawal { .. } => Some(metric::WITHDRAWALS),
            EventKind::Deposit { .. } => Some(metric::DEPOSITS),
            _ => None,
        };
        let bits = 1 << metric::EVENTS | user_metric.map_or(0, |m| 1 << m);
        profile.counters.add(now_s, bits, if matches!(kind, Kind::Withdrawal | Kind::Deposit) { amount } else { 0 });
        let ip_stats = ip.map(|k| {
            let s = ips.get_or_default(k);
            let bits = 1 | u8::from(signed_in) << 1 | u8::from(failed) << 2 | u8::from(kind == Kind::ApiRequest) << 3;
            s.tally.add(now_s, bits, ());
            s.accounts.see(user, now_s);
            &*s
        });
        let device_stats = event.device.map(|k| {
            let s = devices.get_or_default(k);
            s.tally.add(now_s, 1 | u8::from(failed) << 1, ());
            s.accounts.see(user, now_s);
            &*s
        });
        let destination_stats = destination.map(|k| {
            let s = destinations.get_or_default(k);
            if kind == Kind::Withdrawal {
                s.tally.add(now_s, 1, amount);
            }
            s.accounts.see(user, now_s);
            &*s
        });
        let key_counts = match event.kind {
            EventKind::ApiRequest { key } => {
                let s = api_keys.get_or_default(key);
                s.add(now_s, 1, ());
                Some(&*s)
            }
            _ => None,
        };

        // 2. Features: the event, the profile as it was, the counters as they are.
        let fv = features;
        let p: &Profile = profile;
        fv[f::KIND] = i64::from(kind as u16) + 1;
        match &event.kind {
            EventKind::SignIn { success, factor } => {
                fv[f::SUCCESS] = flag(*success);
                fv[f::FACTOR] = Factor::ALL.iter().position(|x| x == factor).map_or(0, |i| i as i64 + 1);
            }
            EventKind::SecurityChange { change } => {
                fv[f::CHANGE] = Change::ALL.iter().position(|x| x == change).map_or(0, |i| i as i64 + 1);
            }
            _ => {}
        }
        fv[f::COUNTRY] = event.country.map_or(0, |c| i64::from(c.code()));
        fv[f::AMOUNT_USD] = i64::try_from(amount).unwrap_or(i64::MAX);
        let hour = ((now_s / 3_600) % 24) as usize;
        fv[f::HOUR] = hour as i64 * SCALE;
        fv[f::HISTORY] = i64::from(p.sign_ins) * SCALE;
        fv[f::EVENTS_SEEN] = i64::from(p.events) * SCALE;
        fv[f::HAS_IP] = flag(ip.is_some());
        fv[f::HAS_DEVICE] = flag(event.device.is_some());
        fv[f::HAS_COUNTRY] = flag(event.country.is_some());
        let ip_seen = ip.and_then(|k| p.ips.get(k));
        let ip_known = ip_seen.is_some();
        let network_known = event.ip.is_some_and(|a| p.networks.contains(network_key(a)));
        let device_known = event.device.is_some_and(|d| p.devices.contains(d));
        let country_known = event.country.is_some_and(|c| p.countries.contains(u64::from(c.code())));
        fv[f::IP_KNOWN] = flag(ip_known);
        fv[f::NETWORK_KNOWN] = flag(network_known);
        fv[f::DEVICE_KNOWN] = flag(device_known);
        fv[f::COUNTRY_KNOWN] = flag(country_known);
        fv[f::IP_NEW_SINCE_SIGN_IN] =
            flag(ip.is_some() && ip_seen.is_none_or(|s| p.last_sign_in_s != 0 && s.first_s >= p.last_sign_in_s));
        let hour_usual = p.hour_usual(hour);
        fv[f::HOUR_USUAL] = flag(hour_usual);
        fv[f::DESTINATION_KNOWN] = flag(destination.is_some_and(|d| p.destinations.contains(d)));
        let amounts = match kind {
            Kind::Withdrawal => Some(&p.withdrawal_amounts),
            Kind::Deposit => Some(&p.deposit_amounts),
            _ => None,
        };
        let amount_deviations = amounts.map_or(0, |a| a.score_micro(amount));
        fv[f::AMOUNT_DEVIATIONS] = amount_deviations;
        fv[f::AMOUNT_MEAN_USD] = amounts.map_or(0, |a| i64::try_from(a.mean).unwrap_or(i64::MAX));
        let d = &rules.deviation;
        let history = p.sign_ins >= d.min_history;
        let deviation = if history {
            let mut sum = 0;
            if event.device.is_some() && !device_known {
                sum += d.new_device;
            }
            if event.ip.is_some() && !network_known {
                sum += d.new_network;
            } else if event.ip.is_some() && !ip_known {
                sum += d.new_ip;
            }
            if event.country.is_some() && !country_known {
                sum += d.new_country;
            }
            if matches!(kind, Kind::SignIn | Kind::Session) && !hour_usual {
                sum += d.unusual_hour;
            }
            if amounts.is_some() && amount_deviations >= d.unusual_amount_deviations {
                sum += d.unusual_amount;
            }
            sum.min(SCALE)
        } else {
            0
        };
        fv[f::DEVIATION] = deviation;
        fv[f::SINCE_SIGN_IN_S] = since(now_s, p.last_sign_in_s);
        fv[f::SINCE_SECURITY_CHANGE_S] = since(now_s, p.last_security_change_s);
        fv[f::SINCE_NEW_DEVICE_ABROAD_S] = since(now_s, p.last_new_device_abroad_s);
        fv[f::TRAVEL_KMH] = match event.country {
            Some(c) if p.last_country != 0 && p.last_country != c.code() => {
                let km = geo::distance_km(Country::from_code(p.last_country), c).unwrap_or(0);
                let dt = u64::from(now_s.saturating_sub(p.last_country_s).max(1));
                i64::try_from(u64::from(km) * 3_600 * SCALE as u64 / dt).unwrap_or(i64::MAX)
            }
            _ => 0,
        };
        fv[f::ACCOUNT_AGE_S] = if p.events == 0 { 0 } else { since(now_s, p.first_seen_s) };

        // Velocity: each (scope, metric, window) that is needed.
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / SCALE) * SCALE;
        let usd = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let wanted = |i: usize| needed & (1 << i) != 0;
        for w in 0..WINDOWS_S.len() {
            let c = &p.counters;
            for m in 0..VELOCITY[0].1.len() {
                let i = velocity_index(0, m, w);
                if wanted(i) {
                    fv[i] = match m {
                        0 => count(c.count(metric::EVENTS, w, now_s)),
                        1 => count(c.count(metric::SIGN_INS, w, now_s)),
                        2 => count(c.count(metric::FAILED_SIGN_INS, w, now_s)),
                        3 => count(c.count(metric::API_REQUESTS, w, now_s)),
                        4 => count(c.count(metric::SECURITY_CHANGES, w, now_s)),
                        5 => count(c.count(metric::WITHDRAWALS, w, now_s)),
                        6 => usd(c.sum(metric::WITHDRAWALS, w, now_s)),
                        7 => count(c.count(metric::DEPOSITS, w, now_s)),
                        _ => usd(c.sum(metric::DEPOSITS, w, now_s)),
                    };
                }
            }
            if let Some(s) = ip_stats {
                for m in 0..VELOCITY[1].1.len() {
                    let i = velocity_index(1, m, w);
                    if wanted(i) {
                        fv[i] = count(if m < 4 { s.tally.count(m, w, now_s) } else { s.accounts.count(w, now_s) });
                    }
                }
            }
            if let Some(s) = device_stats {
                for m in 0..VELOCITY[2].1.len() {
                    let i = velocity_index(2, m, w);
                    if wanted(i) {
                        fv[i] = count(if m < 2 { s.tally.count(m, w, now_s) } else { s.accounts.count(w, now_s) });
                    }
                }
            }
            if let Some(s) = destination_stats {
                for m in 0..VELOCITY[3].1.len() {
                    let i = velocity_index(3, m, w);
                    if wanted(i) {
                        fv[i] = match m {
                            0 => count(s.tally.count(0, w, now_s)),
                            1 => usd(s.tally.sum(0, w, now_s)),
                            _ => count(s.accounts.count(w, now_s)),
                        };
                    }
                }
            }
            if let Some(s) = key_counts {
                let i = velocity_index(4, 0, w);
                if wanted(i) {
                    fv[i] = count(s.count(0, w, now_s));
                }
            }
        }

        // 3. Rules.
        let bit = kind.bit();
        let mut outcome = Outcome::Allow;
        let mut score = 0u32;
        let mut reasons = Vec::new();
        for rule in &rules.rules {
            if rule.on & bit == 0 || !rule.when.eval(fv) {
                continue;
            }
            let shadow = rule.mode == Mode::Shadow;
            if !shadow {
                outcome = outcome.max(rule.outcome);
                score = score.saturating_add(rule.score);
            }
            reasons.push(Reason {
                rule: rule.name.clone(),
                description: rule.description.clone(),
                outcome: rule.outcome,
                score: rule.score,
                shadow,
                values: rule.when.reads().iter().map(|&i| (i, fv[i])).collect(),
            });
        }
        outcome = outcome.max(rules.outcome_of_score(score));
        let decision = Decision { outcome, score, rules_version: rules.version, reasons };

        // 4. Learn.
        let p = profile;
        if p.events == 0 {
            p.first_seen_s = now_s;
        }
        p.events = p.events.saturating_add(1);
        let allowed = outcome == Outcome::Allow;
        let proven = match kind {
            Kind::SignIn => signed_in && allowed,
            Kind::ChallengePassed => true,
            Kind::Session | Kind::ApiRequest => allowed,
            _ => false,
        };
        if proven {
            if matches!(kind, Kind::SignIn | Kind::ChallengePassed) {
                if history && !device_known && event.device.is_some() && !country_known && event.country.is_some() {
                    p.last_new_device_abroad_s = now_s;
                }
                p.sign_ins = p.sign_ins.saturating_add(1);
                p.last_sign_in_s = now_s;
                p.learn_hour(hour);
            }
            if let (Some(k), Some(a)) = (ip, event.ip) {
                p.ips.see(k, now_s, profile::IPS_CAP);
                p.networks.see(network_key(a), now_s, profile::NETWORKS_CAP);
            }
            if let Some(dev) = event.device {
                p.devices.see(dev, now_s, profile::DEVICES_CAP);
            }
            if let Some(c) = event.country {
                p.countries.see(u64::from(c.code()), now_s, profile::COUNTRIES_CAP);
                p.last_country = c.code();
                p.last_country_s = now_s;
            }
        }
        match kind {
            Kind::Withdrawal if allowed => {
                p.withdrawal_amounts.add(amount);
                if let Some(dest) = destination {
                    p.destinations.see(dest, now_s, profile::DESTINATIONS_CAP);
                }
            }
            Kind::Deposit => p.deposit_amounts.add(amount),
            Kind::SecurityChange if allowed => p.last_security_change_s = now_s,
            _ => {}
        }
        decision
    }

    /// Forgets counters of addresses, devices, destinations and API keys idle for more than a day, and frees the
    /// rings of users no longer busy (profiles are kept: they are the history). The service runs it with each
    /// snapshot.
    pub fn prune(&mut self, now_s: u32) {
        let horizon = now_s.saturating_sub(WINDOWS_S[2] + WINDOWS_S[1]);
        for p in self.profiles.values_mut() {
            p.counters.settle(now_s);
        }
        self.ips.retain(|_, s| s.tally.idle_since_s() >= horizon || s.accounts.idle_since_s() >= horizon);
        self.devices.retain(|_, s| s.tally.idle_since_s() >= horizon || s.accounts.idle_since_s() >= horizon);
        self.destinations.retain(|_, s| s.accounts.idle_since_s() >= horizon);
        self.api_keys.retain(|_, s| s.idle_since_s() >= horizon);
    }

    /// The engine's state (profiles and counters, not the rules) as bytes, sorted by key so that equal states give
    /// equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        fn sorted<T>(m: &Sharded<T>) -> Vec<(u64, &T)> {
            let mut v: Vec<(u64, &T)> = m.iter().map(|(k, v)| (*k, v)).collect();
            v.sort_unstable_by_key(|(k, _)| *k);
            v
        }
        let state = StateRef {
            format: SNAPSHOT_FORMAT,
            profiles: sorted(&self.profiles).into_iter().map(|(k, p)| (k, &**p)).collect(),
            ips: sorted(&self.ips),
            devices: sorted(&self.devices),
            destinations: sorted(&self.destinations),
            api_keys: sorted(&self.api_keys),
        };
        // Serialising plain data into a Vec cannot fail.
        postcard::to_stdvec(&state).unwrap_or_default()
    }

    /// An engine restored from [`Engine::snapshot`] bytes, with `rules` in force.
    pub fn restore(rules: Arc<RuleSet>, bytes: &[u8]) -> Result<Engine, SnapshotError> {
        let state: State = postcard::from_bytes(bytes).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        if state.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Corrupt(format!(
                "format {} (this build reads {SNAPSHOT_FORMAT})",
                state.format
            )));
        }
        Ok(Engine {
            needed: needed_features(&rules),
            rules,
            profiles: state.profiles.into_iter().map(|(k, p)| (k, Box::new(p))).collect(),
            ips: state.ips.into_iter().collect(),
            devices: state.devices.into_iter().collect(),
            destinations: state.destinations.into_iter().collect(),
            api_keys: state.api_keys.into_iter().collect(),
        })
    }
}
