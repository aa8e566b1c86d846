//! Custody in the service: the hot wallet (one BIP-86 key per asset, encrypted under the data key, so it cannot sign
//! while the service is sealed), customers' deposit addresses, the chain watcher (deposits credited after the
//! asset's confirmations, exactly once, and reversed when a reorganisation removes them), the sweeper that keeps the
//! cold share at or above its floor, refills from cold signed by a quorum of custodians, and the ledger accounts that
//! mirror what each wallet holds on chain.
//!
//! Exactly once across restarts and reorganisations: every ledger transfer the watcher or the sweeper posts has an
//! id derived from what it records (asset, txid, output, purpose), so a repeat after a crash answers `exists`; the
//! deposit's state changes after the transfer is recorded, and a disconnected block reverses any credit the ledger
//! holds whatever the deposit's state says.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount as Sats, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use rampart_audit::Outcome;
use rampart_chain::{Chain, ChainError, DevChainNode};
use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_crypto::Keyring;
use rampart_custody::hotkey::{DEPOSIT_BRANCH, HOT_BRANCH, HotKey, WatchOnly};
use rampart_custody::policy::{self, RebalancePolicy};
use rampart_ledger::{AccountFlags, CreateTransferResult, NewAccount, NewTransfer, TransferFlags};
use rampart_store::{BlockFindings, ChainDeposit, CustodyTx, Utxo, WalletRecord};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::compliance::AddressVerdict;
use crate::customer_api::customer_ledger_account;
use crate::error::ApiError;

/// The ledger code of custody accounts (what the exchange holds, per wallet).
pub const CUSTODY_ACCOUNT_CODE: u16 = 10;
/// Transfer codes.
const DEPOSIT_CODE: u16 = 10;
const DEPOSIT_REVERSAL_CODE: u16 = 11;
const SWEEP_CODE: u16 = 12;
const REFILL_CODE: u16 = 13;
const NETWORK_FEE_CODE: u16 = 14;

/// How custody runs for one asset.
#[derive(Debug, Clone)]
pub struct CustodyConfig {
    /// The asset (Bitcoin: `BTC`).
    pub asset: String,
    /// Hot/cold rebalancing.
    pub policy: RebalancePolicy,
    /// Distinct treasury custodians who must approve a refill (the proposer excluded).
    pub refill_quorum: usize,
    /// How long a ceremony stays open.
    pub ceremony_ttl_s: u64,
    /// Deposits below this are recorded as dust and not credited.
    pub min_deposit_sat: u64,
    /// The first block the watcher reads on a new database.
    pub start_height: u64,
    /// How often the watcher and sweeper run.
    pub interval: Duration,
}

impl Default for CustodyConfig {
    fn default() -> CustodyConfig {
        CustodyConfig {
            asset: "BTC".into(),
            policy: RebalancePolicy::default(),
            refill_quorum: 2,
            ceremony_ttl_s: 3600,
            min_deposit_sat: 1_000,
            start_height: 1,
            interval: Duration::from_secs(2),
        }
    }
}

/// Custody's runtime: its configuration, the chain it follows and, in development, the built-in chain itself.
pub struct Custody {
    /// Configuration.
    pub config: CustodyConfig,
    /// The chain adapter.
    pub chain: Arc<dyn Chain>,
    /// The development chain, when that is the chain (mining, faucet and reorganisations for demos and tests).
    pub dev: Option<Arc<DevChainNode>>,
}

impl Custody {
    /// The network of the chain.
    pub fn network(&self) -> Network {
        self.chain.network()
    }
}

/// The first 16 bytes of SHA-256 over length-prefixed parts: ids derived from what they identify.
pub(crate) fn digest16(parts: &[&[u8]]) -> u128 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(u64::try_from(p.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(p);
    }
    u128::from_be_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

/// The ledger account mirroring one custody wallet of an asset: `deposit`, `hot`, `cold`, `fees` (network fees
/// paid) or `reorg_loss` (deposits reversed after the customer had spent them).
pub fn custody_ledger_account(asset: &str, kind: &str) -> AccountId {
    AccountId(digest16(&[b"rampart.custody_account.v1", asset.as_bytes(), kind.as_bytes()]))
}

fn transfer_id(purpose: &str, asset: &str, txid: &[u8], vout: u32) -> TransferId {
    TransferId(digest16(&[
        b"rampart.custody_transfer.v1",
        purpose.as_bytes(),
        asset.as_bytes(),
        txid,
        &vout.to_be_bytes(),
    ]))
}

fn asset_code(asset: &str) -> Result<AssetCode, ApiError> {
    asset.parse().map_err(|_| ApiError::bad_request("unknown_asset", format!("asset {asset:?} is not valid")))
}

/// Creates the custody ledger accounts of an asset (idempotent).
pub async fn ensure_custody_accounts(state: &AppState, asset: &str) -> Result<(), ApiError> {
    let code = asset_code(asset)?;
    let accounts: Vec<NewAccount> = ["deposit", "hot", "cold", "fees", "reorg_loss"]
        .iter()
        .map(|kind| NewAccount {
            id: custody_ledger_account(asset, kind),
            asset: code,
            code: CUSTODY_ACCOUNT_CODE,
            flags: AccountFlags::default(),
            user_data: 0,
        })
        .collect();
    state.store().create_accounts(&accounts, state.now_ns()).await?;
    Ok(())
}

fn transfer(
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    amount: u64,
    asset: AssetCode,
    code: u16,
) -> NewTransfer {
    NewTransfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: Amount::new(u128::from(amount)),
        pending_id: None,
        asset,
        code,
        flags: TransferFlags::default(),
        timeout_s: 0,
        user_data: 0,
    }
}

fn hot_key_aad(asset: &str) -> Vec<u8> {
    format!("custody:{asset}:hot_key").into_bytes()
}

/// An unexpected failure: logged here, answered as an opaque 500.
pub(crate) fn internal_error(what: impl std::fmt::Display) -> ApiError {
    internal(what)
}

fn internal(what: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %what, "custody");
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred")
}

pub(crate) fn chain_error(e: ChainError) -> ApiError {
    match e {
        ChainError::Rejected(reason) => {
            ApiError::new(axum::http::StatusCode::CONFLICT, "rejected_by_chain", format!("the chain refused: {reason}"))
        }
        other => ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "chain_unavailable", other.to_string()),
    }
}

/// The hot wallet of the custody asset, created on first use (audited): a fresh BIP-86 key encrypted under the data
/// key with the wallet's identity as associated data.
pub async fn ensure_hot_wallet(state: &AppState, custody: &Custody) -> Result<WalletRecord, ApiError> {
    let asset = &custody.config.asset;
    if let Some(w) = state.store().active_wallet(asset, "hot").await? {
        return Ok(w);
    }
    let keyring = state.keyring()?;
    let key = HotKey::generate(custody.network());
    let xpub = key.account_xpub();
    let watch = WatchOnly::parse(&xpub, custody.network()).map_err(internal)?;
    let script = watch.script(HOT_BRANCH, 0).map_err(internal)?;
    let sealed = keyring.encrypt(&key.to_bytes(), &hot_key_aad(asset));
    let mut record = state.record("system", "custody.wallet.hot_created", &format!("asset:{asset}"), Outcome::Success);
    record.details.insert("account_xpub".into(), xpub.clone());
    state
        .store()
        .create_hot_wallet(
            asset,
            script.as_bytes(),
            &sealed,
            &xpub,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?;
    ensure_custody_accounts(state, asset).await?;
    state.store().active_wallet(asset, "hot").await?.ok_or_else(|| internal("the hot wallet vanished"))
}

/// The hot wallet's key, opened with the data key: impossible while sealed.
pub(crate) fn open_hot_key(keyring: &Keyring, wallet: &WalletRecord) -> Result<HotKey, ApiError> {
    let sealed = wallet.hot_key.as_deref().ok_or_else(|| internal("a hot wallet without a key"))?;
    let bytes = keyring.decrypt(sealed, &hot_key_aad(&wallet.asset)).map_err(internal)?;
    HotKey::from_bytes(&bytes).map_err(internal)
}

/// The watch-only view of the hot wallet's account (deposit and hot addresses).
pub fn watch_only(custody: &Custody, wallet: &WalletRecord) -> Result<WatchOnly, ApiError> {
    let xpub = wallet.account_xpub.as_deref().ok_or_else(|| internal("a hot wallet without an xpub"))?;
    WatchOnly::parse(xpub, custody.network()).map_err(internal)
}

/// A deposit address for a customer: their newest one if `fresh` is false and it exists, else a new one at the next
/// index of the asset.
pub async fn deposit_address(
    state: &AppState,
    custody: &Custody,
    customer_id: i64,
    fresh: bool,
) -> Result<rampart_store::DepositAddress, ApiError> {
    let asset = &custody.config.asset;
    if !fresh && let Some(a) = state.store().latest_deposit_address(customer_id, asset).await? {
        return Ok(a);
    }
    let wallet = ensure_hot_wallet(state, custody).await?;
    let watch = watch_only(custody, &wallet)?;
    let derive = |index: u32| -> Result<(Vec<u8>, String), rampart_store::StoreError> {
        let address = watch
            .address(DEPOSIT_BRANCH, index)
            .map_err(|e| rampart_store::StoreError::Corrupt(format!("deriving a deposit address: {e}")))?;
        Ok((address.script_pubkey().to_bytes(), address.to_string()))
    };
    Ok(state.store().create_deposit_address(customer_id, asset, &derive, state.now_ns()).await?)
}

/// What one pass of the watcher did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Blocks connected.
    pub connected: u64,
    /// Blocks disconnected (reorganisation).
    pub disconnected: u64,
    /// Deposits credited.
    pub credited: u64,
    /// Deposits reversed.
    pub reversed: u64,
    /// Deposits held for compliance: funded from a listed address.
    pub held: u64,
}

/// What a script pays to, for the watcher.
#[derive(Clone)]
struct Watched {
    wallet: &'static str,
    path: Option<(u32, u32)>,
    deposit: Option<(i64, i64)>,
}

async fn watched_scripts(state: &AppState, custody: &Custody) -> Result<HashMap<Vec<u8>, Watched>, ApiError> {
    let asset = &custody.config.asset;
    let mut map = HashMap::new();
    for (address_id, customer_id, index, script) in state.store().deposit_scripts(asset).await? {
        map.insert(
            script,
            Watched {
                wallet: "deposit",
                path: Some((DEPOSIT_BRANCH, index)),
                deposit: Some((address_id, customer_id)),
            },
        );
    }
    if let Some(hot) = state.store().active_wallet(asset, "hot").await? {
        map.insert(hot.script_pubkey.clone(), Watched { wallet: "hot", path: Some((HOT_BRANCH, 0)), deposit: None });
    }
    if let Some(cold) = state.store().active_wallet(asset, "cold").await? {
        map.insert(cold.script_pubkey.clone(), Watched { wallet: "cold", path: None, deposit: None });
    }
    Ok(map)
}

/// One pass of the chain watcher: undo blocks the chain no longer has, record new ones, credit deposits that have
/// enough confirmations. Does nothing while sealed (it needs the audit key).
pub async fn watch_once(state: &AppState, custody: &Custody) -> Result<WatchReport, ApiError> {
    const BLOCKS_PER_PASS_MAX: u64 = 500;
    let keyring = state.keyring()?;
    let asset = custody.config.asset.clone();
    let code = asset_code(&asset)?;
    let mut report = WatchReport::default();

    // Reorganisation: walk back from our tip while the chain disagrees.
    while let Some((height, hash)) = state.store().seen_tip(&asset).await? {
        let theirs = custody.chain.block_hash(height).await.map_err(chain_error)?;
        if theirs.is_some_and(|h| h.to_byte_array().as_slice() == hash.as_slice()) {
            break;
        }
        disconnect(state, custody, &keyring, code, height, &hash).await?;
        report.disconnected += 1;
    }

    let (tip, _) = custody.chain.tip().await.map_err(chain_error)?;
    let next = state.store().seen_tip(&asset).await?.map_or(custody.config.start_height, |(h, _)| h + 1);
    if next <= tip {
        let watched = watched_scripts(state, custody).await?;
        let mut ours: HashSet<(Vec<u8>, u32)> = state.store().unspent_outpoints(&asset).await?.into_iter().collect();
        for height in next..=tip.min(next + BLOCKS_PER_PASS_MAX - 1) {
            let Some(hash) = custody.chain.block_hash(height).await.map_err(chain_error)? else { break };
            let block = custody.chain.block(&hash).await.map_err(chain_error)?;
            let mut found = scan(&block, &watched, &mut ours);
            found.sources = funding_addresses(custody, &block, &found).await?;
            if !state.store().connect_block(&asset, height, hash.as_byte_array(), &found, state.now_ns()).await? {
                break;
            }
            report.connected += 1;
        }
    }

    // Credit what has enough confirmations: confirmations = tip − height + 1.
    let needed = u64::from(state.assets().lookup(&asset).map(|a| a.confirmations).unwrap_or(1).max(1));
    if let Some((seen, _)) = state.store().seen_tip(&asset).await?
        && seen + 1 >= needed
    {
        for deposit in state.store().creditable_deposits(&asset, seen + 1 - needed).await? {
            match credit(state, custody, &keyring, code, &deposit).await? {
                Credit::Credited => report.credited += 1,
                Credit::Held => report.held += 1,
                Credit::Nothing => {}
            }
        }
    }
    Ok(report)
}

fn scan(
    block: &bitcoin::Block,
    watched: &HashMap<Vec<u8>, Watched>,
    ours: &mut HashSet<(Vec<u8>, u32)>,
) -> BlockFindings {
    let mut found = BlockFindings::default();
    for tx in &block.txdata {
        let txid = tx.compute_txid().to_byte_array().to_vec();
        let mut spends_ours = false;
        for input in &tx.input {
            let key = (input.previous_output.txid.to_byte_array().to_vec(), input.previous_output.vout);
            if ours.remove(&key) {
                found.spends.push((key.0, key.1, txid.clone()));
                spends_ours = true;
            }
        }
        if spends_ours {
            found.txids.push(txid.clone());
        }
        for (vout, output) in tx.output.iter().enumerate() {
            let Some(w) = watched.get(output.script_pubkey.as_bytes()) else { continue };
            let vout = u32::try_from(vout).unwrap_or(u32::MAX);
            let value = output.value.to_sat();
            found.outputs.push(Utxo {
                txid: txid.clone(),
                vout,
                wallet: w.wallet.to_owned(),
                path: w.path,
                script_pubkey: output.script_pubkey.to_bytes(),
                value,
                height: 0,
                spent_by: None,
            });
            ours.insert((txid.clone(), vout));
            if let Some((address_id, customer_id)) = w.deposit {
                found.deposits.push(ChainDeposit {
                    txid: txid.clone(),
                    vout,
                    address_id,
                    customer_id,
                    amount: value,
                    height: 0,
                    state: "pending".into(),
                });
            }
        }
    }
    found
}

/// The addresses that funded the block's deposit transactions: (txid, address), each once. An input whose funding
/// output the chain cannot find is logged (its source goes unscreened); one that creates coins has no source.
async fn funding_addresses(
    custody: &Custody,
    block: &bitcoin::Block,
    found: &BlockFindings,
) -> Result<Vec<(Vec<u8>, String)>, ApiError> {
    let deposit_txids: HashSet<&[u8]> = found.deposits.iter().map(|d| d.txid.as_slice()).collect();
    let mut sources = Vec::new();
    for tx in &block.txdata {
        let txid = tx.compute_txid();
        if tx.is_coinbase() || !deposit_txids.contains(txid.as_byte_array().as_slice()) {
            continue;
        }
        let spent = custody.chain.previous_outputs(tx).await.map_err(chain_error)?;
        let mut addresses: Vec<String> = Vec::new();
        for (input, output) in tx.input.iter().zip(&spent) {
            match output {
                Some(output) => match bitcoin::Address::from_script(&output.script_pubkey, custody.chain.network()) {
                    Ok(address) if !addresses.contains(&address.to_string()) => addresses.push(address.to_string()),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::warn!(%txid, input = %input.previous_output, "a deposit's funding output has no \
                         address form (bare multisig, pay-to-public-key, ...): that source is not screened")
                    }
                },
                None if input.previous_output.is_null() => {}
                None => {
                    tracing::warn!(%txid, input = %input.previous_output, "a deposit's funding output is unknown to \
                     the chain (a node without -txindex?): that source is not screened")
                }
            }
        }
        sources.extend(addresses.into_iter().map(|a| (txid.to_byte_array().to_vec(), a)));
    }
    Ok(sources)
}

/// What happened to a deposit the watcher tried to credit.
enum Credit {
    Credited,
    /// Funded from a listed address: held for compliance.
    Held,
    /// Nothing (dust, or another pass settled it first).
    Nothing,
}

/// The worst listing of the addresses that funded `deposit`, if any is listed.
async fn listed_source(
    state: &AppState,
    asset: &str,
    deposit: &ChainDeposit,
) -> Result<Option<(String, rampart_compliance::Listing)>, ApiError> {
    let mut worst: Option<(String, rampart_compliance::Listing)> = None;
    for address in state.store().deposit_sources(asset, &deposit.txid).await? {
        let listing = match state.compliance().screen_address(&address) {
            AddressVerdict::Clear => continue,
            AddressVerdict::Review(l) | AddressVerdict::Refuse(l) => l,
        };
        if worst.as_ref().is_none_or(|(_, w)| listing.category > w.category) {
            worst = Some((address, listing));
        }
    }
    Ok(worst)
}

/// Holds a deposit funded from a listed address and opens (or notes on) the customer's deposit case; the customer
/// sees the deposit `held`, never which list.
async fn hold(
    state: &AppState,
    keyring: &Keyring,
    asset: &str,
    deposit: &ChainDeposit,
    target: &str,
    (address, listing): (String, rampart_compliance::Listing),
) -> Result<bool, ApiError> {
    let category = format!("{:?}", listing.category).to_lowercase();
    let details = serde_json::json!({"deposit": target, "amount_sat": deposit.amount, "address": address,
        "asset": asset, "source": listing.source, "category": category, "reason": listing.reason,
        "direction": "deposit"})
    .to_string();
    let mut record = state.record("system", "compliance.deposit.held", target, Outcome::Denied);
    record.details.insert("customer".into(), deposit.customer_id.to_string());
    record.details.insert("amount_sat".into(), deposit.amount.to_string());
    record.details.insert("address".into(), address.clone());
    record.details.insert("source".into(), listing.source.clone());
    let new = rampart_store::NewCase {
        customer_id: deposit.customer_id,
        kind: rampart_store::DEPOSIT_HOLD,
        outcome: "hold",
        details: &details,
    };
    let note = format!(
        "another deposit held: {target}, {} sat from {address} ({category}, {})",
        deposit.amount, listing.source
    );
    let held = state
        .store()
        .hold_deposit(
            asset,
            &deposit.txid,
            deposit.vout,
            new,
            &note,
            state.now_ns(),
            &state.auditor(keyring),
            vec![record],
        )
        .await?;
    Ok(held.is_some())
}

async fn credit(
    state: &AppState,
    custody: &Custody,
    keyring: &Keyring,
    code: AssetCode,
    deposit: &ChainDeposit,
) -> Result<Credit, ApiError> {
    let asset = &custody.config.asset;
    let target = format!(
        "deposit:{}:{}",
        Txid::from_slice(&deposit.txid).map(|t| t.to_string()).unwrap_or_default(),
        deposit.vout
    );
    let mut record = state.record("system", "custody.deposit.credited", &target, Outcome::Success);
    record.details.insert("customer".into(), deposit.customer_id.to_string());
    record.details.insert("amount_sat".into(), deposit.amount.to_string());
    record.details.insert("height".into(), deposit.height.to_string());
    if deposit.amount < custody.config.min_deposit_sat {
        record.action = "custody.deposit.dust".into();
        state
            .store()
            .settle_deposit(
                asset,
                &deposit.txid,
                deposit.vout,
                "dust",
                state.now_ns(),
                &state.auditor(keyring),
                vec![record],
            )
            .await?;
        return Ok(Credit::Nothing);
    }
    // A pending deposit's sources are screened against the lists in force now (dust, never credited, is not: sending
    // dust from a listed address must not open cases at will); one compliance released is not, nor one whose credit
    // an earlier pass posted before it could mark it (the ledger decides, as on a reorganisation).
    let credit_id = transfer_id("credit", asset, &deposit.txid, deposit.vout);
    if deposit.state == "pending"
        && state.store().transfer(credit_id).await?.is_none()
        && let Some(listed) = listed_source(state, asset, deposit).await?
    {
        let held = hold(state, keyring, asset, deposit, &target, listed).await?;
        return Ok(if held { Credit::Held } else { Credit::Nothing });
    }
    let credit = transfer(
        credit_id,
        custody_ledger_account(asset, "deposit"),
        customer_ledger_account(deposit.customer_id, asset),
        deposit.amount,
        code,
        DEPOSIT_CODE,
    );
    let result = state.store().create_transfers(&[credit], state.now_ns()).await?;
    if !result.first().is_some_and(|r| r.is_recorded()) {
        return Err(internal(format!("crediting a deposit: {result:?}")));
    }
    let settled = state
        .store()
        .settle_deposit(
            asset,
            &deposit.txid,
            deposit.vout,
            "credited",
            state.now_ns(),
            &state.auditor(keyring),
            vec![record],
        )
        .await?;
    if settled {
        // The deposit teaches the customer's profile its amounts; a rule may hold or freeze on it. A failure to score
        // must not undo the credit, which is final: it is logged and the watcher goes on.
        if let Err(e) =
            crate::risk::assess_deposit(state, deposit.customer_id, asset, u128::from(deposit.amount), None).await
        {
            tracing::warn!(error = %e.message(), "scoring a deposit failed");
        }
    }
    Ok(if settled { Credit::Credited } else { Credit::Nothing })
}

async fn disconnect(
    state: &AppState,
    custody: &Custody,
    keyring: &Keyring,
    code: AssetCode,
    height: u64,
    hash: &[u8],
) -> Result<(), ApiError> {
    /// A customer who spent a deposit that a reorganisation then removed may not withdraw for this long.
    const SHORTFALL_LOCK_NS: u64 = 365 * 24 * 3600 * 1_000_000_000;
    let asset = &custody.config.asset;
    let mut records = Vec::new();
    let mut block = state.record("system", "custody.chain.reorganised", &format!("block:{height}"), Outcome::Success);
    block.details.insert("height".into(), height.to_string());
    block
        .details
        .insert("hash".into(), bitcoin::BlockHash::from_slice(hash).map(|h| h.to_string()).unwrap_or_default());
    records.push(block);
    let mut reversed = Vec::new();
    for deposit in state.store().deposits_at(asset, height).await? {
        let credit_id = transfer_id("credit", asset, &deposit.txid, deposit.vout);
        // Whatever the deposit's state says, the ledger decides whether it was credited (a crash may have come
        // between the transfer and the state change).
        if state.store().transfer(credit_id).await?.is_none() {
            continue;
        }
        let reversal = transfer(
            transfer_id("reverse", asset, &deposit.txid, deposit.vout),
            customer_ledger_account(deposit.customer_id, asset),
            custody_ledger_account(asset, "deposit"),
            deposit.amount,
            code,
            DEPOSIT_REVERSAL_CODE,
        );
        let result = state.store().create_transfers(&[reversal], state.now_ns()).await?;
        let target = format!(
            "deposit:{}:{}",
            Txid::from_slice(&deposit.txid).map(|t| t.to_string()).unwrap_or_default(),
            deposit.vout
        );
        let mut record = state.record("system", "custody.deposit.reversed", &target, Outcome::Success);
        record.details.insert("customer".into(), deposit.customer_id.to_string());
        record.details.insert("amount_sat".into(), deposit.amount.to_string());
        match result.first() {
            Some(r) if r.is_recorded() => {}
            Some(CreateTransferResult::ExceedsCredits) => {
                // The customer already spent it: the exchange carries the loss and the customer's withdrawals stop
                // until someone has looked.
                let loss = transfer(
                    transfer_id("reverse_loss", asset, &deposit.txid, deposit.vout),
                    custody_ledger_account(asset, "reorg_loss"),
                    custody_ledger_account(asset, "deposit"),
                    deposit.amount,
                    code,
                    DEPOSIT_REVERSAL_CODE,
                );
                let result = state.store().create_transfers(&[loss], state.now_ns()).await?;
                if !result.first().is_some_and(|r| r.is_recorded()) {
                    return Err(internal(format!("recording a reorganisation loss: {result:?}")));
                }
                state
                    .store()
                    .lock_customer_withdrawals(
                        deposit.customer_id,
                        state.now_ns().saturating_add(SHORTFALL_LOCK_NS),
                        "deposit_reversed",
                    )
                    .await?;
                record.details.insert("shortfall".into(), "true".into());
            }
            other => return Err(internal(format!("reversing a deposit: {other:?}"))),
        }
        records.push(record);
        reversed.push((deposit.txid.clone(), deposit.vout));
    }
    let txids = state.store().txs_confirmed_at(asset, height).await?;
    state
        .store()
        .disconnect_block(asset, height, &reversed, &txids, state.now_ns(), &state.auditor(keyring), records)
        .await?;
    Ok(())
}

/// The virtual size of a key-path-only Taproot transaction, rounded up: 10.5 vB of overhead, 57.5 per input, 43 per
/// output.
pub(crate) fn estimated_vsize(inputs: usize, outputs: usize) -> u64 {
    let quarter = 42 + 230 * inputs as u64 + 172 * outputs as u64;
    quarter.div_ceil(4)
}

fn outpoint(u: &Utxo) -> Result<OutPoint, ApiError> {
    Ok(OutPoint { txid: Txid::from_slice(&u.txid).map_err(internal)?, vout: u.vout })
}

pub(crate) fn unsigned(inputs: &[Utxo], outputs: Vec<TxOut>) -> Result<Transaction, ApiError> {
    Ok(Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: inputs
            .iter()
            .map(|u| {
                Ok(TxIn {
                    previous_output: outpoint(u)?,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
            })
            .collect::<Result<_, ApiError>>()?,
        output: outputs,
    })
}

pub(crate) fn prevouts(inputs: &[Utxo]) -> Vec<TxOut> {
    inputs
        .iter()
        .map(|u| TxOut {
            value: Sats::from_sat(u.value),
            script_pubkey: ScriptBuf::from_bytes(u.script_pubkey.clone()),
        })
        .collect()
}

/// The dust limit of a Taproot output.
pub(crate) const DUST_SAT: u64 = 330;

/// What one sweeper pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// The sweep transaction broadcast, if any.
    pub swept: Option<Txid>,
    /// To cold, to hot, fee.
    pub to_cold: u64,
    /// To hot.
    pub to_hot: u64,
    /// Fee.
    pub fee: u64,
    /// A refill proposed from cold.
    pub refill_proposed: Option<u64>,
    /// Signed transactions broadcast (refills).
    pub broadcast: u64,
}

/// One pass of the sweeper: broadcast what is signed, then move deposits and hot surplus to cold (hot key) as the
/// policy says, and propose a refill when the hot wallet runs short. Needs the cold wallet; does nothing while
/// sealed.
pub async fn sweep_once(state: &AppState, custody: &Custody) -> Result<SweepReport, ApiError> {
    let keyring = state.keyring()?;
    let asset = custody.config.asset.clone();
    let mut report =
        SweepReport { broadcast: broadcast_signed(state, custody, &keyring).await?, ..SweepReport::default() };
    let Some(cold) = state.store().active_wallet(&asset, "cold").await? else { return Ok(report) };
    let hot = ensure_hot_wallet(state, custody).await?;
    let Some((seen, _)) = state.store().seen_tip(&asset).await? else { return Ok(report) };
    let needed = u64::from(state.assets().lookup(&asset).map(|a| a.confirmations).unwrap_or(1).max(1));
    let confirmed_at = (seen + 1).saturating_sub(needed);
    let deposits = state.store().spendable_utxos(&asset, "deposit", confirmed_at).await?;
    let hot_utxos = state.store().spendable_utxos(&asset, "hot", seen).await?;
    let b = state.store().custody_balances(&asset).await?;
    let balances = policy::Balances {
        cold: b.cold.0,
        hot: hot_utxos.iter().map(|u| u.value).sum(),
        deposit: deposits.iter().map(|u| u.value).sum(),
        in_flight_to_cold: b.in_flight_to_cold,
        in_flight_to_hot: b.in_flight_to_hot,
    };
    let plan = policy::plan(&balances, &custody.config.policy);
    if plan.sweeps() {
        let mut inputs: Vec<Utxo> = if plan.deposit_to_hot + plan.deposit_to_cold > 0 { deposits } else { Vec::new() };
        let deposit_in: u64 = inputs.iter().map(|u| u.value).sum();
        let mut hot_in = 0u64;
        for u in hot_utxos {
            if hot_in >= plan.hot_to_cold {
                break;
            }
            hot_in += u.value;
            inputs.push(u);
        }
        let to_cold = plan.deposit_to_cold + plan.hot_to_cold;
        let to_hot = (deposit_in + hot_in).saturating_sub(to_cold);
        let fee = state_fee(custody, inputs.len(), 2).await?;
        // The fee comes out of the cold output (the hot wallet keeps what the policy gave it) unless that is too small.
        let (to_cold, to_hot) = if to_cold >= fee + DUST_SAT {
            (to_cold - fee, to_hot)
        } else if to_hot >= fee + DUST_SAT {
            (to_cold, to_hot - fee)
        } else {
            return Ok(report);
        };
        let mut outputs = Vec::new();
        if to_cold >= DUST_SAT {
            outputs.push(TxOut {
                value: Sats::from_sat(to_cold),
                script_pubkey: ScriptBuf::from_bytes(cold.script_pubkey.clone()),
            });
        }
        if to_hot >= DUST_SAT {
            outputs.push(TxOut {
                value: Sats::from_sat(to_hot),
                script_pubkey: ScriptBuf::from_bytes(hot.script_pubkey.clone()),
            });
        }
        let paid: u64 = outputs.iter().map(|o| o.value.to_sat()).sum();
        let fee = deposit_in + hot_in - paid;
        let spent = prevouts(&inputs);
        let mut tx = unsigned(&inputs, outputs)?;
        let paths: Vec<(u32, u32)> = inputs.iter().map(|u| u.path.unwrap_or((HOT_BRANCH, 0))).collect();
        let key = open_hot_key(&keyring, &hot)?;
        key.sign_key_spends(&mut tx, &spent, &paths).map_err(internal)?;
        let txid = tx.compute_txid();
        let new = CustodyTx {
            id: 0,
            asset: asset.clone(),
            kind: "sweep".into(),
            txid: txid.to_byte_array().to_vec(),
            tx: serialize(&tx),
            prevouts: serialize(&spent),
            to_cold: if to_cold >= DUST_SAT { to_cold } else { 0 },
            to_hot: if to_hot >= DUST_SAT { to_hot } else { 0 },
            fee,
            state: "signed".into(),
            ceremony_id: None,
            failure: None,
        };
        let mut record = state.record("system", "custody.sweep.signed", &format!("tx:{txid}"), Outcome::Success);
        record.details.insert("to_cold_sat".into(), new.to_cold.to_string());
        record.details.insert("to_hot_sat".into(), new.to_hot.to_string());
        record.details.insert("fee_sat".into(), fee.to_string());
        record.details.insert("inputs".into(), inputs.len().to_string());
        let spends: Vec<(Vec<u8>, u32)> = inputs.iter().map(|u| (u.txid.clone(), u.vout)).collect();
        let Some(id) = state
            .store()
            .record_custody_tx(&new, &spends, state.now_ns(), &state.auditor(&keyring), vec![record])
            .await?
        else {
            return Ok(report);
        };
        if broadcast_one(state, custody, &keyring, id).await? {
            report.swept = Some(txid);
            report.to_cold = new.to_cold;
            report.to_hot = new.to_hot;
            report.fee = fee;
        }
    }
    if plan.refill_to_hot > 0
        && propose_refill_for(state, custody, plan.refill_to_hot, "the hot wallet is below its floor").await?
    {
        report.refill_proposed = Some(plan.refill_to_hot);
    }
    Ok(report)
}

/// Proposes a refill of `amount` from cold to hot, by the system, unless one is pending or approved already:
/// `true` if it proposed one.
pub(crate) async fn propose_refill_for(
    state: &AppState,
    custody: &Custody,
    amount: u64,
    reason: &str,
) -> Result<bool, ApiError> {
    let asset = &custody.config.asset;
    if amount == 0 {
        return Ok(false);
    }
    let open = state.store().refill_proposals(Some(asset)).await?;
    if open.iter().any(|p| p.state == "pending" || p.state == "approved") {
        return Ok(false);
    }
    let keyring = state.keyring()?;
    let mut record = state.record("system", "custody.refill.proposed", "-", Outcome::Success);
    record.details.insert("amount_sat".into(), amount.to_string());
    record.details.insert("reason".into(), reason.to_owned());
    state
        .store()
        .propose_refill(asset, amount, reason, "system", state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?;
    Ok(true)
}

async fn state_fee(custody: &Custody, inputs: usize, outputs: usize) -> Result<u64, ApiError> {
    let rate = custody.chain.fee_rate().await.map_err(chain_error)?.max(1);
    Ok(rate * estimated_vsize(inputs, outputs))
}

/// Broadcasts every signed transaction not yet sent; answers how many went out.
async fn broadcast_signed(state: &AppState, custody: &Custody, keyring: &Keyring) -> Result<u64, ApiError> {
    let mut sent = 0;
    for t in state.store().custody_txs(&custody.config.asset, &["signed"]).await? {
        if broadcast_one(state, custody, keyring, t.id).await? {
            sent += 1;
        }
    }
    Ok(sent)
}

/// Sends one signed custody transaction, then mirrors it in the ledger (transfers with ids derived from the txid,
/// so a repeat is harmless). A refusal by the chain fails it and releases its outputs; an unreachable chain leaves it
/// signed for the next pass.
pub(crate) async fn broadcast_one(
    state: &AppState,
    custody: &Custody,
    keyring: &Keyring,
    id: i64,
) -> Result<bool, ApiError> {
    let Some(t) = state.store().custody_tx(id).await? else { return Ok(false) };
    let tx: Transaction = deserialize(&t.tx).map_err(internal)?;
    let target = format!("tx:{}", tx.compute_txid());
    match custody.chain.broadcast(&tx).await {
        Ok(_) => {}
        Err(ChainError::Rejected(reason)) => {
            // A refused fee bump leaves the withdrawals with the transaction it was to replace, still in the mempool.
            if t.kind == "withdrawal" {
                let replaced = format!("replaced by {}", rampart_store::txid_text(&t.txid));
                let failed = state.store().custody_txs(&t.asset, &["failed"]).await?;
                if let Some(original) = failed.iter().find(|o| o.failure.as_deref() == Some(replaced.as_str())) {
                    let mut record =
                        state.record("system", "custody.withdrawal.replacement_refused", &target, Outcome::Failure);
                    record.details.insert("reason".into(), reason.clone());
                    state
                        .store()
                        .restore_replaced(
                            id,
                            original.id,
                            "broadcast",
                            &format!("the chain refused the replacement: {reason}"),
                            state.now_ns(),
                            &state.auditor(keyring),
                            vec![record],
                        )
                        .await?;
                    return Ok(false);
                }
            }
            let mut record = state.record("system", &format!("custody.{}.failed", t.kind), &target, Outcome::Failure);
            record.details.insert("reason".into(), reason.clone());
            state
                .store()
                .advance_custody_tx(
                    id,
                    "signed",
                    "failed",
                    None,
                    Some(&reason),
                    state.now_ns(),
                    &state.auditor(keyring),
                    vec![record],
                )
                .await?;
            return Ok(false);
        }
        Err(e) => {
            tracing::warn!(error = %e, "broadcasting a custody transaction; will retry");
            return Ok(false);
        }
    }
    // A withdrawal's transaction reaches the ledger when it confirms, by posting the withdrawals' holds.
    if t.kind != "withdrawal" {
        mirror_in_ledger(state, custody, &t).await?;
    }
    let record = state.record("system", &format!("custody.{}.broadcast", t.kind), &target, Outcome::Success);
    Ok(state
        .store()
        .advance_custody_tx(
            id,
            "signed",
            "broadcast",
            None,
            None,
            state.now_ns(),
            &state.auditor(keyring),
            vec![record],
        )
        .await?)
}

async fn mirror_in_ledger(state: &AppState, custody: &Custody, t: &CustodyTx) -> Result<(), ApiError> {
    let asset = &custody.config.asset;
    ensure_custody_accounts(state, asset).await?;
    let code = asset_code(asset)?;
    let account = |k: &str| custody_ledger_account(asset, k);
    let id = |purpose: &str| transfer_id(purpose, asset, &t.txid, 0);
    let mut batch = Vec::new();
    if t.kind == "sweep" {
        // Deposit inputs pass through the hot wallet: deposit → hot (all of them), hot → cold, hot → fees.
        let spent: Vec<TxOut> = deserialize(&t.prevouts).map_err(internal)?;
        let hot = state.store().active_wallet(asset, "hot").await?.map(|w| w.script_pubkey).unwrap_or_default();
        let deposit_in: u64 =
            spent.iter().filter(|o| o.script_pubkey.as_bytes() != hot.as_slice()).map(|o| o.value.to_sat()).sum();
        for (purpose, debit, credit, amount, code_) in [
            ("sweep_deposit", "hot", "deposit", deposit_in, SWEEP_CODE),
            ("sweep_cold", "cold", "hot", t.to_cold, SWEEP_CODE),
            ("sweep_fee", "fees", "hot", t.fee, NETWORK_FEE_CODE),
        ] {
            if amount > 0 {
                batch.push(transfer(id(purpose), account(debit), account(credit), amount, code, code_));
            }
        }
    } else {
        for (purpose, debit, credit, amount, code_) in [
            ("refill_hot", "hot", "cold", t.to_hot, REFILL_CODE),
            ("refill_fee", "fees", "cold", t.fee, NETWORK_FEE_CODE),
        ] {
            if amount > 0 {
                batch.push(transfer(id(purpose), account(debit), account(credit), amount, code, code_));
            }
        }
    }
    let results = state.store().create_transfers(&batch, state.now_ns()).await?;
    if let Some(bad) = results.iter().find(|r| !r.is_recorded()) {
        return Err(internal(format!("mirroring a custody transaction in the ledger: {bad:?}")));
    }
    Ok(())
}

/// Opens a signing session of the cold wallet's custodians (the wallet's members of its epoch) for `tx`, which pays
/// `subject` (`("refill", id)`, `("withdrawal", id)`: named in the session's parameters and in the audit record
/// `custody.sign.session_opened` by `actor`, with the txid). Answers the session's id.
pub(crate) async fn open_cold_signing_session(
    state: &AppState,
    custody: &Custody,
    cold: &rampart_store::WalletRecord,
    tx: &Transaction,
    subject: (&str, serde_json::Value),
    actor: &str,
) -> Result<i64, ApiError> {
    let (key, id) = subject;
    let detail = id.as_str().map(str::to_owned).unwrap_or_else(|| id.to_string());
    let mut params = serde_json::Map::new();
    params.insert(key.to_owned(), id);
    let details = vec![(key.to_owned(), detail), ("txid".to_owned(), tx.compute_txid().to_string())];
    open_cold_session(state, custody, cold, params, details, actor).await
}

/// Opens a signing session of the cold wallet's current members with `params` (plus the key's epoch), audited
/// with `details`; answers its id.
pub(crate) async fn open_cold_session(
    state: &AppState,
    custody: &Custody,
    cold: &rampart_store::WalletRecord,
    mut params: serde_json::Map<String, serde_json::Value>,
    details: Vec<(String, String)>,
    actor: &str,
) -> Result<i64, ApiError> {
    let keyring = state.keyring()?;
    let members = state.store().wallet_members(cold.id, cold.epoch).await?;
    let roster = serde_json::to_string(
        &members
            .iter()
            .map(|m| serde_json::json!({"identifier": m.identifier, "custodian_id": m.custodian_id}))
            .collect::<Vec<_>>(),
    )
    .map_err(internal)?;
    params.insert("epoch".into(), cold.epoch.into());
    let new = rampart_store::NewCeremony {
        kind: "sign".into(),
        asset: custody.config.asset.clone(),
        wallet_id: Some(cold.id),
        threshold: cold.threshold.unwrap_or(3),
        roster,
        params: serde_json::Value::Object(params).to_string(),
        created_by: actor.to_owned(),
        expires_at_ns: state.now_ns().saturating_add(custody.config.ceremony_ttl_s.saturating_mul(1_000_000_000)),
    };
    let mut record = state.record(actor, "custody.sign.session_opened", "-", Outcome::Success);
    for (k, v) in details {
        record.details.insert(k, v);
    }
    Ok(state.store().create_ceremony(&new, state.now_ns(), &state.auditor(&keyring), vec![record]).await?)
}

/// Builds the refill transaction of an approved proposal (cold coins to the hot wallet, change back to cold) and the
/// signing ceremony for the cold wallet's custodians; answers the ceremony's id.
pub async fn start_refill(
    state: &AppState,
    custody: &Custody,
    proposal: &rampart_store::RefillProposal,
    actor: &str,
) -> Result<i64, ApiError> {
    let keyring = state.keyring()?;
    let asset = &custody.config.asset;
    let cold = state.store().active_wallet(asset, "cold").await?.ok_or_else(|| {
        ApiError::new(axum::http::StatusCode::CONFLICT, "no_cold_wallet", "the asset has no cold wallet yet")
    })?;
    let hot = ensure_hot_wallet(state, custody).await?;
    let Some((seen, _)) = state.store().seen_tip(asset).await? else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "insufficient_cold_funds",
            "no confirmed cold coins",
        ));
    };
    let available = state.store().spendable_utxos(asset, "cold", seen).await?;
    let mut inputs = Vec::new();
    let mut total = 0u64;
    let mut fee = 0u64;
    for u in available {
        total += u.value;
        inputs.push(u);
        fee = state_fee(custody, inputs.len(), 2).await?;
        if total >= proposal.amount + fee {
            break;
        }
    }
    if total < proposal.amount + fee || proposal.amount < DUST_SAT {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "insufficient_cold_funds",
            format!(
                "the cold wallet holds {total} sat in confirmed coins; the refill needs {} sat",
                proposal.amount + fee
            ),
        ));
    }
    let mut outputs =
        vec![TxOut { value: Sats::from_sat(proposal.amount), script_pubkey: ScriptBuf::from_bytes(hot.script_pubkey) }];
    let change = total - proposal.amount - fee;
    if change >= DUST_SAT {
        outputs.push(TxOut {
            value: Sats::from_sat(change),
            script_pubkey: ScriptBuf::from_bytes(cold.script_pubkey.clone()),
        });
    }
    let fee = total - outputs.iter().map(|o| o.value.to_sat()).sum::<u64>();
    let spent = prevouts(&inputs);
    let tx = unsigned(&inputs, outputs)?;
    let ceremony = open_cold_signing_session(state, custody, &cold, &tx, ("refill", proposal.id.into()), actor).await?;
    let custody_tx = CustodyTx {
        id: 0,
        asset: asset.clone(),
        kind: "refill".into(),
        txid: tx.compute_txid().to_byte_array().to_vec(),
        tx: serialize(&tx),
        prevouts: serialize(&spent),
        // The change goes back to cold: in flight, it still counts as cold (the cap and the cold share read it).
        to_cold: total - proposal.amount - fee,
        to_hot: proposal.amount,
        fee,
        state: "signing".into(),
        ceremony_id: Some(ceremony),
        failure: None,
    };
    let mut record = state.record(actor, "custody.refill.built", &format!("refill:{}", proposal.id), Outcome::Success);
    record.details.insert("fee_sat".into(), fee.to_string());
    let spends: Vec<(Vec<u8>, u32)> = inputs.iter().map(|u| (u.txid.clone(), u.vout)).collect();
    if state
        .store()
        .record_custody_tx(&custody_tx, &spends, state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?
        .is_none()
    {
        let record = state.record(actor, "custody.sign.failed", &format!("ceremony:{ceremony}"), Outcome::Failure);
        state
            .store()
            .fail_ceremony(ceremony, "its coins are in use", state.now_ns(), &state.auditor(&keyring), vec![record])
            .await?;
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "coins_in_use",
            "the cold coins are being spent; try again",
        ));
    }
    state.store().attach_refill_ceremony(proposal.id, ceremony).await?;
    Ok(ceremony)
}

/// Runs the watcher and the sweeper every `interval` until `shutdown` resolves; also expires ceremonies. Errors are
/// logged and retried on the next tick; nothing happens while sealed.
pub async fn run_custody_worker(
    state: AppState,
    custody: Arc<Custody>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(custody.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if state.keyring().is_err() {
            continue;
        }
        if let Err(e) = custody_pass(&state, &custody).await {
            tracing::warn!(code = e.code(), message = e.message(), "custody pass failed; retrying on the next tick");
        }
    }
}

/// One pass of every custody job, in order: expire ceremonies, watch the chain, sweep.
pub async fn custody_pass(state: &AppState, custody: &Custody) -> Result<(WatchReport, SweepReport), ApiError> {
    for id in state.store().expire_ceremonies(state.now_ns()).await? {
        tracing::info!(ceremony = id, "a custody ceremony expired");
    }
    let watched = watch_once(state, custody).await?;
    let paid = crate::withdrawals::pass(state, custody).await?;
    if paid != crate::withdrawals::PassReport::default() {
        tracing::info!(?paid, "withdrawals");
    }
    let swept = sweep_once(state, custody).await?;
    Ok((watched, swept))
}

/// Decodes consensus bytes of a transaction and its spent outputs.
pub fn decode_tx(t: &CustodyTx) -> Result<(Transaction, Vec<TxOut>), ApiError> {
    let tx: Transaction = deserialize(&t.tx).map_err(internal)?;
    let spent: Vec<TxOut> = deserialize(&t.prevouts).map_err(internal)?;
    Ok((tx, spent))
}

/// The network of the custody chain.
pub(crate) fn network_of(state: &AppState) -> Result<Network, ApiError> {
    state.custody().map(Custody::network).ok_or_else(|| internal("custody is not configured"))
}

/// A custodian's identifier as a number (identifiers 1..=n serialise big-endian with the number in the last bytes).
pub(crate) fn identifier_number(id: &rampart_custody::frost::Identifier) -> u16 {
    let bytes = id.serialize();
    let n = bytes.len();
    if n >= 2 { u16::from_be_bytes([bytes[n - 2], bytes[n - 1]]) } else { 0 }
}

/// Broadcasts every signed custody transaction (after a signing session completes).
pub(crate) async fn broadcast_pending(state: &AppState, custody: &Custody, keyring: &Keyring) -> Result<u64, ApiError> {
    broadcast_signed(state, custody, keyring).await
}
