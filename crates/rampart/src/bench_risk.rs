//! `rampart bench risk`: what scoring costs. A synthetic but realistic stream of events from a million users is
//! scored by the risk engine with the default rules plus thirty generated ones, and the benchmark reports events per
//! second on one thread and on two (users partitioned between two engines), the decision latency at a sustained rate
//! (coordinated omission included), and the resident memory of a million profiles.
//!
//! The stream: activity is Zipf-distributed over users (a few API traders make a large share of it, most users are
//! seen once or not at all in a minute); each user has a home country, one to three home addresses drawn from a
//! shared pool of networks (so addresses are shared, as behind carriers' NAT), one or two devices, usual withdrawal
//! destinations and a usual amount. Some events come from a new address or device, some users are travelling, a few
//! events arrive through VPNs in random countries, and a credential-stuffing attack runs throughout. Every event is
//! generated before any clock starts: the figures measure the engine, not the generator.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use clap::builder::RangedU64ValueParser;
use hdrhistogram::Histogram;
use rampart_risk::{
    Change, Country, Engine, Event, EventKind, Factor, MICRO_USD_PER_USD, Outcome, Profile, RuleSet, UserId,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::bench::{grouped, per_second};

/// Flags of `rampart bench risk`.
#[derive(Args, Debug)]
pub struct RiskArgs {
    /// Users, each with a profile: every one of them gets some of the 30 days of history played before timing.
    #[arg(long, default_value_t = 1_000_000, value_parser = RangedU64ValueParser::<u32>::new().range(2..=50_000_000))]
    users: u32,
    /// Events in the timed stream.
    #[arg(long, default_value_t = 5_000_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000_000))]
    events: usize,
    /// Events per second the stream represents: its timestamps advance at this rate, and the latency phase replays
    /// it in real time at this rate.
    #[arg(long, default_value_t = 100_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..=10_000_000))]
    rate: u64,
    /// The Zipf exponent of activity over users (1.0: the busiest user is about 7 % of all events).
    #[arg(long, default_value_t = 1.05)]
    zipf_exponent: f64,
    /// Rules generated on top of the default rule set.
    #[arg(long, default_value_t = 30)]
    extra_rules: usize,
    /// Skips the latency phase (which replays the whole stream in real time, `events / rate` seconds, after a warm-up
    /// of its own): for quick comparisons of throughput.
    #[arg(long)]
    skip_latency: bool,
    /// Seeds the population and the stream so that a run can be repeated. Random when absent; printed either way.
    #[arg(long)]
    seed: Option<u64>,
}

/// 2026-12-01T00:00:00Z: the warm-up history starts here.
const START_S: u64 = 1_796_083_200;
const DAY_NS: u64 = 86_400 * 1_000_000_000;
/// Days of history before the stream (about four active days for each user: usually enough sign-ins for the
/// deviation to apply).
const HISTORY_DAYS: u64 = 30;
/// The stream starts at noon (UTC) after the warm-up.
const STREAM_START_NS: u64 = START_S * 1_000_000_000 + HISTORY_DAYS * DAY_NS + DAY_NS / 2;

/// Goals from the issue.
const GOAL_EVENTS_PER_S: u64 = 1_000_000;
const GOAL_P99_NS: u64 = 1_000_000;
const GOAL_BYTES: u64 = 1 << 30;

/// Home countries and their weights (users per thousand, roughly an international exchange's mix).
const COUNTRIES: &[(&str, u32)] = &[
    ("US", 140),
    ("DE", 80),
    ("GB", 70),
    ("FR", 60),
    ("JP", 60),
    ("KR", 60),
    ("TR", 60),
    ("BR", 50),
    ("IN", 50),
    ("VN", 40),
    ("ID", 40),
    ("NG", 30),
    ("RU", 30),
    ("UA", 30),
    ("PL", 30),
    ("ES", 30),
    ("IT", 30),
    ("CA", 30),
    ("NL", 20),
    ("AU", 20),
    ("MX", 20),
    ("AR", 20),
    ("PH", 20),
    ("TH", 20),
    ("ZA", 10),
    ("EG", 10),
    ("AE", 10),
    ("SG", 10),
    ("HK", 10),
    ("CH", 10),
];

/// Countries that only VPN traffic comes from (and that generated rules block).
const SANCTIONED: &[&str] = &["KP", "IR", "SY", "CU"];

/// Networks (/24) in the shared pool, spread over the countries by their weights.
const NETWORKS: u32 = 40_000;
/// Carrier-grade NAT addresses, shared by the users behind them.
const CGNAT_ADDRESSES: u32 = 2_000;
/// Per mille of users behind carrier-grade NAT.
const CGNAT_PER_MILLE: u32 = 50;
/// Per mille of users travelling during the stream (their events come from another country).
const TRAVEL_PER_MILLE: u32 = 10;
/// Addresses of the credential-stuffing attack.
const ATTACK_IPS: u32 = 30;
/// Exchanges' deposit addresses that many users withdraw to.
const SHARED_DESTINATIONS: u64 = 500;
/// A user who is expected to send at least this many events per second is an API trader.
const TRADER_EVENTS_PER_S: f64 = 1.0;
/// A trader's own (not their bot's) events per second: someone watching, now and then signing in or withdrawing.
const HUMAN_EVENTS_PER_S: f64 = 0.05;
/// An API key carries at most about this many requests per second on average (traders spread their load over keys,
/// as the default rule `api_key_flood`, 1 200 a minute per key, makes them do).
const REQUESTS_PER_KEY_PER_S: f64 = 5.0;

/// What is fixed about a user.
#[derive(Clone, Copy)]
struct UserTraits {
    /// Index into `COUNTRIES`.
    country: u8,
    /// A country they are travelling in during the stream (index into `COUNTRIES`), when they are.
    travel: Option<u8>,
    /// Home addresses.
    ips: [u32; 3],
    n_ips: u8,
    n_devices: u8,
    /// Usual destinations.
    n_destinations: u8,
    /// Usual amount, in dollars.
    base_usd: u32,
    /// API keys the user spreads requests over.
    api_keys: u16,
    /// Per million events, how many are a person's (a session, a sign-in, a withdrawal…) rather than an API
    /// trader's bot's requests: all of them for ordinary users.
    human_ppm: u32,
}

/// A sampler of Zipf-distributed ranks: inverse CDF over precomputed cumulative weights, by binary search.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    #[allow(clippy::float_arithmetic)]
    fn new(n: usize, exponent: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += (rank as f64).powf(-exponent);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    /// The share of all draws that go to `rank` (0-based).
    #[allow(clippy::float_arithmetic)]
    fn share(&self, rank: usize) -> f64 {
        let before = if rank == 0 { 0.0 } else { self.cumulative[rank - 1] };
        (self.cumulative[rank] - before) / self.cumulative[self.cumulative.len() - 1]
    }

    #[allow(clippy::float_arithmetic)]
    fn sample(&self, rng: &mut StdRng) -> usize {
        let u = rng.random::<f64>() * self.cumulative[self.cumulative.len() - 1];
        self.cumulative.partition_point(|&c| c <= u).min(self.cumulative.len() - 1)
    }
}

/// Spreads bits (splitmix64's finaliser), for values derived from ids rather than drawn.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Everyone, their networks, and who is how active.
struct Population {
    users: Vec<UserTraits>,
    countries: Vec<Country>,
    /// /24 prefixes (address >> 8) of each country's networks.
    networks: Vec<Vec<u32>>,
    /// Cumulative country weights, for drawing a country.
    country_weights: Vec<u32>,
    zipf: Zipf,
    /// The user at each activity rank: a permutation, so activity is unrelated to ids (and to the partition).
    rank_to_user: Vec<u32>,
    traders: usize,
}

impl Population {
    #[allow(clippy::float_arithmetic)]
    fn new(rng: &mut StdRng, n: u32, exponent: f64, rate: u64) -> anyhow::Result<Population> {
        let countries: Vec<Country> = COUNTRIES
            .iter()
            .map(|(c, _)| Country::parse(c).context("a valid country code"))
            .collect::<Result<_, _>>()?;
        let country_weights: Vec<u32> = COUNTRIES
            .iter()
            .scan(0, |sum, (_, w)| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        let mut networks: Vec<Vec<u32>> = vec![Vec::new(); countries.len()];
        for k in 0..NETWORKS {
            // Distinct /24s: an odd multiplier permutes the 2^24 prefixes.
            let prefix = (k.wrapping_mul(2_654_435_761) & 0x00ff_ffff) | 0x0100_0000;
            networks[pick_weighted(&country_weights, rng)].push(prefix);
        }
        ensure!(networks.iter().all(|n| !n.is_empty()), "every country has networks");
        let cgnat_base = 0x6440_0000u32; // 100.64.0.0/10, where carrier-grade NAT lives.
        let mut users = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let country = pick_weighted(&country_weights, rng);
            let n_ips = rng.random_range(1..=3u8);
            let mut ips = [0u32; 3];
            for ip in ips.iter_mut().take(usize::from(n_ips)) {
                *ip = if rng.random_range(0..1000) < CGNAT_PER_MILLE {
                    cgnat_base + rng.random_range(0..CGNAT_ADDRESSES)
                } else {
                    home_address(&networks[country], rng)
                };
            }
            let travel = (rng.random_range(0..1000) < TRAVEL_PER_MILLE).then(|| {
                let mut t = pick_weighted(&country_weights, rng);
                if t == country {
                    t = (t + 1) % countries.len();
                }
                t as u8
            });
            let base_usd = [20, 50, 100, 250, 500, 1_000, 2_500, 10_000, 40_000]
                [pick_weighted(&[100, 250, 450, 650, 800, 900, 960, 990, 1000], rng)];
            users.push(UserTraits {
                country: country as u8,
                travel,
                ips,
                n_ips,
                n_devices: rng.random_range(1..=2),
                n_destinations: rng.random_range(1..=3),
                base_usd,
                api_keys: 1,
                human_ppm: 1_000_000,
            });
        }
        let zipf = Zipf::new(n as usize, exponent);
        let mut rank_to_user: Vec<u32> = (0..n).collect();
        rank_to_user.shuffle(rng);
        let mut traders = 0;
        for (rank, &user) in rank_to_user.iter().enumerate() {
            let per_s = zipf.share(rank) * rate as f64;
            if per_s < TRADER_EVENTS_PER_S {
                break;
            }
            let u = &mut users[user as usize];
            u.api_keys = (per_s / REQUESTS_PER_KEY_PER_S).ceil().clamp(1.0, 4_000.0) as u16;
            u.human_ppm = (HUMAN_EVENTS_PER_S / per_s * 1e6).clamp(1.0, 1e6) as u32;
            traders += 1;
        }
        Ok(Population { users, countries, networks, country_weights, zipf, rank_to_user, traders })
    }

    fn len(&self) -> u64 {
        self.users.len() as u64
    }

    fn device(user: u64, k: u64) -> u64 {
        user * 4 + k
    }

    fn destination(user: u64, k: u64) -> String {
        format!("bc1q{:016x}{:016x}", mix(user), mix(user ^ (k << 40)))
    }
}

/// Picks an index by cumulative weights.
fn pick_weighted(cumulative: &[u32], rng: &mut StdRng) -> usize {
    let x = rng.random_range(0..cumulative[cumulative.len() - 1]);
    cumulative.partition_point(|&c| c <= x)
}

/// An address in one of a country's networks; popular networks (the first ones, like big carriers) are chosen far
/// more often, so addresses are shared.
fn home_address(networks: &[u32], rng: &mut StdRng) -> u32 {
    let a = rng.random_range(0..networks.len());
    let b = rng.random_range(0..networks.len());
    (networks[a.min(b).min(rng.random_range(0..networks.len()))] << 8) | rng.random_range(1..=254)
}

fn v4(address: u32) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::from(address)))
}

/// Feeds `engine` a history before the stream, in time order, generated as it goes (nothing is kept), and prunes
/// idle counters at the end of each day as the service's daily maintenance would; answers how many events. Over `HISTORY_DAYS` days each user is active on about one day in eight, and
/// at least on one: a second-factor sign-in from a home address and device and a session, and a withdrawal of about
/// their usual amount to a usual destination (a deposit instead on their first fixed day). Like an exchange's
/// registered users, most are idle on any given day. `part` keeps only users with `user % parts == part`.
fn warm_up(pop: &Population, part: Option<(u64, u64)>, engine: &mut Engine) -> u64 {
    let n = pop.len();
    let mut events = 0u64;
    for day in 0..HISTORY_DAYS {
        for user in 0..n {
            if part.is_some_and(|(parts, p)| user % parts != p) {
                continue;
            }
            let anchor = mix(user) % HISTORY_DAYS;
            if day != anchor && !mix((user << 8) | day).is_multiple_of(8) {
                continue;
            }
            let t = &pop.users[user as usize];
            // Each user at the same time of day whenever they are active: their usual hour.
            let at_ns = START_S * 1_000_000_000 + day * DAY_NS + user * (DAY_NS / n);
            let from = |kind: EventKind, at_ns: u64| Event {
                at_ns,
                user: UserId(user),
                ip: v4(t.ips[(day % u64::from(t.n_ips)) as usize]),
                device: Some(Population::device(user, day % u64::from(t.n_devices))),
                country: Some(pop.countries[usize::from(t.country)]),
                kind,
            };
            feed(engine, &mut events, &from(EventKind::SignIn { success: true, factor: Factor::Totp }, at_ns));
            feed(engine, &mut events, &from(EventKind::Session, at_ns + 1_000));
            if day == anchor {
                feed(
                    engine,
                    &mut events,
                    &Event {
                        at_ns: at_ns + 2_000,
                        user: UserId(user),
                        ip: None,
                        device: None,
                        country: None,
                        kind: EventKind::Deposit {
                            amount_micro_usd: u64::from(t.base_usd) * 3 * MICRO_USD_PER_USD,
                            source: None,
                        },
                    },
                );
            } else {
                let usd = u64::from(t.base_usd) * (80 + mix(user ^ (day << 32)) % 40) / 100;
                feed(
                    engine,
                    &mut events,
                    &from(
                        EventKind::Withdrawal {
                            amount_micro_usd: usd * MICRO_USD_PER_USD,
                            destination: Population::destination(user, day % u64::from(t.n_destinations)),
                        },
                        at_ns + 2_000,
                    ),
                );
            }
        }
        engine.prune(u32::try_from(START_S + (day + 1) * 86_400).unwrap_or(u32::MAX));
    }
    events
}

/// Scores one warm-up event.
fn feed(engine: &mut Engine, events: &mut u64, e: &Event) {
    std::hint::black_box(engine.evaluate(e));
    *events += 1;
}

/// Generates the timed stream.
struct Stream<'a> {
    pop: &'a Population,
    rng: StdRng,
    rate: u64,
    next_device: u64,
}

/// Event kinds by weight (per ten thousand) of people (API traders' bots send only API requests).
const KINDS_USER: &[(u8, u32)] = &[
    (K_SESSION, 5_250),
    (K_SIGN_IN, 1_800),
    (K_API, 1_200),
    (K_DEPOSIT, 800),
    (K_WITHDRAWAL, 600),
    (K_SECURITY, 150),
    (K_WHITELIST, 100),
    (K_CHALLENGE_PASSED, 100),
];
const K_SESSION: u8 = 0;
const K_SIGN_IN: u8 = 1;
const K_API: u8 = 2;
const K_DEPOSIT: u8 = 3;
const K_WITHDRAWAL: u8 = 4;
const K_SECURITY: u8 = 5;
const K_WHITELIST: u8 = 6;
const K_CHALLENGE_PASSED: u8 = 7;

/// Per ten thousand events: the credential-stuffing attack's failed sign-ins.
const ATTACK_BP: u32 = 30;

impl Stream<'_> {
    fn event(&mut self, i: u64) -> Event {
        let at_ns = STREAM_START_NS + u64::try_from(u128::from(i) * 1_000_000_000 / u128::from(self.rate)).unwrap_or(0);
        let pop = self.pop;
        let rng = &mut self.rng;
        if rng.random_range(0..10_000) < ATTACK_BP {
            // A stolen-credentials list tried from a few hosting addresses against random accounts.
            let k = rng.random_range(0..ATTACK_IPS);
            return Event {
                at_ns,
                user: UserId(rng.random_range(0..pop.len())),
                ip: v4(0xc633_6400 | k), // 198.51.100.0/24
                device: Some((1 << 41) | u64::from(k)),
                country: Some(pop.countries[(k as usize * 7) % pop.countries.len()]),
                kind: EventKind::SignIn { success: false, factor: Factor::Password },
            };
        }
        let user = u64::from(pop.rank_to_user[pop.zipf.sample(rng)]);
        let t = pop.users[user as usize];
        let mut kind_code = K_API;
        if rng.random_range(0..1_000_000) < t.human_ppm {
            let total: u32 = KINDS_USER.iter().map(|(_, w)| w).sum();
            let mut x = rng.random_range(0..total);
            for &(k, w) in KINDS_USER {
                if x < w {
                    kind_code = k;
                    break;
                }
                x -= w;
            }
        }
        let amount = |rng: &mut StdRng| {
            let micro = u64::from(t.base_usd) * MICRO_USD_PER_USD * rng.random_range(30..=300) / 100;
            // One in two hundred is far larger than usual.
            if rng.random_range(0..200) == 0 { micro * 25 } else { micro }
        };
        let kind = match kind_code {
            K_SESSION => EventKind::Session,
            K_SIGN_IN => match rng.random_range(0..100) {
                0..45 => EventKind::SignIn { success: true, factor: Factor::Password },
                45..80 => EventKind::SignIn { success: true, factor: Factor::Totp },
                80..88 => EventKind::SignIn { success: true, factor: Factor::Passkey },
                88..89 => EventKind::SignIn { success: true, factor: Factor::BackupCode },
                89..97 => EventKind::SignIn { success: false, factor: Factor::Password },
                _ => EventKind::SignIn { success: false, factor: Factor::Totp },
            },
            K_API => EventKind::ApiRequest { key: (user << 12) | u64::from(rng.random_range(0..t.api_keys)) },
            K_DEPOSIT => EventKind::Deposit {
                amount_micro_usd: amount(rng),
                source: rng.random_bool(0.5).then(|| format!("bc1q{:032x}", rng.random::<u128>())),
            },
            K_WITHDRAWAL => {
                EventKind::Withdrawal { amount_micro_usd: amount(rng), destination: self.destination(user) }
            }
            K_SECURITY => EventKind::SecurityChange { change: Change::ALL[rng.random_range(0..Change::ALL.len())] },
            K_WHITELIST => {
                EventKind::WhitelistChange { destination: self.destination(user), added: self.rng.random_bool(0.8) }
            }
            _ => EventKind::ChallengePassed,
        };
        if matches!(kind, EventKind::Deposit { .. }) {
            // Credited by the chain watcher: no client.
            return Event { at_ns, user: UserId(user), ip: None, device: None, country: None, kind };
        }
        let rng = &mut self.rng;
        let home_ip = t.ips[rng.random_range(0..usize::from(t.n_ips))];
        let device = Population::device(user, rng.random_range(0..u64::from(t.n_devices)));
        let (mut ip, mut device, mut country) = (home_ip, device, usize::from(t.country));
        if let Some(abroad) = t.travel {
            // A traveller uses the same hotel or roaming address throughout.
            country = usize::from(abroad);
            let nets = &pop.networks[country];
            ip = (nets[(mix(user) % nets.len() as u64) as usize] << 8) | 77;
        }
        match rng.random_range(0..1_000) {
            // A new address in the home (or current) country: a phone on another carrier, a café.
            0..30 => ip = home_address(&pop.networks[country], rng),
            // A new device at a known address.
            30..45 => {
                self.next_device += 1;
                device = (1 << 40) | self.next_device;
            }
            // A VPN: a random country (now and then a sanctioned one), a random network.
            45..47 => {
                country = pick_weighted(&pop.country_weights, rng);
                ip = home_address(&pop.networks[country], rng);
                if rng.random_range(0..10) == 0 {
                    let code = SANCTIONED[rng.random_range(0..SANCTIONED.len())];
                    let c = Country::parse(code).unwrap_or(pop.countries[country]);
                    return Event {
                        at_ns,
                        user: UserId(user),
                        ip: v4(ip),
                        device: Some(device),
                        country: Some(c),
                        kind,
                    };
                }
            }
            _ => {}
        }
        Event {
            at_ns,
            user: UserId(user),
            ip: v4(ip),
            device: Some(device),
            country: Some(pop.countries[country]),
            kind,
        }
    }

    /// A withdrawal or whitelist destination: mostly the user's own, sometimes an exchange's shared deposit address,
    /// now and then a new one.
    fn destination(&mut self, user: u64) -> String {
        let t = self.pop.users[user as usize];
        match self.rng.random_range(0..100) {
            0..80 => Population::destination(user, self.rng.random_range(0..u64::from(t.n_destinations))),
            80..95 => format!("bc1qexchange{:08}", self.rng.random_range(0..SHARED_DESTINATIONS)),
            _ => format!("bc1q{:032x}", self.rng.random::<u128>()),
        }
    }
}

/// Thirty (or `count`) rules on top of the defaults, generated from the feature catalogue: velocity thresholds on
/// every scope, amounts against the user's usual ones, deviation, countries, ratios, recency; a third of them in
/// shadow mode, a third scoring, a third with an outcome.
fn generated_rules(count: usize) -> String {
    let velocity: Vec<&str> =
        rampart_risk::features::all().iter().map(|d| d.name.as_str()).filter(|name| name.contains('.')).collect();
    let sanctioned = SANCTIONED.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let home = COUNTRIES.iter().take(12).map(|(c, _)| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    for i in 0..count {
        let variant = (i / 10) as u64 + 1;
        let (what, on, when): (&str, &str, String) = match i % 10 {
            0 => {
                let feature = velocity[(i * 7 + 3) % velocity.len()];
                let window = feature.rsplit('_').next().unwrap_or("1h");
                let per_window = match window {
                    "1m" => 1,
                    "1h" => 20,
                    _ => 200,
                };
                // Generous for what API traders do by the thousand (requests, events), tight for the rest.
                let threshold = if feature.contains("_usd_") {
                    50_000 * per_window * variant
                } else if feature.contains("accounts") {
                    (3 + per_window.min(10) + variant).min(15)
                } else if feature.contains("events_") || feature.contains("requests_") {
                    200_000 * per_window * variant
                } else {
                    10 * per_window * variant
                };
                let on = match feature.split('.').next().unwrap_or("user") {
                    "ip" => r#"["sign_in", "session", "api_request"]"#,
                    "device" => r#"["sign_in", "session", "withdrawal"]"#,
                    "destination" => r#"["withdrawal", "whitelist_change"]"#,
                    "api_key" => r#"["api_request"]"#,
                    _ => "",
                };
                ("velocity", on, format!("{feature} > {threshold}"))
            }
            1 => (
                "amount",
                r#"["withdrawal", "deposit"]"#,
                format!("amount_usd >= {} and amount_deviations > {}", 2_000 * variant, 2 + 2 * variant),
            ),
            2 => (
                "deviation",
                r#"["sign_in", "session", "withdrawal"]"#,
                format!("deviation >= 0.{} and not device_known", 2 + variant),
            ),
            3 => ("sanctioned", "", format!("country in [{sanctioned}]")),
            4 => (
                "foreign_amount",
                r#"["withdrawal"]"#,
                format!("country not in [{home}] and not country_known and amount_usd > {}", 1_000 * variant),
            ),
            5 => (
                "drain_ratio",
                r#"["withdrawal"]"#,
                format!("user.withdrawal_usd_24h > (user.deposit_usd_24h + {}) * {}", 5_000 * variant, 2 + variant),
            ),
            6 => (
                "after_security_change",
                r#"["withdrawal", "whitelist_change"]"#,
                format!("since_security_change_s < {} and not destination_known", 3_600 * variant),
            ),
            7 => (
                "travel_new_device",
                r#"["sign_in", "session"]"#,
                format!("travel_kmh > {} and not device_known", 400 * variant),
            ),
            8 => (
                "failures_new_ip",
                r#"["sign_in"]"#,
                format!("user.failed_sign_ins_1h >= {} and not ip_known and not network_known", 2 + variant),
            ),
            _ => (
                "young_account",
                r#"["withdrawal"]"#,
                format!("account_age_s < {} and amount_usd > {} and history < 3", 86_400 * variant, 5_000 * variant),
            ),
        };
        let action = match i % 3 {
            0 => format!("score = {}", 10 + 10 * (i % 4)),
            1 => format!("outcome = \"{}\"", if i % 2 == 0 { "hold" } else { "challenge" }),
            _ => "outcome = \"hold\"\nmode = \"shadow\"".to_owned(),
        };
        let on = if on.is_empty() { String::new() } else { format!("on = {on}\n") };
        out.push_str(&format!(
            "\n[[rule]]\nname = \"gen_{i:02}_{what}\"\ndescription = \"Generated by the benchmark.\"\n{on}when = '{when}'\n{action}\n"
        ));
    }
    out
}

/// A 64-bit digest of bytes (SipHash with fixed keys: the same on every run of the same build).
fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// The process's resident memory, from `/proc/self/status`.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS in /proc/self/status")?;
    let kib: u64 = line.split_whitespace().nth(1).context("an empty VmRSS line")?.parse()?;
    Ok(kib * 1024)
}

/// Nanoseconds as microseconds with three decimals, for the JSON line.
pub(crate) fn micros(ns: u64) -> serde_json::Value {
    format!("{}.{:03}", ns / 1000, ns % 1000).parse::<serde_json::Number>().map_or(serde_json::Value::Null, Into::into)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

const OUTCOMES: [Outcome; 5] = [Outcome::Allow, Outcome::Challenge, Outcome::Hold, Outcome::Freeze, Outcome::Block];

/// Runs the benchmark and prints its figures, then one JSON line.
pub async fn run(args: RiskArgs) -> anyhow::Result<()> {
    let json = tokio::task::spawn_blocking(move || in_process(args)).await.context("the risk benchmark panicked")??;
    println!("{json}");
    Ok(())
}

fn in_process(args: RiskArgs) -> anyhow::Result<serde_json::Value> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let text = format!("{}{}", rampart_risk::DEFAULT_RULES, generated_rules(args.extra_rules));
    let rules = Arc::new(RuleSet::parse(&text).context("the generated rules do not compile")?);
    let n_rules = rules.rules.len();
    let shadow = rules.rules.iter().filter(|r| r.mode == rampart_risk::Mode::Shadow).count();
    let pop = Population::new(&mut rng, args.users, args.zipf_exponent, args.rate)?;
    let top_share = (0..10).map(|r| pop.zipf.share(r)).sum::<f64>();
    println!(
        "rampart bench risk: seed {seed}, {} users (Zipf exponent {}, the 10 busiest make {:.1} % of events, {} API \
         traders), {} rules ({} default + {} generated, {shadow} in shadow mode), stream of {} events at {} \
         events/s",
        grouped(pop.len()),
        args.zipf_exponent,
        percent(top_share),
        grouped(pop.traders as u64),
        n_rules,
        n_rules - args.extra_rules,
        args.extra_rules,
        grouped(args.events as u64),
        grouped(args.rate),
    );
    println!(
        "size_of::<Profile>() = {} bytes (with the first two entries of each address, network, device, country and \
         destination list; longer lists spill to the heap)",
        size_of::<Profile>()
    );

    // Memory first, before the stream exists, so that the process holds little but the engine.
    let rss_before = rss_bytes()?;
    let mut engine = Engine::new(Arc::clone(&rules));
    let started = Instant::now();
    let warm_events = warm_up(&pop, None, &mut engine);
    let warm_elapsed = started.elapsed();
    let rss = rss_bytes()?;
    let engine_bytes = rss.saturating_sub(rss_before);
    ensure!(engine.users() == pop.users.len(), "the engine holds {} profiles, not {}", engine.users(), pop.len());
    let bytes_per_profile = engine_bytes / pop.len();
    println!(
        "warm-up: {} events ({} days of history, pruned daily) in {} ms ({} events/s); the engine holds {} profiles",
        grouped(warm_events),
        HISTORY_DAYS,
        warm_elapsed.as_millis(),
        grouped(per_second(warm_events, warm_elapsed)),
        grouped(engine.users() as u64),
    );
    println!(
        "memory: resident {} MiB in all, {} MiB more than before the engine existed (profiles and the counters of \
         addresses, devices, destinations and API keys): {} bytes a user (goal ≤ 1 GiB for 1,000,000 profiles: {})",
        rss >> 20,
        engine_bytes >> 20,
        bytes_per_profile,
        met(engine_bytes.saturating_mul(1_000_000) / pop.len() <= GOAL_BYTES),
    );

    let sizes = engine.sizes();
    println!(
        "           {} profiles ({} with busy counters), counters of {} addresses, {} devices, {} destinations, {} \
         API keys",
        grouped(sizes.profiles as u64),
        grouped(sizes.busy_profiles as u64),
        grouped(sizes.ips as u64),
        grouped(sizes.devices as u64),
        grouped(sizes.destinations as u64),
        grouped(sizes.api_keys as u64),
    );

    // What the service's snapshot worker costs at this size (it holds the engine while the snapshot is taken).
    let started = Instant::now();
    let snapshot = engine.snapshot();
    let snapshot_elapsed = started.elapsed();
    let snapshot_bytes = snapshot.len();
    // Equal digests on two builds mean their engines reached exactly the same state on the same history (same seed,
    // users and rate): a check that a performance change changed nothing else.
    let state_digest = digest(&snapshot);
    drop(snapshot);
    println!(
        "snapshot: {} MiB in {} ms (taken after the memory was measured); state digest {state_digest:016x}",
        snapshot_bytes >> 20,
        snapshot_elapsed.as_millis()
    );

    let started = Instant::now();
    let mut stream = Stream { pop: &pop, rng: StdRng::seed_from_u64(seed ^ 0x5eed), rate: args.rate, next_device: 0 };
    let events: Vec<Event> = (0..args.events as u64).map(|i| stream.event(i)).collect();
    println!(
        "stream: {} events generated in {} ms (not timed), {} bytes each in memory plus strings",
        grouped(events.len() as u64),
        started.elapsed().as_millis(),
        size_of::<Event>()
    );

    // 1. One thread, one engine.
    let mut outcomes = [0u64; 5];
    let started = Instant::now();
    // In groups, as a stream consumer scores (the decisions are those of one-by-one scoring).
    engine.evaluate_batch(&events, |_, d| outcomes[d.outcome as usize] += 1);
    let one_elapsed = started.elapsed();
    let one_rate = per_second(events.len() as u64, one_elapsed);
    println!(
        "1 thread:  {} events in {} ms: {} events/s ({} ns an event)",
        grouped(events.len() as u64),
        one_elapsed.as_millis(),
        grouped(one_rate),
        one_elapsed.as_nanos() / events.len().max(1) as u128,
    );
    let outcome_line = OUTCOMES
        .iter()
        .zip(outcomes)
        .map(|(o, n)| format!("{} {} ({})", o.name(), grouped(n), percent_of(n, events.len() as u64)))
        .collect::<Vec<_>>()
        .join(", ");
    println!("outcomes:  {outcome_line}");
    println!(
        "           after the stream the process holds {} MiB; {} profiles have busy counters",
        rss_bytes()? >> 20,
        grouped(engine.sizes().busy_profiles as u64)
    );
    drop(engine);

    // 2. Two threads: users partitioned between two engines, each on its own thread.
    let parts: [Vec<&Event>; 2] = [0, 1].map(|p| events.iter().filter(|e| e.user.0 % 2 == p).collect());
    let mut engines = [Engine::new(Arc::clone(&rules)), Engine::new(Arc::clone(&rules))];
    std::thread::scope(|s| {
        for (p, engine) in engines.iter_mut().enumerate() {
            let pop = &pop;
            s.spawn(move || warm_up(pop, Some((2, p as u64)), engine));
        }
    });
    let started = Instant::now();
    let per_thread: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter_mut()
            .zip(&parts)
            .map(|(engine, part)| {
                s.spawn(move || {
                    let t0 = Instant::now();
                    engine.evaluate_batch(part, |_, d| {
                        std::hint::black_box(d);
                    });
                    t0.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a scoring thread panicked")).collect()
    });
    let two_elapsed = started.elapsed();
    let two_rate = per_second(events.len() as u64, two_elapsed);
    // What the two threads could do if the users were split evenly by activity: the busiest users cannot be split
    // between engines, so one partition usually carries more events and the wall time is its time.
    let capacity: u64 = parts.iter().zip(&per_thread).map(|(p, t)| per_second(p.len() as u64, *t)).sum();
    println!(
        "2 threads: {} events in {} ms: {} events/s (goal ≥ {} on 2 cores: {}); the threads scored {} and {} events \
         in {} and {} ms, {} events/s together when both were busy",
        grouped(events.len() as u64),
        two_elapsed.as_millis(),
        grouped(two_rate),
        grouped(GOAL_EVENTS_PER_S),
        met(two_rate >= GOAL_EVENTS_PER_S),
        grouped(parts[0].len() as u64),
        grouped(parts[1].len() as u64),
        per_thread[0].as_millis(),
        per_thread[1].as_millis(),
        grouped(capacity),
    );
    drop(engines);
    let partition = [parts[0].len(), parts[1].len()];
    drop(parts);

    let latency = if args.skip_latency { None } else { Some(latency(&pop, &rules, &events, args.rate)?) };
    let outcomes_json: serde_json::Map<String, serde_json::Value> =
        OUTCOMES.iter().zip(outcomes).map(|(o, n)| (o.name().to_owned(), n.into())).collect();
    Ok(serde_json::json!({
        "bench": "risk",
        "seed": seed,
        "users": pop.len(),
        "events": events.len(),
        "rate": args.rate,
        "rules": n_rules,
        "events_per_s_1_thread": one_rate,
        "events_per_s": two_rate,
        "events_per_s_2_threads_both_busy": capacity,
        "partition_events": partition,
        "p50_us": latency.as_ref().map(|l| micros(l.p50)),
        "p99_us": latency.as_ref().map(|l| micros(l.p99)),
        "p999_us": latency.as_ref().map(|l| micros(l.p999)),
        "max_us": latency.as_ref().map(|l| micros(l.max)),
        "stalls_over_1ms": latency.as_ref().map(|l| l.stalls),
        "rss_bytes": rss,
        "engine_rss_bytes": engine_bytes,
        "bytes_per_profile": bytes_per_profile,
        "profile_size": size_of::<Profile>(),
        "snapshot_bytes": snapshot_bytes,
        "state_digest": format!("{state_digest:016x}"),
        "decisions_digest": latency.as_ref().map(|l| format!("{:016x}", l.decisions_digest)),
        "snapshot_ms": u64::try_from(snapshot_elapsed.as_millis()).unwrap_or(u64::MAX),
        "outcomes": outcomes_json,
    }))
}

/// What the latency phase measured.
struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    /// Decisions that alone took over a millisecond.
    stalls: usize,
    decisions_digest: u64,
}

/// Latency at a sustained rate, on a fresh engine warmed up like the others: each event is due at its time in the
/// stream; it is scored when the thread is free and not before it is due, and its latency runs from when it was due,
/// so a slow decision delays the ones behind it and they count it (no coordinated omission). Latencies in
/// nanoseconds.
fn latency(pop: &Population, rules: &Arc<RuleSet>, events: &[Event], rate: u64) -> anyhow::Result<Latency> {
    let mut engine = Engine::new(Arc::clone(rules));
    warm_up(pop, None, &mut engine);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut fired: BTreeMap<Arc<str>, (u64, bool)> = BTreeMap::new();
    let interval_ns = 1_000_000_000 / u128::from(rate);
    // The decisions that alone took longer than a millisecond (service time, without waiting): what stalls are.
    let mut slow: Vec<(Duration, usize)> = Vec::new();
    let mut decisions = std::hash::DefaultHasher::new();
    let t0 = Instant::now() + Duration::from_millis(10);
    for (i, e) in events.iter().enumerate() {
        let due = t0 + Duration::from_nanos(u64::try_from(i as u128 * interval_ns).unwrap_or(u64::MAX));
        let mut now = Instant::now();
        while now < due {
            std::hint::spin_loop();
            now = Instant::now();
        }
        let d = engine.evaluate(e);
        let done = Instant::now();
        histogram.saturating_record(u64::try_from(done.duration_since(due).as_nanos()).unwrap_or(u64::MAX).max(1));
        if done - now > Duration::from_millis(1) {
            slow.push((done - now, i));
        }
        (d.outcome.name(), d.score).hash(&mut decisions);
        for r in &d.reasons {
            fired.entry(Arc::clone(&r.rule)).or_insert((0, r.shadow)).0 += 1;
            (&*r.rule, r.shadow, &r.values).hash(&mut decisions);
        }
    }
    let behind = Instant::now().saturating_duration_since(
        t0 + Duration::from_nanos(u64::try_from(events.len() as u128 * interval_ns).unwrap_or(u64::MAX)),
    );
    let (p50, p99, p999, max) = (
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
    );
    println!(
        "latency at {} events/s on 1 thread: p50 {} µs, p99 {} µs (goal ≤ 1000 µs: {}), p99.9 {} µs, max {} µs; \
         finished {} ms after the last event was due",
        grouped(rate),
        micros(p50),
        micros(p99),
        met(p99 <= GOAL_P99_NS),
        micros(p999),
        micros(max),
        behind.as_millis(),
    );
    let decisions_digest = decisions.finish();
    println!(
        "           decisions digest {decisions_digest:016x} (outcomes, scores, reasons and the values they read)"
    );
    slow.sort_unstable_by(|a, b| b.cmp(a));
    let slow_total: Duration = slow.iter().map(|(d, _)| *d).sum();
    println!(
        "           {} decisions took over 1 ms on their own ({} ms in all); the longest: {}",
        slow.len(),
        slow_total.as_millis(),
        slow.iter()
            .take(8)
            .map(|(d, i)| format!("{} ms (event {i}, {})", d.as_millis(), events[*i].kind().name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let n_rules = rules.rules.len();
    let mut by_count: Vec<_> = fired.into_iter().collect();
    by_count.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    println!("rules that matched ({} of {n_rules}), most often first:", by_count.len());
    for (name, (n, shadow)) in &by_count {
        println!("  {:>10}  {name}{}", grouped(*n), if *shadow { " (shadow)" } else { "" });
    }

    Ok(Latency { p50, p99, p999, max, stalls: slow.len(), decisions_digest })
}

/// A share (0 to 1) as a percentage, for people.
#[allow(clippy::float_arithmetic)]
fn percent(share: f64) -> f64 {
    share * 100.0
}

/// `n` of `total` as a percentage with two decimals, in integers.
fn percent_of(n: u64, total: u64) -> String {
    let basis = u128::from(n) * 10_000 / u128::from(total.max(1));
    format!("{}.{:02} %", basis / 100, basis % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_rules_compile_and_the_stream_is_plausible() {
        let text = format!("{}{}", rampart_risk::DEFAULT_RULES, generated_rules(30));
        let rules = RuleSet::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(rules.rules.len(), RuleSet::default_rules().rules.len() + 30);
        let mut rng = StdRng::seed_from_u64(1);
        let pop = Population::new(&mut rng, 10_000, 1.05, 1_000).unwrap();
        let mut stream = Stream { pop: &pop, rng, rate: 1_000, next_device: 0 };
        let events: Vec<Event> = (0..20_000).map(|i| stream.event(i)).collect();
        assert!(events.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        let mut engine = Engine::new(Arc::new(rules));
        warm_up(&pop, None, &mut engine);
        assert_eq!(engine.users(), 10_000);
        let allowed = events.iter().filter(|e| engine.evaluate(e).outcome == Outcome::Allow).count();
        assert!(allowed > 18_000 && allowed < 20_000, "{allowed}");
    }
}
