//! The demo's proof-of-reserves chapters: a snapshot of every customer's balances the earlier chapters made, built
//! into the liabilities tree and published; a customer's inclusion proof checked by the standalone verifier's code;
//! forged publications rejected; the auditors' leaf file recomputing the root.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use rampart_core::{AssetRegistry, ManualClock};
use rampart_crypto::Keyring;
use rampart_server::{AppState, VaultState};
use rampart_store::Store;
use rampart_verify::{Failure, LeafFile, Proof};
use serde_json::{Value, json};

use crate::demo_custody::Http;

const SEC: u64 = 1_000_000_000;

fn chapter(title: &str) {
    println!("\n== {title}");
}

pub async fn run(store: Store, keyring: Arc<Keyring>) -> anyhow::Result<()> {
    let clock = Arc::new(ManualClock::new(1_800_300_000 * SEC));
    let root = "demo-root-token-reserves";
    let state = AppState::new(
        store,
        AssetRegistry::defaults(),
        clock,
        VaultState::Unsealed(keyring),
        Some(secrecy::SecretString::from(root.to_owned())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rampart_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let http = Http { http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?, base };
    let result = story(&http, &state, root).await;
    let _ = stop.send(());
    let _ = server.await;
    result
}

/// Chapter 30, on the custody chapters' service: the reserves' side of a snapshot — every address holding coins at
/// the watcher's block, signed by the hot key at once and by three custodians for the cold wallet — and the signed
/// report, checked with the standalone verifier's code; forgeries rejected.
pub async fn assets_side(
    http: &Http,
    state: &AppState,
    custody: &rampart_server::custody::Custody,
    root: &str,
    signers: &[(&'static str, Arc<crate::custodian::Service>, Arc<crate::custodian::Custodian>)],
) -> anyhow::Result<()> {
    use rampart_verify::report::{check_report, verify_report};
    chapter("30. The reserves' side: every address signs for the snapshot, the cold one through three custodians");
    let (status, published) =
        http.call(reqwest::Method::POST, "/v1/reserves", Some(root), Some(&json!({"name": "demo-assets"}))).await;
    ensure!(status == 201, "a snapshot: {status} {published}");
    let session = published["signing_sessions"][0].as_i64().context("a signing session for the cold address")?;
    let (status, pending) = http.call(reqwest::Method::GET, "/v1/reserves/demo-assets/report", None, None).await;
    ensure!(status == 409, "no report before the cold key signs: {status} {pending}");
    println!(
        "   Snapshot demo-assets: the liabilities tree (root {}…) and every address of the wallets holding coins at the",
        &published["root"].as_str().unwrap_or("")[..16]
    );
    println!(
        "   watcher's newest block; the hot key signs its addresses' statements at once. The report waits (409 {}).",
        pending["error"]["code"].as_str().unwrap_or("")
    );
    let mut tasks = Vec::new();
    for (name, service, me) in signers.iter().cloned() {
        tasks.push(tokio::spawn(async move {
            let mut shown = String::new();
            let result = crate::custodian::sign_session(&service, &me, session, |text| {
                shown = text.to_owned();
                true
            })
            .await;
            (name, result, shown)
        }));
    }
    let mut shown = String::new();
    for task in tasks {
        let (name, result, text) = task.await?;
        ensure!(result.with_context(|| format!("{name}'s signature"))?.signed, "{name} signs");
        shown = text;
    }
    println!("   Session {session}: three custodians recompute the statement from what they are shown and sign it:");
    println!("     {shown}");
    let (status, signed) = http.call(reqwest::Method::GET, "/v1/reserves/demo-assets/report", None, None).await;
    ensure!(status == 200, "the report: {status} {signed}");
    let text = signed["report"].as_str().context("a report")?;
    let signature = hex::decode(signed["signature"].as_str().context("a signature")?)?;
    let key = hex::decode(signed["public_key"].as_str().context("a key")?)?;
    let summary = verify_report(text.as_bytes(), &signature, &key).map_err(|e| anyhow!("the report: {e}"))?;
    let btc = summary.assets.iter().find(|a| a.code == "BTC").context("BTC")?;
    let units = |x: u128| crate::reserves_report::units(x, btc.decimals);
    println!(
        "   The signed report, checked with rampart-verify's code: BTC liabilities {}, reserves {} (cold {}, hot {},",
        units(btc.liabilities),
        btc.reserves.map_or_else(|| "-".into(), units),
        units(btc.cold),
        units(btc.hot)
    );
    println!(
        "   deposit {}) over {} addresses at block {}: ratio {}, cold share {}.",
        units(btc.deposit),
        btc.addresses,
        btc.chain.as_ref().map_or(0, |c| c.0),
        crate::reserves_report::percent(btc.ratio_bps),
        crate::reserves_report::percent(btc.cold_share_bps)
    );
    let status =
        rampart_server::custody_api::status_of(state, custody).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(btc.cold > 0 && btc.chain.as_ref().map(|c| c.0) == status.height, "the cold coins at the newest block");
    // What the exchange paid from its own accounts (network fees beyond customers' shares, a reorganisation's loss)
    // is owed to nobody and is not on chain either: unless topped up, it is the gap between the two sides.
    let mut own = 0i128;
    for kind in ["fees", "reorg_loss"] {
        let id = rampart_server::custody::custody_ledger_account("BTC", kind);
        if let Some(a) = state.store().account(id).await? {
            own += i128::try_from(a.debits_posted.units())? - i128::try_from(a.credits_posted.units())?;
        }
    }
    let gap = i128::try_from(btc.liabilities)? - i128::try_from(btc.reserves.unwrap_or(0))?;
    // Chapter 25's 500 sat of dust were never credited to anyone, and were swept with the rest.
    ensure!(gap == own - 500, "the gap ({gap} sat) is what the exchange paid itself less the dust (own {own} sat)");
    println!(
        "   The gap ({gap} sat short) is explained to the satoshi: the exchange paid {own} sat of network fees (sweeps, the"
    );
    println!(
        "   refill, the fee bump) from its own ledger accounts without topping them up, less 500 sat of uncredited dust."
    );
    let report: Value = serde_json::from_str(text)?;
    let mut inflated = report.clone();
    let balance: u128 = inflated["assets"][0]["addresses"][0]["balance"].as_str().context("a balance")?.parse()?;
    inflated["assets"][0]["addresses"][0]["balance"] = json!((balance * 2).to_string());
    let refused = check_report(&inflated).err().context("an inflated balance must be refused")?;
    println!("   An address's balance doubled: {refused}.");
    let mut replayed = report.clone();
    replayed["snapshot"] = json!("demo-next");
    let refused = check_report(&replayed).err().context("a replayed statement must be refused")?;
    println!("   The same signatures offered for another snapshot: {refused}.");
    let dir = std::env::temp_dir().join(format!("rampart-demo-report-{}", std::process::id()));
    let (written, _) = crate::reserves_cmd::publish(&signed, &dir)?;
    let names: Vec<String> =
        written.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    println!("   `rampart reserves publish` writes {} in {}.", names.join(", "), dir.display());
    Ok(())
}

fn hex32(value: &Value) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(value.as_str().context("a hex string")?)?;
    bytes.try_into().map_err(|_| anyhow!("32 bytes"))
}

async fn story(http: &Http, state: &AppState, root: &str) -> anyhow::Result<()> {
    chapter("41. Proof of reserves: every customer's balances in a Merkle sum tree, published");
    let (status, publication) =
        http.call(reqwest::Method::POST, "/v1/reserves", Some(root), Some(&json!({"name": "demo-1"}))).await;
    ensure!(status == 201, "a snapshot: {status} {publication}");
    let (status, public) = http.call(reqwest::Method::GET, "/v1/reserves/demo-1", None, None).await;
    ensure!(status == 200 && public == publication, "published to anyone: {status} {public}");
    let btc = publication["assets"].as_array().context("assets")?.iter().find(|a| a["code"] == "BTC").context("BTC")?;
    println!(
        "   A treasury custodian takes snapshot demo-1 at ledger point {}: one consistent read of every customer's",
        publication["ledger_seq"]
    );
    println!(
        "   balances, a tree of height {} (2^{} positions: users placed at random among padding, so their number",
        publication["height"], publication["height"]
    );
    println!("   stays hidden), each leaf a salted commitment to a customer and their balances in every asset.");
    println!("   Published to anyone: root {}", publication["root"].as_str().unwrap_or(""));
    println!("   and the liabilities per asset, BTC {} sat.", btc["liabilities"].as_str().unwrap_or(""));

    // A customer who holds BTC: the first in the snapshot's read.
    let read = state.store().read_liabilities(rampart_server::CUSTOMER_ACCOUNT_CODE).await?;
    let (handle, amount) = read
        .balances
        .iter()
        .find_map(|b| match &b.0 {
            rampart_store::LiabilityOwner::Customer(h) if b.1 == "BTC" => Some((hex::encode(h), b.2)),
            _ => None,
        })
        .context("a customer with BTC")?;
    let path = format!("/v1/reserves/demo-1/proofs/{handle}");
    let (status, view) = http.call(reqwest::Method::GET, &path, Some(root), None).await;
    ensure!(status == 200, "a proof: {status} {view}");
    let bytes = hex::decode(view["proof"].as_str().context("a proof")?)?;
    let proof = Proof::decode(&bytes).map_err(|e| anyhow!("{e}"))?;
    let published_root = hex32(&publication["root"])?;
    let totals: Vec<u128> = publication["assets"]
        .as_array()
        .context("assets")?
        .iter()
        .map(|a| a["liabilities"].as_str().unwrap_or("").parse::<u128>())
        .collect::<Result<_, _>>()?;
    let verified = proof.verify(&published_root).map_err(|e| anyhow!("the proof does not verify: {e}"))?;
    verified.check_totals(&proof.params, &totals).map_err(|e| anyhow!("{e}"))?;
    ensure!(proof.user_id == handle.as_bytes() && proof.balances.iter().any(|b| b.1 == amount), "their own balance");
    println!(
        "   Customer {}… fetches their proof ({} bytes: their id, salt and balances, and per level the sibling's hash",
        &handle[..8],
        bytes.len()
    );
    println!(
        "   and sums). The standalone verifier (rampart-verify, or the JavaScript page) recomputes the path: verified —"
    );
    println!("   their {amount} sat are included in the published BTC liabilities, and the totals are the tree's.");

    chapter("42. Forged publications are rejected");
    let mut understated = totals.clone();
    let btc_index = proof.params.asset_index("BTC").context("BTC in the tree")?;
    understated[btc_index] -= 1;
    let refused = verified.check_totals(&proof.params, &understated).err().context("understated totals refused")?;
    println!("   Totals understated by one satoshi: {refused}.");
    let mut dropped = proof.clone();
    if let Some(b) = dropped.balances.iter_mut().find(|b| usize::from(b.0) == btc_index) {
        b.1 -= 1;
    }
    let refused = dropped.verify(&published_root).err().context("a changed balance refused")?;
    ensure!(matches!(refused, Failure::RootMismatch { .. }), "{refused}");
    println!("   The customer's balance shown one satoshi lower than the ledger's: {refused}.");
    let mut stale = bytes.clone();
    let at = stale.len() - 40;
    stale[at] ^= 1;
    let refused = match Proof::decode(&stale) {
        Ok(p) => p.verify(&published_root).err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    println!("   One byte of a sibling's sum changed: {}.", refused.context("a changed byte refused")?);
    let response = http.http.get(format!("{}/v1/reserves/demo-1/leaves", http.base)).bearer_auth(root).send().await?;
    ensure!(response.status().is_success(), "the leaf file: {}", response.status());
    let leaves = response.bytes().await?.to_vec();
    let file = LeafFile::decode(&leaves).map_err(|e| anyhow!("{e}"))?;
    let recomputed = file.recompute().map_err(|e| anyhow!("{e}"))?;
    ensure!(recomputed.root == published_root && recomputed.totals == totals, "the leaf file recomputes the root");
    println!(
        "   An auditor's leaf file ({} bytes, {} customer(s) under salted commitments, the rest padding) recomputes the",
        leaves.len(),
        recomputed.users
    );
    println!("   published root and every total; a leaf file listing one user twice would be refused.");
    private_form(http, root, &handle, amount).await
}

/// Chapter 43: the private form through the service.
async fn private_form(http: &Http, root: &str, handle: &str, amount: u128) -> anyhow::Result<()> {
    use rampart_verify::private::PrivateProof;
    use rampart_verify::publication::PrivatePublication;
    chapter("43. The private form: no proof shows another customer's balance");
    let body = json!({"name": "demo-private", "form": "private"});
    let started = std::time::Instant::now();
    let (status, publication) = http.call(reqwest::Method::POST, "/v1/reserves", Some(root), Some(&body)).await;
    ensure!(status == 201, "a private snapshot: {status} {publication}");
    let built_ms = started.elapsed().as_millis();
    let response = http.http.get(format!("{}/v1/reserves/demo-private/publication", http.base)).send().await?;
    ensure!(response.status().is_success(), "the publication: {}", response.status());
    let bytes = response.bytes().await?.to_vec();
    let published = PrivatePublication::decode(&bytes).map_err(|e| anyhow!("{e}"))?;
    let published_root = hex32(&publication["root"])?;
    let started = std::time::Instant::now();
    let checked = published.verify(&published_root).map_err(|e| anyhow!("the publication: {e}"))?;
    println!(
        "   Snapshot demo-private ({built_ms} ms): every node commits to its balances with Pedersen commitments; the"
    );
    let top = published.top_commitments.len();
    let what = if top == 0 {
        "the totals and their blindings; with so few customers no node is published, every level is proved".to_owned()
    } else {
        let levels = published.params.height - published.proven_levels;
        format!("the totals, their blindings, the top {levels} levels' {top} node commitments and their range proofs")
    };
    println!(
        "   publication ({} bytes: {what}) is checked once by anyone ({} ms).",
        bytes.len(),
        started.elapsed().as_millis()
    );
    let (status, view) =
        http.call(reqwest::Method::GET, &format!("/v1/reserves/demo-private/proofs/{handle}"), Some(root), None).await;
    ensure!(status == 200, "a private proof: {status} {view}");
    let proof_bytes = hex::decode(view["proof"].as_str().context("a proof")?)?;
    let proof = PrivateProof::decode(&proof_bytes).map_err(|e| anyhow!("{e}"))?;
    let started = std::time::Instant::now();
    proof.verify(&checked).map_err(|e| anyhow!("the private proof does not verify: {e}"))?;
    ensure!(proof.balances.iter().any(|b| u128::from(b.1) == amount), "their own balance");
    println!(
        "   Customer {}…'s proof ({} bytes) shows their {amount} sat and, for every other node on the path, only a",
        &handle[..8],
        proof_bytes.len()
    );
    println!(
        "   commitment and a range proof that it hides a non-negative amount: verified in {} ms. The service offers no",
        started.elapsed().as_millis()
    );
    let (status, refused) = http.call(reqwest::Method::GET, "/v1/reserves/demo-private/leaves", Some(root), None).await;
    ensure!(status == 409, "no leaf file for a private snapshot: {status} {refused}");
    println!("   leaf file for it ({status} {}): that file would show every balance.", refused["error"]["code"]);
    Ok(())
}
