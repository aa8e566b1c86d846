//! The risk engine in the service survives a restart: what it learned is restored from the newest snapshot plus the
//! event log after it, so the decisions after a restart are exactly those of an engine that never stopped. On SQLite
//! and (when configured) PostgreSQL.

#[macro_use]
#[allow(dead_code)]
mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::Db;
use rampart_core::{AssetRegistry, Clock, ManualClock};
use rampart_crypto::{Keyring, initialise};
use rampart_risk::{Country, Engine, Event, EventKind, Factor, MICRO_USD_PER_USD, Outcome, RuleSet, UserId};
use rampart_server::risk::{Risk, RiskConfig, assess, snapshot_once};
use rampart_server::{AppState, VaultState};
use rampart_store::{ConnectOptions, Effects, NewCustomer, Store};

const SEC: u64 = 1_000_000_000;
const START_S: u64 = 1_800_262_800;

fn keyring() -> Arc<Keyring> {
    let (config, root, _) = initialise(5, 3, &mut rand_core::OsRng).unwrap();
    Arc::new(Keyring::create(root, config.init_id).0)
}

async fn customer(store: &Store, keyring: &Keyring, email: &str) -> i64 {
    let index = keyring.blind_index("customer.email", email.as_bytes());
    let ct = keyring.encrypt(email.as_bytes(), b"test");
    let new = NewCustomer {
        handle: rand::random(),
        email_index: &index,
        email: &ct,
        password_hash: "$argon2id$placeholder",
        totp_pending: &ct,
    };
    let auditor = rampart_store::Auditor { signer: keyring, checkpoint_every: 1000 };
    store
        .create_customer(&new, &rand::random(), "test", "192.0.2.1", START_S * SEC, &auditor, |_| Effects::default())
        .await
        .unwrap()
        .unwrap()
        .0
}

/// Customer `user`'s day: an ordinary sign-in, sometimes from abroad, sometimes followed by a withdrawal.
fn events(users: &[i64], days: u64, from_day: u64) -> Vec<Event> {
    let mut out = Vec::new();
    for day in from_day..from_day + days {
        for (k, &user) in users.iter().enumerate() {
            let at = (START_S + day * 86_400 + k as u64 * 60) * SEC;
            let abroad = (day + k as u64) % 4 == 3;
            let (ip, country): (IpAddr, &str) =
                if abroad { ("203.0.113.9".parse().unwrap(), "BR") } else { ("198.51.100.20".parse().unwrap(), "DE") };
            let base = |at_ns: u64, kind: EventKind| Event {
                at_ns,
                user: UserId(user as u64),
                ip: Some(ip),
                device: Some(user as u64),
                country: Country::parse(country),
                kind,
            };
            out.push(base(at, EventKind::SignIn { success: true, factor: Factor::Totp }));
            if day % 2 == 1 {
                let usd = 500 * (day + 1) * (k as u64 + 1);
                out.push(base(
                    at + 90 * SEC,
                    EventKind::Withdrawal {
                        amount_micro_usd: usd * MICRO_USD_PER_USD,
                        destination: format!("bc1q{k}"),
                    },
                ));
            }
        }
    }
    out
}

async fn service(db_url: &str, keyring: &Arc<Keyring>, clock: &Arc<ManualClock>) -> (AppState, u64) {
    let store = Store::connect(db_url, &ConnectOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    let (risk, replayed) = Risk::load(&store, RiskConfig::default()).await.unwrap();
    let state =
        AppState::new(store, AssetRegistry::defaults(), clock.clone(), VaultState::Unsealed(keyring.clone()), None)
            .with_risk(Arc::new(risk))
            .unwrap();
    (state, replayed)
}

async fn feed(state: &AppState, clock: &ManualClock, events: &[Event]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for e in events {
        clock.set_ns(e.at_ns);
        let user = i64::try_from(e.user.0).unwrap();
        out.push(assess(state, user, e.clone()).await.unwrap().decision.outcome);
    }
    out
}

async fn a_restart_loses_nothing(db: Db) {
    let url = db.database_url_or_sqlite();
    let keyring = keyring();
    let clock = Arc::new(ManualClock::new(START_S * SEC));
    let (state, replayed) = service(&url, &keyring, &clock).await;
    assert_eq!(replayed, 0);
    let mut users = Vec::new();
    for k in 0..6 {
        users.push(customer(state.store(), &keyring, &format!("user{k}@example.com")).await);
    }
    let before = events(&users, 6, 0);
    let middle = events(&users, 3, 6);
    let after = events(&users, 5, 9);

    // An engine that never stops, for reference.
    let mut reference = Engine::new(Arc::new(RuleSet::default_rules()));
    let expected: Vec<Outcome> =
        before.iter().chain(&middle).chain(&after).map(|e| reference.evaluate(e).outcome).collect();
    assert!(expected.iter().any(|o| *o != Outcome::Allow), "the stream exercises the rules: {expected:?}");

    let mut got = feed(&state, &clock, &before).await;
    snapshot_once(&state).await.unwrap();
    got.extend(feed(&state, &clock, &middle).await);
    drop(state);

    // The restart: the snapshot, then the middle events replayed from the log.
    let (state, replayed) = service(&url, &keyring, &clock).await;
    assert_eq!(replayed, middle.len() as u64, "only the events after the snapshot are replayed");
    got.extend(feed(&state, &clock, &after).await);
    assert_eq!(got, expected, "the restarted engine decides as one that never stopped");
    let now_s = u32::try_from(clock.now_ns() / SEC).unwrap();
    reference.prune(now_s);
    assert_eq!(
        state.risk().unwrap().snapshot(now_s).1,
        reference.snapshot(),
        "and holds the same state, byte for byte"
    );

    // A snapshot this build cannot read (another version's format, a damaged row): the whole log is replayed.
    let total = (before.len() + middle.len() + after.len()) as u64;
    state.store().save_risk_snapshot(i64::try_from(total).unwrap(), b"not a snapshot", clock.now_ns()).await.unwrap();
    drop(state);
    let (state, replayed) = service(&url, &keyring, &clock).await;
    assert_eq!(replayed, total, "every logged event is replayed");
    assert_eq!(state.risk().unwrap().snapshot(now_s).1, reference.snapshot(), "to the same state");
}

on_both_backends!(a_restart_loses_nothing);
