//! Withdrawals and custody end to end (issue 8), over HTTP against the real binary on the development chain, on
//! SQLite and PostgreSQL, with five custodians who hold a 3-of-5 FROST cold key and sign with the `rampart custodian`
//! code: a withdrawal larger than the hot wallet is queued, a refill from cold is proposed, approved and signed,
//! and once it confirms the withdrawal is paid and confirmed; a withdrawal above the hot wallet's cap is signed by
//! the custodians straight from cold; a queued withdrawal outlives the approval time limit and its customer cancels
//! it; a stuck transaction is fee-bumped (replace-by-fee) and re-broadcast by audited staff actions; a broadcast
//! transaction whose input another transaction spent is dropped, failed, and its hold voided.

#[allow(dead_code)]
#[macro_use]
mod common;

#[allow(dead_code)]
#[path = "../src/custodian.rs"]
mod custodian;

use std::time::Duration;

use common::customer::*;
use common::production::Staff;
use common::withdrawal::*;
use common::{Api, Db, Server};
use custodian::{Custodian, Service};
use serde_json::{Value, json};

/// What the faucet puts in the cold wallet.
const COLD_SAT: u64 = 2 * SAT_PER_BTC;

fn config() -> String {
    r#"
[identity]
client_ip_header = "x-forwarded-for"
step_up_window_s = 900
rate_limit_per_s = 100000
rate_limit_burst = 100000

[mail]
outbox_interval_ms = 100

[custody]
interval_ms = 100
dev_block_interval_s = 0
# Deposits go almost all to cold (the hot wallet aims at 0.1 %) and a hot surplus under the cap (5 %) stays: the
# hot wallet is small, so that withdrawals wait for refills.
target_hot_bps = 10
min_sweep_sat = 100000000

[compliance]
kyc_limits_usd = [[1000000, 2000000], [1000000, 2000000], [1000000, 2000000]]
travel_rule_usd = 1000000
review_usd = 1000000

[withdrawals]
large_usd = 1000000
# Waits for people end after two seconds; a queued withdrawal waits for the treasury, not for people.
approval_ttl_s = 2
min_amount = { BTC = "0.000001" }
resume_after_s = 2
"#
    .to_owned()
}

struct World {
    ctx: Ctx,
    root: Api,
    /// An administrator (who may not act on withdrawal transactions).
    admin: Api,
    /// Five treasury custodians: staff, their client, the custodian's key file in memory, the service as they reach it.
    custodians: Vec<(Staff, Api, Custodian, Service)>,
    db_url: String,
}

impl World {
    async fn mine(&self, blocks: u64) {
        self.root.post("/v1/dev/chain/mine", &json!({"blocks": blocks})).await.expect(200);
    }

    async fn faucet(&self, address: &str, sat: u64) {
        let answer = self.root.post("/v1/dev/chain/faucet", &json!({"address": address, "amount_sat": sat})).await;
        assert!(answer.status.is_success(), "{}", answer.text);
    }

    async fn status(&self) -> Value {
        self.root.get("/v1/custody/status").await.expect(200).clone()
    }

    /// A customer signed in (twice, so that the address is known to the risk engine) with `sat` credited.
    async fn customer(&self, label: &str, sat: u64) -> Customer {
        let mut c = Customer::register(&self.ctx, label).await;
        c.sign_in().await;
        let answer = c.post("/v1/me/deposit-address", &json!({})).await;
        let deposit = answer.expect(200)["address"].as_str().expect("an address").to_owned();
        self.faucet(&deposit, sat).await;
        self.mine(3).await;
        wait_for("the deposit credited", || async { balance(&c).await.0 == sat }).await;
        // A second sign-in from the same address: the risk engine no longer sees a new address right after a
        // sign-in (it counts in seconds).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.sign_in().await;
        c.step_up().await;
        c
    }

    /// The three custodians `signers` sign session `ceremony`, each after reading what it pays; answers what they
    /// were shown.
    async fn sign(&self, ceremony: i64, signers: [usize; 3]) -> Vec<String> {
        let run = |i: usize| {
            let (_, _, me, service) = &self.custodians[i];
            async move {
                let mut shown = String::new();
                let result = custodian::sign_session(service, me, ceremony, |summary| {
                    shown = summary.to_owned();
                    true
                })
                .await;
                (result.map(|r| r.signed), shown)
            }
        };
        let (a, b, c) = tokio::join!(run(signers[0]), run(signers[1]), run(signers[2]));
        let mut summaries = Vec::new();
        for (signed, shown) in [a, b, c] {
            assert!(signed.expect("the custodian's side of the session"), "each of the first three signs");
            summaries.push(shown);
        }
        summaries
    }
}

async fn withdraw(c: &Customer, key: &str, amount_sat: u64, to: &str) -> String {
    let body = json!({"asset": "BTC", "amount": btc(amount_sat), "address": to, "idempotency_key": key});
    let answer = c.post("/v1/me/withdrawals", &body).await;
    answer.expect(201)["id"].as_str().expect("an id").to_owned()
}

/// A staff action on a stuck transaction, with a reason and a fresh TOTP code.
async fn stuck_action(
    who: &mut (Staff, Api, Custodian, Service),
    id: &str,
    verb: &str,
    extra: Value,
) -> common::Answer {
    let code = who.0.authenticator.next_code().await;
    let mut body = json!({"reason": format!("{verb}: the transaction is stuck"), "totp_code": code});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    who.1.post(&format!("/v1/withdrawals/{id}/{verb}"), &body).await
}

/// Takes a transaction out of the development chain's mempool (a reorganisation of depth 0 that evicts it, as a
/// node restarting or trimming its mempool would).
async fn evict(world: &World, txid: &str) {
    world.root.post("/v1/dev/chain/reorg", &json!({"depth": 0, "evict": [txid]})).await.expect(200);
}

on_both_backends!(withdrawals_and_custody);

async fn withdrawals_and_custody(db: Db) {
    let server = Server::start_with_config(&db, &config()).await;
    let root: Api = (*server).clone();
    let (a1, a2) = two_administrators(&server).await;

    // Five treasury custodians register their identity keys; an administrator activates them; they generate the
    // cold key among themselves.
    let mut custodians = Vec::new();
    for i in 0..5 {
        let (staff, api) = staff_member(&a1, &a2, &server, &format!("custodian{i}"), "treasury_custodian").await;
        let me = Custodian::generate();
        let service = Service::new(&root.base, staff.token.as_deref().expect("signed in"));
        let registered = custodian::register(&service, &me).await.expect("registered");
        let id = registered["id"].as_i64().expect("a custodian id");
        a1.post(&format!("/v1/custody/custodians/{id}/activate"), &json!({})).await.expect(200);
        custodians.push((staff, api, me, service, id));
    }
    let ids: Vec<i64> = custodians.iter().map(|c| c.4).collect();
    let dkg = a1.post("/v1/custody/ceremonies", &json!({"kind": "dkg", "custodians": ids, "threshold": 3})).await;
    let dkg = dkg.expect(201)["id"].as_i64().expect("a ceremony id");
    let mut tasks = Vec::new();
    for (staff, api, mut me, service, _) in custodians {
        tasks.push(tokio::spawn(async move {
            let result = custodian::key_ceremony(&service, &mut me, dkg).await.expect("the key generation");
            (staff, api, me, service, result.address)
        }));
    }
    let mut custodians = Vec::new();
    let mut addresses = Vec::new();
    for t in tasks {
        let (staff, api, me, service, address) = t.await.expect("a custodian");
        addresses.push(address);
        custodians.push((staff, api, me, service));
    }
    assert!(addresses.windows(2).all(|w| w[0] == w[1]), "every custodian computed the same key: {addresses:?}");
    let world = World {
        ctx: Ctx { api: root.clone(), maildir: db.maildir() },
        root: root.clone(),
        admin: a1.clone(),
        custodians,
        db_url: db.database_url_or_sqlite(),
    };
    let cold = world.status().await["cold_address"].as_str().expect("a cold wallet").to_owned();
    assert_eq!(cold, addresses[0]);
    world.faucet(&cold, COLD_SAT).await;
    world.mine(1).await;
    wait_for("the cold coins", || async { world.status().await["cold_sat"].as_u64() == Some(COLD_SAT) }).await;

    // Alice's deposit of 1 BTC is swept: 0.1 % of the total to hot, the rest to cold.
    let alice = world.customer("alice", SAT_PER_BTC).await;
    world.mine(1).await;
    wait_for("the deposit swept", || async {
        let s = world.status().await;
        s["deposit_sat"] == json!(0) && s["pending_sweeps"] == json!(0) && s["hot_sat"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let hot = world.status().await["hot_sat"].as_u64().unwrap();
    assert!(hot < 1_000_000, "the hot wallet holds little: {hot}");

    queued_until_a_refill_confirms_then_paid(&world, &alice).await;
    above_the_hot_cap_signed_from_cold(&world, &alice).await;
    a_queued_withdrawal_outlives_the_time_limit_and_is_cancelled(&world, &alice).await;
    let mut world = world;
    a_stuck_transaction_is_fee_bumped_and_rebroadcast(&mut world, &alice).await;
    a_dropped_transaction_fails_and_returns_the_funds(&world, &alice).await;
    reserves_signed_by_the_hot_key_and_the_custodians(&world).await;

    let check = root.get("/v1/ledger/check").await.expect(200).clone();
    assert!(check["violation"].is_null(), "{check}");
    root.assert_audit_intact().await;
    let doc = root.get_public("/openapi.json").await.expect(200).clone();
    for path in ["/v1/withdrawals/{id}/rebroadcast", "/v1/withdrawals/{id}/bump-fee"] {
        assert!(doc["paths"][path]["post"].is_object(), "the OpenAPI document lists no POST {path}");
    }
}

async fn queued_until_a_refill_confirms_then_paid(world: &World, alice: &Customer) {
    let (before, _) = balance(alice).await;
    let amount = 5_000_000;
    let id = withdraw(alice, "refill-1", amount, &address(1)).await;
    let queued = wait_state(alice, &id, "queued").await;
    assert!(queued["reason"].as_str().unwrap().contains("refill"), "{queued}");
    // The worker proposed a refill from cold for what the hot wallet lacks, within its cap.
    let refills = world.root.get("/v1/custody/refills").await.expect(200).clone();
    let refill = refills.as_array().unwrap().iter().find(|r| r["state"] == json!("pending")).expect("a refill").clone();
    assert_eq!(refill["proposed_by"], json!("system"));
    let refill_sat = sat(refill["amount"].as_str().unwrap());
    assert!(refill_sat > amount - 1_000_000 && refill_sat < amount + 100_000, "{refill}");
    // Two treasury custodians approve; the service builds the transaction from cold coins and opens the session.
    let path = format!("/v1/custody/refills/{}/approve", refill["id"]);
    assert_eq!(world.custodians[0].1.post(&path, &json!({})).await.expect(200)["state"], json!("pending"));
    let approved = world.custodians[1].1.post(&path, &json!({})).await.expect(200).clone();
    let session = approved["ceremony_id"].as_i64().expect("a signing session");
    // Not paid before the refill has confirmed.
    assert_eq!(view(alice, &id).await["state"], json!("queued"));
    let shown = world.sign(session, [1, 2, 3]).await;
    assert!(shown[0].contains(&format!("{refill_sat} sat to ")), "the custodians see what moves: {}", shown[0]);
    wait_for("the refill sent", || async { world.status().await["in_flight_to_hot_sat"].as_u64() == Some(refill_sat) })
        .await;
    assert_eq!(view(alice, &id).await["state"], json!("queued"), "an unconfirmed refill pays nothing");
    world.mine(1).await;
    let sent = wait_state(alice, &id, "broadcast").await;
    assert!(sent["txid"].as_str().is_some_and(|t| t.len() == 64), "{sent}");
    world.mine(3).await;
    let done = wait_state(alice, &id, "confirmed").await;
    let fee = sat(done["network_fee"].as_str().unwrap());
    assert!(fee > 0 && fee <= FEE_HELD_SAT, "{done}");
    assert_eq!(balance(alice).await, (before - amount - fee, 0));
    let staff = world.root.get(&format!("/v1/withdrawals/{id}")).await.expect(200).clone();
    let moves: Vec<&str> = staff["events"].as_array().unwrap().iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(moves, ["screened", "approved", "queued", "signing", "broadcast", "confirmed"], "{staff}");
}

async fn above_the_hot_cap_signed_from_cold(world: &World, alice: &Customer) {
    let (before, _) = balance(alice).await;
    // The cap is 5 % of about 3 BTC: 0.3 BTC can never be paid from hot, so the custodians sign it from cold.
    let amount = 30_000_000;
    let id = withdraw(alice, "cold-1", amount, &address(2)).await;
    let signing = wait_state(alice, &id, "signing").await;
    assert!(signing["reason"].as_str().unwrap().contains("custodians"), "{signing}");
    let ceremonies = world.custodians[0].1.get("/v1/custody/ceremonies").await.expect(200).clone();
    let session = ceremonies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == json!("sign") && c["params"]["withdrawal"] == json!(id))
        .unwrap_or_else(|| panic!("a signing session for the withdrawal: {ceremonies}"))["id"]
        .as_i64()
        .unwrap();
    let shown = world.sign(session, [0, 2, 4]).await;
    assert!(shown[0].contains(&format!("{amount} sat to {}", address(2))), "the destination: {}", shown[0]);
    let sent = wait_state(alice, &id, "broadcast").await;
    world.mine(3).await;
    let done = wait_state(alice, &id, "confirmed").await;
    assert_eq!(done["txid"], sent["txid"]);
    let fee = sat(done["network_fee"].as_str().unwrap());
    assert!(fee > 0 && fee <= FEE_HELD_SAT, "{done}");
    assert_eq!(balance(alice).await, (before - amount - fee, 0));
    let status = world.status().await;
    assert!(status["cold_share_bps"].as_u64().unwrap() >= 9_500, "{status}");
}

async fn a_queued_withdrawal_outlives_the_time_limit_and_is_cancelled(world: &World, alice: &Customer) {
    let (before, _) = balance(alice).await;
    let status = world.status().await;
    let id = withdraw(alice, "queued-1", 5_000_000, &address(3)).await;
    wait_state(alice, &id, "queued").await;
    wait_for("a refill proposed", || async { world.status().await["pending_refills"] == json!(1) }).await;
    let refills = world.root.get("/v1/custody/refills").await.expect(200).clone();
    let refill = refills.as_array().unwrap().iter().find(|r| r["state"] == json!("pending")).unwrap().clone();
    let refill_sat = sat(refill["amount"].as_str().unwrap());
    assert!(refill_sat >= 5_000_000 - status["hot_sat"].as_u64().unwrap(), "{refill} {status}");
    assert_eq!(balance(alice).await, (before - 5_000_000 - FEE_HELD_SAT, 5_000_000 + FEE_HELD_SAT));
    // Twice the time limit of a wait for people: still queued, nothing returned, no expiry recorded.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = view(alice, &id).await;
    assert_eq!(still["state"], json!("queued"), "{still}");
    assert!(still["expires_at"].is_null(), "a queued withdrawal has no time limit: {still}");
    let cancelled = alice.post(&format!("/v1/me/withdrawals/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.expect(200)["state"], json!("cancelled"));
    assert_eq!(balance(alice).await, (before, 0));
}

async fn a_stuck_transaction_is_fee_bumped_and_rebroadcast(world: &mut World, alice: &Customer) {
    // The hot wallet gets 0.05 BTC from the faucet (the refill proposed for the cancelled withdrawal stays pending).
    let status = world.status().await;
    let hot = status["hot_address"].as_str().unwrap().to_owned();
    let had = status["hot_sat"].as_u64().unwrap();
    world.faucet(&hot, 5_000_000).await;
    world.mine(1).await;
    wait_for("the hot coins", || async { world.status().await["hot_sat"].as_u64() == Some(had + 5_000_000) }).await;
    let (before, _) = balance(alice).await;
    let amount = 1_000_000;
    let id = withdraw(alice, "bump-1", amount, &address(4)).await;
    let sent = wait_state(alice, &id, "broadcast").await;
    let original = sent["txid"].as_str().unwrap().to_owned();
    let share = sat(sent["network_fee"].as_str().unwrap());

    // Refusals first: an administrator may not; a wrong code; a rate that could not replace it; one absurdly high;
    // bad input; an unknown withdrawal.
    let forbidden = world
        .admin
        .post(
            &format!("/v1/withdrawals/{id}/bump-fee"),
            &json!({"fee_rate_sat_vb": 20, "reason": "stuck", "totp_code": "123456"}),
        )
        .await;
    forbidden.assert_error(403, "forbidden");
    // (Each custodian's authenticator gives two fresh codes at once; the actions are spread so that none waits for
    // the next time step.)
    let mut c0 = world.custodians.remove(0);
    let wrong = c0.0.authenticator.wrong_code();
    c0.1.post(
        &format!("/v1/withdrawals/{id}/bump-fee"),
        &json!({"fee_rate_sat_vb": 20, "reason": "stuck", "totp_code": wrong}),
    )
    .await
    .assert_error(401, "invalid_second_factor");
    stuck_action(&mut c0, &id, "bump-fee", json!({"fee_rate_sat_vb": 1})).await.assert_error(400, "invalid_fee_rate");
    stuck_action(&mut c0, &id, "bump-fee", json!({"fee_rate_sat_vb": 1_000_000}))
        .await
        .assert_error(400, "invalid_fee_rate");
    c0.1.post(&format!("/v1/withdrawals/{id}/bump-fee"), &json!({"fee_rate_sat_vb": "x"}))
        .await
        .assert_error(400, "invalid_request");
    world.custodians.insert(0, c0);
    let mut c1 = world.custodians.remove(1);
    stuck_action(&mut c1, "ffff", "bump-fee", json!({"fee_rate_sat_vb": 20})).await.assert_error(404, "not_found");
    // The replacement: the same input and payment at 20 sat/vB.
    let bumped = stuck_action(&mut c1, &id, "bump-fee", json!({"fee_rate_sat_vb": 20})).await;
    world.custodians.insert(1, c1);
    let bumped = bumped.expect(200).clone();
    assert_eq!(bumped["chain"], json!("accepted"), "{bumped}");
    let replacement = bumped["txid"].as_str().unwrap().to_owned();
    assert_ne!(replacement, original);
    let fee: u64 = bumped["fee_sat"].as_str().unwrap().parse().unwrap();
    assert!(fee > share * 10, "{bumped}");
    let now = view(alice, &id).await;
    assert_eq!((now["state"].as_str(), now["txid"].as_str()), (Some("broadcast"), Some(replacement.as_str())));
    // Bumping again needs a higher rate still.
    let mut c2 = world.custodians.remove(2);
    stuck_action(&mut c2, &id, "bump-fee", json!({"fee_rate_sat_vb": 20})).await.assert_error(400, "invalid_fee_rate");

    // Dropped from the mempool: another custodian sends it again.
    evict(world, &replacement).await;
    let mut c3 = world.custodians.remove(3);
    let sent_again = stuck_action(&mut c3, &id, "rebroadcast", json!({})).await;
    world.custodians.insert(3, c3);
    assert_eq!(sent_again.expect(200)["chain"], json!("accepted"), "{}", sent_again.text);
    assert_eq!(sent_again.body["txid"], json!(replacement));
    world.mine(3).await;
    let done = wait_state(alice, &id, "confirmed").await;
    assert_eq!(done["txid"], json!(replacement));
    // The customer pays the share quoted when it was signed; the exchange pays the bump, from its fee account.
    assert_eq!(done["network_fee"], sent["network_fee"]);
    assert_eq!(balance(alice).await, (before - amount - share, 0));
    let bumps = world.root.audit_entries("action=withdrawal.fee_bumped").await;
    assert!(bumps.iter().any(|e| e["target"] == json!(format!("withdrawal:{id}"))), "{bumps:?}");
    let resent = world.root.audit_entries("action=withdrawal.rebroadcast").await;
    assert!(resent.iter().any(|e| e["target"] == json!(format!("withdrawal:{id}"))), "{resent:?}");
    // Confirmed, it cannot be sent again.
    stuck_action(&mut c2, &id, "rebroadcast", json!({})).await.assert_error(409, "not_broadcast");
    world.custodians.insert(2, c2);
}

async fn a_dropped_transaction_fails_and_returns_the_funds(world: &World, alice: &Customer) {
    let (before, _) = balance(alice).await;
    let id = withdraw(alice, "dropped-1", 1_000_000, &address(5)).await;
    let sent = wait_state(alice, &id, "broadcast").await;
    let txid = sent["txid"].as_str().unwrap().to_owned();
    // The chain forgets it, and its coin is spent elsewhere: a second signer of the hot wallet that did not know the
    // coin was reserved (an operator, a node restored from an old backup) pays another withdrawal with it. Here
    // the reservation is cleared in the database and the next payment takes that coin, oldest first.
    evict(world, &txid).await;
    assert_eq!(release_reservation(&world.db_url, &txid).await, 1);
    let other = withdraw(alice, "dropped-2", 2_000_000, &address(6)).await;
    let other_sent = wait_state(alice, &other, "broadcast").await;
    world.mine(3).await;
    wait_state(alice, &other, "confirmed").await;
    let failed = wait_state(alice, &id, "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("dropped"), "{failed}");
    assert!(failed["reason"].as_str().unwrap().contains(other_sent["txid"].as_str().unwrap()), "{failed}");
    let other_fee = sat(view(alice, &other).await["network_fee"].as_str().unwrap());
    assert_eq!(balance(alice).await, (before - 2_000_000 - other_fee, 0), "the dropped withdrawal's hold is void");
    let dropped = world.root.audit_entries("action=custody.withdrawal.dropped").await;
    assert_eq!(dropped.len(), 1, "{dropped:?}");
}

/// The proof of reserves' assets side: a snapshot lists every address holding coins at the watcher's block, the
/// hot key signs its addresses at once, the cold wallet's three custodians sign its statement in a session, and
/// the signed report checks with the standalone verifier's code; tampering with it is caught.
async fn reserves_signed_by_the_hot_key_and_the_custodians(world: &World) {
    use rampart_verify::report::{check_report, verify_report};
    let before = world.status().await["height"].as_u64().unwrap();
    world.mine(1).await;
    wait_for("the block read", || async { world.status().await["height"].as_u64() == Some(before + 1) }).await;
    let tip = world.status().await;
    let treasury = &world.custodians[0].1;
    let published = treasury.post("/v1/reserves", &json!({"name": "por-assets"})).await;
    let published = published.expect(201).clone();
    let sessions: Vec<i64> =
        published["signing_sessions"].as_array().unwrap().iter().map(|s| s.as_i64().unwrap()).collect();
    assert_eq!(sessions.len(), 1, "one cold address to sign for: {published}");
    // Until the custodians sign, there is no report.
    world.root.get_public("/v1/reserves/por-assets/report").await.assert_error(409, "attestations_pending");
    // Asking again opens nothing new: the session is still open.
    let again = treasury.post("/v1/reserves/por-assets/attestations", &json!({})).await;
    assert_eq!(again.expect(200)["signing_sessions"], json!(sessions));
    // An administrator may not publish.
    world.admin.post("/v1/reserves/por-assets/attestations", &json!({})).await.assert_error(403, "forbidden");

    let shown = world.sign(sessions[0], [1, 3, 4]).await;
    let cold = tip["cold_address"].as_str().unwrap();
    for text in &shown {
        assert!(text.contains("por-assets") && text.contains(cold) && text.contains("no coins move"), "{text}");
    }
    let signed = world.root.get_public("/v1/reserves/por-assets/report").await.expect(200).clone();
    let text = signed["report"].as_str().unwrap();
    let signature = hex::decode(signed["signature"].as_str().unwrap()).unwrap();
    let key = hex::decode(signed["public_key"].as_str().unwrap()).unwrap();
    let summary = verify_report(text.as_bytes(), &signature, &key).expect("the report verifies");
    assert_eq!(summary.root, published["root"].as_str().unwrap());
    let btc = summary.assets.iter().find(|a| a.code == "BTC").expect("BTC");
    assert_eq!(btc.liabilities.to_string(), published["assets"][0]["liabilities"].as_str().unwrap());
    let reserves = btc.reserves.expect("BTC reserves attested");
    assert_eq!(reserves, btc.cold + btc.hot + btc.deposit);
    assert!(btc.cold > 0 && btc.hot > 0, "{btc:?}");
    assert!(btc.ratio_bps.unwrap() >= 10_000, "the exchange holds at least what it owes: {btc:?}");
    assert!(btc.cold_share_bps.unwrap() >= 9_500, "at least 95 % cold: {btc:?}");
    assert_eq!(btc.chain.as_ref().map(|c| c.0), Some(before + 1), "the balances are read at the newest block");

    // Forgeries: any changed byte breaks the service's signature; a report re-signed by anyone else is only as good
    // as their key; and on its own, a changed balance, a signature moved to another address, or a statement for
    // another snapshot fails the addresses' checks.
    let mut forged = text.as_bytes().to_vec();
    let at = text.find("\"balance\": \"").unwrap() + 12;
    forged[at] = if forged[at] == b'1' { b'2' } else { b'1' };
    assert!(verify_report(&forged, &signature, &key).is_err());
    let report: Value = serde_json::from_str(text).unwrap();
    let addresses = report["assets"][0]["addresses"].as_array().unwrap().len();
    assert!(addresses >= 2, "{report}");
    let mut changed = report.clone();
    let balance: u64 = changed["assets"][0]["addresses"][0]["balance"].as_str().unwrap().parse().unwrap();
    changed["assets"][0]["addresses"][0]["balance"] = json!((balance + 1).to_string());
    assert!(check_report(&changed).is_err());
    let mut swapped = report.clone();
    let first = swapped["assets"][0]["addresses"][0]["signature"].clone();
    swapped["assets"][0]["addresses"][0]["signature"] = swapped["assets"][0]["addresses"][1]["signature"].clone();
    swapped["assets"][0]["addresses"][1]["signature"] = first;
    assert!(check_report(&swapped).is_err());
    let mut renamed = report.clone();
    renamed["snapshot"] = json!("por-other");
    assert!(check_report(&renamed).is_err());
    assert!(check_report(&report).is_ok());

    // The operator's command writes the report, its signature and the page.
    let dir = tempfile::tempdir().unwrap();
    let token = world.custodians[0].0.token.clone().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["reserves", "publish", "--snapshot", "por-assets", "--out", dir.path().to_str().unwrap()])
        .args(["--server", &world.root.base, "--token", &token])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("BTC: liabilities") && stdout.contains("cold share"), "{stdout}");
    assert_eq!(std::fs::read_to_string(dir.path().join("report.json")).unwrap(), text);
    let sig = std::fs::read_to_string(dir.path().join("report.json.sig")).unwrap();
    assert_eq!(sig.trim(), signed["signature"].as_str().unwrap());
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains(cold) && html.contains(&summary.root), "{html}");
    let audit = world.root.audit_entries("action=custody.attest.completed").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
}

/// Clears the reservation of the coins that transaction `txid` (hex, as shown) spends.
async fn release_reservation(url: &str, txid: &str) -> u64 {
    let mut bytes = hex::decode(txid).expect("hex");
    bytes.reverse();
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.expect("postgres");
        sqlx::query("UPDATE custody_utxos SET spent_by = NULL WHERE spent_by = $1")
            .bind(bytes)
            .execute(&pool)
            .await
            .expect("update")
            .rows_affected()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
        sqlx::query("UPDATE custody_utxos SET spent_by = NULL WHERE spent_by = ?1")
            .bind(bytes)
            .execute(&pool)
            .await
            .expect("update")
            .rows_affected()
    }
}
