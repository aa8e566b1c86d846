//! The default rules on crafted event sequences: each seed behaviour, its negative cases, and the engine's
//! determinism across a snapshot.

use std::net::IpAddr;
use std::sync::Arc;

use rampart_risk::{Change, Country, Engine, Event, EventKind, Factor, MICRO_USD_PER_USD, Outcome, RuleSet, UserId};

const DAY_S: u64 = 86_400;
/// 2026-12-01T00:00:00Z.
const START_S: u64 = 1_796_083_200;

struct World {
    engine: Engine,
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn country(s: &str) -> Option<Country> {
    Country::parse(s)
}

fn at(day: u64, hour: u64, second: u64) -> u64 {
    (START_S + day * DAY_S + hour * 3_600 + second) * 1_000_000_000
}

fn event(at_ns: u64, user: u64, from: (&str, u64, &str), kind: EventKind) -> Event {
    Event { at_ns, user: UserId(user), ip: ip(from.0), device: Some(from.1), country: country(from.2), kind }
}

const HOME: (&str, u64, &str) = ("198.51.100.20", 1, "DE");
const SIGNED_IN: EventKind = EventKind::SignIn { success: true, factor: Factor::Totp };

impl World {
    fn new() -> World {
        World { engine: Engine::new(Arc::new(RuleSet::default_rules())) }
    }

    /// Five ordinary days: a sign-in at nine from home and a small withdrawal to the usual address.
    fn with_history(user: u64) -> World {
        let mut w = World::new();
        for day in 0..5 {
            let d = w.run(event(at(day, 9, 0), user, HOME, SIGNED_IN));
            assert_eq!(d.outcome, Outcome::Allow, "day {day}: {d:?}");
            let d = w.run(event(at(day, 9, 60), user, HOME, withdrawal(200, "bc1qusual")));
            assert_eq!(d.outcome, Outcome::Allow, "day {day}: {d:?}");
        }
        w
    }

    fn run(&mut self, e: Event) -> rampart_risk::Decision {
        self.engine.evaluate(&e)
    }
}

fn withdrawal(usd: u64, to: &str) -> EventKind {
    EventKind::Withdrawal { amount_micro_usd: usd * MICRO_USD_PER_USD, destination: to.to_owned() }
}

fn rules_of(d: &rampart_risk::Decision) -> Vec<String> {
    d.reasons.iter().map(|r| r.rule.to_string()).collect()
}

#[test]
fn a_known_device_at_home_is_not_challenged() {
    let mut w = World::with_history(1);
    let d = w.run(event(at(6, 9, 30), 1, HOME, SIGNED_IN));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert!(d.reasons.is_empty());
    // A new address in the same network, an hour later than usual: still home.
    let d = w.run(event(at(7, 10, 0), 1, ("198.51.100.77", 1, "DE"), SIGNED_IN));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

#[test]
fn a_sign_in_deviating_by_more_than_half_is_challenged_with_its_reasons() {
    let mut w = World::with_history(1);
    let d = w.run(event(at(6, 9, 0), 1, ("203.0.113.9", 2, "BR"), SIGNED_IN));
    assert_eq!(d.outcome, Outcome::Challenge, "{d:?}");
    assert_eq!(rules_of(&d), ["login_deviation"]);
    let values = d.reasons[0].display_values();
    // A new device (0.25), network (0.2) and country (0.3): 0.75.
    assert!(values.contains(&("deviation".into(), "0.75".into())), "{values:?}");
    // Challenged, so nothing was learned: the same context is challenged again until the challenge is passed.
    let d = w.run(event(at(6, 9, 5), 1, ("203.0.113.9", 2, "BR"), SIGNED_IN));
    assert_eq!(d.outcome, Outcome::Challenge);
    w.run(event(at(6, 9, 6), 1, ("203.0.113.9", 2, "BR"), EventKind::ChallengePassed));
    let d = w.run(event(at(6, 9, 30), 1, ("203.0.113.9", 2, "BR"), EventKind::Session));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

#[test]
fn a_new_device_alone_is_below_the_threshold() {
    let mut w = World::with_history(1);
    let d = w.run(event(at(6, 9, 0), 1, ("198.51.100.20", 9, "DE"), SIGNED_IN));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

#[test]
fn no_history_means_no_deviation() {
    let mut w = World::new();
    let d = w.run(event(at(0, 3, 0), 5, ("203.0.113.9", 2, "BR"), SIGNED_IN));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

#[test]
fn a_large_withdrawal_from_a_new_address_right_after_sign_in_is_frozen() {
    let mut w = World::with_history(1);
    // Signs in from a new address in a known network and country (deviation 0.05: allowed).
    let new_ip = ("198.51.100.99", 1, "DE");
    assert_eq!(w.run(event(at(6, 9, 0), 1, new_ip, SIGNED_IN)).outcome, Outcome::Allow);
    let d = w.run(event(at(6, 9, 120), 1, new_ip, withdrawal(25_000, "bc1qusual")));
    assert_eq!(d.outcome, Outcome::Freeze, "{d:?}");
    assert!(rules_of(&d).contains(&"large_withdrawal_new_ip_after_sign_in".to_owned()), "{d:?}");
    let values =
        d.reasons.iter().find(|r| &*r.rule == "large_withdrawal_new_ip_after_sign_in").unwrap().display_values();
    assert!(values.contains(&("since_sign_in_s".into(), "120".into())), "{values:?}");
    assert!(values.contains(&("amount_usd".into(), "25000".into())), "{values:?}");
}

#[test]
fn the_same_withdrawal_is_allowed_from_home_or_later_or_smaller() {
    // From the usual address, right after signing in.
    let mut w = World::with_history(1);
    w.run(event(at(6, 9, 0), 1, HOME, SIGNED_IN));
    let d = w.run(event(at(6, 9, 60), 1, HOME, withdrawal(25_000, "bc1qusual")));
    assert!(!rules_of(&d).contains(&"large_withdrawal_new_ip_after_sign_in".to_owned()), "{d:?}");
    // From a new address, but four minutes after signing in.
    let mut w = World::with_history(1);
    let new_ip = ("198.51.100.99", 1, "DE");
    w.run(event(at(6, 9, 0), 1, new_ip, SIGNED_IN));
    let d = w.run(event(at(6, 9, 240), 1, new_ip, withdrawal(25_000, "bc1qusual")));
    assert!(!rules_of(&d).contains(&"large_withdrawal_new_ip_after_sign_in".to_owned()), "{d:?}");
    // From a new address right away, but small.
    let mut w = World::with_history(1);
    w.run(event(at(6, 9, 0), 1, new_ip, SIGNED_IN));
    let d = w.run(event(at(6, 9, 60), 1, new_ip, withdrawal(300, "bc1qusual")));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

#[test]
fn a_new_device_abroad_then_a_whitelist_or_second_factor_change_freezes() {
    for change in [
        EventKind::WhitelistChange { destination: "bc1qthief".into(), added: true },
        EventKind::SecurityChange { change: Change::Totp },
    ] {
        let mut w = World::with_history(1);
        let abroad = ("203.0.113.9", 2, "BR");
        assert_eq!(w.run(event(at(6, 9, 0), 1, abroad, SIGNED_IN)).outcome, Outcome::Challenge);
        w.run(event(at(6, 9, 10), 1, abroad, EventKind::ChallengePassed));
        let d = w.run(event(at(6, 9, 300), 1, abroad, change.clone()));
        assert_eq!(d.outcome, Outcome::Freeze, "{change:?}: {d:?}");
        assert!(rules_of(&d).contains(&"new_device_abroad_then_sensitive_change".to_owned()));
    }
    // At home, the same changes are allowed; and an anti-phishing code change abroad is not a sensitive one.
    let mut w = World::with_history(1);
    w.run(event(at(6, 9, 0), 1, HOME, SIGNED_IN));
    let d =
        w.run(event(at(6, 9, 60), 1, HOME, EventKind::WhitelistChange { destination: "bc1qnew".into(), added: true }));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    let mut w = World::with_history(1);
    let abroad = ("203.0.113.9", 2, "BR");
    w.run(event(at(6, 9, 0), 1, abroad, SIGNED_IN));
    w.run(event(at(6, 9, 10), 1, abroad, EventKind::ChallengePassed));
    let d = w.run(event(at(6, 9, 60), 1, abroad, EventKind::SecurityChange { change: Change::AntiPhishing }));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

#[test]
fn a_burst_of_failed_sign_ins_from_one_address_is_blocked_at_the_twentieth() {
    let mut w = World::new();
    let failed = EventKind::SignIn { success: false, factor: Factor::Password };
    for i in 0..19u64 {
        // Nineteen different accounts (password spraying).
        let d = w.run(event(at(0, 12, i), 100 + i, ("192.0.2.1", 50 + i, "NL"), failed.clone()));
        assert_eq!(d.outcome, Outcome::Allow, "attempt {i}: {d:?}");
    }
    let d = w.run(event(at(0, 12, 19), 200, ("192.0.2.1", 70, "NL"), failed.clone()));
    assert_eq!(d.outcome, Outcome::Block, "{d:?}");
    // The twentieth account tried from the address within the hour: the scored rule matches too.
    assert_eq!(rules_of(&d), ["failed_sign_in_burst_ip", "many_accounts_one_ip"]);
    // Another address is unaffected; two minutes later the first is too.
    assert_eq!(w.run(event(at(0, 12, 20), 201, ("192.0.2.2", 71, "NL"), failed.clone())).outcome, Outcome::Allow);
    assert_eq!(w.run(event(at(0, 12, 200), 202, ("192.0.2.1", 72, "NL"), failed)).outcome, Outcome::Allow);
}

#[test]
fn a_success_after_many_failures_on_the_account_is_challenged() {
    let mut w = World::with_history(1);
    let failed = EventKind::SignIn { success: false, factor: Factor::Password };
    for i in 0..5 {
        w.run(event(at(6, 9, i * 60), 1, ("192.0.2.50", 77, "NL"), failed.clone()));
    }
    let d = w.run(event(at(6, 9, 400), 1, HOME, SIGNED_IN));
    assert_eq!(d.outcome, Outcome::Challenge, "{d:?}");
    assert_eq!(rules_of(&d), ["failed_sign_in_burst_account"]);
    // The attacker's address stayed unknown: failures teach the profile nothing.
    let p = w.engine.profile(1).unwrap();
    assert!(p.ips.get(rampart_risk::profile::ip_key("192.0.2.50".parse().unwrap())).is_none());
}

#[test]
fn an_api_key_flood_is_blocked() {
    let mut w = World::new();
    let mut last = None;
    for i in 0..1_201u64 {
        last = Some(w.run(event(at(0, 12, 0) + i * 40_000_000, 1, HOME, EventKind::ApiRequest { key: 9 })));
        assert!(i == 1_200 || last.as_ref().unwrap().outcome == Outcome::Allow, "request {i}");
    }
    let d = last.unwrap();
    assert_eq!(d.outcome, Outcome::Block, "{d:?}");
    assert_eq!(rules_of(&d), ["api_key_flood"]);
}

#[test]
fn many_accounts_from_one_device_reach_the_challenge_score() {
    let mut w = World::new();
    for user in 0..4 {
        assert_eq!(
            w.run(event(at(0, 12, user), 10 + user, ("192.0.2.9", 555, "FR"), SIGNED_IN)).outcome,
            Outcome::Allow
        );
    }
    let d = w.run(event(at(0, 12, 9), 20, ("192.0.2.9", 555, "FR"), SIGNED_IN));
    assert_eq!((d.outcome, d.score), (Outcome::Challenge, 60), "{d:?}");
    assert_eq!(rules_of(&d), ["many_accounts_one_device"]);
}

#[test]
fn twenty_accounts_from_one_address_within_an_hour_are_scored() {
    let mut w = World::new();
    // Nineteen customers behind one address (an office, a carrier's NAT), a few minutes apart: nothing to see.
    for user in 0..19 {
        let d = w.run(event(at(0, 12, user * 180), 10 + user, ("198.51.100.77", 600 + user, "FR"), SIGNED_IN));
        assert_eq!(d.outcome, Outcome::Allow, "user {user}: {d:?}");
    }
    let d = w.run(event(at(0, 12, 19 * 180), 40, ("198.51.100.77", 700, "FR"), SIGNED_IN));
    assert_eq!((d.outcome, d.score), (Outcome::Allow, 30), "{d:?}");
    assert_eq!(rules_of(&d), ["many_accounts_one_ip"]);
    // An hour after the first ones have gone, the count is below twenty again.
    let d = w.run(event(at(0, 14, 0), 41, ("198.51.100.77", 701, "FR"), SIGNED_IN));
    assert!(d.reasons.is_empty(), "{d:?}");
}

#[test]
fn impossible_travel_is_challenged() {
    let mut w = World::with_history(1);
    w.run(event(at(6, 9, 0), 1, HOME, SIGNED_IN));
    // Tokyo an hour after Berlin: about 8 900 km/h (a new country adds 0.3 of deviation, below the challenge).
    let d = w.run(event(at(6, 10, 0), 1, ("198.51.100.20", 1, "JP"), EventKind::Session));
    assert_eq!(d.outcome, Outcome::Challenge, "{d:?}");
    assert!(rules_of(&d).contains(&"impossible_travel".to_owned()));
    // Paris a day later is fine.
    let mut w = World::with_history(1);
    w.run(event(at(6, 9, 0), 1, HOME, SIGNED_IN));
    let d = w.run(event(at(7, 9, 0), 1, ("198.51.100.20", 1, "FR"), EventKind::Session));
    assert!(!rules_of(&d).contains(&"impossible_travel".to_owned()), "{d:?}");
}

#[test]
fn shadow_rules_are_recorded_but_not_enforced() {
    let mut w = World::new();
    let mut d = None;
    for user in 0..5u64 {
        d = Some(w.run(event(
            at(0, 12, user),
            30 + user,
            ("192.0.2.30", 600 + user, "FR"),
            withdrawal(100, "bc1qmule"),
        )));
    }
    let d = d.unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(rules_of(&d), ["destination_shared_by_many"]);
    assert!(d.reasons[0].shadow);
}

#[test]
fn a_rule_set_can_be_replaced_without_losing_history() {
    let mut w = World::with_history(1);
    let stricter = rampart_risk::DEFAULT_RULES
        .replace("version = 1", "version = 2")
        .replace("deviation > 0.5 and", "deviation > 0.2 and");
    w.engine.set_rules(Arc::new(RuleSet::parse(&stricter).unwrap()));
    let d = w.run(event(at(6, 9, 0), 1, ("198.51.100.20", 9, "DE"), SIGNED_IN));
    assert_eq!((d.outcome, d.rules_version), (Outcome::Challenge, 2), "{d:?}");
}

/// A seeded stream of mixed events (a small deterministic generator, so the test needs no randomness crate).
fn stream(seed: u64, n: usize) -> Vec<Event> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut t = at(0, 0, 0);
    (0..n)
        .map(|_| {
            t += (next() % 5_000_000_000) + 1;
            let user = next() % 50;
            let from = (
                format!("10.{}.{}.{}", next() % 3, next() % 4, next() % 6),
                next() % 8,
                ["DE", "FR", "US", "JP"][(next() % 4) as usize],
            );
            let kind = match next() % 8 {
                0 => EventKind::SignIn { success: next() % 3 != 0, factor: Factor::ALL[(next() % 4) as usize] },
                1 => EventKind::ChallengePassed,
                2 => EventKind::ApiRequest { key: next() % 5 },
                3 => EventKind::SecurityChange { change: Change::ALL[(next() % 7) as usize] },
                4 => EventKind::Deposit { amount_micro_usd: next() % 100_000_000_000, source: None },
                5 => withdrawal(next() % 120_000, &format!("bc1q{}", next() % 9)),
                6 => EventKind::WhitelistChange { destination: format!("bc1q{}", next() % 9), added: true },
                _ => EventKind::Session,
            };
            Event {
                at_ns: t,
                user: UserId(user),
                ip: from.0.parse().ok(),
                device: Some(from.1),
                country: country(from.2),
                kind,
            }
        })
        .collect()
}

#[test]
fn the_same_events_give_the_same_decisions_across_a_snapshot_and_restore() {
    let events = stream(0x5eed, 20_000);
    let rules = Arc::new(RuleSet::default_rules());
    let mut straight = Engine::new(rules.clone());
    let expected: Vec<_> = events.iter().map(|e| straight.evaluate(e)).collect();
    assert!(expected.iter().any(|d| d.outcome != Outcome::Allow), "the stream exercises the rules");

    let mut first = Engine::new(rules.clone());
    let half = events.len() / 2;
    let mut got: Vec<_> = events[..half].iter().map(|e| first.evaluate(e)).collect();
    let bytes = first.snapshot();
    drop(first);
    let mut restored = Engine::restore(rules.clone(), &bytes).unwrap();
    assert_eq!(restored.snapshot(), bytes, "a restored engine snapshots to the same bytes");
    got.extend(events[half..].iter().map(|e| restored.evaluate(e)));
    assert_eq!(got, expected);
    assert_eq!(restored.snapshot(), straight.snapshot());
    assert!(Engine::restore(rules, &bytes[..bytes.len() / 2]).is_err(), "a truncated snapshot is refused");
}

#[test]
fn scoring_in_batches_decides_as_one_by_one() {
    let events = stream(0xba7c4, 5_003);
    let rules = Arc::new(RuleSet::default_rules());
    let mut one_by_one = Engine::new(rules.clone());
    let expected: Vec<_> = events.iter().map(|e| one_by_one.evaluate(e)).collect();
    let mut batched = Engine::new(rules);
    let mut got = Vec::new();
    batched.evaluate_batch(&events, |i, d| got.push((i, d)));
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..events.len()).collect::<Vec<_>>());
    assert!(got.into_iter().map(|(_, d)| d).eq(expected));
    assert_eq!(batched.snapshot(), one_by_one.snapshot());
}
