//! The custody chapters of `rampart demo`: the real service in this process with the built-in development chain,
//! five custodians who generate a cold key among themselves over the service (each with the same code as `rampart
//! custodian`), a customer's deposit credited after its confirmations (exactly once, and reversed by a
//! reorganisation), the sweep that keeps at least 95 % cold, and a refill from cold signed by three custodians and
//! checked by Bitcoin Core's interpreter.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use rampart_audit::Role;
use rampart_core::{AssetRegistry, Clock, ManualClock};
use rampart_crypto::Keyring;
use rampart_server::custody::{Custody, CustodyConfig, custody_pass, watch_once};
use rampart_server::{AppState, IdentityConfig, VaultState};
use rampart_store::Store;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::custodian::{self, Custodian, Service};

const SEC: u64 = 1_000_000_000;

fn chapter(title: &str) {
    println!("\n== {title}");
}

pub(crate) struct Http {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl Http {
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"error": {"message": e.to_string()}})),
        }
    }
}

/// A staff account with `role`, enrolled and signed in over HTTP; answers the session token.
pub(crate) async fn staff_session(
    http: &Http,
    state: &AppState,
    clock: &ManualClock,
    keyring: &Keyring,
    name: &str,
    role: Role,
) -> anyhow::Result<String> {
    Ok(staff_with_totp(http, state, clock, keyring, name, role).await?.0)
}

/// A staff account with `role`, enrolled and signed in over HTTP; answers the session token and the TOTP secret
/// of their authenticator (for actions that ask for a code).
pub(crate) async fn staff_with_totp(
    http: &Http,
    state: &AppState,
    clock: &ManualClock,
    keyring: &Keyring,
    name: &str,
    role: Role,
) -> anyhow::Result<(String, rampart_auth::TotpSecret)> {
    let code = format!("enrol-{name}-0123456789");
    let auditor = state.auditor(keyring);
    state
        .store()
        .create_staff(
            name,
            &[role],
            &rampart_auth::hash_bearer(&code),
            clock.now_ns() + 3600 * SEC,
            clock.now_ns(),
            &auditor,
            vec![],
        )
        .await?
        .context("a new staff name")?;
    let password = format!("{name} keeps the cold key safe");
    let (status, enrol) = http
        .call(
            reqwest::Method::POST,
            "/v1/staff/enrol",
            None,
            Some(&json!({"username": name, "enrolment_code": code, "password": password})),
        )
        .await;
    ensure!(status == 200 || status == 201, "enrolment of {name}: {enrol}");
    let bytes = totp_rs::Secret::Encoded(enrol["totp_secret"].as_str().context("a TOTP secret")?.to_owned())
        .to_bytes()
        .map_err(|e| anyhow!("{e:?}"))?;
    let secret = rampart_auth::TotpSecret::from_bytes(&bytes)?;
    let now_s = || clock.now_ns() / SEC;
    let (status, confirm) = http
        .call(
            reqwest::Method::POST,
            "/v1/staff/enrol/confirm",
            None,
            Some(&json!({"username": name, "enrolment_code": code, "totp_code": secret.code_at(now_s())})),
        )
        .await;
    ensure!((200..300).contains(&status), "enrolment confirmation of {name}: {confirm}");
    clock.advance_ns(30 * SEC);
    let (status, session) = http
        .call(
            reqwest::Method::POST,
            "/v1/staff/sign-in",
            None,
            Some(&json!({"username": name, "password": password, "totp_code": secret.code_at(now_s())})),
        )
        .await;
    ensure!(status == 200, "sign-in of {name}: {session}");
    Ok((session["token"].as_str().context("a session token")?.to_owned(), secret))
}

/// Runs the custody chapters against the service on `store`, unsealed with `keyring`.
pub async fn run(store: Store, keyring: Arc<Keyring>) -> anyhow::Result<()> {
    let clock = Arc::new(ManualClock::new(1_800_100_000 * SEC));
    let node = rampart_chain::DevChainNode::open(None, 1)?;
    let custody = Arc::new(Custody {
        config: CustodyConfig { refill_quorum: 2, ..CustodyConfig::default() },
        chain: node.clone(),
        dev: Some(node.clone()),
    });
    let root = "demo-root-token-custody";
    let state = AppState::new(
        store,
        AssetRegistry::defaults(),
        clock.clone(),
        VaultState::Unsealed(keyring.clone()),
        Some(SecretString::from(root.to_owned())),
    )
    .with_identity(IdentityConfig::default())
    .map_err(|e| anyhow!(e))?
    .with_custody(custody.clone())
    .map_err(|e| anyhow!(e))?
    // Withdrawals of USD 100 or more wait for three approvals here, so that chapter 27 can show them with small sums.
    .with_withdrawals(rampart_server::withdrawals::WithdrawalsConfig {
        large_usd: 100,
        // Low enough that chapter 29 can ask for an output the chain refuses as dust.
        min_amount: [("BTC".to_owned(), 100)].into(),
        ..rampart_server::withdrawals::WithdrawalsConfig::default()
    })
    .map_err(|e| anyhow!(e))?;
    // Deposits are scored too, valued at a reference price (a deployment would take it from a price feed).
    let risk_config = rampart_server::risk::RiskConfig {
        usd_micro_per_unit: [("BTC".to_owned(), 90_000_000_000)].into_iter().collect(),
        ..rampart_server::risk::RiskConfig::default()
    };
    let (risk, _) = rampart_server::risk::Risk::load(state.store(), risk_config).await.map_err(|e| anyhow!(e))?;
    let state = state.with_risk(Arc::new(risk)).map_err(|e| anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rampart_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let http = Http { http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?, base: base.clone() };
    let result = story(&http, &state, &clock, &keyring, &custody, root).await;
    let _ = stop.send(());
    let _ = server.await;
    result
}

fn btc(sat: u64) -> String {
    format!("{}.{:08} BTC", sat / 100_000_000, sat % 100_000_000)
}

async fn story(
    http: &Http,
    state: &AppState,
    clock: &ManualClock,
    keyring: &Keyring,
    custody: &Custody,
    root: &str,
) -> anyhow::Result<()> {
    let node = custody.dev.clone().context("the development chain")?;
    let post = |path: &'static str, body: Value| async move {
        http.call(reqwest::Method::POST, path, Some(root), Some(&body)).await
    };

    chapter("21. Five custodians generate the cold key among themselves; nobody ever holds all of it");
    let names = ["ada", "bram", "chen", "dagny", "emeka"];
    let mut people = Vec::new();
    for name in names {
        let token = staff_session(http, state, clock, keyring, name, Role::TreasuryCustodian).await?;
        let me = Custodian::generate();
        let service = Service::new(&http.base, &token);
        let registered = custodian::register(&service, &me).await?;
        let id = registered["id"].as_i64().context("a custodian id")?;
        let (status, active) =
            http.call(reqwest::Method::POST, &format!("/v1/custody/custodians/{id}/activate"), Some(root), None).await;
        ensure!(status == 200, "activation: {active}");
        people.push((name, id, service, me));
    }
    println!("   Ada, Bram, Chen, Dagny and Emeka each make Ed25519 and X25519 identity keys in their own key file,");
    println!("   register the public halves, and an administrator activates them.");
    let ids: Vec<i64> = people.iter().map(|p| p.1).collect();
    let (status, ceremony) =
        post("/v1/custody/ceremonies", json!({"kind": "dkg", "custodians": ids, "threshold": 3})).await;
    ensure!(status == 201, "a key generation: {ceremony}");
    let dkg = ceremony["id"].as_i64().context("a ceremony id")?;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (name, _, service, mut me) in people {
        tasks.push(tokio::spawn(async move {
            let result = custodian::key_ceremony(&service, &mut me, dkg).await;
            (name, service, me, result)
        }));
    }
    let mut people = Vec::new();
    let mut addresses = Vec::new();
    for task in tasks {
        let (name, service, me, result) = task.await?;
        let result = result.with_context(|| format!("{name}'s side of the key generation"))?;
        addresses.push(result.address.clone());
        people.push((name, Arc::new(service), Arc::new(me)));
    }
    ensure!(addresses.windows(2).all(|w| w[0] == w[1]), "every custodian computed the same key");
    println!(
        "   A 3-of-5 FROST key generation over the service ({} ms): round-2 secret packages sealed to each recipient,",
        started.elapsed().as_millis()
    );
    println!("   then every custodian signed the transcript and the group key; all five agree. Cold wallet (Taproot):");
    println!("     {}", addresses[0]);

    chapter("22. A deposit is credited after its confirmations, once, and a reorganisation takes one back");
    let (status, signup) = http
        .call(
            reqwest::Method::POST,
            "/v1/customers/sign-up",
            None,
            Some(&json!({"email": "erin@example.com", "password": "Harbor-Lichen-Tandem-2044"})),
        )
        .await;
    ensure!(status == 201, "sign-up: {signup}");
    let handle: [u8; 16] = hex::decode(signup["customer"].as_str().context("a customer")?)?
        .try_into()
        .map_err(|_| anyhow!("a 16-byte handle"))?;
    let customer = state.store().customer_by_handle(&handle).await?.context("the customer")?;
    let address = rampart_server::custody::deposit_address(state, custody, customer.id, false)
        .await
        .map_err(|e| anyhow!("{}", e.message()))?;
    println!(
        "   Erin's deposit address, derived from the hot key's account xpub at index {}: {}",
        address.index, address.address
    );
    let script = bitcoin::ScriptBuf::from_bytes(address.script_pubkey.clone());
    node.faucet(script.clone(), bitcoin::Amount::from_sat(50_000_000))?;
    node.mine(1)?;
    watch_once(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    let balance = |state: AppState| async move {
        let id = rampart_server::customer_ledger_account(customer.id, "BTC");
        state.store().account(id).await.map(|a| a.map_or(0, |a| a.available().units()))
    };
    ensure!(balance(state.clone()).await? == 0, "not credited at one confirmation");
    println!("   0.5 BTC arrives in a block: 1 confirmation, pending (BTC needs 3), Erin's balance is still 0.");
    node.mine(2)?;
    let watched = watch_once(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(watched.credited == 1, "credited at three confirmations: {watched:?}");
    ensure!(balance(state.clone()).await? == 50_000_000, "credited");
    let again = watch_once(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(again.credited == 0 && balance(state.clone()).await? == 50_000_000, "credited once");
    println!(
        "   Two blocks later: credited 0.5 BTC (a ledger transfer whose id is derived from the output, so a watcher"
    );
    println!("   that runs again, or restarts, finds it recorded and credits nothing twice).");
    let scored = state.store().risk_events_after(0, 1_000).await?;
    let deposit = scored
        .iter()
        .filter_map(|r| serde_json::from_str::<rampart_risk::Event>(&r.event).ok())
        .find(|e| matches!(e.kind, rampart_risk::EventKind::Deposit { .. }))
        .context("the credited deposit was scored")?;
    ensure!(deposit.amount_micro_usd() == 45_000_000_000, "valued at 90 000 USD per BTC: {deposit:?}");
    println!("   The risk engine scored the credit as a deposit of 45 000 USD (at a reference price of 90 000 USD):");
    println!("   Erin's profile now knows her usual deposit size.");
    let outpoint = node.faucet(script, bitcoin::Amount::from_sat(2_000_000))?;
    node.mine(3)?;
    watch_once(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(balance(state.clone()).await? == 52_000_000, "the second deposit credited");
    node.reorg(3, &[outpoint.txid])?;
    let watched = watch_once(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(watched.reversed >= 1 || balance(state.clone()).await? == 50_000_000, "reversed: {watched:?}");
    ensure!(balance(state.clone()).await? == 50_000_000, "the removed deposit is taken back");
    let reversed = state.store().customer_deposits(customer.id, 10).await?;
    ensure!(reversed.iter().any(|d| d.state == "reversed"), "the deposit is marked reversed");
    println!(
        "   A second deposit of 0.02 BTC is credited, then a 3-block reorganisation leaves it out of the new branch:"
    );
    println!(
        "   the watcher finds the fork, reverses the credit (audited as custody.deposit.reversed); Erin has 0.5 BTC."
    );

    chapter("23. The sweeper keeps at least 95 % of the coins cold");
    node.mine(1)?;
    let (_, swept) = custody_pass(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    let txid = swept.swept.context("a sweep")?;
    println!(
        "   The hot key signs a sweep of the deposit: {} to cold, {} stays hot, fee {} (checked by Bitcoin Core's",
        btc(swept.to_cold),
        btc(swept.to_hot),
        btc(swept.fee)
    );
    println!("   interpreter before it is sent); transaction {txid}.");
    node.mine(1)?;
    custody_pass(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    let status =
        rampart_server::custody_api::status_of(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(status.cold_share_bps >= 9_500, "at least 95 % cold: {}", status.cold_share_bps);
    println!(
        "   Confirmed: cold {}, hot {}, deposits {}: the cold share is {}.{:02} % (floor 95 %).",
        btc(status.cold_sat),
        btc(status.hot_sat),
        btc(status.deposit_sat),
        status.cold_share_bps / 100,
        status.cold_share_bps % 100
    );

    chapter("24. A refill from cold needs two approvals and three custodians' signatures");
    let (ada, bram, chen) = (&people[0].1, &people[1].1, &people[2].1);
    let too_much =
        ada.post("/v1/custody/refills", &json!({"amount": "0.1", "reason": "large withdrawals expected"})).await;
    let refused = match too_much {
        Err(e) if e.to_string().contains("above_hot_cap") => e.to_string(),
        other => anyhow::bail!("a refill of 0.1 BTC would put 20 % hot and must be refused: {other:?}"),
    };
    println!("   Ada proposes moving 0.1 BTC to the hot wallet. Refused: hot would then hold over 20 %:");
    println!("     {}", refused.trim_start_matches("error: "));
    let refill =
        ada.post("/v1/custody/refills", &json!({"amount": "0.005", "reason": "large withdrawals expected"})).await?;
    let refill_id = refill["id"].as_i64().context("a refill id")?;
    let own = ada.post(&format!("/v1/custody/refills/{refill_id}/approve"), &json!({})).await;
    ensure!(own.as_ref().is_err_and(|e| e.to_string().contains("four_eyes")), "the proposer cannot approve");
    bram.post(&format!("/v1/custody/refills/{refill_id}/approve"), &json!({})).await?;
    let approved = chen.post(&format!("/v1/custody/refills/{refill_id}/approve"), &json!({})).await?;
    let session = approved["ceremony_id"].as_i64().context("a signing session")?;
    println!(
        "   She proposes 0.005 BTC instead (hot would hold 4 %); she may not approve it herself; Bram and Chen approve."
    );
    println!("   The service builds the transaction from cold coins and opens signing session {session}.");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (name, service, me) in people.iter().skip(2).cloned() {
        tasks.push(tokio::spawn(async move {
            let mut shown = String::new();
            let result = custodian::sign_session(&service, &me, session, |summary| {
                shown = summary.to_owned();
                true
            })
            .await;
            (name, result, shown)
        }));
    }
    let mut shown = String::new();
    let mut signers = Vec::new();
    for task in tasks {
        let (name, result, summary) = task.await?;
        let result = result.with_context(|| format!("{name}'s signature"))?;
        if result.signed {
            signers.push(name);
        }
        shown = summary;
    }
    ensure!(signers.len() == 3, "three signers: {signers:?}");
    println!("   Chen, Dagny and Emeka each recompute the signature hashes from the transaction and see:");
    for line in shown.lines() {
        println!("     {line}");
    }
    let view = rampart_server::custody_api::status_of(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    println!(
        "   They commit and sign; the service checks each share against its custodian's verifying share, aggregates,"
    );
    println!(
        "   and Bitcoin Core's interpreter accepts the spend ({} ms in all). Sent: {} on its way to hot.",
        started.elapsed().as_millis(),
        btc(view.in_flight_to_hot_sat)
    );
    ensure!(view.in_flight_to_hot_sat == 500_000, "the refill is on its way: {}", view.in_flight_to_hot_sat);
    node.mine(1)?;
    custody_pass(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    let report = state.store().verify_ledger().await?;
    ensure!(report.violation.is_none(), "the books balance after custody: {:?}", report.violation);
    let entries = state.store().verify_audit(&keyring.verifying_key()).await?;
    println!(
        "   Mined. The ledger's custody accounts mirror the chain, every invariant holds, and the audit log verifies"
    );
    println!("   ({} entries).", entries.entries);
    chapter("25. A deposit from a blocked address is held for compliance; released, it is credited");
    // Someone funds Erin's account from a wallet the exchange has blocked: a key of its own on the development chain.
    let outsider = rampart_custody::hotkey::HotKey::generate(custody.chain.network());
    let outsider_view = rampart_custody::hotkey::WatchOnly::parse(&outsider.account_xpub(), custody.chain.network())?;
    let outsider_address = outsider_view.address(0, 0)?.to_string();
    let (status, listed) = http
        .call(
            reqwest::Method::POST,
            "/v1/compliance/addresses",
            Some(root),
            Some(&json!({"address": outsider_address, "asset": "BTC", "category": "blocked",
                "reason": "demo: a wallet tied to a fraud ring"})),
        )
        .await;
    ensure!(status == 201, "listing the address: {status} {listed}");
    let funding = node.faucet(outsider_view.script(0, 0)?, bitcoin::Amount::from_sat(20_000_000))?;
    node.mine(1)?;
    let spent =
        bitcoin::TxOut { value: bitcoin::Amount::from_sat(20_000_000), script_pubkey: outsider_view.script(0, 0)? };
    let mut payment = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: funding,
            script_sig: bitcoin::ScriptBuf::new(),
            sequence: bitcoin::Sequence::MAX,
            witness: bitcoin::Witness::new(),
        }],
        // And 500 sat of dust beside it: below the minimum deposit, never credited, so never screened (dust from a
        // listed address must not open cases at will).
        output: [19_999_000, 500]
            .map(|sat| bitcoin::TxOut {
                value: bitcoin::Amount::from_sat(sat),
                script_pubkey: bitcoin::ScriptBuf::from_bytes(address.script_pubkey.clone()),
            })
            .to_vec(),
    };
    outsider.sign_key_spends(&mut payment, &[spent], &[(0, 0)])?;
    custody.chain.broadcast(&payment).await?;
    let before = balance(state.clone()).await?;
    node.mine(3)?;
    let watched = watch_once(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(watched.held == 1 && watched.credited == 0, "held, not credited: {watched:?}");
    ensure!(balance(state.clone()).await? == before, "nothing credited while held");
    let (_, cases) = http.call(reqwest::Method::GET, "/v1/compliance/cases", Some(root), None).await;
    let case = cases
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "deposit_hold"))
        .context("a deposit_hold case")?
        .clone();
    println!("   0.19999 BTC arrives at Erin's address from {outsider_address},");
    println!(
        "   an address compliance put on the exchange's block list. At three confirmations the watcher screens the"
    );
    println!(
        "   addresses that funded the transaction (its inputs' previous outputs) and holds the deposit: case {} ({}, {}),",
        case["id"], case["kind"], case["details"]["category"]
    );
    let deposits = state.store().customer_deposits(customer.id, 10).await?;
    ensure!(deposits.iter().any(|d| d.state == "held" && d.amount == 19_999_000), "held in her list: {deposits:?}");
    ensure!(deposits.iter().any(|d| d.state == "dust" && d.amount == 500), "the dust beside it: {deposits:?}");
    println!(
        "   Erin's balance unchanged; her deposit list says only \"held\" (and \"dust\" for 500 sat sent beside it,"
    );
    println!("   below the minimum deposit: never credited, so never screened and no case).");
    let resolve = json!({"resolution": "release", "note": "the sender's funds were traced to a refund: release"});
    let path = format!("/v1/compliance/cases/{}/resolve", case["id"]);
    let (status, resolved) = http.call(reqwest::Method::POST, &path, Some(root), Some(&resolve)).await;
    ensure!(status == 200, "resolving the case: {status} {resolved}");
    let watched = watch_once(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(watched.credited == 1, "released, then credited: {watched:?}");
    ensure!(balance(state.clone()).await? == before + 19_999_000, "credited once released");
    println!("   A reviewer resolves it: release. The next watcher pass credits the deposit held (+0.19999 BTC).");
    crate::demo_withdrawals::story(http, state, clock, keyring, custody, root, customer.id).await?;
    crate::demo_reserves::assets_side(http, state, custody, root, &people[2..]).await
}
