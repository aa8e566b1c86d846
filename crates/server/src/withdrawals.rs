//! Withdrawals, the service's side: the gates a request passes (whitelist, KYC limits, sanctions, risk, the
//! compliance review, the policy), the moves of the state machine with their audit entries, notifications and
//! ledger effects, and the worker pass that resumes interrupted requests, ends waits past their time limit, pays
//! approved withdrawals from the hot wallet (or queues them for a refill from cold storage), follows their
//! transactions to confirmation and posts the holds.
//!
//! Crash safety: every move is one database transaction that checks the state it moves from. A request is
//! recorded (with its hold) before any gate that can wait for people; one left in `requested` by a crash is screened
//! by the worker. A payment is recorded (signed transaction, reserved coins, withdrawals in `signing`) in one
//! transaction before it is broadcast; after a crash the same stored transaction is broadcast again, so nothing is
//! ever signed twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::{Address, Amount as Sats, ScriptBuf, Transaction, TxOut, Txid};
use rampart_audit::Outcome as AuditOutcome;
use rampart_compliance::kyc::{Level as KycLevel, OverLimit};
use rampart_core::{AccountId, Asset, AssetCode, TransferId};
use rampart_ledger::{NewTransfer, TransferFlags};
use rampart_notify::{Notification, mask_address};
use rampart_risk::Outcome as RiskOutcome;
use rampart_store::{Advanced, Changes, CustodyTx, Effects, NewWithdrawal, Payment, Requested, WithdrawalRecord};
use rampart_withdrawal::policy::Destination;
use rampart_withdrawal::{Decision, Facts, Initiator, Policy, PolicyApproved, State};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::custody::{self, Custody};
use crate::error::ApiError;
use crate::group::{Batch, GroupCommit};
use crate::identity::notice;

/// The ledger code of a withdrawal's hold and its posting.
pub const WITHDRAWAL_CODE: u16 = 20;
/// The ledger code of the part of a network fee the exchange pays when it exceeds what was held.
const FEE_EXCESS_CODE: u16 = 14;
/// Nanoseconds in a second.
const NS: u64 = 1_000_000_000;

/// How withdrawals run.
#[derive(Debug, Clone)]
pub struct WithdrawalsConfig {
    /// Micro-dollars per whole unit of each asset: the price table for limits, the policy and the Travel Rule (no
    /// price feed is fetched).
    pub usd_micro_per_unit: BTreeMap<String, u64>,
    /// The smallest withdrawal per asset, in its smallest unit.
    pub min_amount: BTreeMap<String, u128>,
    /// The network fee held with each withdrawal per asset (the most a customer pays), in its smallest unit.
    pub fee_held: BTreeMap<String, u128>,
    /// How long a new whitelist address waits after its confirmation before it can be used.
    pub cooling_off_s: u64,
    /// How long a withdrawal may wait for approvals or review before it expires.
    pub approval_ttl_s: u64,
    /// The default policy's threshold for a large withdrawal, in whole dollars.
    pub large_usd: u64,
    /// The default policy's number of approvals for a large withdrawal.
    pub large_approvals: u8,
    /// A withdrawal left in `requested` this long (a crash between recording and screening) is screened by the
    /// worker.
    pub resume_after_s: u64,
    /// A broadcast transaction unconfirmed this long is broadcast again.
    pub rebroadcast_after_s: u64,
    /// The most withdrawals one transaction pays.
    pub batch_max: usize,
}

impl Default for WithdrawalsConfig {
    fn default() -> WithdrawalsConfig {
        WithdrawalsConfig {
            usd_micro_per_unit: BTreeMap::from([("BTC".to_owned(), 90_000 * 1_000_000)]),
            min_amount: BTreeMap::from([("BTC".to_owned(), 10_000)]),
            fee_held: BTreeMap::from([("BTC".to_owned(), 20_000)]),
            cooling_off_s: 24 * 3600,
            approval_ttl_s: 24 * 3600,
            large_usd: 50_000,
            large_approvals: 3,
            resume_after_s: 30,
            rebroadcast_after_s: 600,
            batch_max: 100,
        }
    }
}

/// The staff group that every holder of the `withdrawal_approve` permission belongs to (besides their roles).
pub const APPROVER_GROUP: &str = "withdrawal_approver";

/// The runtime: configuration and the policy in force.
pub struct Withdrawals {
    /// Configuration.
    pub config: WithdrawalsConfig,
    policy: RwLock<Arc<Policy>>,
    /// Whether this process has made sure the custody ledger accounts exist (once is enough: they are never removed).
    accounts_ready: std::sync::atomic::AtomicBool,
    /// Requests waiting to be recorded together.
    recorder: GroupCommit<Recording>,
    /// The gates' reads, grouped.
    positions: GroupCommit<Positions>,
    /// Clearing accounts known to exist (ledger accounts are never removed): a customer's later requests need not
    /// create theirs.
    clearing_made: Mutex<HashSet<AccountId>>,
}

/// Clearing accounts remembered at most; past it, the memory starts again empty.
const CLEARING_KNOWN_MAX: usize = 1_000_000;

/// Recording withdrawal requests, in groups: each transaction records every request queued meanwhile (one per
/// customer, so that each is checked against that customer's earlier ones).
pub(crate) struct Recording;

impl Batch for Recording {
    type Item = NewWithdrawal;
    type Out = Requested<OverLimit>;
    const MAX: usize = 256;
    const NAME: &'static str = "withdrawal_requests";
    // One transaction at a time: with two (they would lock disjoint customers and meet only at the audit chain's
    // head), the second took whatever had arrived since the first began, groups of one or two whose fixed costs
    // (round trips, commit) spent a quarter more CPU a request; even held back until eight waited (tried), they
    // cost more than they overlapped.
    const WRITERS: usize = 1;
    const OWN_THREAD: bool = true;

    fn queue(state: &AppState) -> &GroupCommit<Recording> {
        &state.withdrawals().recorder
    }

    fn key(item: &NewWithdrawal) -> Option<i64> {
        Some(item.customer_id)
    }

    async fn write(state: &AppState, items: Vec<NewWithdrawal>) -> Result<Vec<Requested<OverLimit>>, ApiError> {
        let now = state.now_ns();
        let (day_start, month_start) = start_of_day_and_month(now);
        let limits = state.compliance().config().kyc_limits;
        let keyring = state.keyring()?;
        let check = |new: &NewWithdrawal, p: rampart_store::Position| {
            let level = KycLevel::from_number(p.kyc_level).unwrap_or(KycLevel::Zero);
            limits.check(level, p.today_usd_micro, p.month_usd_micro, new.usd_micro)
        };
        Ok(state
            .writer_store()
            .request_withdrawals(items, day_start, month_start, check, now, &state.auditor(&keyring))
            .await?)
    }
}

/// Reading what the gates of new withdrawals need to know, in groups: concurrent requests read their positions in
/// one statement.
pub(crate) struct Positions;

impl Batch for Positions {
    type Item = rampart_store::PositionAsk;
    type Out = Option<rampart_store::GatePosition>;
    const MAX: usize = 256;
    const NAME: &'static str = "withdrawal_positions";
    const OWN_THREAD: bool = true;

    fn queue(state: &AppState) -> &GroupCommit<Positions> {
        &state.withdrawals().positions
    }

    async fn write(state: &AppState, items: Vec<Self::Item>) -> Result<Vec<Self::Out>, ApiError> {
        Ok(state.writer_store().withdrawal_positions(&items).await?)
    }
}

/// Records a withdrawal request with its hold, together with the others asked meanwhile.
pub(crate) async fn record(state: &AppState, mut new: NewWithdrawal) -> Result<Requested<OverLimit>, ApiError> {
    let made = &state.withdrawals().clearing_made;
    let clearing = new.clearing.map(|a| a.id);
    if clearing.is_some_and(|id| made.lock().unwrap_or_else(|e| e.into_inner()).contains(&id)) {
        new.clearing = None;
    }
    let recorded = GroupCommit::<Recording>::submit(state, new).await?;
    if let (Some(id), Requested::Recorded(_)) = (clearing, &recorded) {
        let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
        if made.len() >= CLEARING_KNOWN_MAX {
            made.clear();
        }
        made.insert(id);
    }
    Ok(recorded)
}

/// The starts of the UTC day and month that hold `now_ns`, for the KYC limits.
pub(crate) fn start_of_day_and_month(now_ns: u64) -> (u64, u64) {
    let days = now_ns / (86_400 * NS);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), for the first day of the month.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5; // day of month, 0-based
    let month_start_days = days as i64 - d;
    (days * 86_400 * NS, u64::try_from(month_start_days).unwrap_or(0) * 86_400 * NS)
}

impl Withdrawals {
    /// Withdrawals with this configuration, the default policy in force until [`load`] reads the stored one.
    pub fn new(config: WithdrawalsConfig) -> Withdrawals {
        let policy = Policy::default_for(config.large_usd, APPROVER_GROUP, config.large_approvals);
        Withdrawals {
            config,
            policy: RwLock::new(Arc::new(policy)),
            accounts_ready: Default::default(),
            recorder: GroupCommit::default(),
            positions: GroupCommit::default(),
            clearing_made: Mutex::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn install(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// Makes sure the custody ledger accounts of `asset` exist, once per process.
    pub(crate) async fn ensure_accounts(&self, state: &AppState, asset: &str) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        if !self.accounts_ready.load(Ordering::Acquire) {
            custody::ensure_custody_accounts(state, asset).await?;
            self.accounts_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The value of `units` of `asset` in micro-dollars, from the price table.
    pub fn usd_micro(&self, asset: &Asset, units: u128) -> Option<u64> {
        let price = *self.config.usd_micro_per_unit.get(asset.code.as_str())?;
        Some(crate::risk::usd_micro(units, asset.decimals, price))
    }
}

/// Reads the active policy, installing the configured default as version 1 on a database that has none.
pub async fn load(state: &AppState) -> Result<u32, ApiError> {
    let w = state.withdrawals();
    if state.store().active_withdrawal_policy().await?.is_none() {
        let keyring = state.keyring()?;
        let body = w.policy().to_json();
        let record =
            state.record("system", "withdrawal.policy.installed", "withdrawal_policy:1", AuditOutcome::Success);
        state
            .store()
            .install_withdrawal_policy(&body, "system", state.now_ns(), &state.auditor(&keyring), vec![record])
            .await?;
    }
    refresh_policy(state).await
}

/// Makes sure a stored policy is in force (the first use after start-up reads it, installing the default on a new
/// database); answers its version.
pub async fn ensure_policy(state: &AppState) -> Result<u32, ApiError> {
    match state.withdrawals().policy().version {
        0 => load(state).await,
        v => Ok(v),
    }
}

/// Installs the stored active policy if it is newer than the one in force; answers its version.
pub async fn refresh_policy(state: &AppState) -> Result<u32, ApiError> {
    let w = state.withdrawals();
    let Some(active) = state.store().active_withdrawal_policy().await? else { return Ok(w.policy().version) };
    let version = u32::try_from(active.version).unwrap_or(0);
    if version != w.policy().version {
        let mut policy = Policy::from_json(&active.body).map_err(|e| internal(format!("the stored policy: {e}")))?;
        policy.version = version;
        w.install(policy);
    }
    Ok(version)
}

/// The policy of `version` (the one in force, or a stored earlier one).
pub(crate) async fn policy_version(state: &AppState, version: i64) -> Result<Arc<Policy>, ApiError> {
    let current = state.withdrawals().policy();
    if i64::from(current.version) == version {
        return Ok(current);
    }
    let stored = state.store().withdrawal_policies().await?;
    let record = stored
        .into_iter()
        .find(|p| i64::from(p.version) == version)
        .ok_or_else(|| internal(format!("withdrawal policy version {version} is missing")))?;
    let mut policy = Policy::from_json(&record.body).map_err(|e| internal(format!("stored policy {version}: {e}")))?;
    policy.version = u32::try_from(version).unwrap_or(0);
    Ok(Arc::new(policy))
}

pub(crate) fn internal(what: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %what, "withdrawals");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred")
}

/// What the gates found, kept with the withdrawal: the facts the policy reads (so that a later decision, after
/// approvals, reads the same ones) and what staff need to see.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Screening {
    /// The customer's KYC level when asked.
    pub kyc_level: u8,
    /// The customer's group.
    pub group: String,
    /// For each window of the policy, the customer's earlier withdrawals in micro-dollars.
    pub window_usd: Vec<(u64, u64)>,
    /// Seconds since the destination was whitelisted (`None`: a one-time address).
    pub whitelisted_for_s: Option<u64>,
    /// The risk score the policy reads (raised to the high band when the address is on a risk list).
    pub risk_score: u32,
    /// The risk engine's outcome.
    pub risk_outcome: String,
    /// The rules that matched.
    pub risk_reasons: Vec<String>,
    /// The case a risk hold or freeze opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_case: Option<i64>,
    /// The address screening: `clear`, or the list and category of a risk listing.
    pub address: String,
    /// The policy's decision, in words.
    #[serde(default)]
    pub decision: String,
}

/// The withdrawal's id as the hold's transfer id.
pub fn withdrawal_number(w: &WithdrawalRecord) -> Result<u128, ApiError> {
    u128::from_str_radix(&w.id, 16).map_err(|_| internal(format!("withdrawal id {:?} is not hex", w.id)))
}

fn resolution_id(purpose: &str, w: &WithdrawalRecord) -> TransferId {
    TransferId(custody::digest16(&[b"rampart.withdrawal.v1", purpose.as_bytes(), w.id.as_bytes()]))
}

fn amount_of(w: &WithdrawalRecord) -> Result<u128, ApiError> {
    w.amount.parse().map_err(|_| internal(format!("withdrawal {} has amount {:?}", w.id, w.amount)))
}

fn fee_held_of(w: &WithdrawalRecord) -> Result<u128, ApiError> {
    w.fee_held.parse().map_err(|_| internal(format!("withdrawal {} has fee {:?}", w.id, w.fee_held)))
}

fn asset_of(state: &AppState, w: &WithdrawalRecord) -> Result<Asset, ApiError> {
    state.assets().lookup(&w.asset).cloned().map_err(|_| internal(format!("withdrawal {} of unknown asset", w.id)))
}

/// The ledger code of a customer's clearing account for withdrawals in flight.
pub const CLEARING_ACCOUNT_CODE: u16 = 21;

/// A customer's clearing account for withdrawals in flight: holds credit it (so that requests of different customers
/// never lock one shared account row), confirmations move what it received on to the hot wallet's account.
pub fn clearing_account(customer_id: i64, asset: &str) -> AccountId {
    AccountId(custody::digest16(&[b"rampart.withdrawal_clearing.v1", &customer_id.to_be_bytes(), asset.as_bytes()]))
}

/// The clearing account to create (idempotently) with a customer's first withdrawal of `asset`.
pub fn new_clearing_account(customer_id: i64, asset: AssetCode) -> rampart_ledger::NewAccount {
    rampart_ledger::NewAccount {
        id: clearing_account(customer_id, asset.as_str()),
        asset,
        code: CLEARING_ACCOUNT_CODE,
        // It only ever passes on what it received.
        flags: rampart_ledger::AccountFlags { debits_must_not_exceed_credits: true, ..Default::default() },
        user_data: u128::try_from(customer_id).unwrap_or(0),
    }
}

/// The hold: the amount and the fee held, from the customer's account to their clearing account, never expiring.
pub fn hold(id: u128, customer_id: i64, asset: AssetCode, amount: u128) -> NewTransfer {
    NewTransfer {
        id: TransferId(id),
        debit_account_id: crate::customer_ledger_account(customer_id, asset.as_str()),
        credit_account_id: clearing_account(customer_id, asset.as_str()),
        amount: rampart_core::Amount::new(amount),
        pending_id: None,
        asset,
        code: WITHDRAWAL_CODE,
        flags: TransferFlags { pending: true, ..TransferFlags::default() },
        timeout_s: 0,
        user_data: id,
    }
}

fn void(w: &WithdrawalRecord, asset: AssetCode) -> Result<NewTransfer, ApiError> {
    Ok(NewTransfer {
        id: resolution_id("void", w),
        debit_account_id: AccountId(0),
        credit_account_id: AccountId(0),
        amount: rampart_core::Amount::ZERO,
        pending_id: Some(TransferId(withdrawal_number(w)?)),
        asset,
        code: 0,
        flags: TransferFlags { void_pending_transfer: true, ..TransferFlags::default() },
        timeout_s: 0,
        user_data: withdrawal_number(w)?,
    })
}

/// How a confirmed withdrawal was paid: from which custody wallet, and how much network fee the exchange paid for it
/// on top of the customer's share (its part of a fee bump, which staff decide and the customer never pays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settlement {
    /// The custody wallet whose coins paid it: `hot`, or `cold` for a cold signing ceremony.
    pub(crate) wallet: &'static str,
    /// The exchange's extra fee for this withdrawal, in the asset's smallest unit.
    pub(crate) exchange_fee: u64,
}

impl Default for Settlement {
    fn default() -> Settlement {
        Settlement { wallet: "hot", exchange_fee: 0 }
    }
}

/// The confirmation's ledger effect: the hold posted for the amount and the customer's share of the network fee
/// (at most what was held; the rest is released), and any excess, with the exchange's share of a fee bump, paid by
/// the exchange's fee account; all of it leaves the custody wallet that paid.
fn post(w: &WithdrawalRecord, asset: AssetCode, paid_by: Settlement) -> Result<Vec<NewTransfer>, ApiError> {
    let share = u128::from(u64::try_from(w.network_fee.unwrap_or(0)).unwrap_or(0));
    let held = fee_held_of(w)?;
    let charged = share.min(held);
    let excess = share - charged + u128::from(paid_by.exchange_fee);
    let id = withdrawal_number(w)?;
    let paid = amount_of(w)? + charged;
    let mut batch = vec![
        NewTransfer {
            id: resolution_id("post", w),
            debit_account_id: AccountId(0),
            credit_account_id: AccountId(0),
            amount: rampart_core::Amount::new(paid),
            pending_id: Some(TransferId(id)),
            asset,
            code: 0,
            flags: TransferFlags { post_pending_transfer: true, linked: true, ..TransferFlags::default() },
            timeout_s: 0,
            user_data: id,
        },
        // What the clearing account received leaves with the transaction, out of the hot wallet.
        NewTransfer {
            id: resolution_id("paid", w),
            debit_account_id: clearing_account(w.customer_id, asset.as_str()),
            credit_account_id: custody::custody_ledger_account(asset.as_str(), paid_by.wallet),
            amount: rampart_core::Amount::new(paid),
            pending_id: None,
            asset,
            code: WITHDRAWAL_CODE,
            flags: TransferFlags { linked: excess > 0, ..TransferFlags::default() },
            timeout_s: 0,
            user_data: id,
        },
    ];
    if excess > 0 {
        batch.push(NewTransfer {
            id: resolution_id("fee_excess", w),
            debit_account_id: custody::custody_ledger_account(asset.as_str(), "fees"),
            credit_account_id: custody::custody_ledger_account(asset.as_str(), paid_by.wallet),
            amount: rampart_core::Amount::new(excess),
            pending_id: None,
            asset,
            code: FEE_EXCESS_CODE,
            flags: TransferFlags::default(),
            timeout_s: 0,
            user_data: id,
        });
    }
    Ok(batch)
}

/// A move's notification: every move is shown in the app; the ones a customer must know at once are emailed too.
fn notification(state: &AppState, w: &WithdrawalRecord, to: State, detail: &str) -> Result<Notification, ApiError> {
    let asset = asset_of(state, w)?;
    let amount = asset.format_amount(rampart_core::Amount::new(amount_of(w)?));
    Ok(Notification::WithdrawalStatus {
        asset: asset.code,
        amount,
        status: to.as_str().to_owned(),
        detail: detail.to_owned(),
    })
}

/// What a step on the way to another tells the customer.
fn step_detail(to: State) -> &'static str {
    match to {
        State::Screened => {
            "checked: the account, the whitelist, the KYC limits, the sanctions lists and the risk engine"
        }
        _ => "",
    }
}

fn emailed(to: State) -> bool {
    matches!(
        to,
        State::AwaitingApproval
            | State::AwaitingReview
            | State::Frozen
            | State::Rejected
            | State::Confirmed
            | State::Cancelled
            | State::Failed
            | State::Expired
    )
}

/// Moves `w` along `path` (from its state as read), with its audit entries and the customer's notifications (one
/// of each per step), and the ledger effect: an end other than `confirmed` voids the hold, `confirmed` posts it.
pub(crate) async fn advance(
    state: &AppState,
    w: &WithdrawalRecord,
    path: &[State],
    actor: &str,
    reason: &str,
    changes: &Changes<'_>,
) -> Result<Advanced, ApiError> {
    advance_settled(state, w, path, actor, reason, changes, Settlement::default()).await
}

/// [`advance`], with how a confirmation was paid.
pub(crate) async fn advance_settled(
    state: &AppState,
    w: &WithdrawalRecord,
    path: &[State],
    actor: &str,
    reason: &str,
    changes: &Changes<'_>,
    paid_by: Settlement,
) -> Result<Advanced, ApiError> {
    let from = w.state()?;
    let keyring = state.keyring()?;
    let (effects, ledger) = move_effects_settled(state, &keyring, w, path, actor, reason, paid_by)?;
    // The reason of the last move is the one the customer and staff see.
    let mut changes = changes.clone();
    if changes.reason.is_none() && !reason.is_empty() {
        changes.reason = Some(reason);
    }
    Ok(state
        .store()
        .advance_withdrawal(
            &w.id,
            from,
            w.custody_tx,
            path,
            actor,
            reason,
            &changes,
            &ledger,
            state.now_ns(),
            &state.auditor(&keyring),
            effects,
        )
        .await?)
}

/// What moving `w` along `path` writes besides the row: an audit entry per step, the customer's notification of the
/// last, and the ledger effect (an end other than `confirmed` voids the hold, `confirmed` posts it).
pub(crate) fn move_effects(
    state: &AppState,
    keyring: &rampart_crypto::Keyring,
    w: &WithdrawalRecord,
    path: &[State],
    actor: &str,
    reason: &str,
) -> Result<(Effects, Vec<NewTransfer>), ApiError> {
    move_effects_settled(state, keyring, w, path, actor, reason, Settlement::default())
}

fn move_effects_settled(
    state: &AppState,
    keyring: &rampart_crypto::Keyring,
    w: &WithdrawalRecord,
    path: &[State],
    actor: &str,
    reason: &str,
    paid_by: Settlement,
) -> Result<(Effects, Vec<NewTransfer>), ApiError> {
    let last = *path.last().expect("a move has a destination");
    let mut records = Vec::new();
    let mut notices = Vec::new();
    let mut at = w.state()?;
    for &to in path {
        at.move_to(to).map_err(internal)?;
        // Every step is told to the customer: the steps on the way in the app, the last as its state asks.
        if to != last {
            notices.push(in_app(notification(state, w, to, step_detail(to))?));
        }
        let mut r = state.record(actor, &format!("withdrawal.{to}"), &format!("withdrawal:{}", w.id), outcome_of(to));
        r.details.insert("from".into(), at.as_str().into());
        r.details.insert("customer".into(), w.customer_id.to_string());
        if !reason.is_empty() {
            r.details.insert("reason".into(), reason.into());
        }
        records.push(r);
        at = to;
    }
    let code = asset_of(state, w)?.code;
    let ledger = match last {
        State::Confirmed => post(w, code, paid_by)?,
        s if s.is_final() => vec![void(w, code)?],
        _ => vec![],
    };
    let n = notification(state, w, last, reason)?;
    notices.push(if emailed(last) { notice(keyring, n, None) } else { in_app(n) });
    let effects = Effects { records, notices, ..Effects::default() };
    Ok((effects, ledger))
}

pub(crate) fn in_app(n: Notification) -> rampart_store::Notice {
    rampart_store::Notice { kind: n.kind().to_owned(), title: n.title(), email: None }
}

fn outcome_of(to: State) -> AuditOutcome {
    match to {
        State::Rejected | State::Failed | State::Expired => AuditOutcome::Denied,
        _ => AuditOutcome::Success,
    }
}

/// The risk engine's finding for a withdrawal.
pub struct RiskFinding {
    /// Allow, hold or freeze (a challenge or a block never reaches a recorded withdrawal).
    pub outcome: RiskOutcome,
    /// The score.
    pub score: u32,
    /// The rules that matched.
    pub reasons: Vec<String>,
    /// The case a hold or freeze opened.
    pub case: Option<i64>,
}

/// The facts the policy reads, rebuilt from a withdrawal and its screening.
pub(crate) fn facts_for<'a>(w: &'a WithdrawalRecord, s: &'a Screening) -> Result<Facts<'a>, ApiError> {
    Ok(Facts {
        withdrawal: withdrawal_number(w)?,
        initiator: if w.initiator == "api_key" { Initiator::ApiKey } else { Initiator::Session },
        group: &s.group,
        kyc_level: s.kyc_level,
        asset: &w.asset,
        amount: amount_of(w)?,
        usd_micro: u64::try_from(w.usd_micro).unwrap_or(0),
        window_usd_micro: &s.window_usd,
        destination: match s.whitelisted_for_s {
            Some(age_s) => Destination::Whitelisted { age_s },
            None => Destination::OneTime,
        },
        risk_score: s.risk_score,
    })
}

fn screening_of(w: &WithdrawalRecord) -> Result<Screening, ApiError> {
    serde_json::from_str(&w.screening).map_err(|e| internal(format!("withdrawal {} screening: {e}", w.id)))
}

fn initiator_subject(w: &WithdrawalRecord) -> String {
    format!("customer:{}", w.customer_id)
}

/// The proof that the policy allows paying `w`: the policy version that decided, evaluated again on the stored
/// facts with the stored approvals. `None` if it does not (which never happens to a withdrawal that reached
/// `approved` through the service).
pub async fn policy_approved(state: &AppState, w: &WithdrawalRecord) -> Result<Option<PolicyApproved>, ApiError> {
    let Some(version) = w.policy_version else { return Ok(None) };
    let policy = policy_version(state, version).await?;
    let s = screening_of(w)?;
    let f = facts_for(w, &s)?;
    let approvals: Vec<_> = state.store().withdrawal_approvals(&w.id).await?.into_iter().map(|(a, _, _)| a).collect();
    Ok(policy.approved(&f, &initiator_subject(w), &approvals))
}

/// A move decided but not yet made: its path, its reason and the fields it sets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Planned {
    pub(crate) path: Vec<State>,
    pub(crate) reason: String,
    pub(crate) screening: String,
    pub(crate) risk_score: Option<i64>,
    pub(crate) risk_case: Option<i64>,
    pub(crate) review_id: Option<i64>,
    pub(crate) policy_version: Option<i64>,
    pub(crate) policy_rule: Option<String>,
    pub(crate) requirement: Option<String>,
    pub(crate) expires_at_ns: Option<u64>,
}

impl Planned {
    /// The fields the move sets.
    pub(crate) fn changes(&self) -> Changes<'_> {
        Changes {
            screening: (!self.screening.is_empty()).then_some(self.screening.as_str()),
            risk_score: self.risk_score,
            risk_case: self.risk_case,
            review_id: self.review_id,
            policy_version: self.policy_version,
            policy_rule: self.policy_rule.as_deref(),
            requirement: self.requirement.as_deref(),
            reason: (!self.reason.is_empty()).then_some(self.reason.as_str()),
            expires_at_ns: self.expires_at_ns,
            ..Changes::default()
        }
    }
}

/// Where the policy sends a screened withdrawal (or one whose reviews passed): approved, awaiting approvals, or
/// rejected; `base` carries what screening found and the path so far.
pub(crate) fn plan_by_policy(
    state: &AppState,
    w: &WithdrawalRecord,
    mut screening: Screening,
    mut base: Planned,
) -> Result<Planned, ApiError> {
    let policy = state.withdrawals().policy();
    let decision = policy.evaluate(&facts_for(w, &screening)?);
    let version = i64::from(policy.version);
    let (to, rule, requirement, reason) = match &decision {
        Decision::Allow(ok) => (State::Approved, Some(ok.rule().to_owned()), None, String::new()),
        Decision::Approvals { rule, requirement } => (
            State::AwaitingApproval,
            Some(rule.clone()),
            Some(serde_json::to_string(requirement).map_err(internal)?),
            format!("the policy's rule {rule:?} requires staff approvals"),
        ),
        Decision::Block { rule, reason } => (State::Rejected, rule.clone(), None, reason.clone()),
    };
    screening.decision = match &decision {
        Decision::Allow(ok) => format!("allowed by rule {:?} of policy {version}", ok.rule()),
        Decision::Approvals { rule, .. } => format!("rule {rule:?} of policy {version} requires approvals"),
        Decision::Block { rule: Some(rule), .. } => format!("blocked by rule {rule:?} of policy {version}"),
        Decision::Block { rule: None, .. } => format!("no rule of policy {version} allows it"),
    };
    base.path.push(to);
    base.screening = serde_json::to_string(&screening).map_err(internal)?;
    base.policy_version = Some(version);
    base.policy_rule = rule;
    base.requirement = requirement;
    base.reason = reason;
    if to == State::AwaitingApproval {
        base.expires_at_ns =
            Some(state.now_ns().saturating_add(state.withdrawals().config.approval_ttl_s.saturating_mul(NS)));
    }
    Ok(base)
}

async fn decide_by_policy(
    state: &AppState,
    w: &WithdrawalRecord,
    mut screening: Screening,
    actor: &str,
) -> Result<Advanced, ApiError> {
    screening.window_usd = windows_now(state, w).await?;
    let plan = plan_by_policy(state, w, screening, Planned::default())?;
    advance(state, w, &plan.path, actor, &plan.reason, &plan.changes()).await
}

/// The customer's other withdrawals in each of the policy's windows, read now: a recorded request the policy
/// decides later (after people, or a restart) is judged on what was withdrawn meanwhile, not on the sums its gates
/// read. `w` itself (waiting, so it counts) is left out, as the policy adds it.
async fn windows_now(state: &AppState, w: &WithdrawalRecord) -> Result<Vec<(u64, u64)>, ApiError> {
    let now = state.now_ns();
    let mut sums = Vec::new();
    for window_s in state.withdrawals().policy().windows() {
        let since = now.saturating_sub(window_s.saturating_mul(NS));
        let mut total = state.store().withdrawn_usd_since(w.customer_id, since).await?;
        if u64::try_from(w.created_at).unwrap_or(0) >= since {
            total = total.saturating_sub(u64::try_from(w.usd_micro).unwrap_or(0));
        }
        sums.push((window_s, total));
    }
    Ok(sums)
}

/// Screens a recorded withdrawal with the risk engine's finding: a freeze or hold, or a compliance review above
/// the threshold, waits for people; otherwise the policy decides. Moves `requested → screened → …` in one step.
pub(crate) async fn screen(
    state: &AppState,
    w: &WithdrawalRecord,
    mut screening: Screening,
    risk: RiskFinding,
    actor: &str,
) -> Result<Advanced, ApiError> {
    screening.risk_outcome = risk.outcome.name().to_owned();
    screening.risk_reasons = risk.reasons;
    screening.risk_case = risk.case;
    let review = open_review(state, w).await?;
    let base = Planned {
        path: vec![State::Screened],
        risk_score: Some(i64::from(screening.risk_score)),
        risk_case: risk.case,
        review_id: review,
        ..Planned::default()
    };
    let waiting = match risk.outcome {
        RiskOutcome::Freeze => Some(State::Frozen),
        RiskOutcome::Hold => Some(State::AwaitingReview),
        _ if review.is_some() => Some(State::AwaitingReview),
        _ => None,
    };
    let plan = match waiting {
        Some(to) => Planned {
            path: vec![State::Screened, to],
            reason: match to {
                State::Frozen => "the risk engine froze the account until a reviewer decides",
                _ if risk.case.is_some() => "held for a risk review",
                _ => "held for the three-level compliance review",
            }
            .to_owned(),
            screening: serde_json::to_string(&screening).map_err(internal)?,
            expires_at_ns: Some(
                state.now_ns().saturating_add(state.withdrawals().config.approval_ttl_s.saturating_mul(NS)),
            ),
            ..base
        },
        None => {
            screening.window_usd = windows_now(state, w).await?;
            plan_by_policy(state, w, screening, base)?
        }
    };
    advance(state, w, &plan.path, actor, &plan.reason, &plan.changes()).await
}

/// Whether a request with this risk outcome can be decided in the transaction that records it: nothing waits for a
/// person (no risk hold or freeze, no compliance review).
pub(crate) fn decidable_at_once(state: &AppState, usd_micro: u64, risk: RiskOutcome) -> bool {
    matches!(risk, RiskOutcome::Allow | RiskOutcome::Challenge)
        && !rampart_compliance::review::needed(usd_micro, state.compliance().config().review_usd)
}

/// Opens the three-level review of a withdrawal above the threshold (or finds the one a crash left behind).
async fn open_review(state: &AppState, w: &WithdrawalRecord) -> Result<Option<i64>, ApiError> {
    let usd = u64::try_from(w.usd_micro).unwrap_or(0);
    if !rampart_compliance::review::needed(usd, state.compliance().config().review_usd) {
        return Ok(None);
    }
    let transfer = crate::compliance::Transfer {
        customer_id: w.customer_id,
        reference: &w.id,
        asset: &w.asset,
        amount: &w.amount,
        amount_usd: usd,
    };
    if let Some(id) = crate::compliance::open_transfer_review(state, &initiator_subject(w), transfer).await? {
        return Ok(Some(id));
    }
    Ok(state.store().transfer_review_of(&w.id).await?.map(|r| r.id))
}

/// Moves a withdrawal waiting for a risk reviewer or the compliance review on when they have decided: a release
/// and an approved review hand it to the policy; a risk case kept frozen or a rejected review rejects it.
pub(crate) async fn progress_review(state: &AppState, w: &WithdrawalRecord) -> Result<Option<Advanced>, ApiError> {
    let from = w.state()?;
    let mut risk_clear = true;
    if let Some(case) = w.risk_case {
        match state.store().risk_case(case).await? {
            Some((c, _)) if c.state == "resolved" => match c.resolution.as_deref() {
                Some("release") => {}
                other => {
                    let reason = format!("the risk review ended the withdrawal ({})", other.unwrap_or("closed"));
                    return Ok(Some(
                        advance(state, w, &[State::Rejected], "risk", &reason, &Changes::default()).await?,
                    ));
                }
            },
            _ => risk_clear = false,
        }
    }
    let mut review_clear = true;
    if let Some(review) = w.review_id {
        match state.store().transfer_review(review).await?.map(|r| r.state) {
            Some(rampart_compliance::review::State::Approved) => {}
            Some(rampart_compliance::review::State::Rejected { level }) => {
                let reason = format!("the compliance review rejected the withdrawal at level {level}");
                return Ok(Some(
                    advance(state, w, &[State::Rejected], "compliance", &reason, &Changes::default()).await?,
                ));
            }
            _ => review_clear = false,
        }
    }
    match (risk_clear, review_clear) {
        (true, true) => {
            let s = screening_of(w)?;
            Ok(Some(decide_by_policy(state, w, s, "system").await?))
        }
        (true, false) if from == State::Frozen => Ok(Some(
            advance(
                state,
                w,
                &[State::AwaitingReview],
                "risk",
                "released; the compliance review goes on",
                &Changes::default(),
            )
            .await?,
        )),
        _ => Ok(None),
    }
}

/// What one worker pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Requests screened after an interruption.
    pub resumed: u64,
    /// Waits that ended (reviews decided).
    pub progressed: u64,
    /// Waits that expired.
    pub expired: u64,
    /// Withdrawals paid (moved to signing).
    pub paid: u64,
    /// Withdrawals queued for a refill.
    pub queued: u64,
    /// Withdrawals broadcast.
    pub broadcast: u64,
    /// Withdrawals confirmed.
    pub confirmed: u64,
    /// Withdrawals failed.
    pub failed: u64,
    /// Withdrawals refused at payment because the policy did not approve them.
    pub refused: u64,
}

/// One pass: resume, progress reviews, expire, pay, follow transactions. Runs in the custody worker after the
/// watcher (so that confirmations are current) and before the sweeper (so that hot coins pay customers first).
pub async fn pass(state: &AppState, custody: &Custody) -> Result<PassReport, ApiError> {
    let mut report = PassReport::default();
    ensure_policy(state).await?;
    refresh_policy(state).await?;
    let now = state.now_ns();
    let config = &state.withdrawals().config;
    let store = state.store();

    for w in store.withdrawals_in(&[State::Requested], now.saturating_sub(config.resume_after_s * NS), 100).await? {
        resume(state, &w).await?;
        report.resumed += 1;
    }
    for w in store.withdrawals_in(&[State::AwaitingReview, State::Frozen], now, 500).await? {
        if progress_review(state, &w).await?.is_some() {
            report.progressed += 1;
        }
    }
    for w in store.withdrawals_in(&[State::AwaitingApproval, State::AwaitingReview], now, 500).await? {
        if w.expires_at.is_some_and(|e| u64::try_from(e).unwrap_or(0) <= now) {
            let reason = "waited for approval past its time limit; the funds are returned";
            if let Advanced::Done(_) =
                advance(state, &w, &[State::Expired], "system", reason, &Changes::default()).await?
            {
                report.expired += 1;
            }
        }
    }
    pay(state, custody, &mut report).await?;
    follow(state, custody, &mut report).await?;
    Ok(report)
}

/// Screens a withdrawal a crash left in `requested`, on the gates' findings recorded with it (the risk engine's
/// included: it decided, and acted, before the request was recorded). A request recorded without them (by an
/// earlier version) is scored by the risk engine again.
async fn resume(state: &AppState, w: &WithdrawalRecord) -> Result<(), ApiError> {
    let mut screening = screening_of(w).unwrap_or_default();
    if screening.group.is_empty() {
        screening.group = "retail".into();
    }
    let recorded = serde_json::from_value::<RiskOutcome>(serde_json::Value::String(screening.risk_outcome.clone()));
    if let Ok(outcome) = recorded {
        let risk = RiskFinding {
            outcome,
            score: screening.risk_score,
            reasons: screening.risk_reasons.clone(),
            case: screening.risk_case,
        };
        screen(state, w, screening, risk, "system").await?;
        return Ok(());
    }
    let kind = rampart_risk::EventKind::Withdrawal {
        amount_micro_usd: u64::try_from(w.usd_micro).unwrap_or(0),
        destination: w.address.clone(),
    };
    let event = rampart_risk::Event {
        at_ns: state.now_ns(),
        user: rampart_risk::UserId(u64::try_from(w.customer_id).unwrap_or(0)),
        ip: None,
        device: None,
        country: None,
        kind,
    };
    let assessed = crate::risk::assess(state, w.customer_id, event).await?;
    let risk = RiskFinding {
        outcome: match assessed.decision.outcome {
            // A resumed request has nobody to challenge: it waits for a reviewer instead.
            RiskOutcome::Challenge | RiskOutcome::Block => RiskOutcome::Hold,
            o => o,
        },
        score: assessed.decision.score,
        reasons: assessed.decision.enforced().map(|r| r.rule.to_string()).collect(),
        case: assessed.case,
    };
    screening.risk_score = screening.risk_score.max(risk.score);
    screen(state, w, screening, risk, "system").await?;
    Ok(())
}

/// Pays approved and queued withdrawals of the custody asset from the hot wallet, oldest first, in one
/// transaction, as far as its confirmed coins reach; the rest wait (`queued`) for a refill, which is proposed once.
async fn pay(state: &AppState, custody: &Custody, report: &mut PassReport) -> Result<(), ApiError> {
    let config = &state.withdrawals().config;
    let asset = custody.config.asset.clone();
    let ready: Vec<WithdrawalRecord> = state
        .store()
        .withdrawals_in(&[State::Approved, State::Queued], state.now_ns(), 1000)
        .await?
        .into_iter()
        .filter(|w| w.asset == asset)
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    // Every payment needs the policy's proof, made again from the stored facts and approvals.
    let mut approved = Vec::new();
    for w in ready {
        match policy_approved(state, &w).await? {
            Some(proof) => approved.push((w, proof)),
            None => {
                let reason = "the withdrawal policy does not approve this withdrawal; it was not signed";
                advance(state, &w, &[State::Cancelled], "system", reason, &Changes::default()).await?;
                report.refused += 1;
            }
        }
    }
    let Some((seen, _)) = state.store().seen_tip(&asset).await? else { return Ok(()) };
    let coins = state.store().spendable_utxos(&asset, "hot", seen).await?;
    let wallet = custody::ensure_hot_wallet(state, custody).await?;
    let rate = custody.chain.fee_rate().await.map_err(custody::chain_error)?.max(1);
    // The most the hot wallet may ever hold (its cap, a share of everything held): a withdrawal above it can never
    // be paid from hot, whatever refills bring, so the cold wallet's custodians sign it directly.
    let b = state.store().custody_balances(&asset).await?;
    let held = [b.cold.0, b.hot.0, b.deposit.0, b.in_flight_to_cold, b.in_flight_to_hot].map(u128::from);
    let cap = u64::try_from(held.iter().sum::<u128>() * u128::from(custody.config.policy.max_hot_bps) / 10_000)
        .unwrap_or(u64::MAX);
    let hot_room = cap.saturating_sub(b.hot.0 + b.deposit.0 + b.in_flight_to_hot);
    let cold = state.store().active_wallet(&asset, "cold").await?;
    let mut chosen: Vec<(WithdrawalRecord, PolicyApproved, ScriptBuf)> = Vec::new();
    let mut waiting = Vec::new();
    let mut total: u64 = 0;
    let available: u64 = coins.iter().map(|c| c.value).sum();
    for (w, proof) in approved {
        let amount = u64::try_from(amount_of(&w)?).map_err(internal)?;
        if let Some(cold) = &cold
            && amount.saturating_add(rate * custody::estimated_vsize(1, 2)) > cap
        {
            if pay_from_cold(state, custody, cold, &w, proof, rate, seen).await? {
                report.paid += 1;
            } else if w.state == State::Approved.as_str() {
                let reason = "above the hot wallet's cap: waiting for confirmed coins in cold storage";
                if let Advanced::Done(_) =
                    advance(state, &w, &[State::Queued], "system", reason, &Changes::default()).await?
                {
                    report.queued += 1;
                }
            }
            continue;
        }
        let script = destination_script(custody, &w)?;
        let fee = rate * custody::estimated_vsize(coins.len().max(1), chosen.len() + 2);
        if chosen.len() < config.batch_max && waiting.is_empty() && total + amount + fee <= available {
            total += amount;
            chosen.push((w, proof, script));
        } else {
            waiting.push((w, amount));
        }
    }
    for (w, _) in &waiting {
        if w.state == State::Approved.as_str() {
            let reason = "the hot wallet cannot pay it yet: waiting for a refill from cold storage";
            if let Advanced::Done(_) =
                advance(state, w, &[State::Queued], "system", reason, &Changes::default()).await?
            {
                report.queued += 1;
            }
        }
    }
    if !waiting.is_empty() {
        let short: u64 =
            waiting.iter().map(|(_, a)| a).sum::<u64>() + rate * custody::estimated_vsize(2, waiting.len() + 1);
        // What a refill on its way brings counts; a refill may not push the hot wallet over its cap (the sweeper
        // would send the surplus back): what does not fit waits for the next one, after these are paid.
        let refill =
            short.saturating_sub(available.saturating_sub(total)).saturating_sub(b.in_flight_to_hot).min(hot_room);
        if refill >= custody::DUST_SAT {
            custody::propose_refill_for(state, custody, refill, "withdrawals wait for funds").await?;
        }
    }
    if chosen.is_empty() {
        return Ok(());
    }
    report.paid += sign_and_record(state, custody, &wallet, coins, rate, chosen).await?;
    Ok(())
}

/// Pays a withdrawal the hot wallet may never hold straight from cold storage: the transaction spends confirmed
/// cold coins (oldest first, change back to cold) and a signing session asks the cold wallet's custodians to sign
/// it; the session, the transaction with its reserved coins and the withdrawal's move to `signing` are recorded
/// before anything is signed. The custodians' tool shows them the destination, amount and fee, recomputed from the
/// transaction. Once they have signed, the service broadcasts it and `follow` takes it to confirmation like any
/// other; a failed or expired session fails the withdrawal and returns the funds. `false` when the cold wallet's
/// confirmed coins do not cover it (it waits).
async fn pay_from_cold(
    state: &AppState,
    custody: &Custody,
    cold: &rampart_store::WalletRecord,
    w: &WithdrawalRecord,
    proof: PolicyApproved,
    rate: u64,
    seen: u64,
) -> Result<bool, ApiError> {
    assert_eq!(proof.withdrawal(), withdrawal_number(w)?, "a policy approval signs only its own withdrawal");
    let asset = custody.config.asset.clone();
    let amount = u64::try_from(amount_of(w)?).map_err(internal)?;
    let script = destination_script(custody, w)?;
    let mut inputs = Vec::new();
    let mut gathered = 0u64;
    let mut fee = 0;
    for c in state.store().spendable_utxos(&asset, "cold", seen).await? {
        gathered += c.value;
        inputs.push(c);
        fee = rate * custody::estimated_vsize(inputs.len(), 2);
        if gathered >= amount + fee {
            break;
        }
    }
    if gathered < amount + fee || amount < custody::DUST_SAT {
        return Ok(false);
    }
    let mut outputs = vec![TxOut { value: Sats::from_sat(amount), script_pubkey: script }];
    let change = gathered - amount - fee;
    if change >= custody::DUST_SAT {
        outputs.push(TxOut {
            value: Sats::from_sat(change),
            script_pubkey: ScriptBuf::from_bytes(cold.script_pubkey.clone()),
        });
    }
    let fee = gathered - outputs.iter().map(|o| o.value.to_sat()).sum::<u64>();
    let to_cold = gathered - amount - fee;
    let tx = custody::unsigned(&inputs, outputs)?;
    let txid = tx.compute_txid();
    let keyring = state.keyring()?;
    let ceremony =
        custody::open_cold_signing_session(state, custody, cold, &tx, ("withdrawal", w.id.clone().into()), "system")
            .await?;
    let mut r = state.record("system", "withdrawal.signing", &format!("withdrawal:{}", w.id), AuditOutcome::Success);
    r.details.insert("txid".into(), txid.to_string());
    r.details.insert("policy_version".into(), proof.version().to_string());
    r.details.insert("policy_rule".into(), proof.rule().to_owned());
    r.details.insert("network_fee".into(), fee.to_string());
    r.details.insert("ceremony".into(), ceremony.to_string());
    let payment = Payment {
        id: w.id.clone(),
        from: w.state()?,
        network_fee: fee,
        effects: Effects {
            records: vec![r],
            notices: vec![in_app(notification(state, w, State::Signing, "")?)],
            ..Effects::default()
        },
    };
    let custody_tx = CustodyTx {
        id: 0,
        asset: asset.clone(),
        kind: "withdrawal".into(),
        txid: txid.to_byte_array().to_vec(),
        tx: serialize(&tx),
        prevouts: serialize(&custody::prevouts(&inputs)),
        to_cold,
        to_hot: 0,
        fee,
        state: "signing".into(),
        ceremony_id: Some(ceremony),
        failure: None,
    };
    let mut record = state.record("system", "custody.withdrawal.built", &format!("tx:{txid}"), AuditOutcome::Success);
    record.details.insert("fee_sat".into(), fee.to_string());
    record.details.insert("from".into(), "cold".into());
    let spends: Vec<(Vec<u8>, u32)> = inputs.iter().map(|u| (u.txid.clone(), u.vout)).collect();
    let recorded = state
        .store()
        .pay_withdrawals(
            vec![payment],
            &custody_tx,
            &spends,
            "system",
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?;
    if recorded.is_none() {
        let failed =
            state.record("system", "custody.sign.failed", &format!("ceremony:{ceremony}"), AuditOutcome::Failure);
        state
            .store()
            .fail_ceremony(
                ceremony,
                "the withdrawal or its coins changed meanwhile",
                state.now_ns(),
                &state.auditor(&keyring),
                vec![failed],
            )
            .await?;
        return Ok(false);
    }
    Ok(true)
}

fn destination_script(custody: &Custody, w: &WithdrawalRecord) -> Result<ScriptBuf, ApiError> {
    let address = w
        .address
        .parse::<Address<bitcoin::address::NetworkUnchecked>>()
        .ok()
        .and_then(|a| a.require_network(custody.network()).ok())
        .ok_or_else(|| internal(format!("withdrawal {} has address {:?} outside the network", w.id, w.address)))?;
    Ok(address.script_pubkey())
}

/// Builds, signs and records the transaction paying `chosen`. The signer takes each withdrawal's
/// [`PolicyApproved`] and checks it is that withdrawal's: there is no other way to a signature.
async fn sign_and_record(
    state: &AppState,
    custody: &Custody,
    wallet: &rampart_store::WalletRecord,
    coins: Vec<rampart_store::Utxo>,
    rate: u64,
    chosen: Vec<(WithdrawalRecord, PolicyApproved, ScriptBuf)>,
) -> Result<u64, ApiError> {
    for (w, proof, _) in &chosen {
        assert_eq!(proof.withdrawal(), withdrawal_number(w)?, "a policy approval signs only its own withdrawal");
    }
    let keyring = state.keyring()?;
    let hot_script = ScriptBuf::from_bytes(wallet.script_pubkey.clone());
    let pay_total: u64 = chosen.iter().map(|(w, _, _)| amount_of(w).map(|a| a as u64)).sum::<Result<u64, _>>()?;
    // Oldest coins first until the payments, the fee for the inputs so far and a change output are covered.
    let mut inputs = Vec::new();
    let mut gathered = 0u64;
    let mut fee = 0;
    for c in coins {
        inputs.push(c.clone());
        gathered += c.value;
        fee = rate * custody::estimated_vsize(inputs.len(), chosen.len() + 1);
        if gathered >= pay_total + fee {
            break;
        }
    }
    if gathered < pay_total + fee {
        return Ok(0);
    }
    let mut outputs: Vec<TxOut> = chosen
        .iter()
        .map(|(w, _, script)| Ok(TxOut { value: Sats::from_sat(amount_of(w)? as u64), script_pubkey: script.clone() }))
        .collect::<Result<_, ApiError>>()?;
    let mut change = gathered - pay_total - fee;
    if change >= custody::DUST_SAT {
        outputs.push(TxOut { value: Sats::from_sat(change), script_pubkey: hot_script });
    } else {
        fee += change;
        change = 0;
    }
    let mut tx = custody::unsigned(&inputs, outputs)?;
    let spent = custody::prevouts(&inputs);
    let paths: Vec<(u32, u32)> = inputs.iter().map(|u| u.path.unwrap_or((rampart_custody::HOT_BRANCH, 0))).collect();
    custody::open_hot_key(&keyring, wallet)?.sign_key_spends(&mut tx, &spent, &paths).map_err(internal)?;
    let txid = tx.compute_txid();
    let n = chosen.len() as u64;
    let payments: Vec<Payment> = chosen
        .iter()
        .enumerate()
        .map(|(i, (w, proof, _))| {
            let share = fee / n + u64::from((i as u64) < fee % n);
            let mut r =
                state.record("system", "withdrawal.signing", &format!("withdrawal:{}", w.id), AuditOutcome::Success);
            r.details.insert("txid".into(), txid.to_string());
            r.details.insert("policy_version".into(), proof.version().to_string());
            r.details.insert("policy_rule".into(), proof.rule().to_owned());
            r.details.insert("network_fee".into(), share.to_string());
            let n = notification(state, w, State::Signing, "")?;
            Ok(Payment {
                id: w.id.clone(),
                from: w.state()?,
                network_fee: share,
                effects: Effects { records: vec![r], notices: vec![in_app(n)], ..Effects::default() },
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let new = CustodyTx {
        id: 0,
        asset: custody.config.asset.clone(),
        kind: "withdrawal".into(),
        txid: txid.to_byte_array().to_vec(),
        tx: serialize(&tx),
        prevouts: serialize(&spent),
        to_cold: 0,
        to_hot: change,
        fee,
        state: "signed".into(),
        ceremony_id: None,
        failure: None,
    };
    let mut record = state.record("system", "custody.withdrawal.signed", &format!("tx:{txid}"), AuditOutcome::Success);
    record.details.insert("withdrawals".into(), n.to_string());
    record.details.insert("fee_sat".into(), fee.to_string());
    let spends: Vec<(Vec<u8>, u32)> = inputs.iter().map(|u| (u.txid.clone(), u.vout)).collect();
    let recorded = state
        .store()
        .pay_withdrawals(payments, &new, &spends, "system", state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?;
    Ok(if recorded.is_some() { n } else { 0 })
}

/// Follows paying transactions: broadcasts what is signed (again, after a crash: the same bytes), moves
/// withdrawals to `broadcast` when the chain took the transaction, to `failed` when it refused it, and to
/// `confirmed` (posting the hold) at the asset's confirmation depth.
async fn follow(state: &AppState, custody: &Custody, report: &mut PassReport) -> Result<(), ApiError> {
    let keyring = state.keyring()?;
    let asset = custody.config.asset.clone();
    let confirmations = u64::from(state.assets().lookup(&asset).map_err(internal)?.confirmations.max(1));
    let seen = state.store().seen_tip(&asset).await?.map(|(h, _)| h).unwrap_or(0);
    let moving = state.store().withdrawals_in(&[State::Signing, State::Broadcast], state.now_ns(), 1000).await?;
    let mut txs: BTreeMap<i64, Vec<WithdrawalRecord>> = BTreeMap::new();
    for w in moving {
        if let Some(t) = w.custody_tx {
            txs.entry(t).or_default().push(w);
        }
    }
    for (id, ws) in txs {
        let Some(mut t) = state.store().custody_tx(id).await? else { continue };
        if t.state == "signed" {
            custody::broadcast_one(state, custody, &keyring, id).await?;
            t = state.store().custody_tx(id).await?.ok_or_else(|| internal("a custody transaction vanished"))?;
        }
        if t.state == "broadcast" {
            // `None`: its withdrawals went back to the transaction it replaced; the next pass follows that one.
            let Some(now) = drop_if_spent_elsewhere(state, t, seen, confirmations).await? else { continue };
            t = now;
        }
        let txid = Txid::from_slice(&t.txid).map_err(internal)?;
        let settled = if t.state == "confirmed" { settlements(state, &t).await? } else { BTreeMap::new() };
        for w in ws {
            let from = w.state()?;
            match (from, t.state.as_str()) {
                (State::Signing, "broadcast" | "confirmed") => {
                    let sent = sent_notice(state, &w, &txid)?;
                    let mut r = state.record(
                        "system",
                        "withdrawal.broadcast",
                        &format!("withdrawal:{}", w.id),
                        AuditOutcome::Success,
                    );
                    r.details.insert("txid".into(), txid.to_string());
                    let effects =
                        Effects { records: vec![r], notices: vec![notice(&keyring, sent, None)], ..Effects::default() };
                    if let Advanced::Done(_) = state
                        .store()
                        .advance_withdrawal(
                            &w.id,
                            from,
                            w.custody_tx,
                            &[State::Broadcast],
                            "system",
                            "",
                            &Changes::default(),
                            &[],
                            state.now_ns(),
                            &state.auditor(&keyring),
                            effects,
                        )
                        .await?
                    {
                        report.broadcast += 1;
                    }
                }
                (State::Signing | State::Broadcast, "failed") => {
                    let why = t.failure.as_deref().unwrap_or("no reason given");
                    let reason = if why.starts_with(DROPPED) {
                        format!("{why}; the funds are returned")
                    } else if t.ceremony_id.is_some() {
                        // A signing session that failed or expired, or the chain's refusal of what it signed.
                        format!("the cold wallet's transaction failed: {why}")
                    } else {
                        format!("the chain refused the transaction: {why}")
                    };
                    if let Advanced::Done(_) =
                        advance(state, &w, &[State::Failed], "system", &reason, &Changes::default()).await?
                    {
                        report.failed += 1;
                    }
                }
                (State::Broadcast, "confirmed") => {
                    let Some(height) = state.store().custody_tx_height(&t.txid).await? else { continue };
                    if seen + 1 >= height + confirmations {
                        let reason = format!("confirmed in block {height}");
                        let paid_by = settled.get(&w.id).copied().unwrap_or_default();
                        if let Advanced::Done(_) = advance_settled(
                            state,
                            &w,
                            &[State::Confirmed],
                            "system",
                            &reason,
                            &Changes::default(),
                            paid_by,
                        )
                        .await?
                        {
                            report.confirmed += 1;
                        }
                    }
                }
                (State::Broadcast, "broadcast") => {
                    let age = state.now_ns().saturating_sub(u64::try_from(w.updated_at).unwrap_or(0));
                    if age >= state.withdrawals().config.rebroadcast_after_s * NS {
                        rebroadcast(state, custody, &t).await?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// How each withdrawal a confirmed transaction paid is settled: the wallet that paid, and its part of what the
/// exchange paid beyond the customers' shares of the fee (a fee bump), split as the shares were.
async fn settlements(state: &AppState, t: &CustodyTx) -> Result<BTreeMap<String, Settlement>, ApiError> {
    let all = state.store().withdrawals_of_custody_tx(t.id).await?;
    let shares: u64 = all.iter().map(|w| u64::try_from(w.network_fee.unwrap_or(0)).unwrap_or(0)).sum();
    let extra = t.fee.saturating_sub(shares);
    let n = all.len().max(1) as u64;
    let wallet = if t.ceremony_id.is_some() { "cold" } else { "hot" };
    Ok(all
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let exchange_fee = extra / n + u64::from((i as u64) < extra % n);
            (w.id, Settlement { wallet, exchange_fee })
        })
        .collect())
}

/// How the reason of a dropped transaction starts.
const DROPPED: &str = "dropped:";

/// A broadcast transaction one of whose inputs a block confirmed spent by another transaction, at the asset's
/// confirmation depth, can never confirm: it was dropped (a reorganisation, an eviction) and cannot be sent again.
/// If that other transaction is one this one replaced (a fee bump the chain did not keep), the original paid: the
/// withdrawals go back to it, confirmed (and `None` is answered). Otherwise this transaction fails, and `follow`
/// returns the funds. Answers the transaction as it now stands.
async fn drop_if_spent_elsewhere(
    state: &AppState,
    t: CustodyTx,
    seen: u64,
    confirmations: u64,
) -> Result<Option<CustodyTx>, ApiError> {
    let tx: Transaction = deserialize(&t.tx).map_err(internal)?;
    let mut spender = None;
    for input in &tx.input {
        let prev = input.previous_output;
        let Some(spend) = state.store().output_spend(&t.asset, prev.txid.as_byte_array(), prev.vout).await? else {
            continue;
        };
        if let (Some(by), Some(height)) = (spend.spent_by, spend.spent_height)
            && by != t.txid
            && seen + 1 >= height + confirmations
        {
            spender = Some((by, prev));
            break;
        }
    }
    let Some((by, prev)) = spender else { return Ok(Some(t)) };
    let keyring = state.keyring()?;
    let spender_text = rampart_store::txid_text(&by);
    if let Some(original) = replaced_original(state, &t, &by).await? {
        let mut r = state.record(
            "system",
            "custody.withdrawal.original_confirmed",
            &format!("tx:{}", rampart_store::txid_text(&t.txid)),
            AuditOutcome::Success,
        );
        r.details.insert("confirmed".into(), spender_text);
        state
            .store()
            .restore_replaced(
                t.id,
                original.id,
                "confirmed",
                "a block confirmed the transaction it replaced",
                state.now_ns(),
                &state.auditor(&keyring),
                vec![r],
            )
            .await?;
        return Ok(None);
    }
    let reason = format!("{DROPPED} input {}:{} was spent by transaction {spender_text}", prev.txid, prev.vout);
    let mut r = state.record(
        "system",
        "custody.withdrawal.dropped",
        &format!("tx:{}", rampart_store::txid_text(&t.txid)),
        AuditOutcome::Failure,
    );
    r.details.insert("reason".into(), reason.clone());
    state
        .store()
        .advance_custody_tx(
            t.id,
            "broadcast",
            "failed",
            None,
            Some(&reason),
            state.now_ns(),
            &state.auditor(&keyring),
            vec![r],
        )
        .await?;
    Ok(Some(state.store().custody_tx(t.id).await?.unwrap_or(t)))
}

/// The transaction `spender`, if it is one that `t` replaced (directly or through other replacements).
async fn replaced_original(state: &AppState, t: &CustodyTx, spender: &[u8]) -> Result<Option<CustodyTx>, ApiError> {
    let Some(original) = state.store().custody_tx_by_txid(spender).await? else { return Ok(None) };
    let mut at = original.clone();
    // Replacements form a chain; a few links at most.
    for _ in 0..REPLACEMENTS_MAX {
        let Some(next) = at.failure.as_deref().and_then(|f| f.strip_prefix(REPLACED_BY)) else { return Ok(None) };
        if next == rampart_store::txid_text(&t.txid) {
            return Ok(Some(original));
        }
        let Ok(next) = next.parse::<Txid>() else { return Ok(None) };
        let Some(n) = state.store().custody_tx_by_txid(next.as_byte_array()).await? else { return Ok(None) };
        at = n;
    }
    Ok(None)
}

/// How the failure of a replaced transaction starts (the store writes it).
const REPLACED_BY: &str = "replaced by ";
/// The most fee bumps of one payment.
pub(crate) const REPLACEMENTS_MAX: usize = 10;
/// The highest fee rate a fee bump may ask, in satoshis per virtual byte: a typing error must not give the coins to
/// the miners.
pub(crate) const BUMP_FEE_RATE_MAX_SAT_VB: u64 = 2_000;

/// Why a stuck transaction cannot be sent again or bumped.
fn not_stuck(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

/// The broadcast transaction paying `w`, as staff may act on it.
async fn stuck_tx(state: &AppState, w: &WithdrawalRecord) -> Result<CustodyTx, ApiError> {
    if w.state()? != State::Broadcast {
        return Err(not_stuck("not_broadcast", format!("withdrawal {} is {}, not broadcast", w.id, w.state)));
    }
    let id = w.custody_tx.ok_or_else(|| internal(format!("broadcast withdrawal {} has no transaction", w.id)))?;
    let t = state.store().custody_tx(id).await?.ok_or_else(|| internal("a custody transaction vanished"))?;
    match t.state.as_str() {
        "broadcast" => Ok(t),
        "confirmed" => Err(not_stuck("already_confirmed", "a block confirmed the transaction already")),
        other => Err(not_stuck("not_broadcast", format!("the transaction is {other}"))),
    }
}

/// What a staff action on a stuck transaction did.
#[derive(Debug, Clone)]
pub struct StuckOutcome {
    /// The transaction now paying the withdrawal.
    pub txid: Txid,
    /// Its fee, in satoshis.
    pub fee_sat: u64,
    /// The chain's answer: `accepted`, or why it refused.
    pub chain: String,
}

/// Sends the stored transaction paying `w` again (a staff action, audited with the reason and the chain's answer).
pub(crate) async fn rebroadcast_stuck(
    state: &AppState,
    custody: &Custody,
    w: &WithdrawalRecord,
    actor: &str,
    reason: &str,
) -> Result<StuckOutcome, ApiError> {
    let t = stuck_tx(state, w).await?;
    let tx: Transaction = deserialize(&t.tx).map_err(internal)?;
    let txid = tx.compute_txid();
    let answer = match custody.chain.broadcast(&tx).await {
        Ok(_) => "accepted".to_owned(),
        Err(rampart_chain::ChainError::Rejected(why)) => why,
        Err(e) => return Err(custody::chain_error(e)),
    };
    let outcome = if answer == "accepted" { AuditOutcome::Success } else { AuditOutcome::Failure };
    let mut r = state.record(actor, "withdrawal.rebroadcast", &format!("withdrawal:{}", w.id), outcome);
    r.details.insert("txid".into(), txid.to_string());
    r.details.insert("reason".into(), reason.to_owned());
    r.details.insert("chain".into(), answer.clone());
    state.audit(vec![r]).await?;
    Ok(StuckOutcome { txid, fee_sat: t.fee, chain: answer })
}

/// Replaces the stuck transaction paying `w` by one with the same inputs and payments and a higher fee, taken from
/// the hot wallet's change (a staff action: the customers' shares of the fee stay what they were; the exchange pays
/// the rest, booked at confirmation). The reservation of the inputs moves to the replacement in the transaction that
/// records it; if the chain refuses the replacement, everything goes back to the original.
pub(crate) async fn bump_fee(
    state: &AppState,
    custody: &Custody,
    w: &WithdrawalRecord,
    fee_rate_sat_vb: u64,
    actor: &str,
    reason: &str,
) -> Result<StuckOutcome, ApiError> {
    let t = stuck_tx(state, w).await?;
    if t.ceremony_id.is_some() {
        return Err(not_stuck(
            "cold_signed",
            "the cold wallet's custodians signed this transaction; the hot key cannot replace it",
        ));
    }
    let (old, spent) = custody::decode_tx(&t)?;
    let wallet = custody::ensure_hot_wallet(state, custody).await?;
    let hot_script = ScriptBuf::from_bytes(wallet.script_pubkey.clone());
    if spent.iter().any(|o| o.script_pubkey != hot_script) {
        return Err(not_stuck("cannot_bump", "the transaction spends coins the hot key does not hold"));
    }
    let vsize = old.vsize() as u64;
    let relay = custody.chain.fee_rate().await.map_err(custody::chain_error)?.max(1);
    // BIP-125: the replacement pays the original's fee and its own relay besides.
    let least = (t.fee + relay * vsize).div_ceil(vsize);
    if fee_rate_sat_vb < least || fee_rate_sat_vb > BUMP_FEE_RATE_MAX_SAT_VB {
        return Err(ApiError::bad_request(
            "invalid_fee_rate",
            format!(
                "the fee rate must be between {least} and {BUMP_FEE_RATE_MAX_SAT_VB} sat/vB (the transaction pays {}                  sat for {vsize} vB)",
                t.fee
            ),
        ));
    }
    let fee = fee_rate_sat_vb * vsize;
    let extra = fee - t.fee;
    let mut tx = old.clone();
    let change = tx
        .output
        .iter_mut()
        .rev()
        .find(|o| o.script_pubkey == hot_script)
        .ok_or_else(|| not_stuck("cannot_bump", "the transaction has no change to pay a higher fee from"))?;
    let left = change.value.to_sat().checked_sub(extra).filter(|v| *v >= custody::DUST_SAT).ok_or_else(|| {
        not_stuck("cannot_bump", format!("the change of {} sat cannot pay {extra} sat more", change.value.to_sat()))
    })?;
    change.value = Sats::from_sat(left);
    for input in &mut tx.input {
        input.witness = bitcoin::Witness::new();
    }
    let keyring = state.keyring()?;
    let paths = vec![(rampart_custody::HOT_BRANCH, 0); tx.input.len()];
    custody::open_hot_key(&keyring, &wallet)?.sign_key_spends(&mut tx, &spent, &paths).map_err(internal)?;
    let txid = tx.compute_txid();
    let new = CustodyTx {
        id: 0,
        asset: t.asset.clone(),
        kind: "withdrawal".into(),
        txid: txid.to_byte_array().to_vec(),
        tx: serialize(&tx),
        prevouts: t.prevouts.clone(),
        to_cold: t.to_cold,
        to_hot: t.to_hot.saturating_sub(extra),
        fee,
        state: "signed".into(),
        ceremony_id: None,
        failure: None,
    };
    let mut r = state.record(actor, "withdrawal.fee_bumped", &format!("withdrawal:{}", w.id), AuditOutcome::Success);
    r.details.insert("replaces".into(), old.compute_txid().to_string());
    r.details.insert("txid".into(), txid.to_string());
    r.details.insert("fee_sat".into(), fee.to_string());
    r.details.insert("previous_fee_sat".into(), t.fee.to_string());
    r.details.insert("reason".into(), reason.to_owned());
    let Some(id) = state
        .store()
        .replace_custody_tx(t.id, &new, tx.input.len(), state.now_ns(), &state.auditor(&keyring), vec![r])
        .await?
    else {
        return Err(not_stuck("not_broadcast", "the transaction changed meanwhile; look again"));
    };
    custody::broadcast_one(state, custody, &keyring, id).await?;
    let now = state.store().custody_tx(id).await?.ok_or_else(|| internal("a custody transaction vanished"))?;
    match now.state.as_str() {
        "broadcast" | "confirmed" => Ok(StuckOutcome { txid, fee_sat: fee, chain: "accepted".into() }),
        // Unreachable chain: recorded, the worker sends it.
        "signed" => Ok(StuckOutcome { txid, fee_sat: fee, chain: "pending".into() }),
        _ => Err(not_stuck(
            "replacement_refused",
            format!(
                "the chain refused the replacement ({}); the original transaction still pays the withdrawal",
                now.failure.as_deref().unwrap_or("no reason given")
            ),
        )),
    }
}

fn sent_notice(state: &AppState, w: &WithdrawalRecord, txid: &Txid) -> Result<Notification, ApiError> {
    let asset = asset_of(state, w)?;
    Ok(Notification::WithdrawalSent {
        asset: asset.code,
        amount: asset.format_amount(rampart_core::Amount::new(amount_of(w)?)),
        txid: txid.to_string(),
    })
}

/// Sends a stuck transaction again (a mempool may have dropped it); the chain's answer is logged, never acted on
/// here, since a refusal may only mean that a block the watcher has not read yet confirmed it.
async fn rebroadcast(state: &AppState, custody: &Custody, t: &CustodyTx) -> Result<(), ApiError> {
    let tx: Transaction = deserialize(&t.tx).map_err(internal)?;
    let outcome = custody.chain.broadcast(&tx).await;
    let mut r = state.record(
        "system",
        "custody.withdrawal.rebroadcast",
        &format!("tx:{}", tx.compute_txid()),
        AuditOutcome::Success,
    );
    if let Err(e) = &outcome {
        r.outcome = AuditOutcome::Failure;
        r.details.insert("error".into(), e.to_string());
    }
    state.audit(vec![r]).await
}

/// Hashes what a request asks for, to tell a retry (same key, same request) from a reused key.
pub fn request_hash(asset: &str, amount: u128, address: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [asset.as_bytes(), amount.to_string().as_bytes(), address.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The masked destination for notifications.
pub fn masked(address: &str) -> String {
    mask_address(address)
}
