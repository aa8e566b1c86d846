//! The demo's withdrawal chapters, in the custody demo's service: Erin withdraws through every gate with a signed
//! API request to her whitelisted address; a small withdrawal is paid from the hot wallet and confirmed; a larger one
//! waits for three staff approvals (each with a second factor, each person once); a stuck one is fee-bumped by a
//! treasury custodian; a whitelisted address still cooling off is refused, and a request its customer cancels and one
//! the chain refuses return the funds held. The story ends with the ledger's invariants, the cold share and the audit log.

use anyhow::{Context, anyhow, ensure};
use rampart_audit::Role;
use rampart_auth::{ApiKeyId, ApiKeySecret};
use rampart_core::{Clock, ManualClock};
use rampart_crypto::Keyring;
use rampart_server::AppState;
use rampart_server::custody::{Custody, custody_pass};
use rampart_store::{ApiKeyRecord, Auditor, Effects};
use serde_json::{Value, json};

use crate::demo_custody::{Http, staff_with_totp};

const SEC: u64 = 1_000_000_000;

fn chapter(title: &str) {
    println!("\n== {title}");
}

/// A customer's API key that may withdraw (from 127.0.0.1 only), and a whitelisted address usable now: what a
/// trading firm's withdrawal bot would hold.
pub(crate) struct Bot {
    pub(crate) key_id: String,
    pub(crate) secret: ApiKeySecret,
    pub(crate) address: String,
}

/// Creates the key and the whitelist entry in the store (as the customer's own steps would: a key made in a signed-in
/// session with a fresh second factor, an address confirmed by its emailed link and past its cooling-off).
pub(crate) async fn bot(
    store: &rampart_store::Store,
    keyring: &Keyring,
    customer_id: i64,
    address: &str,
    now_ns: u64,
) -> anyhow::Result<Bot> {
    let auditor = Auditor { signer: keyring, checkpoint_every: crate::init::CHECKPOINT_EVERY };
    let key_id = ApiKeyId::generate().to_string();
    let secret = ApiKeySecret::generate();
    let key = ApiKeyRecord {
        id: key_id.clone(),
        customer_id,
        label: "withdrawals".into(),
        secret: keyring.encrypt(secret.expose_bytes(), format!("api_key:{key_id}:secret").as_bytes()),
        scopes: "read,withdraw".into(),
        allow_list: "127.0.0.1/32".into(),
        created_at_ns: now_ns,
        expires_at_ns: now_ns + 86_400 * SEC,
        revoked_at_ns: None,
        last_used_ns: None,
    };
    store.create_api_key(&key, &auditor, Effects::default()).await?;
    let entry = store
        .add_whitelist_address(customer_id, "BTC", address, "cold storage", now_ns, &auditor, |_| Effects::default())
        .await?
        .context("a new whitelist entry")?;
    store.confirm_whitelist_address(entry.id, customer_id, now_ns, now_ns, &auditor, Effects::default()).await?;
    Ok(Bot { key_id, secret, address: address.to_owned() })
}

impl Bot {
    /// `POST /v1/me/withdrawals` to the bot's address, signed at `now_ns`.
    async fn withdraw(&self, http: &Http, now_ns: u64, key: &str, amount: &str) -> anyhow::Result<(u16, Value)> {
        self.withdraw_to(http, now_ns, key, amount, &self.address).await
    }

    /// `POST /v1/me/withdrawals` to `address`, signed at `now_ns`.
    async fn withdraw_to(
        &self,
        http: &Http,
        now_ns: u64,
        key: &str,
        amount: &str,
        address: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let body = json!({"asset": "BTC", "amount": amount, "address": address, "idempotency_key": key});
        self.post(http, now_ns, "/v1/me/withdrawals", &body).await
    }

    /// A signed `POST path` with a JSON body, at `now_ns`.
    async fn post(&self, http: &Http, now_ns: u64, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let body = serde_json::to_vec(body)?;
        let ts = now_ns / 1_000_000;
        let sign = rampart_auth::sign_hex(&self.secret, "POST", path, &body, ts);
        let answer = http
            .http
            .post(format!("{}{path}", http.base))
            .header("content-type", "application/json")
            .header("x-rampart-key", &self.key_id)
            .header("x-rampart-timestamp", ts.to_string())
            .header("x-rampart-sign", sign)
            .body(body)
            .send()
            .await?;
        let status = answer.status().as_u16();
        Ok((status, answer.json().await.unwrap_or(Value::Null)))
    }
}

async fn pass(state: &AppState, custody: &Custody) -> anyhow::Result<()> {
    custody_pass(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    Ok(())
}

async fn withdrawal(state: &AppState, id: &str) -> anyhow::Result<rampart_store::WithdrawalRecord> {
    state.store().withdrawal(id).await?.context("the withdrawal")
}

/// The transaction that pays `w`.
async fn paid_by(state: &AppState, w: &rampart_store::WithdrawalRecord) -> anyhow::Result<bitcoin::Transaction> {
    let t = state.store().custody_tx(w.custody_tx.context("a transaction")?).await?.context("the transaction")?;
    let (tx, _) = rampart_server::custody::decode_tx(&t).map_err(|e| anyhow!("{}", e.message()))?;
    Ok(tx)
}

/// Asks for a withdrawal the policy approves at once, lets the worker pay it, and answers it as it is then.
async fn approved_and_paid(
    http: &Http,
    bot: &Bot,
    state: &AppState,
    custody: &Custody,
    now_ns: u64,
    key: &str,
    amount: &str,
) -> anyhow::Result<rampart_store::WithdrawalRecord> {
    let (status, created) = bot.withdraw(http, now_ns, key, amount).await?;
    ensure!(status == 201 && created["state"] == "approved", "approved at once: {status} {created}");
    pass(state, custody).await?;
    withdrawal(state, created["id"].as_str().context("an id")?).await
}

fn btc(sat: u64) -> String {
    format!("{}.{:08} BTC", sat / 100_000_000, sat % 100_000_000)
}

/// Chapters 26 to 29.
pub(crate) async fn story(
    http: &Http,
    state: &AppState,
    clock: &ManualClock,
    keyring: &Keyring,
    custody: &Custody,
    root: &str,
    erin: i64,
) -> anyhow::Result<()> {
    let node = custody.dev.clone().context("the development chain")?;
    chapter("26. Erin withdraws: every gate, the policy, the hot wallet's signature, three confirmations");
    let script = bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x01]);
    let destination = bitcoin::Address::p2wsh(&script, custody.chain.network()).to_string();
    let bot = bot(state.store(), keyring, erin, &destination, clock.now_ns()).await?;
    let account = rampart_server::customer_ledger_account(erin, "BTC");
    let before = state.store().account(account).await?.context("Erin's account")?;
    let (status, created) = bot.withdraw(http, clock.now_ns(), "erin-1", "0.001").await?;
    ensure!(status == 201, "a withdrawal: {status} {created}");
    let id = created["id"].as_str().context("an id")?.to_owned();
    ensure!(created["state"] == "approved", "approved at once: {created}");
    println!("   Erin's trading bot signs POST /v1/me/withdrawals for 0.001 BTC (USD 90) to her whitelisted address.");
    println!(
        "   The gates pass in order (account, whitelist, KYC limits, sanctions lists, risk engine); the request is"
    );
    println!(
        "   recorded with 0.001 BTC and the 0.0002 BTC network fee held in the ledger, in one transaction; policy"
    );
    let w = withdrawal(state, &id).await?;
    println!(
        "   version {} decides: rule {:?}, approved.",
        w.policy_version.unwrap_or(0),
        w.policy_rule.as_deref().unwrap_or("?")
    );
    let (again, same) = bot.withdraw(http, clock.now_ns() + 1_000_000, "erin-1", "0.001").await?;
    ensure!(again == 200 && same["id"] == created["id"], "the retry answers the same withdrawal: {same}");
    println!(
        "   Her bot retries after a timeout with the same idempotency key: the same withdrawal, not a second one."
    );
    pass(state, custody).await?;
    let w = withdrawal(state, &id).await?;
    ensure!(w.state == "broadcast", "paid and broadcast: {w:?}");
    let tx = paid_by(state, &w).await?;
    println!(
        "   The worker re-derives the policy's approval from the stored facts (no signature without it), signs from"
    );
    println!("   the hot wallet (Bitcoin Core's interpreter checks it) and broadcasts {}.", tx.compute_txid());
    node.mine(3)?;
    pass(state, custody).await?;
    let w = withdrawal(state, &id).await?;
    ensure!(w.state == "confirmed", "confirmed at three blocks: {w:?}");
    let after = state.store().account(account).await?.context("Erin's account")?;
    let spent = before.available().units() - after.available().units();
    println!(
        "   Three blocks later it is confirmed: the hold is posted for the amount and Erin's share of the fee ({}),",
        btc(u64::try_from(w.network_fee.unwrap_or(0)).unwrap_or(0))
    );
    println!(
        "   the rest of the fee held returns: {} left her account in all.",
        btc(u64::try_from(spent).unwrap_or(0))
    );

    chapter("27. A larger withdrawal waits for three staff approvals, each with a second factor, each person once");
    let mut staff = Vec::new();
    for name in ["olu", "pia", "quinn"] {
        staff.push((name, staff_with_totp(http, state, clock, keyring, name, Role::TreasuryCustodian).await?));
    }
    clock.advance_ns(30 * SEC);
    let (status, created) = bot.withdraw(http, clock.now_ns(), "erin-2", "0.002").await?;
    ensure!(status == 201 && created["state"] == "awaiting_approval", "waits for approvals: {status} {created}");
    let id = created["id"].as_str().context("an id")?.to_owned();
    let (_, queue) = http.call(reqwest::Method::GET, "/v1/withdrawals", Some(root), None).await;
    let item =
        queue.as_array().and_then(|q| q.iter().find(|i| i["withdrawal"]["id"] == json!(id))).context("queued")?;
    println!(
        "   0.002 BTC (USD 180) is at or above this demo's large-withdrawal threshold (USD 100): the policy's rule"
    );
    let w = withdrawal(state, &id).await?;
    println!(
        "   {:?} requires {} (distinct people, the requester never among them). The staff queue shows it with",
        w.policy_rule.as_deref().unwrap_or("?"),
        item["requirement"]
    );
    println!("   the gates' findings, Erin's history and the destination's.");
    let approve = |token: &str, secret: &rampart_auth::TotpSecret, step: u64| {
        let body = json!({"reason": "matches the customer's usual activity", "totp_code": secret.code_at(step * 30)});
        let path = format!("/v1/withdrawals/{id}/approve");
        let token = token.to_owned();
        async move { http.call(reqwest::Method::POST, &path, Some(&token), Some(&body)).await }
    };
    let mut step = clock.now_ns() / SEC / 30;
    for (i, (name, (token, secret))) in staff.iter().enumerate() {
        let (status, answer) = approve(token, secret, step).await;
        ensure!(status == 200, "{name}'s approval: {status} {answer}");
        println!("   {name} approves with a TOTP code: layer {}, complete: {}.", answer["layer"], answer["complete"]);
        if i == 0 {
            step += 1;
            let (status, again) = approve(token, secret, step).await;
            ensure!(status == 403 && again["error"]["code"] == "already_approved", "once only: {again}");
            println!("   {name} tries again: refused ({}).", again["error"]["code"].as_str().unwrap_or_default());
        }
        step += 1;
        clock.advance_ns(30 * SEC);
    }
    pass(state, custody).await?;
    node.mine(3)?;
    pass(state, custody).await?;
    let w = withdrawal(state, &id).await?;
    ensure!(w.state == "confirmed", "confirmed: {w:?}");
    println!("   With the third approval it is approved, paid from the hot wallet and, three blocks later, confirmed.");

    chapter("28. A stuck transaction: a treasury custodian bumps its fee (replace-by-fee), with a second factor");
    clock.advance_ns(30 * SEC);
    let w = approved_and_paid(http, &bot, state, custody, clock.now_ns(), "erin-3", "0.001").await?;
    let id = w.id.clone();
    ensure!(w.state == "broadcast", "paid and broadcast: {w:?}");
    let tx = paid_by(state, &w).await?;
    println!("   Erin's next 0.001 BTC is broadcast ({}), then the network's fees rise and no block takes it.", {
        tx.compute_txid()
    });
    let (name, (token, secret)) = &staff[0];
    let body =
        json!({"fee_rate_sat_vb": 25, "reason": "stuck behind higher fees", "totp_code": secret.code_at(step * 30)});
    let path = format!("/v1/withdrawals/{id}/bump-fee");
    let (status, bumped) = http.call(reqwest::Method::POST, &path, Some(token), Some(&body)).await;
    ensure!(status == 200 && bumped["chain"] == "accepted", "the fee bump: {status} {bumped}");
    let replacement = bumped["txid"].as_str().context("a txid")?.to_owned();
    ensure!(replacement != tx.compute_txid().to_string(), "a new transaction: {bumped}");
    println!(
        "   {name} bumps it to 25 sat/vB with a reason and a TOTP code: replacement {replacement} spends the same coins,"
    );
    println!(
        "   pays Erin the same amount and {} sat in fees (BIP-125); the exchange pays the bump from its fee account.",
        bumped["fee_sat"].as_str().unwrap_or("?")
    );
    node.mine(3)?;
    pass(state, custody).await?;
    let w = withdrawal(state, &id).await?;
    ensure!(w.state == "confirmed", "confirmed: {w:?}");
    let tx = paid_by(state, &w).await?;
    ensure!(tx.compute_txid().to_string() == replacement, "the replacement is what confirmed");
    let filter = rampart_store::AuditFilter { action: Some("withdrawal.fee_bumped".into()), ..Default::default() };
    let bumps = state.store().audit_entries(&filter, 100).await?;
    let entry = bumps.iter().find(|e| e.record.target == format!("withdrawal:{id}")).context("the bump audited")?;
    println!(
        "   Three blocks later the replacement is confirmed; the audit log holds the bump (entry {}, by {}).",
        entry.seq, entry.record.actor
    );

    chapter("29. Withdrawals that never leave: an address still cooling off, a cancel, an output the chain refuses");
    clock.advance_ns(30 * SEC);
    let script = bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x02]);
    let fresh = bitcoin::Address::p2wsh(&script, custody.chain.network()).to_string();
    let auditor = Auditor { signer: keyring, checkpoint_every: crate::init::CHECKPOINT_EVERY };
    let entry = state
        .store()
        .add_whitelist_address(erin, "BTC", &fresh, "new exchange account", clock.now_ns(), &auditor, |_| {
            Effects::default()
        })
        .await?
        .context("a new whitelist entry")?;
    let usable = clock.now_ns() + 86_400 * SEC;
    state
        .store()
        .confirm_whitelist_address(entry.id, erin, usable, clock.now_ns(), &auditor, Effects::default())
        .await?;
    let (status, refused) = bot.withdraw_to(http, clock.now_ns(), "erin-4", "0.001", &fresh).await?;
    ensure!(status == 403 && refused["error"]["code"] == "address_cooling_off", "cooling off: {status} {refused}");
    println!("   Erin whitelists a second address (confirmed, as its emailed link does); her bot uses it at once:");
    println!("   {status} address_cooling_off, \"{}\".", refused["error"]["message"].as_str().unwrap_or_default());
    let before = state.store().account(account).await?.context("Erin's account")?;
    let (status, created) = bot.withdraw(http, clock.now_ns(), "erin-5", "0.002").await?;
    ensure!(status == 201 && created["state"] == "awaiting_approval", "waits: {status} {created}");
    let id = created["id"].as_str().context("an id")?.to_owned();
    let held = state.store().account(account).await?.context("Erin's account")?;
    clock.advance_ns(SEC);
    let (status, cancelled) =
        bot.post(http, clock.now_ns(), &format!("/v1/me/withdrawals/{id}/cancel"), &json!({})).await?;
    ensure!(status == 200 && cancelled["state"] == "cancelled", "cancelled: {status} {cancelled}");
    let after = state.store().account(account).await?.context("Erin's account")?;
    ensure!(after.available() == before.available(), "the hold is void: {before:?} {after:?}");
    println!(
        "   Her bot asks 0.002 BTC, which waits for approvals with {} held; she cancels it before anyone signs:",
        btc(u64::try_from(before.available().units() - held.available().units()).unwrap_or(0))
    );
    println!(
        "   cancelled, the hold voided, her available balance as before ({}).",
        btc(u64::try_from(after.available().units()).unwrap_or(0))
    );
    clock.advance_ns(SEC);
    let w = approved_and_paid(http, &bot, state, custody, clock.now_ns(), "erin-6", "0.000003").await?;
    ensure!(w.state == "failed", "the chain refuses dust: {w:?}");
    let back = state.store().account(account).await?.context("Erin's account")?;
    ensure!(back.available() == before.available(), "the hold is void: {before:?} {back:?}");
    println!(
        "   A 300-satoshi withdrawal is approved and signed, but the chain refuses the output as dust: failed (\"{}\"),",
        w.reason.as_deref().unwrap_or_default()
    );
    println!("   its hold voided and the transaction's coins released.");

    let report = state.store().verify_ledger().await?;
    ensure!(report.violation.is_none(), "the books balance after withdrawals: {:?}", report.violation);
    let status =
        rampart_server::custody_api::status_of(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    let audit = state.store().verify_audit(&keyring.verifying_key()).await?;
    ensure!(audit.finding.is_none(), "the audit log verifies: {audit:?}");
    println!(
        "   The ledger balances (every hold accounted for); cold share {}.{:02} %; the audit log verifies ({} entries).",
        status.cold_share_bps / 100,
        status.cold_share_bps % 100,
        audit.entries
    );
    Ok(())
}
