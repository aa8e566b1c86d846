//! Crash safety of the withdrawal pipeline: the server is killed (SIGKILL) at random moments while customers ask
//! for withdrawals and the worker screens, pays, broadcasts and confirms them, then started again on the same
//! database, a hundred times on each backend. After every restart: no request is lost (a retry with its key answers
//! the withdrawal it made, or makes it once), the ledger balances, every hold is either pending for a withdrawal in
//! flight or resolved for one that ended, and the customer's money adds up. At the end every withdrawal reaches an
//! end and none was paid twice.
//!
//! The seed of the run is printed; `RAMPART_CRASH_SEED` replays one, `RAMPART_CRASH_KILLS` changes the count.
//!
//! And, on PostgreSQL, a kill at one chosen point: between recording a request that waits for people and screening
//! it.

#[allow(dead_code)]
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::customer::*;
use common::{Api, Db, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const FEE_HELD_SAT: u64 = 20_000;
const FUNDS_SAT: u64 = 50_000_000;

const CONFIG: &str = r#"
[identity]
client_ip_header = "x-forwarded-for"
step_up_window_s = 3600
rate_limit_per_s = 100000
rate_limit_burst = 100000

[compliance]
kyc_limits_usd = [[1000000, 1000000], [1000000, 1000000], [1000000, 1000000]]

[custody]
interval_ms = 50
dev_block_interval_s = 0

[withdrawals]
resume_after_s = 1
rebroadcast_after_s = 1
"#;

/// What a request asked: its key, amount and destination.
#[derive(Clone)]
struct Asked {
    key: String,
    amount: u64,
    to: String,
}

async fn ask(c: &Customer, a: &Asked) -> Option<(u16, Value)> {
    let body = json!({"asset": "BTC", "amount": btc(a.amount), "address": a.to, "idempotency_key": a.key});
    let answer = c.ctx.api.try_send(c.me(reqwest::Method::POST, "/v1/me/withdrawals").json(&body)).await?;
    Some((answer.status.as_u16(), answer.body))
}

async fn withdrawals(c: &Customer) -> Vec<Value> {
    let list = c.get("/v1/me/withdrawals?limit=200").await.expect(200).as_array().expect("a list").clone();
    // The page holds them all (a hundred rounds of at most two requests), or the sums below would be wrong.
    assert!(list.len() < 200, "more withdrawals than one page");
    list
}

/// The customer's money adds up: what is available, what is held for withdrawals in flight and what confirmed
/// withdrawals spent (amount and fee share) make the deposit; holds are exactly those of withdrawals in flight.
async fn assert_money_adds_up(c: &Customer, seed: u64, round: usize) -> Vec<Value> {
    // The worker moves withdrawals meanwhile: the balance is read between two identical lists, so that all three
    // describe one moment.
    let (list, (available, held)) = loop {
        let before = withdrawals(c).await;
        let balance = balance(c).await;
        if withdrawals(c).await == before {
            break (before, balance);
        }
    };
    let mut in_flight = 0;
    let mut spent = 0;
    for w in &list {
        let amount = sat(w["amount"].as_str().unwrap());
        match w["state"].as_str().unwrap() {
            "confirmed" => spent += amount + sat(w["network_fee"].as_str().unwrap_or("0")),
            "rejected" | "cancelled" | "failed" | "expired" => {}
            _ => in_flight += amount + FEE_HELD_SAT,
        }
    }
    assert_eq!(held, in_flight, "seed {seed} round {round}: holds {held} vs withdrawals in flight: {list:?}");
    assert_eq!(available + held + spent, FUNDS_SAT, "seed {seed} round {round}: money lost or made: {list:?}");
    list
}

/// A customer signed in with a fresh second factor, [`FUNDS_SAT`] paid to their deposit address (not yet mined).
async fn signed_in_with_a_deposit(maildir: std::path::PathBuf, root: &Api, label: &str) -> Customer {
    let ctx = Ctx { api: root.clone(), maildir };
    let mut c = Customer::register(&ctx, label).await;
    c.sign_in().await;
    c.step_up().await;
    let deposit =
        c.post("/v1/me/deposit-address", &json!({})).await.expect(200)["address"].as_str().unwrap().to_owned();
    root.post("/v1/dev/chain/faucet", &json!({"address": deposit, "amount_sat": FUNDS_SAT})).await;
    c
}

async fn restart(db: &Db, c: &mut Customer) -> (Server, Api) {
    restart_with(db, c, CONFIG).await
}

async fn restart_with(db: &Db, c: &mut Customer, config: &str) -> (Server, Api) {
    let server = Server::start_with_config(db, config).await;
    let root: Api = (*server).clone();
    c.ctx.api = root.clone();
    (server, root)
}

on_both_backends!(killed_at_random_points);

async fn killed_at_random_points(db: Db) {
    let seed = std::env::var("RAMPART_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let kills: usize = std::env::var("RAMPART_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    println!("withdrawal crash test on {}: seed {seed}, {kills} kills", db.backend());
    let mut rng = StdRng::seed_from_u64(seed);

    let mut server = Server::start_with_config(&db, CONFIG).await;
    let mut root: Api = (*server).clone();
    let mut c = signed_in_with_a_deposit(db.maildir(), &root, "crash").await;
    let hot = root.get("/v1/custody/status").await.expect(200)["hot_address"].as_str().unwrap().to_owned();
    root.post("/v1/dev/chain/faucet", &json!({"address": hot, "amount_sat": 10 * SAT_PER_BTC})).await;
    root.post("/v1/dev/chain/mine", &json!({"blocks": 3})).await.expect(200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while balance(&c).await.0 < FUNDS_SAT {
        assert!(Instant::now() < deadline, "the deposit was not credited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut asked: BTreeMap<String, Asked> = BTreeMap::new();
    let mut made: BTreeMap<String, String> = BTreeMap::new(); // key -> withdrawal id
    let mut n = 0u32;
    for round in 0..kills {
        // One or two requests at once, sometimes a block, then a kill at a random moment.
        let mut tasks = Vec::new();
        for _ in 0..rng.random_range(1..=2) {
            n += 1;
            let a = Asked { key: format!("k{n}"), amount: rng.random_range(10_000..200_000), to: address(n) };
            asked.insert(a.key.clone(), a.clone());
            let (api, me) = (c.ctx.api.clone(), c.me(reqwest::Method::POST, "/v1/me/withdrawals"));
            let body = json!({"asset": "BTC", "amount": btc(a.amount), "address": a.to, "idempotency_key": a.key});
            tasks.push(tokio::spawn(async move { (a.key, api.try_send(me.json(&body)).await) }));
        }
        if rng.random_bool(0.4) {
            let root = root.clone();
            tokio::spawn(async move {
                root.try_send(root.request(reqwest::Method::POST, "/v1/dev/chain/mine").json(&json!({"blocks": 1})))
                    .await
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        server.kill().await;
        for t in tasks {
            let (key, answer) = t.await.expect("a request task");
            if let Some(answer) = answer {
                match answer.status.as_u16() {
                    200 | 201 => {
                        made.insert(key, answer.body["id"].as_str().unwrap().to_owned());
                    }
                    409 if answer.body["error"]["code"] == json!("insufficient_funds") => {}
                    other => panic!("seed {seed} round {round}: {key} answered {other}: {}", answer.text),
                }
            }
        }
        (server, root) = restart(&db, &mut c).await;
        // Every request whose answer was lost is asked again with its key: it answers the withdrawal it made, or
        // makes it now; never a second one.
        for a in asked.values() {
            if made.contains_key(&a.key) {
                continue;
            }
            let (status, body) = ask(&c, a).await.expect("the restarted server answers");
            match status {
                200 | 201 => {
                    made.insert(a.key.clone(), body["id"].as_str().unwrap().to_owned());
                }
                409 if body["error"]["code"] == json!("insufficient_funds") => {}
                other => {
                    panic!(
                        "seed {seed} round {round}: retry of {} answered {other}: {body}\n{}",
                        a.key,
                        root.log.tail()
                    )
                }
            }
        }
        // A retry of a request that was answered answers the same withdrawal.
        if let Some((key, id)) =
            made.iter().nth(rng.random_range(0..made.len().max(1))).map(|(k, v)| (k.clone(), v.clone()))
        {
            let (status, body) = ask(&c, &asked[&key]).await.expect("an answer");
            assert_eq!((status, body["id"].as_str()), (200, Some(id.as_str())), "seed {seed}: {body}");
        }
        let check = root.get("/v1/ledger/check").await.expect(200).clone();
        assert!(check["violation"].is_null(), "seed {seed} round {round}: {check}");
        let list = assert_money_adds_up(&c, seed, round).await;
        assert_eq!(list.len(), made.len(), "seed {seed} round {round}: one withdrawal per key that made one");
    }

    // The end: blocks until every withdrawal has ended.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = assert_money_adds_up(&c, seed, kills).await;
        let open: Vec<&Value> = list
            .iter()
            .filter(|w| {
                !["confirmed", "rejected", "cancelled", "failed", "expired"].contains(&w["state"].as_str().unwrap())
            })
            .collect();
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: withdrawals did not end: {open:?}");
        root.post("/v1/dev/chain/mine", &json!({"blocks": 1})).await.expect(200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_paid_at_most_once(&db, seed).await;
    root.assert_audit_intact().await;
    drop(server);
}

/// No destination is paid by two transactions that were not refused: each withdrawal was signed once.
async fn assert_paid_at_most_once(db: &Db, seed: u64) {
    let url = db.database_url_or_sqlite();
    let rows: Vec<(Vec<u8>, String)> = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
        sqlx::query_as("SELECT tx, state FROM custody_txs WHERE kind = 'withdrawal'")
            .fetch_all(&pool)
            .await
            .expect("rows")
    } else {
        let pool = sqlx::SqlitePool::connect(&url).await.expect("sqlite");
        sqlx::query_as("SELECT tx, state FROM custody_txs WHERE kind = 'withdrawal'")
            .fetch_all(&pool)
            .await
            .expect("rows")
    };
    let mut paid: BTreeMap<bitcoin::ScriptBuf, usize> = BTreeMap::new();
    for (bytes, state) in &rows {
        if state == "failed" {
            continue;
        }
        let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(bytes).expect("a transaction");
        for out in &tx.output {
            *paid.entry(out.script_pubkey.clone()).or_default() += 1;
        }
    }
    let hot_change: Vec<_> = paid.iter().filter(|(_, n)| **n > 1).collect();
    // Only the hot wallet's change script may appear in several transactions.
    assert!(hot_change.len() <= 1, "seed {seed}: a destination paid twice: {hot_change:?}");
    assert!(!rows.is_empty(), "seed {seed}: nothing was paid");
}

/// A request that waits for people (here the compliance review, from USD 100) is recorded first and screened after.
/// Killed between the two, the restarted server screens it on the findings its gates recorded with it: its
/// whitelisted destination still counts as whitelisted, the address screening as clear, and the risk engine, which
/// decided (and acted) before the request was recorded, is not asked again. PostgreSQL only: the test holds the
/// server between the two steps by locking the reviews' table, where SQLite could only lock every write at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_recording_and_screening() {
    let Some(db) = Db::postgres("killed_between_recording_and_screening").await else { return };
    let config = CONFIG
        .replace("[compliance]\n", "[compliance]\nreview_usd = 100\n")
        .replace("[withdrawals]\n", "[withdrawals]\ncooling_off_s = 1\n");
    let server = Server::start_with_config(&db, &config).await;
    let root: Api = (*server).clone();
    let mut c = signed_in_with_a_deposit(db.maildir(), &root, "resumed").await;
    root.post("/v1/dev/chain/mine", &json!({"blocks": 3})).await.expect(200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while balance(&c).await.0 < FUNDS_SAT {
        assert!(Instant::now() < deadline, "the deposit was not credited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to = address(1);
    c.post("/v1/me/whitelist", &json!({"asset": "BTC", "address": to, "label": "savings"})).await.expect(201);
    let mail = c.mail("Confirm a new withdrawal address").await;
    root.post_public("/v1/customers/whitelist/confirm", &json!({"token": mail.token()})).await.expect(200);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The reviews' table locked: the request is recorded, and its screening (which opens the review) waits.
    let pool = sqlx::PgPool::connect(&db.database_url_or_sqlite()).await.expect("postgres");
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE transfer_reviews IN EXCLUSIVE MODE").execute(&mut *lock).await.expect("lock");
    // 0.002 BTC is USD 180: above the review's threshold, below the Travel Rule's.
    let asked = Asked { key: "waits-1".into(), amount: 200_000, to: to.clone() };
    let request = {
        let c_api = c.ctx.api.clone();
        let me = c.me(reqwest::Method::POST, "/v1/me/withdrawals");
        let body = json!({"asset": "BTC", "amount": btc(asked.amount), "address": to, "idempotency_key": asked.key});
        tokio::spawn(async move { c_api.try_send(me.json(&body)).await })
    };
    let row = |pool: sqlx::PgPool, customer: i64| async move {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT id, state, screening FROM withdrawals WHERE customer_id = $1",
        )
        .bind(customer)
        .fetch_optional(&pool)
        .await
        .expect("a read")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (id, state, screening) = loop {
        if let Some(found) = row(pool.clone(), c.id).await {
            break found;
        }
        assert!(Instant::now() < deadline, "the request was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state, "requested");
    let recorded: Value = serde_json::from_str(&screening).expect("JSON findings");
    assert!(recorded["whitelisted_for_s"].is_u64(), "the findings are recorded with the request: {recorded}");
    let risk_events = |pool: sqlx::PgPool, customer: i64| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM risk_events WHERE customer_id = $1")
            .bind(customer)
            .fetch_one(&pool)
            .await
            .expect("a count")
    };
    let scored = risk_events(pool.clone(), c.id).await;
    server.kill().await;
    assert!(request.await.expect("the request task").is_none(), "the killed server answered");
    lock.rollback().await.expect("unlock");

    let (_server, _root) = restart_with(&db, &mut c, &config).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (state, screening) = loop {
        let (_, state, screening) = row(pool.clone(), c.id).await.expect("the withdrawal");
        if state != "requested" {
            break (state, screening);
        }
        assert!(Instant::now() < deadline, "the restarted server did not screen the request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state, "awaiting_review", "{screening}");
    let screened: Value = serde_json::from_str(&screening).expect("JSON findings");
    assert_eq!(screened["whitelisted_for_s"], recorded["whitelisted_for_s"], "{screened}");
    assert_eq!((screened["address"].as_str(), screened["risk_outcome"].as_str()), (Some("clear"), Some("allow")));
    assert_eq!(risk_events(pool.clone(), c.id).await, scored, "the risk engine was asked again");
    let (status, body) = ask(&c, &asked).await.expect("an answer");
    assert_eq!(
        (status, body["id"].as_str(), body["state"].as_str()),
        (200, Some(id.as_str()), Some("awaiting_review"))
    );
}
