//! What the bus tests share: a deterministic history of ~200 users with attacks in it, the decisions of reference
//! engines, and the connection to the NATS server.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use rampart_risk::{
    Change, Country, Decision, Engine, Event, EventKind, Factor, MICRO_USD_PER_USD, Outcome, RuleSet, UserId,
};
use rampart_riskbus::{BusConfig, EventId, partition_of};

/// The server the tests run against; CI guarantees one with JetStream.
pub fn nats_url() -> String {
    std::env::var("RAMPART_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

/// A JetStream context on its own connection (each worker gets one, as separate processes would). Fails the test, with
/// the reason, when the server is not there: a bus test that passes without a bus proves nothing.
pub async fn connect() -> jetstream::Context {
    let url = nats_url();
    let connecting = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).connect(url.as_str());
    let client = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("the NATS server at {url} is required (JetStream enabled) and is not reachable: {e}"),
        Err(_) => panic!("the NATS server at {url} is required (JetStream enabled) and did not answer within 10 s"),
    };
    // Without JetStream nobody answers its API.
    let info = tokio::time::timeout(Duration::from_secs(10), client.request("$JS.API.INFO", "".into())).await;
    match info {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("the NATS server at {url} must have JetStream enabled: {e}"),
        Err(_) => panic!("the NATS server at {url} did not answer a JetStream request within 10 s"),
    }
    jetstream::new(client)
}

/// A fresh bus, so that runs (and concurrent tests) never share streams or consumers.
pub fn fresh_bus(test: &str, partitions: u32) -> BusConfig {
    let tag = format!("{:016x}", uuid::Uuid::new_v4().as_u128() as u64);
    BusConfig::new(&format!("RISK_TEST_{test}_{tag}"), &format!("rampart.test.risk.{tag}"), partitions)
        .expect("a valid bus")
}

/// 2026-12-01T00:00:00Z.
const START_S: u64 = 1_796_083_200;
const DAY_S: u64 = 86_400;
pub const USERS: u64 = 200;
const DAYS: u64 = 8;
const HOMES: [&str; 8] = ["DE", "FR", "NL", "ES", "IT", "PL", "SE", "AT"];

/// A small deterministic generator (xorshift64*), so the history is the same on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
}

fn home_ip(u: u64, host: u8) -> Option<IpAddr> {
    v4(10, (u / 250) as u8, (u % 250) as u8, host)
}

fn country(c: &str) -> Option<Country> {
    Country::parse(c)
}

fn usd(v: u64) -> u64 {
    v * MICRO_USD_PER_USD
}

struct History {
    /// (at_ns, user, order within the user, event)
    events: Vec<(u64, u64, u64, Event)>,
}

impl History {
    fn push(
        &mut self,
        at_s: u64,
        user: u64,
        ip: Option<IpAddr>,
        device: Option<u64>,
        c: Option<Country>,
        kind: EventKind,
    ) {
        let order = self.events.len() as u64;
        let event = Event { at_ns: at_s * 1_000_000_000, user: UserId(user), ip, device, country: c, kind };
        self.events.push((event.at_ns, user, order, event));
    }
}

const SIGNED_IN: EventKind = EventKind::SignIn { success: true, factor: Factor::Totp };
const PASSWORD_OK: EventKind = EventKind::SignIn { success: true, factor: Factor::Password };
const PASSWORD_BAD: EventKind = EventKind::SignIn { success: false, factor: Factor::Password };

fn withdrawal(amount_usd: u64, to: String) -> EventKind {
    EventKind::Withdrawal { amount_micro_usd: usd(amount_usd), destination: to }
}

/// Eight ordinary days for 200 users (two-step sign-ins at their usual hour from home, sessions, API requests,
/// deposits, small withdrawals to their usual address), then on the last two days: sign-ins from a new device abroad
/// followed by a whitelist change, failed-password bursts on accounts, bursts of failures from an attacker's address,
/// large withdrawals from a new address right after a sign-in, withdrawal velocity, large withdrawals to new
/// destinations, impossible travel, a device shared by five accounts and a destination shared by five accounts.
///
/// Every address, device, destination and API key is used by one user only, except the shared device and the shared
/// destination, whose users are all in one partition of `partitions`: so one engine over all events and one engine per
/// partition decide the same (see the crate documentation).
pub fn history(partitions: u32) -> Vec<(EventId, Event)> {
    let mut rng = Rng(0x5eed_0f7e_57da_7a11);
    let mut h = History { events: Vec::new() };
    for u in 1..=USERS {
        let home = country(HOMES[(u % 8) as usize]);
        let device = Some(u * 100 + 1);
        let hour = 6 + u % 12;
        let dest = format!("bc1q-home-{u}");
        for day in 0..DAYS {
            let t = START_S + day * DAY_S + hour * 3_600 + rng.below(600);
            h.push(t, u, home_ip(u, 10), device, home, PASSWORD_OK);
            h.push(t + 20, u, home_ip(u, 10), device, home, SIGNED_IN);
            h.push(t + 300, u, home_ip(u, 10), device, home, EventKind::Session);
            if (u + day) % 3 == 0 {
                h.push(t + 600, u, home_ip(u, 10), device, home, withdrawal(50 + rng.below(400), dest.clone()));
            }
            if (u + day) % 4 == 0 {
                let kind = EventKind::Deposit { amount_micro_usd: usd(100 + rng.below(2_000)), source: None };
                h.push(t + 900, u, None, None, None, kind);
            }
            if u % 9 == 0 {
                for i in 0..3 {
                    h.push(t + 1_000 + i, u, home_ip(u, 11), None, home, EventKind::ApiRequest { key: u * 7 });
                }
            }
        }
        // The last day's attacks, after the user has a history.
        let t = START_S + DAYS * DAY_S + hour * 3_600;
        match u % 10 {
            1 => {
                // A new device in another country passes the challenge, then changes the withdrawal whitelist.
                let (ip, dev, c) = (v4(203, 0, (u % 250) as u8, 7), Some(u * 100 + 2), country("BR"));
                h.push(t, u, ip, dev, c, PASSWORD_OK);
                h.push(t + 20, u, ip, dev, c, SIGNED_IN);
                h.push(t + 60, u, ip, dev, c, EventKind::ChallengePassed);
                let change = EventKind::WhitelistChange { destination: format!("bc1q-new-{u}"), added: true };
                h.push(t + 120, u, ip, dev, c, change);
            }
            2 => {
                // Six wrong passwords, then the right one and the second factor.
                for i in 0..6 {
                    h.push(t + i * 30, u, home_ip(u, 10), device, home, PASSWORD_BAD);
                }
                h.push(t + 200, u, home_ip(u, 10), device, home, PASSWORD_OK);
                h.push(t + 220, u, home_ip(u, 10), device, home, SIGNED_IN);
                let change = EventKind::SecurityChange { change: Change::Email };
                h.push(t + 400, u, home_ip(u, 10), device, home, change);
            }
            3 => {
                // An attacker's address tries 24 passwords within 48 seconds.
                let ip = v4(198, 18, (u / 250) as u8, (u % 250) as u8);
                for i in 0..24 {
                    h.push(t + i * 2, u, ip, Some(9_000_000 + u), country("RU"), PASSWORD_BAD);
                }
            }
            4 => {
                // A sign-in from a new address at home, and a large withdrawal from it a minute later.
                h.push(t, u, v4(172, 16, (u % 250) as u8, 9), device, home, PASSWORD_OK);
                h.push(t + 20, u, v4(172, 16, (u % 250) as u8, 9), device, home, SIGNED_IN);
                h.push(t + 80, u, v4(172, 16, (u % 250) as u8, 9), device, home, withdrawal(20_000, dest.clone()));
            }
            5 => {
                // Three withdrawals of 40 000 dollars within the day.
                for i in 0..3 {
                    h.push(t + i * 3_600, u, home_ip(u, 10), device, home, withdrawal(40_000, dest.clone()));
                }
            }
            6 => h.push(t, u, home_ip(u, 10), device, home, withdrawal(60_000, format!("bc1q-elsewhere-{u}"))),
            7 => {
                // Signed in at home, and ten minutes later a session from Japan.
                h.push(t, u, home_ip(u, 10), device, home, PASSWORD_OK);
                h.push(t + 20, u, home_ip(u, 10), device, home, SIGNED_IN);
                h.push(t + 620, u, v4(133, 1, (u % 250) as u8, 5), device, country("JP"), EventKind::Session);
            }
            _ => {}
        }
    }
    // A device shared by five accounts of partition 0 and a destination shared by five accounts of partition 1.
    let in_partition = |p: u32| (1..=USERS).filter(move |&u| partition_of(UserId(u), partitions) == p).take(5);
    let t = START_S + (DAYS + 1) * DAY_S + 20 * 3_600;
    for (i, u) in in_partition(0).enumerate() {
        let at = t + i as u64 * 600;
        h.push(at, u, home_ip(u, 10), Some(77_000_000), country(HOMES[(u % 8) as usize]), PASSWORD_OK);
        h.push(at + 20, u, home_ip(u, 10), Some(77_000_000), country(HOMES[(u % 8) as usize]), SIGNED_IN);
    }
    for (i, u) in in_partition(1.min(partitions - 1)).enumerate() {
        let at = t + i as u64 * 600 + 30;
        let home = country(HOMES[(u % 8) as usize]);
        h.push(at, u, home_ip(u, 10), Some(u * 100 + 1), home, withdrawal(120, "bc1q-mule".to_owned()));
    }
    let mut events = h.events;
    events.sort_by_key(|(at, user, order, _)| (*at, *user, *order));
    events
        .into_iter()
        .enumerate()
        .map(|(i, (.., e))| (EventId(0x7269_736b_0000_0000_0000_0000_0000_0000 | i as u128), e))
        .collect()
}

pub fn rules() -> Arc<RuleSet> {
    Arc::new(RuleSet::default_rules())
}

/// One engine fed every event in order.
pub fn single_engine(events: &[(EventId, Event)]) -> HashMap<EventId, Decision> {
    let mut engine = Engine::new(rules());
    events.iter().map(|(id, e)| (*id, engine.evaluate(e))).collect()
}

/// One engine per partition, each fed its partition's events in order: the decisions, and each engine's snapshot.
pub fn engine_per_partition(
    events: &[(EventId, Event)],
    bus: &BusConfig,
) -> (HashMap<EventId, Decision>, Vec<Vec<u8>>) {
    let mut engines: Vec<Engine> = (0..bus.partitions()).map(|_| Engine::new(rules())).collect();
    let decisions =
        events.iter().map(|(id, e)| (*id, engines[bus.partition_of(e.user) as usize].evaluate(e))).collect();
    (decisions, engines.iter().map(Engine::snapshot).collect())
}

/// How many decisions of each outcome.
pub fn outcomes<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> Vec<(Outcome, usize)> {
    let mut counts: HashMap<Outcome, usize> = HashMap::new();
    for d in decisions {
        *counts.entry(d.outcome).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort();
    v
}

/// How many decisions name each rule (enforced or shadow).
pub fn rules_hit<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in decisions {
        for r in &d.reasons {
            *counts.entry(r.rule.to_string()).or_default() += 1;
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort();
    v
}
