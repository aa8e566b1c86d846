//! Withdrawals end to end, over HTTP against the real binary on the development chain, on SQLite and PostgreSQL: a
//! small withdrawal straight through to confirmation; a large one waiting for three staff approvals; one above USD
//! 10,000 through the three compliance levels; one frozen by the risk engine and released by a reviewer; a destination
//! on the exchange's block list and one on OFAC's list of sanctioned addresses refused; a withdrawal during the
//! security lock refused with its end; a whitelisted address refused until its cooling-off ends; an API key withdrawing
//! only to a whitelisted address, only with the `withdraw` scope and never twice with one signature; a customer
//! cancelling; a broadcast the chain refuses returning the funds; a withdrawal forced into `approved` behind the
//! policy's back never signed; 500 concurrent requests from one account never overdrawing it; a policy's daily
//! window and a customer group's rule under concurrent requests. A staff rejection and an expiry returning the funds.
//! And the withdrawal policy's versions proposed and decided concurrently, never by their proposer.

#[allow(dead_code)]
#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::customer::*;
use common::production::Staff;
use common::withdrawal::*;
use common::{Answer, Api, Db, Server};
use reqwest::Method;
use serde_json::{Value, json};

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

[compliance]
# Level 0 may withdraw USD 60,000 a day here, so that one customer can show every path.
kyc_limits_usd = [[60000, 100000], [60000, 100000], [60000, 100000]]

[withdrawals]
# From USD 5,000 the default policy asks for three approvals; above USD 10,000 the compliance review comes first.
large_usd = 5000
cooling_off_s = 3
min_amount = { BTC = "0.000001" }
resume_after_s = 2
"#
    .to_owned()
}

struct World {
    ctx: Ctx,
    root: Api,
    approvers: Vec<(Staff, Api)>,
    reviewers: Vec<(Staff, Api)>,
    risk: (Staff, Api),
    /// An administrator (decides the policy versions the root proposes).
    admin: Api,
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

    /// Pays the hot wallet `sat` (in a block of its own) and waits until the watcher has seen it.
    async fn fund_hot(&self, sat: u64) {
        let status = self.root.get("/v1/custody/status").await.expect(200).clone();
        let hot = status["hot_address"].as_str().expect("a hot wallet").to_owned();
        let before = status["hot_sat"].as_u64().unwrap_or(0);
        self.faucet(&hot, sat).await;
        self.mine(1).await;
        wait_for("the hot wallet's coins", || async {
            let s = self.root.get("/v1/custody/status").await.expect(200).clone();
            s["hot_sat"].as_u64().unwrap_or(0) >= before + sat
        })
        .await;
    }

    /// A customer signed in with `sat` deposited and credited.
    async fn customer(&self, label: &str, sat: u64) -> Customer {
        let mut c = Customer::register(&self.ctx, label).await;
        c.sign_in().await;
        if sat > 0 {
            let answer = c.post("/v1/me/deposit-address", &json!({})).await;
            let deposit = answer.expect(200)["address"].as_str().expect("an address").to_owned();
            self.faucet(&deposit, sat).await;
            self.mine(3).await;
            let wanted = btc(sat);
            wait_for("the deposit credited", || async { balance(&c).await.0 == sat }).await;
            assert_eq!(btc(balance(&c).await.0), wanted);
        }
        c
    }

    async fn staff_decide(&self, who: &mut (Staff, Api), id: &str, verb: &str) -> Answer {
        let code = who.0.authenticator.next_code().await;
        who.1
            .post(
                &format!("/v1/withdrawals/{id}/{verb}"),
                &json!({"reason": format!("{verb} after checking"), "totp_code": code}),
            )
            .await
    }
}

async fn withdraw(c: &Customer, key: &str, amount_sat: u64, to: &str, extra: Value) -> Answer {
    let mut body = json!({"asset": "BTC", "amount": btc(amount_sat), "address": to, "idempotency_key": key});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    c.post("/v1/me/withdrawals", &body).await
}

fn travel_rule(c: &Customer, to: &str) -> Value {
    json!({"travel_rule": {
        "originator": {"name": "Alice Example", "account": c.handle},
        "beneficiary": {"name": "Bob Example", "account": to, "institution": null}
    }})
}

on_both_backends!(concurrent_policy_proposals_and_decisions);

/// Regression: two `POST /v1/withdrawals/policies` at once both computed the next version and one failed the
/// unique key with a 500. Proposals at once get consecutive versions; decisions at once on different versions
/// leave exactly one active; two decisions on one version: one decides, the other is told it is decided.
async fn concurrent_policy_proposals_and_decisions(db: Db) {
    const PROPOSALS: usize = 8;
    let server = Server::start_with_config(&db, &config()).await;
    let root: Api = (*server).clone();
    let (a1, a2) = two_administrators(&server).await;
    let policies = root.get("/v1/withdrawals/policies").await.expect(200).clone();
    let document = policies[0]["policy"].clone();
    assert_eq!((policies[0]["version"].as_i64(), policies[0]["state"].as_str()), (Some(1), Some("active")));

    // Every task sends its proposal at the same moment (as the development root, so that both administrators
    // may decide them).
    let barrier = Arc::new(tokio::sync::Barrier::new(PROPOSALS));
    let tasks: Vec<_> = (0..PROPOSALS)
        .map(|i| {
            let (api, barrier, document) = (root.clone(), barrier.clone(), document.clone());
            tokio::spawn(async move {
                let body = json!({"policy": document, "note": format!("proposal {i}")});
                barrier.wait().await;
                api.post("/v1/withdrawals/policies", &body).await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        let answer = task.await.expect("a proposal task");
        let proposed = answer.expect(201);
        assert_eq!(proposed["state"], json!("proposed"), "{}", answer.text);
        versions.push(proposed["version"].as_i64().expect("a version"));
    }
    versions.sort_unstable();
    let expected: Vec<i64> = (2..2 + PROPOSALS as i64).collect();
    assert_eq!(versions, expected, "each proposal gets its own next version");

    // Both administrators approve different versions at once: each decision is applied, one after the other, and
    // one version is left active.
    let decide = |api: &Api, version: i64, approve: bool| {
        let api = api.clone();
        let body = json!({"approve": approve, "note": format!("decided {version}")});
        tokio::spawn(async move { api.post(&format!("/v1/withdrawals/policies/{version}/decide"), &body).await })
    };
    let approvals: Vec<_> = (2..6).map(|v| decide(if v % 2 == 0 { &a1 } else { &a2 }, v, true)).collect();
    for task in approvals {
        let answer = task.await.expect("a decision task");
        assert_eq!(answer.expect(200)["state"], json!("active"), "{}", answer.text);
    }
    let states = |list: &Value| -> Vec<(i64, String)> {
        let list = list.as_array().expect("a list");
        list.iter().map(|p| (p["version"].as_i64().unwrap(), p["state"].as_str().unwrap().to_owned())).collect()
    };
    let after = states(root.get("/v1/withdrawals/policies").await.expect(200));
    let active: Vec<i64> = after.iter().filter(|(_, s)| s == "active").map(|(v, _)| *v).collect();
    assert_eq!(active.len(), 1, "one active version: {after:?}");
    assert!((2..6).contains(&active[0]), "{after:?}");
    for (v, s) in &after {
        let want = match v {
            1 => "superseded",
            v if *v == active[0] => "active",
            2..=5 => "superseded",
            _ => "proposed",
        };
        assert_eq!(s, want, "version {v}: {after:?}");
    }

    // Two decisions on one version at once: one is applied, the other finds it decided.
    let (first, second) = (decide(&a1, 6, true), decide(&a2, 6, false));
    let mut codes = [first.await.expect("a decision task"), second.await.expect("a decision task")];
    codes.sort_by_key(|a| a.status.as_u16());
    assert_eq!(codes[0].status.as_u16(), 200, "{}", codes[0].text);
    codes[1].assert_error(409, "not_proposed");
    root.assert_audit_intact().await;
}

on_both_backends!(rejected_by_staff_and_expired);

/// Two withdrawals wait for approvals: a staff member rejects one with a reason (the funds return, the move and
/// the reason audited, the customer told), the other outlives `approval_ttl_s` and expires (the funds return). And
/// nobody decides a policy version they proposed.
async fn rejected_by_staff_and_expired(db: Db) {
    let config = config().replace("[withdrawals]\n", "[withdrawals]\napproval_ttl_s = 5\n");
    let server = Server::start_with_config(&db, &config).await;
    let root: Api = (*server).clone();
    let (a1, a2) = two_administrators(&server).await;
    let mut approver = staff_member(&a1, &a2, &server, "approver", "treasury_custodian").await;
    let world = World {
        ctx: Ctx { api: root.clone(), maildir: db.maildir() },
        root: root.clone(),
        approvers: Vec::new(),
        reviewers: Vec::new(),
        risk: staff_member(&a1, &a2, &server, "analyst", "risk_analyst").await,
        admin: a1.clone(),
        db_url: db.database_url_or_sqlite(),
    };

    // Four eyes on the policy: the proposer's own decision is refused.
    let policies = root.get("/v1/withdrawals/policies").await.expect(200).clone();
    let proposed = a1.post("/v1/withdrawals/policies", &json!({"policy": policies[0]["policy"], "note": "same"})).await;
    let version = proposed.expect(201)["version"].as_i64().expect("a version");
    let own =
        a1.post(&format!("/v1/withdrawals/policies/{version}/decide"), &json!({"approve": true, "note": "mine"})).await;
    own.assert_error(403, "four_eyes");

    let mut pia = world.customer("pia", 20_000_000).await;
    pia.step_up().await;
    let to = address(14);
    // USD 5,400 each: the default policy asks three approvals.
    let ask = |key: &'static str| {
        let (pia, to) = (&pia, to.clone());
        async move {
            let answer = withdraw(pia, key, 6_000_000, &to, travel_rule(pia, &to)).await;
            let created = answer.expect(201).clone();
            assert_eq!(created["state"], json!("awaiting_approval"), "{created}");
            created["id"].as_str().expect("an id").to_owned()
        }
    };
    // Each waits five seconds at most (`approval_ttl_s`): the first is rejected at once (the approver's code taken
    // first: a code works once, and the next may be half a minute away).
    let code = approver.0.authenticator.next_code().await;
    let rejected = ask("reject-1").await;
    let expiring = ask("expire-1").await;
    let told = pia.notifications().await.len();
    let decision = json!({"reason": "reject after checking", "totp_code": code});
    let answer = approver.1.post(&format!("/v1/withdrawals/{rejected}/reject"), &decision).await;
    assert_eq!(answer.expect(200)["state"], json!("rejected"), "{}", answer.text);
    world.staff_decide(&mut approver, &rejected, "reject").await.assert_error(409, "not_awaiting_approval");
    let staff = root.get(&format!("/v1/withdrawals/{rejected}")).await.expect(200).clone();
    let last = staff["events"].as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
    assert_eq!((last["to"].as_str(), last["reason"].as_str()), (Some("rejected"), Some("reject after checking")));
    let audited = root.audit_entries("action=withdrawal.rejected").await;
    assert!(audited.iter().any(|e| e["target"] == json!(format!("withdrawal:{rejected}"))), "{audited:?}");

    let expired = wait_state(&pia, &expiring, "expired").await;
    assert!(expired["reason"].as_str().is_some_and(|r| r.contains("time limit")), "{expired}");
    assert_eq!(balance(&pia).await, (20_000_000, 0));
    // Told of both ends.
    let kinds = pia.notifications().await;
    assert!(kinds.len() >= told + 2, "{kinds:?}");
    let check = root.get("/v1/ledger/check").await.expect(200).clone();
    assert!(check["violation"].is_null(), "{check}");
    root.assert_audit_intact().await;
}

on_both_backends!(withdrawals_end_to_end);

async fn withdrawals_end_to_end(db: Db) {
    let server = Server::start_with_config(&db, &config()).await;
    let root: Api = (*server).clone();
    let ((mut admin, a1), (_, a2)) = two_administrators_with_factors(&server).await;
    let mut approvers = Vec::new();
    for (i, role) in ["treasury_custodian", "risk_analyst", "treasury_custodian", "risk_analyst"].iter().enumerate() {
        approvers.push(staff_member(&a1, &a2, &server, &format!("approver{i}"), role).await);
    }
    let mut reviewers = Vec::new();
    for level in 1..=3 {
        reviewers
            .push(staff_member(&a1, &a2, &server, &format!("reviewer{level}"), &format!("compliance_l{level}")).await);
    }
    let risk = staff_member(&a1, &a2, &server, "analyst", "risk_analyst").await;
    let mut world = World {
        ctx: Ctx { api: root.clone(), maildir: db.maildir() },
        root: root.clone(),
        approvers,
        reviewers,
        risk,
        admin: a1.clone(),
        db_url: db.database_url_or_sqlite(),
    };

    // The hot wallet exists once a deposit address does; fund it with 2 BTC.
    let alice = world.customer("alice", 50_000_000).await;
    world.fund_hot(2 * SAT_PER_BTC).await;

    small_goes_straight_through(&world, alice).await;
    large_waits_for_three_approvals(&mut world).await;
    above_ten_thousand_dollars_passes_three_compliance_levels(&mut world).await;
    frozen_by_risk_and_released_by_a_reviewer(&mut world).await;
    refusals_before_anything_is_held(&world).await;
    whitelisted_addresses_wait_for_their_cooling_off(&world).await;
    api_keys_withdraw_only_to_whitelisted_addresses(&world).await;
    cancelled_and_failed_withdrawals_return_the_funds(&world).await;
    nothing_is_signed_without_the_policy(&world).await;
    concurrent_requests_never_overdraw(&world).await;
    // Last: it installs another policy.
    policy_windows_hold_under_concurrent_requests(&world, &mut admin).await;

    // Everything above left the ledger balanced and the audit log intact.
    let check = root.get("/v1/ledger/check").await.expect(200).clone();
    assert!(check["violation"].is_null(), "{check}");
    root.assert_audit_intact().await;
}

async fn small_goes_straight_through(world: &World, mut alice: Customer) {
    alice.step_up().await;
    let to = address(1);
    let answer = withdraw(&alice, "small-1", 100_000, &to, json!({})).await;
    let created = answer.expect(201).clone();
    let id = created["id"].as_str().expect("an id").to_owned();
    assert!(["approved", "signing", "broadcast"].contains(&created["state"].as_str().unwrap()), "{created}");
    assert_eq!((created["amount"].as_str(), created["fee_held"].as_str()), (Some("0.001"), Some("0.0002")));
    // The same request again answers the same withdrawal; the same key for another request is refused.
    let again = withdraw(&alice, "small-1", 100_000, &to, json!({})).await;
    assert_eq!(again.expect(200)["id"], json!(id));
    withdraw(&alice, "small-1", 200_000, &to, json!({})).await.assert_error(409, "idempotency_key_reused");
    // Held at once: the amount and the fee.
    let (avail, held) = balance(&alice).await;
    assert_eq!((avail, held), (50_000_000 - 100_000 - FEE_HELD_SAT, 100_000 + FEE_HELD_SAT));

    let sent = wait_state(&alice, &id, "broadcast").await;
    let txid = sent["txid"].as_str().expect("a txid").to_owned();
    assert_eq!(txid.len(), 64);
    world.mine(3).await;
    let done = wait_state(&alice, &id, "confirmed").await;
    let fee = sat(done["network_fee"].as_str().expect("the fee share"));
    assert!(fee > 0 && fee <= FEE_HELD_SAT, "{done}");
    // Posted: the amount and the actual fee left the account; the rest of the fee held came back.
    assert_eq!(balance(&alice).await, (50_000_000 - 100_000 - fee, 0));
    let kinds = alice.notifications().await;
    for k in ["withdrawal_requested", "withdrawal_sent", "withdrawal_status"] {
        assert!(kinds.contains(&k.to_owned()), "{kinds:?}");
    }
    alice.mail("Withdrawal sent").await;
    // Every move told, the steps on the way included.
    let listed = alice.get("/v1/me/notifications").await.expect(200).clone();
    let titles: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|n| n["title"].as_str()).collect();
    for step in ["screened", "approved"] {
        assert!(titles.iter().any(|t| t.ends_with(&format!(": {step}"))), "{step}: {titles:?}");
    }
    // Every move, in order, on the staff view.
    let staff = world.root.get(&format!("/v1/withdrawals/{id}")).await.expect(200).clone();
    let moves: Vec<&str> = staff["events"].as_array().unwrap().iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(moves, ["screened", "approved", "signing", "broadcast", "confirmed"], "{staff}");
    // With the customer's history (this one, confirmed) and the destination's (nobody else's withdrawals).
    assert_eq!(staff["withdrawal"]["customer_history"], json!({"confirmed": 1, "confirmed_usd": "90.00"}), "{staff}");
    assert_eq!(staff["withdrawal"]["destination_history"], json!({"withdrawals": 0, "customers": 0}), "{staff}");
}

async fn large_waits_for_three_approvals(world: &mut World) {
    let mut bob = world.customer("bob", 20_000_000).await;
    bob.step_up().await;
    let to = address(2);
    // USD 5,400: the Travel Rule's data is required.
    withdraw(&bob, "large-1", 6_000_000, &to, json!({})).await.assert_error(400, "travel_rule_required");
    let answer = withdraw(&bob, "large-1", 6_000_000, &to, travel_rule(&bob, &to)).await;
    let created = answer.expect(201).clone();
    assert_eq!(created["state"], json!("awaiting_approval"), "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let queue = world.root.get("/v1/withdrawals").await.expect(200).clone();
    let item = queue.as_array().unwrap().iter().find(|q| q["withdrawal"]["id"] == json!(id)).expect("queued").clone();
    assert_eq!(item["requirement"], json!({"group": "withdrawal_approver", "threshold": 3}), "{item}");
    assert_eq!(item["customer"], json!(bob.id));
    assert!(item["screening"]["decision"].as_str().unwrap().contains("large"), "{item}");

    // The initiator cannot approve their own withdrawal: a customer's session is no staff member's.
    let own =
        bob.post(&format!("/v1/withdrawals/{id}/approve"), &json!({"reason": "mine", "totp_code": "000000"})).await;
    assert!([401, 403].contains(&own.status.as_u16()), "{}", own.text);
    // A reviewer without the permission cannot approve; each approver counts once.
    let mut l1 = world.reviewers.remove(0);
    world.staff_decide(&mut l1, &id, "approve").await.assert_error(403, "forbidden");
    world.reviewers.insert(0, l1);
    let mut first = world.approvers.remove(0);
    let a = world.staff_decide(&mut first, &id, "approve").await;
    assert_eq!(a.expect(200)["complete"], json!(false), "{}", a.text);
    world.staff_decide(&mut first, &id, "approve").await.assert_error(403, "already_approved");
    // A wrong code is refused and changes nothing.
    let wrong = first.0.authenticator.wrong_code();
    first
        .1
        .post(&format!("/v1/withdrawals/{id}/approve"), &json!({"reason": "ok", "totp_code": wrong}))
        .await
        .assert_error(401, "invalid_second_factor");
    world.approvers.insert(0, first);
    for i in 1..=2 {
        let mut s = world.approvers.remove(i);
        let a = world.staff_decide(&mut s, &id, "approve").await;
        assert_eq!(a.expect(200)["complete"], json!(i == 2), "{}", a.text);
        world.approvers.insert(i, s);
    }
    // A fourth approval, after the quorum, is refused.
    let mut fourth = world.approvers.remove(3);
    world.staff_decide(&mut fourth, &id, "approve").await.assert_error(409, "not_awaiting_approval");
    world.approvers.insert(3, fourth);
    wait_state(&bob, &id, "broadcast").await;
    world.mine(3).await;
    wait_state(&bob, &id, "confirmed").await;
    let approvals = world.root.audit_entries("action=withdrawal.approved_by").await;
    let mine: Vec<&Value> = approvals.iter().filter(|e| e["target"] == json!(format!("withdrawal:{id}"))).collect();
    let success = mine.iter().filter(|e| e["outcome"] == json!("success")).count();
    assert_eq!(success, 3, "{mine:?}");
    // The move the third approval made is audited as every move is, once.
    let moved = world.root.audit_entries("action=withdrawal.approved").await;
    let moved: Vec<&Value> = moved.iter().filter(|e| e["target"] == json!(format!("withdrawal:{id}"))).collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["details"]["reason"], json!("approvals complete"), "{moved:?}");
}

async fn above_ten_thousand_dollars_passes_three_compliance_levels(world: &mut World) {
    let mut carol = world.customer("carol", 30_000_000).await;
    // A second sign-in from the same address: it is no longer new since the sign-in, so the risk engine's freeze of
    // a large withdrawal from a new address right after signing in does not apply. (The engine counts in seconds.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    carol.sign_in().await;
    carol.step_up().await;
    let to = address(3);
    // 0.12 BTC = USD 10,800.
    let answer = withdraw(&carol, "review-1", 12_000_000, &to, travel_rule(&carol, &to)).await;
    let created = answer.expect(201).clone();
    assert_eq!(created["state"], json!("awaiting_review"), "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let reviews = world.root.get("/v1/compliance/reviews").await.expect(200).clone();
    let review = reviews.as_array().unwrap().iter().find(|r| r["reference"] == json!(id)).expect("a review").clone();
    let review_id = review["id"].as_i64().unwrap();
    for (i, r) in world.reviewers.iter().enumerate() {
        let answer =
            r.1.post(
                &format!("/v1/compliance/reviews/{review_id}/decide"),
                &json!({"approve": true, "reason": format!("level {} checked", i + 1)}),
            )
            .await;
        answer.expect(200);
    }
    // Then the policy: USD 10,800 is large, three approvals.
    wait_state(&carol, &id, "awaiting_approval").await;
    for i in 0..3 {
        let mut s = world.approvers.remove(i);
        world.staff_decide(&mut s, &id, "approve").await.expect(200);
        world.approvers.insert(i, s);
    }
    wait_state(&carol, &id, "broadcast").await;
    world.mine(3).await;
    wait_state(&carol, &id, "confirmed").await;
}

async fn frozen_by_risk_and_released_by_a_reviewer(world: &mut World) {
    let mut dave = world.customer("dave", 30_000_000).await;
    dave.step_up().await;
    let to = address(4);
    // USD 10,800 from an address the customer never used, right after signing in: the risk engine freezes.
    dave.ip = fresh_ip();
    let answer = withdraw(&dave, "frozen-1", 12_000_000, &to, travel_rule(&dave, &to)).await;
    let created = answer.expect(201).clone();
    assert_eq!(created["state"], json!("frozen"), "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    dave.get("/v1/me").await.assert_error(403, "account_frozen");
    let cases = world.risk.1.get("/v1/risk/cases").await.expect(200).clone();
    let case =
        cases.as_array().unwrap().iter().find(|c| c["customer_id"] == json!(dave.id)).expect("a risk case").clone();
    let case_id = case["id"].as_i64().unwrap();
    world
        .risk
        .1
        .post(
            &format!("/v1/risk/cases/{case_id}/resolve"),
            &json!({"resolution": "release", "note": "called the customer"}),
        )
        .await
        .expect(200);
    // Released: the compliance review of a transfer above USD 10,000 goes on; the first level rejects it.
    wait_for("the withdrawal to wait for the compliance review", || async {
        let w = world.root.get(&format!("/v1/withdrawals/{id}")).await.expect(200).clone();
        w["withdrawal"]["withdrawal"]["state"] == json!("awaiting_review")
    })
    .await;
    let reviews = world.root.get("/v1/compliance/reviews").await.expect(200).clone();
    let review = reviews.as_array().unwrap().iter().find(|r| r["reference"] == json!(id)).expect("a review").clone();
    world.reviewers[0]
        .1
        .post(
            &format!("/v1/compliance/reviews/{}/decide", review["id"]),
            &json!({"approve": false, "reason": "source of funds unclear"}),
        )
        .await
        .expect(200);
    let done = wait_state(&dave, &id, "rejected").await;
    assert!(done["reason"].as_str().unwrap().contains("compliance review"), "{done}");
    assert_eq!(balance(&dave).await, (30_000_000, 0));
}

async fn refusals_before_anything_is_held(world: &World) {
    let mut erin = world.customer("erin", 10_000_000).await;
    erin.step_up().await;
    // A sanctioned or blocked destination.
    let blocked = address(5);
    world
        .root
        .post("/v1/compliance/addresses", &json!({"address": blocked, "category": "blocked", "reason": "a mixer"}))
        .await
        .expect(201);
    withdraw(&erin, "blocked-1", 100_000, &blocked, json!({})).await.assert_error(403, "destination_refused");
    on_ofac_list(world).await;
    // Bad input.
    withdraw(&erin, "bad-1", 100_000, "bc1qnotregtest", json!({})).await.assert_error(400, "invalid_address");
    // A bad query string gets the JSON error shape, on the customer's list and on the staff queue.
    erin.get("/v1/me/withdrawals?limit=many").await.assert_error(400, "invalid_query");
    world.approvers[0].1.get("/v1/withdrawals?limit=-1").await.assert_error(400, "invalid_query");
    withdraw(&erin, "bad-2", 50, &address(6), json!({})).await.assert_error(400, "below_minimum");
    withdraw(&erin, "bad 3", 100_000, &address(6), json!({})).await.assert_error(400, "invalid_idempotency_key");
    withdraw(&erin, "big-1", 20_000_000, &address(6), travel_rule(&erin, &address(6)))
        .await
        .assert_error(409, "insufficient_funds");
    // Over the daily KYC limit (USD 60,000 here): 0.7 BTC is USD 63,000.
    withdraw(&erin, "limit-1", 70_000_000, &address(6), travel_rule(&erin, &address(6)))
        .await
        .assert_error(403, "over_limit");
    assert_eq!(balance(&erin).await, (10_000_000, 0));

    // Turning the whitelist-only mode off is a security change: withdrawals wait 24 hours, and the refusal says
    // until when.
    erin.put("/v1/me/whitelist-only", &json!({"enabled": true})).await.expect(200);
    let before = now_s();
    erin.put("/v1/me/whitelist-only", &json!({"enabled": false})).await.expect(200);
    let refused = withdraw(&erin, "locked-1", 100_000, &address(6), json!({})).await;
    refused.assert_error(403, "security_lock");
    let message = refused.body["error"]["message"].as_str().unwrap().to_owned();
    let until: u64 =
        message.split('(').nth(1).and_then(|s| s.split(')').next()).and_then(|n| n.parse().ok()).expect(&message);
    let hours = (until / 1_000_000_000 - before) / 3600;
    assert!((23..=24).contains(&hours), "{message}");
    assert_eq!(balance(&erin).await, (10_000_000, 0));
}

/// A destination on OFAC's list of sanctioned addresses, imported as compliance staff import it. OFAC lists mainnet
/// bitcoin addresses, which the development chain (regtest) refuses as addresses before any list is read; so the
/// import is OFAC's own files (in `crates/compliance/testdata`) with one regtest address added to the XBT list,
/// standing in for a listed one.
async fn on_ofac_list(world: &World) {
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compliance/testdata");
    let read = |p: &str| String::from_utf8_lossy(&std::fs::read(testdata.join(p)).unwrap()).into_owned();
    let sanctioned = address(13);
    let xbt = read("crypto-addresses/sanctioned_addresses_XBT.txt");
    let listed_mainnet = xbt.lines().next().expect("a listed address").trim().to_owned();
    let body = json!({
        "files": {"sdn.csv": read("ofac/sdn.csv"), "alt.csv": read("ofac/alt.csv"), "add.csv": read("ofac/add.csv"),
            "sdn_comments.csv": read("ofac/sdn_comments.csv")},
        "addresses": {"XBT": format!("{xbt}\n{sanctioned}\n")},
    });
    world.root.post("/v1/compliance/lists/ofac", &body).await.expect(201);

    let mut sam = world.customer("sam", 1_000_000).await;
    sam.step_up().await;
    withdraw(&sam, "sanctioned-1", 100_000, &sanctioned, json!({})).await.assert_error(403, "destination_refused");
    // A listed mainnet address is not an address of this chain at all.
    withdraw(&sam, "sanctioned-2", 100_000, &listed_mainnet, json!({})).await.assert_error(400, "invalid_address");
    assert_eq!(balance(&sam).await, (1_000_000, 0));
    assert!(sam.get("/v1/me/withdrawals").await.expect(200).as_array().is_some_and(Vec::is_empty));
    // The refusal opened a compliance case naming the list (the customer is never told which).
    let cases = world.root.get("/v1/compliance/cases?all=true").await.expect(200).clone();
    let case = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "address_match" && c["customer"] == sam.id)
        .unwrap_or_else(|| panic!("a case for the refusal: {cases}"));
    assert_eq!(case["details"]["category"], "sanctioned", "{case}");
    assert_eq!(case["details"]["source"], "ofac-asset-list", "{case}");
    assert_eq!(case["details"]["direction"], "withdrawal", "{case}");
}

async fn whitelisted_addresses_wait_for_their_cooling_off(world: &World) {
    let mut grace = world.customer("grace", 10_000_000).await;
    grace.step_up().await;
    let to = address(7);
    let added =
        grace.post("/v1/me/whitelist", &json!({"asset": "BTC", "address": to, "label": "my cold wallet"})).await;
    assert_eq!(added.expect(201)["state"], json!("unconfirmed"));
    // Until the emailed link confirms it, it cannot be used.
    withdraw(&grace, "wl-0", 100_000, &to, json!({})).await.assert_error(403, "address_unconfirmed");
    let mail = grace.mail("Confirm a new withdrawal address").await;
    let confirmed = world.root.post_public("/v1/customers/whitelist/confirm", &json!({"token": mail.token()})).await;
    assert_eq!(confirmed.expect(200)["state"], json!("active"));
    withdraw(&grace, "wl-1", 100_000, &to, json!({})).await.assert_error(403, "address_cooling_off");
    // With the whitelist-only mode on, any other address is refused.
    grace.put("/v1/me/whitelist-only", &json!({"enabled": true})).await.expect(200);
    withdraw(&grace, "wl-2", 100_000, &address(8), json!({})).await.assert_error(403, "address_not_whitelisted");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answer = withdraw(&grace, "wl-3", 100_000, &to, json!({})).await;
    let id = answer.expect(201)["id"].as_str().unwrap().to_owned();
    wait_state(&grace, &id, "broadcast").await;
    world.mine(3).await;
    wait_state(&grace, &id, "confirmed").await;
}

async fn api_keys_withdraw_only_to_whitelisted_addresses(world: &World) {
    let mut leo = world.customer("leo", 10_000_000).await;
    leo.step_up().await;
    let ip = leo.ip.clone();
    let created = leo
        .post("/v1/me/api-keys", &json!({"label": "payouts", "scopes": ["read", "withdraw"], "allow_list": [ip]}))
        .await;
    assert_eq!(created.expect(201)["scopes"], json!(["read", "withdraw"]), "{}", created.text);
    let payout = ApiKey::of(&created);
    let reader = json!({"label": "reader", "scopes": ["read"], "allow_list": [ip]});
    let created = leo.post("/v1/me/api-keys", &reader).await;
    created.expect(201);
    let reader = ApiKey::of(&created);
    let (ctx, to) = (&world.ctx, address(12));
    let body = |key: &str| {
        let body = json!({"asset": "BTC", "amount": btc(100_000), "address": to, "idempotency_key": key});
        serde_json::to_vec(&body).expect("a body")
    };
    let withdraw_with = |key: &ApiKey, body: &[u8], timestamp_ms: u64| {
        ctx.api.send(key.at(ctx, &ip, Method::POST, "/v1/me/withdrawals", body, timestamp_ms))
    };

    // A key without the withdraw scope may not withdraw at all; one with it only to a whitelisted address, which
    // only a session with a fresh second factor can add.
    withdraw_with(&reader, &body("api-0"), now_ms()).await.assert_error(403, "scope_missing");
    withdraw_with(&payout, &body("api-1"), now_ms()).await.assert_error(403, "address_not_whitelisted");
    let entry = serde_json::to_vec(&json!({"asset": "BTC", "address": to, "label": "payouts"})).unwrap();
    ctx.api
        .send(payout.now(ctx, &ip, Method::POST, "/v1/me/whitelist", &entry))
        .await
        .assert_error(403, "session_required");
    let added = leo.post("/v1/me/whitelist", &json!({"asset": "BTC", "address": to, "label": "payouts"})).await;
    assert_eq!(added.expect(201)["state"], json!("unconfirmed"));
    withdraw_with(&payout, &body("api-2"), now_ms()).await.assert_error(403, "address_unconfirmed");
    let mail = leo.mail("Confirm a new withdrawal address").await;
    let confirmed = world.root.post_public("/v1/customers/whitelist/confirm", &json!({"token": mail.token()})).await;
    assert_eq!(confirmed.expect(200)["state"], json!("active"));
    let refused = withdraw_with(&payout, &body("api-3"), now_ms()).await;
    refused.assert_error(403, "address_cooling_off");
    assert_eq!(balance(&leo).await, (10_000_000, 0), "the refusals held nothing");
    // The refusal names the end of the cooling-off in nanoseconds: wait until then.
    let message = refused.body["error"]["message"].as_str().unwrap().to_owned();
    let usable_ns: u64 =
        message.split('(').nth(1).and_then(|s| s.split(')').next()).and_then(|n| n.parse().ok()).expect(&message);
    let wait_ms = (usable_ns / 1_000_000).saturating_sub(now_ms()) + 100;
    assert!(wait_ms <= 5_000, "the test's cooling-off is 3 s: {message}");
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;

    // Through to confirmation with the key alone; the same signed request again is refused and makes nothing.
    let signed_at = now_ms();
    let answer = withdraw_with(&payout, &body("api-4"), signed_at).await;
    let created = answer.expect(201).clone();
    let id = created["id"].as_str().expect("an id").to_owned();
    withdraw_with(&payout, &body("api-4"), signed_at).await.assert_error(401, "replayed_signature");
    let staff = world.root.get(&format!("/v1/withdrawals/{id}")).await.expect(200).clone();
    assert_eq!(staff["withdrawal"]["initiator"], json!(format!("{}/{}", leo.subject(), payout.id)), "{staff}");
    wait_state(&leo, &id, "broadcast").await;
    world.mine(3).await;
    let done = wait_state(&leo, &id, "confirmed").await;
    let fee = sat(done["network_fee"].as_str().expect("the fee share"));
    assert_eq!(balance(&leo).await, (10_000_000 - 100_000 - fee, 0));
    let mine = ctx.api.send(payout.now(ctx, &ip, Method::GET, &format!("/v1/me/withdrawals/{id}"), b"")).await;
    assert_eq!(mine.expect(200)["state"], json!("confirmed"), "{}", mine.text);
    let all = leo.get("/v1/me/withdrawals").await.expect(200).as_array().expect("a list").len();
    assert_eq!(all, 1, "the replay made no second withdrawal");
}

async fn cancelled_and_failed_withdrawals_return_the_funds(world: &World) {
    let mut heidi = world.customer("heidi", 10_000_000).await;
    heidi.step_up().await;
    let to = address(9);
    let answer = withdraw(&heidi, "cancel-1", 6_000_000, &to, travel_rule(&heidi, &to)).await;
    let id = answer.expect(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(balance(&heidi).await, (10_000_000 - 6_000_000 - FEE_HELD_SAT, 6_000_000 + FEE_HELD_SAT));
    let cancelled = heidi.post(&format!("/v1/me/withdrawals/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.expect(200)["state"], json!("cancelled"));
    heidi.post(&format!("/v1/me/withdrawals/{id}/cancel"), &json!({})).await.assert_error(409, "not_cancellable");
    assert_eq!(balance(&heidi).await, (10_000_000, 0));
    // Another customer's withdrawal is not found.
    let ivan = world.customer("ivan", 1_000_000).await;
    ivan.get(&format!("/v1/me/withdrawals/{id}")).await.assert_error(404, "not_found");

    // 300 satoshis: a dust output the chain refuses; the withdrawal fails and the funds come back.
    let answer = withdraw(&heidi, "dust-1", 300, &to, json!({})).await;
    let id = answer.expect(201)["id"].as_str().unwrap().to_owned();
    let failed = wait_state(&heidi, &id, "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("refused"), "{failed}");
    assert_eq!(balance(&heidi).await, (10_000_000, 0));
}

async fn nothing_is_signed_without_the_policy(world: &World) {
    let mut judy = world.customer("judy", 10_000_000).await;
    judy.step_up().await;
    let to = address(10);
    let answer = withdraw(&judy, "forged-1", 6_000_000, &to, travel_rule(&judy, &to)).await;
    let created = answer.expect(201).clone();
    assert_eq!(created["state"], json!("awaiting_approval"));
    let id = created["id"].as_str().unwrap().to_owned();
    // Someone with database access moves it to `approved` without a single approval.
    let changed = force_state(&world.db_url, &id, "approved").await;
    assert_eq!(changed, 1);
    // The signer asks the policy again, which does not approve it: it is cancelled, never signed.
    let done = wait_state(&judy, &id, "cancelled").await;
    assert!(done["reason"].as_str().unwrap().contains("policy"), "{done}");
    assert!(done["txid"].is_null(), "{done}");
    assert_eq!(balance(&judy).await, (10_000_000, 0));
}

async fn force_state(url: &str, id: &str, state: &str) -> u64 {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.expect("postgres");
        sqlx::query("UPDATE withdrawals SET state = $1 WHERE id = $2")
            .bind(state)
            .bind(id)
            .execute(&pool)
            .await
            .expect("update")
            .rows_affected()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
        sqlx::query("UPDATE withdrawals SET state = ?1 WHERE id = ?2")
            .bind(state)
            .bind(id)
            .execute(&pool)
            .await
            .expect("update")
            .rows_affected()
    }
}

async fn concurrent_requests_never_overdraw(world: &World) {
    // 0.003 BTC covers ten withdrawals of 0.0001 BTC with 0.0002 BTC of fee held each: 500 ask at once.
    let mut kim = world.customer("kim", 300_000).await;
    kim.step_up().await;
    let kim = Arc::new(kim);
    let to = address(11);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let kim = kim.clone();
        let to = to.clone();
        tasks.push(tokio::spawn(async move {
            let answer = withdraw(&kim, &format!("many-{i}"), 10_000, &to, json!({})).await;
            (answer.status.as_u16(), answer.body["error"]["code"].as_str().unwrap_or_default().to_owned())
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("a request") {
            (201, _) => created += 1,
            (409, code) if code == "insufficient_funds" => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(created, 10, "exactly ten fit");
    let (avail, held) = balance(&kim).await;
    assert_eq!(avail + held, 300_000);
    assert_eq!(held, 10 * 30_000);
    let mine = kim.get("/v1/me/withdrawals?limit=200").await.expect(200).as_array().unwrap().len();
    assert_eq!(mine, 10);
}

/// A policy that allows USD 500 a day (the request included) and asks one approval beyond: twelve requests of
/// USD 90 at once from one account, each decided at once on the day's sum, let exactly five through. A decision made
/// on a sum that grew before it was recorded is refused (`concurrent_withdrawal`), and the client sends it again.
/// And a rule for a customer group, which an administrator puts a customer in.
async fn policy_windows_hold_under_concurrent_requests(world: &World, admin: &mut Staff) {
    let policy = json!({"rules": [
        {"name": "vip", "when": {"groups": ["vip"], "usd_below": 2000}, "decision": "allow"},
        {"name": "daily-500", "when": {"window_s": 86400, "window_usd_below": 500}, "decision": "allow"},
        {"name": "beyond", "decision": "require_approvals",
            "approvals": {"group": "withdrawal_approver", "threshold": 1}}
    ]});
    let proposed =
        world.root.post("/v1/withdrawals/policies", &json!({"policy": policy, "note": "USD 500 a day"})).await;
    let version = proposed.expect(201)["version"].as_i64().expect("a version");
    let decided = world
        .admin
        .post(&format!("/v1/withdrawals/policies/{version}/decide"), &json!({"approve": true, "note": "four eyes"}))
        .await;
    assert_eq!(decided.expect(200)["state"], json!("active"), "{}", decided.text);

    let mut nina = world.customer("nina", 10_000_000).await;
    nina.step_up().await;
    let nina = Arc::new(nina);
    let to = address(12);
    let barrier = Arc::new(tokio::sync::Barrier::new(12));
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (nina, to, barrier) = (nina.clone(), to.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                for _ in 0..50 {
                    let answer = withdraw(&nina, &format!("daily-{i}"), 100_000, &to, json!({})).await;
                    if answer.status.as_u16() == 409 && answer.body["error"]["code"] == json!("concurrent_withdrawal") {
                        continue;
                    }
                    let created = answer.expect(201).clone();
                    return created["state"].as_str().expect("a state").to_owned();
                }
                panic!("daily-{i} was refused as concurrent fifty times");
            })
        })
        .collect();
    let mut states = Vec::new();
    for t in tasks {
        states.push(t.await.expect("a request"));
    }
    let waiting = states.iter().filter(|s| *s == "awaiting_approval").count();
    assert_eq!((states.len() - waiting, waiting), (5, 7), "{states:?}");
    let mine = nina.get("/v1/me/withdrawals?limit=200").await.expect(200).as_array().unwrap().len();
    assert_eq!(mine, 12, "one withdrawal a key");

    // A group's rules apply once an administrator puts a customer in it: USD 900 waits for a retail customer and
    // goes through for one in `vip`.
    let mut olga = world.customer("olga", 5_000_000).await;
    olga.step_up().await;
    let retail = withdraw(&olga, "vip-0", 1_000_000, &to, json!({})).await;
    assert_eq!(retail.expect(201)["state"], json!("awaiting_approval"), "{}", retail.text);
    let path = format!("/v1/withdrawals/customers/{}/group", olga.id);
    let body = |code: &str| json!({"group": "vip", "reason": "private banking client since 2019", "totp_code": code});
    world.approvers[0].1.put(&path, &body("000000")).await.assert_error(403, "forbidden");
    let bad = json!({"group": "VIP!", "reason": "x", "totp_code": "000000"});
    world.admin.put(&path, &bad).await.assert_error(400, "invalid_group");
    let wrong = admin.authenticator.wrong_code();
    world.admin.put(&path, &body(&wrong)).await.assert_error(401, "invalid_second_factor");
    let code = admin.authenticator.next_code().await;
    world.admin.put("/v1/withdrawals/customers/999999999/group", &body(&code)).await.assert_error(404, "not_found");
    let code = admin.authenticator.next_code().await;
    let set = world.admin.put(&path, &body(&code)).await;
    assert_eq!((set.expect(200)["group"].as_str(), set.body["previous"].as_str()), (Some("vip"), Some("retail")));
    let vip = withdraw(&olga, "vip-1", 1_000_000, &to, json!({})).await;
    let state = vip.expect(201)["state"].as_str().unwrap_or_default().to_owned();
    assert!(["approved", "signing", "broadcast"].contains(&state.as_str()), "{}", vip.text);
    let audited = world.root.audit_entries("action=withdrawal.customer_group").await;
    assert!(audited.iter().any(|e| e["target"] == json!(format!("customer:{}", olga.id))), "{audited:?}");
}
