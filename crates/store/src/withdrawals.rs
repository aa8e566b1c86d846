//! Withdrawals: the request with its ledger hold, checked transitions with their event rows, staff approvals, the
//! versioned policy and the address whitelist. Every command is one transaction; a transition locks the withdrawal's
//! row and refuses to move from any state but the one the caller saw, so two workers (or a worker and a person)
//! never both move it.

use rampart_audit::AuditRecord;
use rampart_ledger::{CreateAccountResult, CreateTransferResult, NewAccount, NewTransfer};
use rampart_withdrawal::{Approval, ApprovalRefused, State};

use crate::audit::{self, Auditor};
use crate::backend::Pipe;
use crate::custody::CustodyTx;
use crate::customers::Effects;
use crate::{Store, StoreError, flow, ts};

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

use crate::custody::i;

/// A withdrawal as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WithdrawalRecord {
    /// The id: 32 hex digits, also the ledger hold's transfer id.
    pub id: String,
    /// The customer.
    pub customer_id: i64,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// SHA-256 of what was asked (asset, amount, address), to tell a retry from a reused key.
    pub request_hash: Vec<u8>,
    /// The asset.
    pub asset: String,
    /// The amount, in the asset's smallest unit, as decimal text.
    pub amount: String,
    /// The network fee held beside the amount, in the smallest unit.
    pub fee_held: String,
    /// The amount's value in micro-dollars when asked.
    pub usd_micro: i64,
    /// The destination, canonical.
    pub address: String,
    /// The whitelist entry, when the address is on the whitelist.
    pub whitelist_id: Option<i64>,
    /// `session` or `api_key`.
    pub initiator: String,
    /// Who asked (`customer:<id>` or `customer:<id>/<key>`).
    pub actor: String,
    /// The state's name.
    pub state: String,
    /// What the gates found, JSON.
    pub screening: String,
    /// The risk engine's score.
    pub risk_score: i64,
    /// The risk case a hold or freeze opened.
    pub risk_case: Option<i64>,
    /// The three-level compliance review.
    pub review_id: Option<i64>,
    /// The policy version that decided.
    pub policy_version: Option<i64>,
    /// The rule that matched.
    pub policy_rule: Option<String>,
    /// The approvals required, JSON.
    pub requirement: Option<String>,
    /// Why it was refused, failed or cancelled.
    pub reason: Option<String>,
    /// The custody transaction that pays it.
    pub custody_tx: Option<i64>,
    /// Its share of that transaction's network fee, in the smallest unit.
    pub network_fee: Option<i64>,
    /// When it was asked, in nanoseconds.
    pub created_at: i64,
    /// When it last moved.
    pub updated_at: i64,
    /// When a wait for people ends it.
    pub expires_at: Option<i64>,
}

impl WithdrawalRecord {
    /// The state.
    pub fn state(&self) -> Result<State, StoreError> {
        State::parse(&self.state).ok_or_else(|| StoreError::Corrupt(format!("unknown withdrawal state {}", self.state)))
    }
}

/// A customer's limit sums (today, this month) and the id of the withdrawal its request's idempotency key made.
type SumsRow = (i64, Option<i64>, Option<i64>, Option<String>);

const COLUMNS: &str = "id, customer_id, idempotency_key, request_hash, asset, amount, fee_held, usd_micro, address, \
     whitelist_id, initiator, actor, state, screening, risk_score, risk_case, review_id, policy_version, policy_rule, \
     requirement, reason, custody_tx, network_fee, created_at, updated_at, expires_at";

/// A withdrawal to record, with its hold.
#[derive(Clone)]
pub struct NewWithdrawal {
    /// The id (32 hex digits of the hold's transfer id).
    pub id: String,
    /// The customer.
    pub customer_id: i64,
    /// The client's key.
    pub idempotency_key: String,
    /// SHA-256 of the request's content.
    pub request_hash: [u8; 32],
    /// The asset.
    pub asset: String,
    /// Smallest units.
    pub amount: u128,
    /// Smallest units held for the network fee.
    pub fee_held: u128,
    /// Micro-dollars.
    pub usd_micro: u64,
    /// Canonical address.
    pub address: String,
    /// The whitelist entry.
    pub whitelist_id: Option<i64>,
    /// `session` or `api_key`.
    pub initiator: &'static str,
    /// Who asked.
    pub actor: String,
    /// The customer's clearing account for withdrawals in flight, created with the first withdrawal (`None` when
    /// the caller knows it exists: one statement fewer).
    pub clearing: Option<NewAccount>,
    /// The hold: a pending transfer of `amount + fee_held` from the customer's account to the clearing account.
    pub hold: NewTransfer,
    /// The first moves, made in the same transaction when nothing waits for people (the decision is known before
    /// the request is recorded): one commit instead of two.
    pub then: Option<Then>,
    /// The policy's windows the decision in `then` summed, each `(since, the customer's earlier withdrawals it
    /// read)`: summed again under the customer's lock, and if one grew (a withdrawal of the customer recorded
    /// since), nothing is written and the answer is [`Requested::Stale`]. Empty when the decision summed none.
    pub windows: Vec<(u64, u64)>,
    /// The gates' findings (JSON) of a request recorded before it is screened (`then` is `None`): stored with it,
    /// so that a restart that finds it still `requested` screens it on what its gates saw.
    pub screening: Option<String>,
    /// Recorded even though the account is frozen: the risk engine froze it deciding on this very request, and
    /// the reviewer who releases the account releases the withdrawal with it.
    pub frozen_ok: bool,
    /// The request's audit entries and notifications (and those of `then`'s moves).
    pub effects: Effects,
    /// The risk engine's events about the request (the signed API request's, the withdrawal's), logged in the same
    /// transaction whatever the outcome (an event whose decision stops or holds the request is logged before, by
    /// the caller).
    pub risk_events: Vec<crate::RiskEventRecord>,
}

/// Moves made in the transaction that records a withdrawal, with the fields they set (`None` leaves a column at
/// its default).
#[derive(Clone, Default)]
pub struct Then {
    /// The path from `requested`.
    pub path: Vec<State>,
    /// Who moves it.
    pub actor: String,
    /// Why (also stored as the withdrawal's reason when not empty).
    pub reason: String,
    /// Gate findings, JSON.
    pub screening: Option<String>,
    /// Risk score.
    pub risk_score: Option<i64>,
    /// Risk case.
    pub risk_case: Option<i64>,
    /// Compliance review.
    pub review_id: Option<i64>,
    /// Policy version.
    pub policy_version: Option<i64>,
    /// The rule that matched.
    pub policy_rule: Option<String>,
    /// Required approvals, JSON.
    pub requirement: Option<String>,
    /// The time limit of a wait.
    pub expires_at_ns: Option<u64>,
    /// The ledger effect (a void when the first decision ends it).
    pub ledger: Vec<NewTransfer>,
}

/// The customer's position when a withdrawal is recorded, read under the customer's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The KYC level.
    pub kyc_level: u8,
    /// Micro-dollars of withdrawals that count against limits since the start of the UTC day.
    pub today_usd_micro: u64,
    /// Since the start of the UTC month.
    pub month_usd_micro: u64,
}

/// A customer's row as a new withdrawal reads it: id, status, withdrawal lock (until, why), KYC level.
type CustomerGate = (i64, String, Option<i64>, Option<String>, i64);

/// What recording a withdrawal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested<E> {
    /// Recorded, funds held.
    Recorded(WithdrawalRecord),
    /// The same request was recorded before under this key.
    Existing(WithdrawalRecord),
    /// The policy decided on a window's sum that has grown since (a withdrawal of the customer recorded
    /// meanwhile): nothing written; decide again.
    Stale,
    /// The key was used before for a different request.
    KeyReused,
    /// The account is not active (locked or frozen).
    NotActive,
    /// Withdrawals are suspended until this time, for this reason.
    Locked {
        /// Nanoseconds.
        until_ns: u64,
        /// Why.
        reason: String,
    },
    /// The limits refuse it.
    OverLimit(E),
    /// The ledger refused the hold (insufficient funds, …); nothing recorded.
    Ledger(CreateTransferResult),
}

/// What a transition changes beside the state; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Changes<'a> {
    /// Gate findings, JSON.
    pub screening: Option<&'a str>,
    /// Risk score.
    pub risk_score: Option<i64>,
    /// Risk case.
    pub risk_case: Option<i64>,
    /// Compliance review.
    pub review_id: Option<i64>,
    /// Policy version.
    pub policy_version: Option<i64>,
    /// Rule.
    pub policy_rule: Option<&'a str>,
    /// Required approvals, JSON.
    pub requirement: Option<&'a str>,
    /// Reason.
    pub reason: Option<&'a str>,
    /// Custody transaction.
    pub custody_tx: Option<i64>,
    /// Network fee share.
    pub network_fee: Option<i64>,
    /// The time limit of a wait.
    pub expires_at_ns: Option<u64>,
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advanced {
    /// Moved; the record as it is now.
    Done(Box<WithdrawalRecord>),
    /// It was not in the expected state (someone else moved it); its state now.
    Stale(String),
    /// No such withdrawal.
    NotFound,
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approved {
    /// Recorded; `true` when it completed the quorum and the withdrawal is now approved.
    Recorded {
        /// The layer it counts for.
        layer: u32,
        /// Whether the withdrawal moved to `approved`.
        complete: bool,
    },
    /// Refused by the policy's rules for approvers.
    Refused(ApprovalRefused),
    /// Not awaiting approval.
    NotAwaiting(String),
    /// No such withdrawal.
    NotFound,
}

/// A withdrawal a transaction pays.
pub struct Payment {
    /// The withdrawal.
    pub id: String,
    /// The state it was seen in (`approved` or `queued`).
    pub from: State,
    /// Its share of the network fee.
    pub network_fee: u64,
    /// Its notification and audit entries.
    pub effects: Effects,
}

/// A version of the withdrawal policy.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyRecord {
    /// The version.
    pub version: i32,
    /// The document.
    pub body: String,
    /// Who proposed it.
    pub proposed_by: String,
    /// `proposed`, `active`, `superseded` or `rejected`.
    pub state: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Why.
    pub note: String,
    /// When proposed.
    pub created_at: i64,
    /// When decided.
    pub decided_at: Option<i64>,
}

/// What deciding a policy proposal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecided {
    /// Decided; the proposal as it is now.
    Done(PolicyRecord),
    /// The proposer cannot decide their own proposal.
    OwnProposal,
    /// Not a pending proposal.
    NotProposed,
    /// No such version.
    NotFound,
}

/// An entry of a customer's address whitelist.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WhitelistEntry {
    /// The id.
    pub id: i64,
    /// The customer.
    pub customer_id: i64,
    /// The asset.
    pub asset: String,
    /// The address, canonical.
    pub address: String,
    /// The customer's label.
    pub label: String,
    /// `unconfirmed`, `active` or `removed`.
    pub state: String,
    /// When added.
    pub created_at: i64,
    /// When the emailed link confirmed it.
    pub confirmed_at: Option<i64>,
    /// When its cooling-off ends.
    pub usable_at: Option<i64>,
    /// When removed.
    pub removed_at: Option<i64>,
}

const WHITELIST_COLUMNS: &str =
    "id, customer_id, asset, address, label, state, created_at, confirmed_at, usable_at, removed_at";

/// What the gates of a new withdrawal ask about its customer ([`Store::withdrawal_position`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionAsk {
    /// The customer.
    pub customer_id: i64,
    /// The asset withdrawn.
    pub asset: String,
    /// The destination.
    pub address: String,
    /// The customer's ledger account in the asset.
    pub account: rampart_core::AccountId,
    /// The times since which the withdrawals that count against limits are summed, in order.
    pub since_ns: Vec<u64>,
}

/// The states of a withdrawal that no longer counts against limits are not these.
const LIVE: &str = "state NOT IN ('rejected', 'cancelled', 'failed', 'expired')";

/// The [`GatePosition`] in a row of the position reads, from column `$base` on: the KYC level, the whitelist-only
/// mode, the policy group, the account's debits pending, debits posted and credits posted as text, the ten whitelist
/// columns, then `$windows` sums.
macro_rules! gate_position {
    ($row:expr, $base:expr, $windows:expr) => {{
        use sqlx::Row;
        let (row, base) = (&$row, $base);
        let amount = |i: usize| -> Result<Option<u128>, StoreError> {
            let text: Option<String> = row.try_get(base + i)?;
            text.map(|t| t.parse::<u128>().map_err(|_| StoreError::Corrupt(format!("ledger amount {t:?}")))).transpose()
        };
        let available = match (amount(3)?, amount(4)?, amount(5)?) {
            (Some(pending), Some(posted), Some(credits)) => {
                Some(credits.saturating_sub(posted.saturating_add(pending)))
            }
            _ => None,
        };
        let entry_id: Option<i64> = row.try_get(base + 6)?;
        let whitelist = match entry_id {
            None => None,
            Some(id) => Some(WhitelistEntry {
                id,
                customer_id: row.try_get(base + 7)?,
                asset: row.try_get(base + 8)?,
                address: row.try_get(base + 9)?,
                label: row.try_get(base + 10)?,
                state: row.try_get(base + 11)?,
                created_at: row.try_get(base + 12)?,
                confirmed_at: row.try_get(base + 13)?,
                usable_at: row.try_get(base + 14)?,
                removed_at: row.try_get(base + 15)?,
            }),
        };
        let mut usd_since = Vec::with_capacity($windows);
        for k in 0..$windows {
            let total: Option<i64> = row.try_get(base + 16 + k)?;
            usd_since.push(u(total.unwrap_or(0)));
        }
        let level: i64 = row.try_get(base)?;
        GatePosition {
            kyc_level: u8::try_from(level).unwrap_or(0),
            whitelist_only: row.try_get(base + 1)?,
            group: row.try_get(base + 2)?,
            whitelist,
            usd_since,
            available,
        }
    }};
}

/// What the gates of a new withdrawal read about its customer ([`Store::withdrawal_position`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePosition {
    /// The KYC level.
    pub kyc_level: u8,
    /// Whether the customer withdraws to whitelisted addresses only.
    pub whitelist_only: bool,
    /// The customer's group, for the withdrawal policy.
    pub group: String,
    /// The destination's whitelist entry.
    pub whitelist: Option<WhitelistEntry>,
    /// Micro-dollars withdrawn since each time asked for, in order.
    pub usd_since: Vec<u64>,
    /// What the customer's ledger account can still spend (`None`: no such account yet).
    pub available: Option<u128>,
}

/// A row of the staff queue: the withdrawal with what a reviewer needs about its customer and destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    /// The withdrawal.
    pub withdrawal: WithdrawalRecord,
    /// Approvals so far.
    pub approvals: Vec<(Approval, String, i64)>,
    /// The customer's earlier withdrawals: how many were confirmed, and their value in micro-dollars.
    pub customer_confirmed: (i64, i64),
    /// Earlier withdrawals to the same address by anyone: how many, by how many customers.
    pub destination_seen: (i64, i64),
}

/// Loads a withdrawal, locked on PostgreSQL (SQLite's writer holds the database already).
macro_rules! lock_withdrawal {
    ($self:ident, $tx:ident, $sql:ident, $id:expr) => {{
        let lock = if matches!($self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        let q = $sql(&format!("SELECT {COLUMNS} FROM withdrawals WHERE id = $1{lock}"));
        let row: Option<WithdrawalRecord> = sqlx::query_as(&q).bind($id).fetch_optional(&mut *$tx.0).await?;
        row
    }};
}

/// Orders the writers of the policy's versions on PostgreSQL (SQLite's single writer orders them already): a
/// proposal numbers the next version from the highest one, and an activation supersedes the active one, so each
/// must read what the other committed, not a snapshot from before it. `SHARE ROW EXCLUSIVE` conflicts with itself
/// and with every write to the table, never with reads; it is taken first, before any other lock, so that it
/// cannot close a cycle.
macro_rules! lock_policies {
    ($self:ident, $tx:ident) => {
        if matches!($self, Store::Postgres(_)) {
            sqlx::query("LOCK TABLE withdrawal_policies IN SHARE ROW EXCLUSIVE MODE").execute(&mut *$tx.0).await?;
        }
    };
}

/// Records the moves along `path` (each checked by the state machine) and updates the row.
macro_rules! record_moves {
    ($tx:ident, $sql:ident, $w:expr, $path:expr, $actor:expr, $reason:expr, $changes:expr, $now:expr) => {{
        let w: &WithdrawalRecord = $w;
        let mut from = w.state()?;
        let seq: Option<i64> =
            sqlx::query_scalar(&$sql("SELECT MAX(seq) FROM withdrawal_events WHERE withdrawal_id = $1"))
                .bind(&w.id)
                .fetch_one(&mut *$tx.0)
                .await?;
        let mut seq = seq.unwrap_or(0);
        for &to in $path {
            from.move_to(to).map_err(|e| StoreError::Corrupt(format!("withdrawal {}: {e}", w.id)))?;
            seq += 1;
            sqlx::query(&$sql(
                "INSERT INTO withdrawal_events (withdrawal_id, seq, from_state, to_state, actor, reason, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            ))
            .bind(&w.id)
            .bind(seq)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind($actor)
            .bind($reason)
            .bind(ts($now))
            .execute(&mut *$tx.0)
            .await?;
            from = to;
        }
        let c: &Changes<'_> = $changes;
        let expires = c.expires_at_ns.map(i).transpose()?;
        let q = $sql(&format!(
            "UPDATE withdrawals SET state = $1, updated_at = $2, screening = COALESCE($3, screening), \
             risk_score = COALESCE($4, risk_score), risk_case = COALESCE($5, risk_case), \
             review_id = COALESCE($6, review_id), policy_version = COALESCE($7, policy_version), \
             policy_rule = COALESCE($8, policy_rule), requirement = COALESCE($9, requirement), \
             reason = COALESCE($10, reason), custody_tx = COALESCE($11, custody_tx), \
             network_fee = COALESCE($12, network_fee), expires_at = COALESCE($13, expires_at) \
             WHERE id = $14 RETURNING {COLUMNS}"
        ));
        let row: WithdrawalRecord = sqlx::query_as(&q)
            .bind(from.as_str())
            .bind(ts($now))
            .bind(c.screening)
            .bind(c.risk_score)
            .bind(c.risk_case)
            .bind(c.review_id)
            .bind(c.policy_version)
            .bind(c.policy_rule)
            .bind(c.requirement)
            .bind(c.reason)
            .bind(c.custody_tx)
            .bind(c.network_fee)
            .bind(expires)
            .bind(&w.id)
            .fetch_one(&mut *$tx.0)
            .await?;
        row
    }};
}

/// Applies a ledger batch (a hold's void or post) inside the transaction; anything but recorded is a bug or a
/// race the caller must see, so it rolls everything back.
macro_rules! ledger_batch {
    ($tx:ident, $batch:expr, $now:expr) => {{
        let batch: &[NewTransfer] = $batch;
        if !batch.is_empty() {
            let results = flow::create_transfers(&mut $tx, batch, $now).await?;
            if let Some(bad) = results.iter().find(|r| !r.is_recorded()) {
                return Err(StoreError::Corrupt(format!(
                    "the ledger refused a withdrawal's hold change: {}",
                    bad.as_str()
                )));
            }
        }
    }};
}

impl Store {
    /// Records a withdrawal and holds its funds, in one transaction: [`Store::request_withdrawals`] with one.
    pub async fn request_withdrawal<E>(
        &self,
        new: NewWithdrawal,
        day_start_ns: u64,
        month_start_ns: u64,
        limits: impl Fn(&NewWithdrawal, Position) -> Result<(), E>,
        now_ns: u64,
        auditor: &Auditor<'_>,
    ) -> Result<Requested<E>, StoreError> {
        let mut answers =
            self.request_withdrawals(vec![new], day_start_ns, month_start_ns, limits, now_ns, auditor).await?;
        answers.pop().ok_or_else(|| StoreError::Corrupt("a batch of one answered nothing".into()))
    }

    /// Records withdrawals of distinct customers and holds their funds, in one transaction (the group commit of
    /// concurrent requests): under the customers' row locks (taken in id order) it re-reads each account's status
    /// and withdrawal lock, answers a retried idempotency key with the withdrawal it made, sums the day's and
    /// month's withdrawals for `limits`, and creates the holds; a request refused by any of these writes nothing
    /// of its own (its customer's clearing account may be created for it), and the others are recorded with
    /// their first moves and effects in a few multi-row statements. The answers are in the order of `batch`.
    pub async fn request_withdrawals<E>(
        &self,
        batch: Vec<NewWithdrawal>,
        day_start_ns: u64,
        month_start_ns: u64,
        limits: impl Fn(&NewWithdrawal, Position) -> Result<(), E>,
        now_ns: u64,
        auditor: &Auditor<'_>,
    ) -> Result<Vec<Requested<E>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if batch.len() > crate::backend::ROWS_PER_INSERT {
            return Err(StoreError::BatchTooLarge { len: batch.len(), max: crate::backend::ROWS_PER_INSERT });
        }
        let mut customers: Vec<i64> = batch.iter().map(|n| n.customer_id).collect();
        customers.sort_unstable();
        customers.dedup();
        if customers.len() != batch.len() {
            return Err(StoreError::Corrupt("a batch of withdrawal requests names a customer twice".into()));
        }
        on_backend!(self, |tx, sql| {
            let rows = tx.lock_customers(&customers).await?;
            let accounts: std::collections::HashMap<i64, CustomerGate> = rows.into_iter().map(|r| (r.0, r)).collect();
            let risk_events: Vec<crate::RiskEventRecord> =
                batch.iter().flat_map(|n| n.risk_events.iter().cloned()).collect();

            let n = batch.len();
            let sums = tx.recent_sums(&batch, &customers, day_start_ns, month_start_ns).await?;
            let made: Vec<&String> = sums.iter().filter_map(|r| r.3.as_ref()).collect();
            // Only a retried key (rare) reads its withdrawal.
            let mut existing: std::collections::HashMap<(i64, String), WithdrawalRecord> =
                std::collections::HashMap::new();
            if !made.is_empty() {
                let q = sql(&format!(
                    "SELECT {COLUMNS} FROM withdrawals WHERE id IN ({})",
                    crate::backend::numbered(1, made.len())
                ));
                let mut query = sqlx::query_as(&q);
                for id in &made {
                    query = query.bind(*id);
                }
                let found: Vec<WithdrawalRecord> = query.fetch_all(&mut *tx.0).await?;
                existing.extend(found.into_iter().map(|w| ((w.customer_id, w.idempotency_key.clone()), w)));
            }
            let sums: std::collections::HashMap<i64, (u64, u64)> =
                sums.into_iter().map(|(c, d, m, _)| (c, (u(d.unwrap_or(0)), u(m.unwrap_or(0))))).collect();

            // The windows decisions summed before the lock, summed again under it (only policies with windows).
            let mut stale = std::collections::HashSet::new();
            for (k, new) in batch.iter().enumerate() {
                for &(since, used) in &new.windows {
                    let q = sql(&format!(
                        "SELECT CAST(SUM(usd_micro) AS BIGINT) FROM withdrawals WHERE customer_id = $1 \
                         AND created_at >= $2 AND {LIVE}"
                    ));
                    let total: Option<i64> =
                        sqlx::query_scalar(&q).bind(new.customer_id).bind(ts(since)).fetch_one(&mut *tx.0).await?;
                    if u(total.unwrap_or(0)) > used {
                        stale.insert(k);
                        break;
                    }
                }
            }

            // Each request's own checks; `None` goes on to the ledger.
            let mut answers: Vec<Option<Requested<E>>> = Vec::with_capacity(n);
            for (k, new) in batch.iter().enumerate() {
                answers.push(Some(if let Some(w) = existing.remove(&(new.customer_id, new.idempotency_key.clone())) {
                    if w.request_hash == new.request_hash { Requested::Existing(w) } else { Requested::KeyReused }
                } else if stale.contains(&k) {
                    Requested::Stale
                } else if let Some((_, status, lock_until, lock_reason, kyc_level)) = accounts.get(&new.customer_id) {
                    let (today, month) = sums.get(&new.customer_id).copied().unwrap_or((0, 0));
                    let position = Position {
                        kyc_level: u8::try_from(*kyc_level).unwrap_or(0),
                        today_usd_micro: today,
                        month_usd_micro: month,
                    };
                    if status != "active" && !(new.frozen_ok && status == "frozen") {
                        Requested::NotActive
                    } else if let Some(until) = lock_until.map(u).filter(|&until| until > now_ns) {
                        Requested::Locked {
                            until_ns: until,
                            reason: lock_reason.clone().unwrap_or_else(|| "security change".into()),
                        }
                    } else if let Err(e) = limits(new, position) {
                        Requested::OverLimit(e)
                    } else {
                        answers.push(None);
                        continue;
                    }
                } else {
                    Requested::NotActive
                }));
            }

            // The holds, after the clearing accounts they credit.
            let going: Vec<usize> = (0..n).filter(|&k| answers[k].is_none()).collect();
            if !going.is_empty() {
                let clearing: Vec<NewAccount> = going.iter().filter_map(|&k| batch[k].clearing).collect();
                if !clearing.is_empty() {
                    let made = flow::create_accounts(&mut tx, &clearing, now_ns).await?;
                    if let Some(bad) =
                        made.iter().find(|r| !matches!(r, CreateAccountResult::Ok | CreateAccountResult::Exists))
                    {
                        return Err(StoreError::Corrupt(format!("a clearing account was refused: {}", bad.as_str())));
                    }
                }
                let holds: Vec<NewTransfer> = going.iter().map(|&k| batch[k].hold).collect();
                let results = flow::create_transfers(&mut tx, &holds, now_ns).await?;
                for (&k, result) in going.iter().zip(results) {
                    if result != CreateTransferResult::Ok {
                        answers[k] = Some(Requested::Ledger(result));
                    }
                }
            }
            let recorded: Vec<usize> = (0..n).filter(|&k| answers[k].is_none()).collect();
            let mut batch = batch;
            if !recorded.is_empty() {
                let mut rows = Vec::with_capacity(recorded.len());
                let mut events = Vec::new();
                for &k in &recorded {
                    let new = &batch[k];
                    if let Some(t) = &new.then {
                        let mut from = State::Requested;
                        for (seq, &to) in (1..).zip(&t.path) {
                            from.move_to(to).map_err(|e| StoreError::Corrupt(format!("withdrawal {}: {e}", new.id)))?;
                            events.push((k, seq, from, to));
                            from = to;
                        }
                    }
                    rows.push(k);
                }
                let effects: Vec<(i64, Effects)> =
                    recorded.iter().map(|&k| (batch[k].customer_id, std::mem::take(&mut batch[k].effects))).collect();
                let notices: Vec<(i64, &crate::customers::Notice)> =
                    effects.iter().flat_map(|(c, e)| e.notices.iter().map(move |n| (*c, n))).collect();
                let (inserted, head) = tx
                    .insert_recorded(Recorded {
                        batch: &batch,
                        rows: &rows,
                        events: &events,
                        risk: &risk_events,
                        notices: &notices,
                        now_ns,
                    })
                    .await?;
                let mut inserted: std::collections::HashMap<String, WithdrawalRecord> =
                    inserted.into_iter().map(|w| (w.id.clone(), w)).collect();
                let ledger: Vec<NewTransfer> = recorded
                    .iter()
                    .filter_map(|&k| batch[k].then.as_ref())
                    .flat_map(|t| t.ledger.iter().cloned())
                    .collect();
                ledger_batch!(tx, &ledger, now_ns);
                for &k in &recorded {
                    let w = inserted
                        .remove(&batch[k].id)
                        .ok_or_else(|| StoreError::Corrupt(format!("withdrawal {} was not inserted", batch[k].id)))?;
                    answers[k] = Some(Requested::Recorded(w));
                }
                insert_tickets!(tx, sql, effects.iter().flat_map(|(_, e)| e.tickets.iter()));
                let records: Vec<AuditRecord> = effects.into_iter().flat_map(|(_, e)| e.records).collect();
                if !records.is_empty() {
                    audit::append_after(&mut tx, head, records, auditor).await?;
                }
            }
            if recorded.is_empty() {
                crate::risk::insert_risk_events!(tx, sql, risk_events);
            }
            answers.into_iter().map(|a| a.expect("every request answered")).collect::<Vec<_>>()
        })
        .pipe(Ok)
    }

    /// Moves a withdrawal that is in `from` and paid by the custody transaction `paid_by` (as its caller saw it)
    /// along `path` (every step checked by the state machine and recorded), with `changes`, a ledger batch (the
    /// hold's void or post) and `effects`, in one transaction. [`Advanced::Stale`] if it moved or its payment was
    /// replaced meanwhile (a fee bump): a caller acting on the replaced transaction's fate must not act on it.
    #[allow(clippy::too_many_arguments)]
    pub async fn advance_withdrawal(
        &self,
        id: &str,
        from: State,
        paid_by: Option<i64>,
        path: &[State],
        actor: &str,
        reason: &str,
        changes: &Changes<'_>,
        ledger: &[NewTransfer],
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<Advanced, StoreError> {
        on_backend!(self, |tx, sql| {
            let Some(w) = lock_withdrawal!(self, tx, sql, id) else { return Ok(Advanced::NotFound) };
            if w.state != from.as_str() || w.custody_tx != paid_by {
                return Ok(Advanced::Stale(w.state));
            }
            let row = record_moves!(tx, sql, &w, path, actor, reason, changes, now_ns);
            ledger_batch!(tx, ledger, now_ns);
            write_effects!(tx, sql, w.customer_id, now_ns, effects, auditor);
            Advanced::Done(Box::new(row))
        })
        .pipe(Ok)
    }

    /// Records the transaction that pays these withdrawals (signed, its inputs reserved) and moves each of them
    /// from the state it was seen in to `signing`, in one transaction: `None`, and nothing written, if an input is
    /// reserved already or a withdrawal moved meanwhile (cancelled by its customer, say).
    #[allow(clippy::too_many_arguments)]
    pub async fn pay_withdrawals(
        &self,
        payments: Vec<Payment>,
        custody_tx: &CustodyTx,
        spends: &[(Vec<u8>, u32)],
        actor: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let Some(tx_id) = insert_custody_tx!(tx, sql, custody_tx, spends, now_ns) else { return Ok(None) };
            let paid_by = if custody_tx.ceremony_id.is_some() {
                "to be signed by the cold wallet's custodians"
            } else {
                "paid by the hot wallet"
            };
            for p in payments {
                let Some(w) = lock_withdrawal!(self, tx, sql, &p.id) else { return Ok(None) };
                if w.state != p.from.as_str() {
                    return Ok(None);
                }
                // The reason it waited (a refill, say) no longer holds.
                let changes = Changes {
                    custody_tx: Some(tx_id),
                    network_fee: Some(i(p.network_fee)?),
                    reason: Some(paid_by),
                    ..Changes::default()
                };
                record_moves!(tx, sql, &w, &[State::Signing], actor, paid_by, &changes, now_ns);
                write_effects!(tx, sql, w.customer_id, now_ns, p.effects, auditor);
            }
            audit::append(&mut tx, crate::custody::about_custody_tx(records, tx_id), auditor).await?;
            Some(tx_id)
        })
        .pipe(Ok)
    }

    /// Records a staff approval of a withdrawal awaiting approval: `decide` sees the approvals so far and answers
    /// the layer this one counts for and whether the policy's requirement is then met (in which case the
    /// withdrawal moves to `approved` in the same transaction). `effects` answers what to write, given whether it
    /// completed the requirement (the move's own record and notice then).
    #[allow(clippy::too_many_arguments)]
    pub async fn approve_withdrawal(
        &self,
        id: &str,
        approver: &str,
        reason: &str,
        decide: impl FnOnce(&WithdrawalRecord, &[Approval]) -> Result<(u32, bool), ApprovalRefused>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: impl FnOnce(bool) -> Effects,
    ) -> Result<Approved, StoreError> {
        on_backend!(self, |tx, sql| {
            let Some(w) = lock_withdrawal!(self, tx, sql, id) else { return Ok(Approved::NotFound) };
            if w.state != State::AwaitingApproval.as_str() {
                return Ok(Approved::NotAwaiting(w.state));
            }
            let rows: Vec<(String, i64)> = sqlx::query_as(&sql(
                "SELECT approver, layer FROM withdrawal_approvals WHERE withdrawal_id = $1 ORDER BY created_at",
            ))
            .bind(id)
            .fetch_all(&mut *tx.0)
            .await?;
            let approvals: Vec<Approval> = rows
                .into_iter()
                .map(|(approver, layer)| Approval { approver, layer: u32::try_from(layer).unwrap_or(u32::MAX) })
                .collect();
            let (layer, complete) = match decide(&w, &approvals) {
                Ok(d) => d,
                Err(refused) => return Ok(Approved::Refused(refused)),
            };
            sqlx::query(&sql("INSERT INTO withdrawal_approvals (withdrawal_id, approver, layer, reason, created_at) \
                 VALUES ($1, $2, $3, $4, $5)"))
            .bind(id)
            .bind(approver)
            .bind(i64::from(layer))
            .bind(reason)
            .bind(ts(now_ns))
            .execute(&mut *tx.0)
            .await?;
            if complete {
                record_moves!(
                    tx,
                    sql,
                    &w,
                    &[State::Approved],
                    approver,
                    "approvals complete",
                    &Changes::default(),
                    now_ns
                );
            }
            write_effects!(tx, sql, w.customer_id, now_ns, effects(complete), auditor);
            Approved::Recorded { layer, complete }
        })
        .pipe(Ok)
    }

    /// The approvals of a withdrawal, in order: (approval, reason, time).
    pub async fn withdrawal_approvals(&self, id: &str) -> Result<Vec<(Approval, String, i64)>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(&sql(
                "SELECT approver, layer, reason, created_at FROM withdrawal_approvals WHERE withdrawal_id = $1 \
                 ORDER BY created_at, approver",
            ))
            .bind(id)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(approver, layer, reason, at)| {
                    (Approval { approver, layer: u32::try_from(layer).unwrap_or(u32::MAX) }, reason, at)
                })
                .collect())
        })
    }

    /// A withdrawal by id.
    pub async fn withdrawal(&self, id: &str) -> Result<Option<WithdrawalRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {COLUMNS} FROM withdrawals WHERE id = $1"));
            Ok(sqlx::query_as(&q).bind(id).fetch_optional(pool).await?)
        })
    }

    /// A customer's withdrawal by its idempotency key.
    pub async fn customer_withdrawal_by_key(
        &self,
        customer_id: i64,
        key: &str,
    ) -> Result<Option<WithdrawalRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {COLUMNS} FROM withdrawals WHERE customer_id = $1 AND idempotency_key = $2"));
            Ok(sqlx::query_as(&q).bind(customer_id).bind(key).fetch_optional(pool).await?)
        })
    }

    /// Micro-dollars of a customer's withdrawals that count against limits, asked since `since_ns`.
    pub async fn withdrawn_usd_since(&self, customer_id: i64, since_ns: u64) -> Result<u64, StoreError> {
        on_reader!(self, |pool, sql| {
            let total: Option<i64> = sqlx::query_scalar(&sql(
                "SELECT CAST(SUM(usd_micro) AS BIGINT) FROM withdrawals WHERE customer_id = $1 AND created_at >= $2 \
                 AND state NOT IN ('rejected', 'cancelled', 'failed', 'expired')",
            ))
            .bind(customer_id)
            .bind(ts(since_ns))
            .fetch_one(pool)
            .await?;
            Ok(u(total.unwrap_or(0)))
        })
    }

    /// What the gates of a new withdrawal need to know about its customer, in one read: the KYC level, the
    /// whitelist-only mode, the destination's whitelist entry (not removed), what the ask's ledger account can
    /// still spend, and the value in micro-dollars of the withdrawals that count against limits since each of its
    /// times. `None` if there is no such customer.
    pub async fn withdrawal_position(&self, ask: &PositionAsk) -> Result<Option<GatePosition>, StoreError> {
        // One pass over the customer's withdrawals since the earliest time asked for, a conditional sum per time.
        let sums: Vec<String> = (0..ask.since_ns.len())
            .map(|k| format!("CAST(SUM(CASE WHEN created_at >= ${} THEN usd_micro ELSE 0 END) AS BIGINT)", k + 6))
            .collect();
        // An aggregate either way: the derived table has exactly one row.
        let sums = if sums.is_empty() { "COUNT(*)".to_owned() } else { sums.join(", ") };
        let w: Vec<String> = WHITELIST_COLUMNS.split(", ").map(|c| format!("w.{c}")).collect();
        // The ledger's account ids are UUIDs on PostgreSQL and 16-byte blobs on SQLite: bound as bytes to both.
        let account_id = if matches!(self, Store::Postgres(_)) { "CAST(encode($4, 'hex') AS uuid)" } else { "$4" };
        let q = format!(
            "SELECT c.kyc_level, c.whitelist_only, c.policy_group, CAST(a.debits_pending AS TEXT), \
             CAST(a.debits_posted AS TEXT), CAST(a.credits_posted AS TEXT), {}, s.* FROM customers c \
             LEFT JOIN whitelist_addresses w \
               ON w.customer_id = c.id AND w.asset = $2 AND w.address = $3 AND w.state <> 'removed' \
             LEFT JOIN ledger_accounts a ON a.id = {account_id} \
             CROSS JOIN (SELECT {sums} FROM withdrawals WHERE customer_id = $1 AND created_at >= $5 \
               AND {LIVE}) s \
             WHERE c.id = $1",
            w.join(", ")
        );
        let earliest = ask.since_ns.iter().copied().min().unwrap_or(0);
        on_reader!(self, |pool, sql| {
            let q = sql(&q);
            let mut query = sqlx::query(&q)
                .bind(ask.customer_id)
                .bind(&ask.asset)
                .bind(&ask.address)
                .bind(ask.account.get().to_be_bytes().to_vec())
                .bind(ts(earliest));
            for since in &ask.since_ns {
                query = query.bind(ts(*since));
            }
            let Some(row) = query.fetch_optional(pool).await? else { return Ok(None) };
            Ok(Some(gate_position!(row, 0, ask.since_ns.len())))
        })
    }

    /// [`Store::withdrawal_position`] for many asks at once, the answers in their order: on PostgreSQL one
    /// statement (concurrent requests read together, one round trip), on SQLite one read after another.
    pub async fn withdrawal_positions(&self, asks: &[PositionAsk]) -> Result<Vec<Option<GatePosition>>, StoreError> {
        let Store::Postgres(pg) = self else {
            let mut out = Vec::with_capacity(asks.len());
            for ask in asks {
                out.push(self.withdrawal_position(ask).await?);
            }
            return Ok(out);
        };
        let mut out = vec![None; asks.len()];
        // One statement for each number of times asked (a policy changed between two asks: rarely more than one).
        let mut counts: Vec<usize> = asks.iter().map(|a| a.since_ns.len()).collect();
        counts.sort_unstable();
        counts.dedup();
        for windows in counts {
            let numbers: Vec<i64> = (0..asks.len())
                .filter(|&k| asks[k].since_ns.len() == windows)
                .map(|k| i64::try_from(k).unwrap_or(i64::MAX))
                .collect();
            let pick = |k: &i64| &asks[usize::try_from(*k).unwrap_or(0)];
            let times: Vec<String> = (0..windows).map(|k| format!("s{k}")).collect();
            let sums: Vec<String> = times
                .iter()
                .map(|t| format!("CAST(SUM(CASE WHEN d.created_at >= q.{t} THEN d.usd_micro ELSE 0 END) AS BIGINT)"))
                .collect();
            let sums = if sums.is_empty() { "COUNT(*)".to_owned() } else { sums.join(", ") };
            let arrays: Vec<String> = (0..windows).map(|k| format!("${}::bigint[]", k + 7)).collect();
            let columns: Vec<String> = times.iter().map(|t| format!(", {t}")).collect();
            let w: Vec<String> = WHITELIST_COLUMNS.split(", ").map(|c| format!("w.{c}")).collect();
            // Each ask looks up its customer, destination and account by key, and sums its own customer's
            // withdrawals. `OFFSET 0` keeps each lookup a subquery run once an ask, through its index: joined
            // instead, a planner that thinks the asks many or a table small (a new database's statistics) hashes
            // the whole table for each group.
            let q = format!(
                "SELECT c.kyc_level, c.whitelist_only, c.policy_group, CAST(a.debits_pending AS TEXT), \
                 CAST(a.debits_posted AS TEXT), CAST(a.credits_posted AS TEXT), {}, s.*, q.n \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::uuid[], $6::bigint[]{}) \
                   AS q(n, customer_id, asset, address, account, earliest{}) \
                 CROSS JOIN LATERAL (SELECT kyc_level, whitelist_only, policy_group FROM customers \
                   WHERE id = q.customer_id OFFSET 0) c \
                 LEFT JOIN LATERAL (SELECT {WHITELIST_COLUMNS} FROM whitelist_addresses \
                   WHERE customer_id = q.customer_id AND asset = q.asset AND address = q.address \
                   AND state <> 'removed' OFFSET 0) w ON TRUE \
                 LEFT JOIN LATERAL (SELECT debits_pending, debits_posted, credits_posted FROM ledger_accounts \
                   WHERE id = q.account OFFSET 0) a ON TRUE \
                 CROSS JOIN LATERAL (SELECT {sums} FROM withdrawals d WHERE d.customer_id = q.customer_id \
                   AND d.created_at >= q.earliest AND d.{LIVE}) s",
                w.join(", "),
                arrays.iter().map(|a| format!(", {a}")).collect::<String>(),
                columns.concat(),
            );
            let mut query = sqlx::query(&q)
                .bind(&numbers)
                .bind(numbers.iter().map(|k| pick(k).customer_id).collect::<Vec<_>>())
                .bind(numbers.iter().map(|k| pick(k).asset.as_str()).collect::<Vec<_>>())
                .bind(numbers.iter().map(|k| pick(k).address.as_str()).collect::<Vec<_>>())
                .bind(numbers.iter().map(|k| crate::postgres::uuid(pick(k).account.get())).collect::<Vec<_>>())
                .bind(
                    numbers.iter().map(|k| ts(pick(k).since_ns.iter().copied().min().unwrap_or(0))).collect::<Vec<_>>(),
                );
            for t in 0..windows {
                query = query.bind(numbers.iter().map(|k| ts(pick(k).since_ns[t])).collect::<Vec<_>>());
            }
            for row in query.fetch_all(&pg.pool).await? {
                use sqlx::Row;
                let n: i64 = row.try_get(16 + windows.max(1))?;
                let slot = usize::try_from(n)
                    .ok()
                    .and_then(|n| out.get_mut(n))
                    .ok_or_else(|| StoreError::Corrupt(format!("a position answered for ask {n}")))?;
                // A destination listed twice (not possible under the live index) would answer twice: the first.
                if slot.is_none() {
                    *slot = Some(gate_position!(row, 0, windows));
                }
            }
        }
        Ok(out)
    }

    /// A customer's withdrawals, newest first.
    pub async fn customer_withdrawals(
        &self,
        customer_id: i64,
        limit: u32,
    ) -> Result<Vec<WithdrawalRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {COLUMNS} FROM withdrawals WHERE customer_id = $1 ORDER BY created_at DESC, id LIMIT $2"
            ));
            Ok(sqlx::query_as(&q).bind(customer_id).bind(i64::from(limit)).fetch_all(pool).await?)
        })
    }

    /// Withdrawals in one of `states` last moved at or before `before_ns`, oldest first.
    pub async fn withdrawals_in(
        &self,
        states: &[State],
        before_ns: u64,
        limit: u32,
    ) -> Result<Vec<WithdrawalRecord>, StoreError> {
        let names: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {COLUMNS} FROM withdrawals WHERE state IN ({}) AND updated_at <= $1 \
                 ORDER BY updated_at, id LIMIT $2",
                names.join(", ")
            ));
            Ok(sqlx::query_as(&q).bind(ts(before_ns)).bind(i64::from(limit)).fetch_all(pool).await?)
        })
    }

    /// The withdrawals a custody transaction pays.
    pub async fn withdrawals_of_custody_tx(&self, custody_tx: i64) -> Result<Vec<WithdrawalRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {COLUMNS} FROM withdrawals WHERE custody_tx = $1 ORDER BY id"));
            Ok(sqlx::query_as(&q).bind(custody_tx).fetch_all(pool).await?)
        })
    }

    /// The moves a withdrawal made: (from, to, actor, reason, time).
    pub async fn withdrawal_events(&self, id: &str) -> Result<Vec<(String, String, String, String, i64)>, StoreError> {
        on_reader!(self, |pool, sql| {
            Ok(sqlx::query_as(&sql(
                "SELECT from_state, to_state, actor, reason, at FROM withdrawal_events WHERE withdrawal_id = $1 \
                 ORDER BY seq",
            ))
            .bind(id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// The staff queue: withdrawals in `states`, oldest first, with the customer's and the destination's history.
    pub async fn withdrawal_queue(&self, states: &[State], limit: u32) -> Result<Vec<QueueItem>, StoreError> {
        let waiting = self.withdrawals_in(states, u64::MAX >> 1, limit).await?;
        let mut out = Vec::with_capacity(waiting.len());
        for w in waiting {
            out.push(self.queue_item(w).await?);
        }
        Ok(out)
    }

    /// One withdrawal as the staff queue shows it, whatever its state.
    pub async fn withdrawal_queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        match self.withdrawal(id).await? {
            Some(w) => Ok(Some(self.queue_item(w).await?)),
            None => Ok(None),
        }
    }

    /// `w` with its approvals, the customer's confirmed withdrawals and the destination's other withdrawals.
    async fn queue_item(&self, w: WithdrawalRecord) -> Result<QueueItem, StoreError> {
        let approvals = self.withdrawal_approvals(&w.id).await?;
        let (customer_confirmed, destination_seen) = on_reader!(self, |pool, sql| {
            let mine: (i64, Option<i64>) = sqlx::query_as(&sql(
                "SELECT COUNT(*), CAST(SUM(usd_micro) AS BIGINT) FROM withdrawals WHERE customer_id = $1 \
                 AND state = 'confirmed'",
            ))
            .bind(w.customer_id)
            .fetch_one(pool)
            .await?;
            let seen: (i64, i64) = sqlx::query_as(&sql(
                "SELECT COUNT(*), COUNT(DISTINCT customer_id) FROM withdrawals WHERE address = $1 AND id <> $2",
            ))
            .bind(&w.address)
            .bind(&w.id)
            .fetch_one(pool)
            .await?;
            ((mine.0, mine.1.unwrap_or(0)), seen)
        });
        Ok(QueueItem { withdrawal: w, approvals, customer_confirmed, destination_seen })
    }

    /// The active withdrawal policy.
    pub async fn active_withdrawal_policy(&self) -> Result<Option<PolicyRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            Ok(sqlx::query_as(&sql(
                "SELECT version, body, proposed_by, state, decided_by, note, created_at, decided_at \
                 FROM withdrawal_policies WHERE state = 'active'",
            ))
            .fetch_optional(pool)
            .await?)
        })
    }

    /// Every version of the policy, newest first.
    pub async fn withdrawal_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            Ok(sqlx::query_as(&sql(
                "SELECT version, body, proposed_by, state, decided_by, note, created_at, decided_at \
                 FROM withdrawal_policies ORDER BY version DESC",
            ))
            .fetch_all(pool)
            .await?)
        })
    }

    /// Installs the first policy when there is none (at start-up, from the configuration): `false` if one exists.
    pub async fn install_withdrawal_policy(
        &self,
        body: &str,
        by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            // Two nodes (or two first requests) may install at once: the first insert wins, the other does nothing.
            let installed = sqlx::query(&sql(
                "INSERT INTO withdrawal_policies (version, body, proposed_by, state, decided_by, note, created_at, \
                 decided_at) SELECT 1, $1, $2, 'active', $2, 'installed from the configuration', $3, $3 \
                 WHERE NOT EXISTS (SELECT 1 FROM withdrawal_policies) ON CONFLICT DO NOTHING",
            ))
            .bind(body)
            .bind(by)
            .bind(ts(now_ns))
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if installed == 0 {
                return Ok(false);
            }
            audit::append(&mut tx, records, auditor).await?;
            true
        })
        .pipe(Ok)
    }

    /// Proposes a new version of the policy: the next version number, `proposed`.
    pub async fn propose_withdrawal_policy(
        &self,
        body: &str,
        by: &str,
        note: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<i32, StoreError> {
        on_backend!(self, |tx, sql| {
            // The next version is the highest one plus one: without the lock, two proposals at once would read the
            // same highest version and the second insert would fail the primary key.
            lock_policies!(self, tx);
            let version: i32 = sqlx::query_scalar(&sql(
                "INSERT INTO withdrawal_policies (version, body, proposed_by, state, note, created_at) \
                 SELECT COALESCE(MAX(version), 0) + 1, $1, $2, 'proposed', $3, $4 FROM withdrawal_policies \
                 RETURNING version",
            ))
            .bind(body)
            .bind(by)
            .bind(note)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            let records = records
                .into_iter()
                .map(|mut r| {
                    r.details.insert("version".into(), version.to_string());
                    r
                })
                .collect();
            audit::append(&mut tx, records, auditor).await?;
            version
        })
        .pipe(Ok)
    }

    /// Decides a proposed policy: a person other than its proposer activates it (the active one is superseded) or
    /// rejects it, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_withdrawal_policy(
        &self,
        version: i32,
        approve: bool,
        by: &str,
        note: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<PolicyDecided, StoreError> {
        on_backend!(self, |tx, sql| {
            // Without the lock, two activations at once would each supersede the version active before both, and
            // the second would fail the index that allows one active version.
            lock_policies!(self, tx);
            let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
            let q = sql(&format!(
                "SELECT version, body, proposed_by, state, decided_by, note, created_at, decided_at \
                 FROM withdrawal_policies WHERE version = $1{lock}"
            ));
            let row: Option<PolicyRecord> = sqlx::query_as(&q).bind(version).fetch_optional(&mut *tx.0).await?;
            let Some(row) = row else { return Ok(PolicyDecided::NotFound) };
            if row.state != "proposed" {
                return Ok(PolicyDecided::NotProposed);
            }
            if row.proposed_by == by {
                return Ok(PolicyDecided::OwnProposal);
            }
            if approve {
                sqlx::query(&sql("UPDATE withdrawal_policies SET state = 'superseded' WHERE state = 'active'"))
                    .execute(&mut *tx.0)
                    .await?;
            }
            let q = sql("UPDATE withdrawal_policies SET state = $1, decided_by = $2, note = $3, decided_at = $4 \
                 WHERE version = $5 RETURNING version, body, proposed_by, state, decided_by, note, created_at, \
                 decided_at");
            let done: PolicyRecord = sqlx::query_as(&q)
                .bind(if approve { "active" } else { "rejected" })
                .bind(by)
                .bind(note)
                .bind(ts(now_ns))
                .bind(version)
                .fetch_one(&mut *tx.0)
                .await?;
            audit::append(&mut tx, records, auditor).await?;
            PolicyDecided::Done(done)
        })
        .pipe(Ok)
    }

    /// Adds an address to a customer's whitelist, unconfirmed until the emailed link is followed. `None` if it is
    /// on the list already.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_whitelist_address(
        &self,
        customer_id: i64,
        asset: &str,
        address: &str,
        label: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: impl FnOnce(i64) -> Effects,
    ) -> Result<Option<WhitelistEntry>, StoreError> {
        on_backend!(self, |tx, sql| {
            let q = sql(&format!(
                "INSERT INTO whitelist_addresses (customer_id, asset, address, label, state, created_at) \
                 VALUES ($1, $2, $3, $4, 'unconfirmed', $5) ON CONFLICT DO NOTHING RETURNING {WHITELIST_COLUMNS}"
            ));
            let row: Option<WhitelistEntry> = sqlx::query_as(&q)
                .bind(customer_id)
                .bind(asset)
                .bind(address)
                .bind(label)
                .bind(ts(now_ns))
                .fetch_optional(&mut *tx.0)
                .await?;
            let Some(row) = row else { return Ok(None) };
            write_effects!(tx, sql, customer_id, now_ns, effects(row.id), auditor);
            Some(row)
        })
        .pipe(Ok)
    }

    /// Confirms an unconfirmed whitelist entry (the emailed link): usable from `usable_at_ns`.
    pub async fn confirm_whitelist_address(
        &self,
        id: i64,
        customer_id: i64,
        usable_at_ns: u64,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<Option<WhitelistEntry>, StoreError> {
        on_backend!(self, |tx, sql| {
            let q = sql(&format!(
                "UPDATE whitelist_addresses SET state = 'active', confirmed_at = $1, usable_at = $2 \
                 WHERE id = $3 AND customer_id = $4 AND state = 'unconfirmed' RETURNING {WHITELIST_COLUMNS}"
            ));
            let row: Option<WhitelistEntry> = sqlx::query_as(&q)
                .bind(ts(now_ns))
                .bind(ts(usable_at_ns))
                .bind(id)
                .bind(customer_id)
                .fetch_optional(&mut *tx.0)
                .await?;
            let Some(row) = row else { return Ok(None) };
            write_effects!(tx, sql, customer_id, now_ns, effects, auditor);
            Some(row)
        })
        .pipe(Ok)
    }

    /// Removes a whitelist entry.
    pub async fn remove_whitelist_address(
        &self,
        id: i64,
        customer_id: i64,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<Option<WhitelistEntry>, StoreError> {
        on_backend!(self, |tx, sql| {
            let q = sql(&format!(
                "UPDATE whitelist_addresses SET state = 'removed', removed_at = $1 WHERE id = $2 AND customer_id = $3 \
                 AND state <> 'removed' RETURNING {WHITELIST_COLUMNS}"
            ));
            let row: Option<WhitelistEntry> =
                sqlx::query_as(&q).bind(ts(now_ns)).bind(id).bind(customer_id).fetch_optional(&mut *tx.0).await?;
            let Some(row) = row else { return Ok(None) };
            write_effects!(tx, sql, customer_id, now_ns, effects, auditor);
            Some(row)
        })
        .pipe(Ok)
    }

    /// A customer's live whitelist (unconfirmed and active entries).
    pub async fn whitelist(&self, customer_id: i64) -> Result<Vec<WhitelistEntry>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {WHITELIST_COLUMNS} FROM whitelist_addresses WHERE customer_id = $1 AND state <> 'removed' \
                 ORDER BY id"
            ));
            Ok(sqlx::query_as(&q).bind(customer_id).fetch_all(pool).await?)
        })
    }

    /// The live whitelist entry of an address.
    pub async fn whitelist_entry(
        &self,
        customer_id: i64,
        asset: &str,
        address: &str,
    ) -> Result<Option<WhitelistEntry>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {WHITELIST_COLUMNS} FROM whitelist_addresses WHERE customer_id = $1 AND asset = $2 \
                 AND address = $3 AND state <> 'removed'"
            ));
            Ok(sqlx::query_as(&q).bind(customer_id).bind(asset).bind(address).fetch_optional(pool).await?)
        })
    }

    /// Whether the customer withdraws to whitelisted addresses only.
    pub async fn whitelist_only(&self, customer_id: i64) -> Result<bool, StoreError> {
        on_reader!(self, |pool, sql| {
            let on: Option<bool> = sqlx::query_scalar(&sql("SELECT whitelist_only FROM customers WHERE id = $1"))
                .bind(customer_id)
                .fetch_optional(pool)
                .await?;
            Ok(on.unwrap_or(false))
        })
    }

    /// Puts a customer in a withdrawal-policy group, with `effects` (its audit record), in one transaction: the
    /// group the customer was in, or `None` (nothing written) if there is no such customer.
    pub async fn set_customer_group(
        &self,
        customer_id: i64,
        group: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<Option<String>, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        on_backend!(self, |tx, sql| {
            let q = sql(&format!("SELECT policy_group FROM customers WHERE id = $1{lock}"));
            let before: Option<String> = sqlx::query_scalar(&q).bind(customer_id).fetch_optional(&mut *tx.0).await?;
            let Some(before) = before else { return Ok(None) };
            sqlx::query(&sql("UPDATE customers SET policy_group = $1 WHERE id = $2"))
                .bind(group)
                .bind(customer_id)
                .execute(&mut *tx.0)
                .await?;
            write_effects!(tx, sql, customer_id, now_ns, effects, auditor);
            Some(before)
        })
        .pipe(Ok)
    }

    /// Turns the whitelist-only mode on or off, with a withdrawal lock when turning it off (a security change).
    pub async fn set_whitelist_only(
        &self,
        customer_id: i64,
        on: bool,
        lock: Option<(u64, &str)>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let changed =
                sqlx::query(&sql("UPDATE customers SET whitelist_only = $1 WHERE id = $2 AND whitelist_only <> $1"))
                    .bind(on)
                    .bind(customer_id)
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected();
            if changed == 0 {
                return Ok(false);
            }
            if let Some((until, reason)) = lock {
                sqlx::query(&sql(crate::customers::EXTEND_WITHDRAWAL_LOCK))
                    .bind(ts(until))
                    .bind(reason)
                    .bind(customer_id)
                    .execute(&mut *tx.0)
                    .await?;
            }
            write_effects!(tx, sql, customer_id, now_ns, effects, auditor);
            true
        })
        .pipe(Ok)
    }
}

/// What the recording transaction inserts once the holds are made: the withdrawals recorded (`rows`, indexes into
/// `batch`), their first moves (`events`: index, sequence number, from, to), every request's risk events and the
/// recorded ones' notifications.
pub(crate) struct Recorded<'a> {
    batch: &'a [NewWithdrawal],
    rows: &'a [usize],
    events: &'a [(usize, i64, State, State)],
    risk: &'a [crate::RiskEventRecord],
    /// The recorded withdrawals' notifications, each `(customer, notice)`.
    notices: &'a [(i64, &'a crate::customers::Notice)],
    now_ns: u64,
}

/// The row of `batch[k]` as inserted: its state after its first moves, and what they set.
struct Row<'a> {
    new: &'a NewWithdrawal,
    then: Option<&'a Then>,
    state: State,
}

impl<'a> Recorded<'a> {
    fn row(&self, k: usize) -> Row<'a> {
        let new = &self.batch[k];
        let then = new.then.as_ref();
        Row { new, then, state: then.and_then(|t| t.path.last()).copied().unwrap_or(State::Requested) }
    }

    fn then_of(&self, k: usize) -> &'a Then {
        self.batch[k].then.as_ref().expect("events come from a path")
    }
}

impl Row<'_> {
    fn screening(&self) -> String {
        self.then
            .and_then(|t| t.screening.clone())
            .or_else(|| self.new.screening.clone())
            .unwrap_or_else(|| "{}".into())
    }

    fn reason(&self) -> Option<String> {
        self.then.map(|t| t.reason.clone()).filter(|r| !r.is_empty())
    }

    fn expires_at(&self) -> Result<Option<i64>, StoreError> {
        self.then.and_then(|t| t.expires_at_ns).map(i).transpose()
    }
}

/// Inserting [`Recorded`] and locking the audit log's head for the append that follows: one statement on PostgreSQL
/// (data-modifying `WITH` over arrays, so that its text, and its prepared plan, do not change with the batch), a
/// few on SQLite. Answers the withdrawals inserted and the head `(seq, hash)`.
pub(crate) trait RecordTx {
    /// Locks the customers' rows, in id order (`FOR NO KEY UPDATE` on PostgreSQL: it orders each customer's
    /// requests, yet lets other transactions insert rows that refer to the customer — a notification — while they
    /// hold ledger locks this one will wait for: `FOR UPDATE` would block their foreign-key checks, and the two
    /// would deadlock), and reads what the checks need.
    async fn lock_customers(&mut self, customers: &[i64]) -> Result<Vec<CustomerGate>, StoreError>;
    /// One pass over the customers' recent withdrawals (and the one each request's idempotency key already made,
    /// however old): both limit sums (the day starts within the month) and that withdrawal's id, by customer.
    async fn recent_sums(
        &mut self,
        batch: &[NewWithdrawal],
        customers: &[i64],
        day_start_ns: u64,
        month_start_ns: u64,
    ) -> Result<Vec<SumsRow>, StoreError>;
    async fn insert_recorded(
        &mut self,
        r: Recorded<'_>,
    ) -> Result<(Vec<WithdrawalRecord>, (u64, [u8; 32])), StoreError>;
}

// On PostgreSQL the lists are arrays, so that the statements' texts (and prepared plans) do not change with the
// batch's size.
impl RecordTx for crate::postgres::PgTx {
    async fn lock_customers(&mut self, customers: &[i64]) -> Result<Vec<CustomerGate>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.id, c.status, c.withdrawal_lock_until, c.withdrawal_lock_reason, c.kyc_level \
             FROM UNNEST($1::bigint[]) AS u(id) JOIN customers c ON c.id = u.id ORDER BY c.id FOR NO KEY UPDATE OF c",
        )
        .bind(customers)
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn recent_sums(
        &mut self,
        batch: &[NewWithdrawal],
        _customers: &[i64],
        day_start_ns: u64,
        month_start_ns: u64,
    ) -> Result<Vec<SumsRow>, StoreError> {
        // One request a customer: each key is its customer's. Each customer's pass is a subquery run once through
        // the customer's index (`OFFSET 0`): the prepared statement's generic plan, made while the table was small,
        // would otherwise hash the whole table ever after.
        let q = format!(
            "SELECT k.customer_id, s.* FROM UNNEST($4::bigint[], $5::text[]) AS k(customer_id, key) \
             CROSS JOIN LATERAL (SELECT \
             CAST(SUM(CASE WHEN w.created_at >= $1 AND w.{LIVE} THEN w.usd_micro ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN w.created_at >= $2 AND w.{LIVE} THEN w.usd_micro ELSE 0 END) AS BIGINT), \
             MAX(CASE WHEN w.idempotency_key = k.key THEN w.id END) FROM withdrawals w \
             WHERE w.customer_id = k.customer_id AND (w.created_at >= $3 OR w.idempotency_key = k.key) OFFSET 0) s"
        );
        Ok(sqlx::query_as(&q)
            .bind(ts(day_start_ns))
            .bind(ts(month_start_ns))
            .bind(ts(day_start_ns.min(month_start_ns)))
            .bind(batch.iter().map(|w| w.customer_id).collect::<Vec<_>>())
            .bind(batch.iter().map(|w| w.idempotency_key.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *self.0)
            .await?)
    }

    async fn insert_recorded(
        &mut self,
        r: Recorded<'_>,
    ) -> Result<(Vec<WithdrawalRecord>, (u64, [u8; 32])), StoreError> {
        let n = r.rows.len();
        let (mut id, mut customer, mut key, mut hash, mut asset) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut amount, mut fee, mut usd, mut address, mut whitelist) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut initiator, mut actor, mut state, mut screening, mut score) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut case, mut review, mut version, mut rule, mut requirement) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut reason, mut expires) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &k in r.rows {
            let row = r.row(k);
            let (new, then) = (row.new, row.then);
            id.push(new.id.clone());
            customer.push(new.customer_id);
            key.push(new.idempotency_key.clone());
            hash.push(new.request_hash.to_vec());
            asset.push(new.asset.clone());
            amount.push(new.amount.to_string());
            fee.push(new.fee_held.to_string());
            usd.push(i(new.usd_micro)?);
            address.push(new.address.clone());
            whitelist.push(new.whitelist_id);
            initiator.push(new.initiator.to_owned());
            actor.push(new.actor.clone());
            state.push(row.state.as_str().to_owned());
            screening.push(row.screening());
            score.push(then.and_then(|t| t.risk_score).unwrap_or(0));
            case.push(then.and_then(|t| t.risk_case));
            review.push(then.and_then(|t| t.review_id));
            version.push(then.and_then(|t| t.policy_version));
            rule.push(then.and_then(|t| t.policy_rule.clone()));
            requirement.push(then.and_then(|t| t.requirement.clone()));
            reason.push(row.reason());
            expires.push(row.expires_at()?);
        }
        let (mut e_id, mut e_seq, mut e_from, mut e_to, mut e_actor, mut e_reason) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for &(k, seq, from, to) in r.events {
            let t = r.then_of(k);
            e_id.push(r.batch[k].id.clone());
            e_seq.push(seq);
            e_from.push(from.as_str());
            e_to.push(to.as_str());
            e_actor.push(t.actor.clone());
            e_reason.push(t.reason.clone());
        }
        let (mut r_seq, mut r_at, mut r_customer, mut r_event, mut r_outcome, mut r_version) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for e in r.risk {
            r_seq.push(e.seq);
            r_at.push(ts(e.at_ns));
            r_customer.push(e.customer_id);
            r_event.push(e.event.clone());
            r_outcome.push(e.outcome.clone());
            r_version.push(i64::from(e.rules_version));
        }
        let (mut n_customer, mut n_kind, mut n_title) = (vec![], vec![], vec![]);
        let (mut m_id, mut m_customer, mut m_kind, mut m_payload) = (vec![], vec![], vec![], vec![]);
        for &(customer, notice) in r.notices {
            n_customer.push(customer);
            n_kind.push(notice.kind.as_str());
            n_title.push(notice.title.as_str());
            if let Some((id, payload)) = &notice.email {
                m_id.push(id.to_vec());
                m_customer.push(customer);
                m_kind.push(notice.kind.as_str());
                m_payload.push(payload.as_slice());
            }
        }
        let now = ts(r.now_ns);
        // The events refer to the withdrawals inserted by the same statement: foreign keys are checked at its end.
        // The audit head is locked last, as every writer of the log does: after the ledger's accounts (the ledger
        // batch that may follow, a void of a request's own hold, touches only accounts this transaction holds).
        let q = format!(
            "WITH head AS (SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE), \
             risk AS (INSERT INTO risk_events (seq, at_ns, customer_id, event, outcome, rules_version) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[]) \
             ON CONFLICT (seq) DO NOTHING), \
             notices AS (INSERT INTO customer_notifications (customer_id, kind, title, created_at) \
             SELECT u.*, $7 FROM UNNEST($36::bigint[], $37::text[], $38::text[]) AS u), \
             emails AS (INSERT INTO email_outbox (id, customer_id, kind, payload, created_at, next_attempt_at) \
             SELECT u.*, $7, $7 FROM UNNEST($39::bytea[], $40::bigint[], $41::text[], $42::bytea[]) AS u), \
             moves AS (INSERT INTO withdrawal_events (withdrawal_id, seq, from_state, to_state, actor, reason, at) \
             SELECT u.*, $7 FROM UNNEST($8::text[], $9::bigint[], $10::text[], $11::text[], $12::text[], \
             $13::text[]) AS u) \
             INSERT INTO withdrawals (id, customer_id, idempotency_key, request_hash, asset, amount, fee_held, \
             usd_micro, address, whitelist_id, initiator, actor, state, screening, risk_score, risk_case, review_id, \
             policy_version, policy_rule, requirement, reason, expires_at, created_at, updated_at) \
             SELECT u.*, $7, $7 FROM UNNEST($14::text[], $15::bigint[], $16::text[], $17::bytea[], $18::text[], \
             $19::text[], $20::text[], $21::bigint[], $22::text[], $23::bigint[], $24::text[], $25::text[], \
             $26::text[], $27::text[], $28::bigint[], $29::bigint[], $30::bigint[], $31::bigint[], $32::text[], \
             $33::text[], $34::text[], $35::bigint[]) AS u \
             RETURNING {COLUMNS}, (SELECT seq FROM head) AS head_seq, (SELECT hash FROM head) AS head_hash"
        );
        let rows = sqlx::query(&q)
            .bind(r_seq)
            .bind(r_at)
            .bind(r_customer)
            .bind(r_event)
            .bind(r_outcome)
            .bind(r_version)
            .bind(now)
            .bind(e_id)
            .bind(e_seq)
            .bind(e_from)
            .bind(e_to)
            .bind(e_actor)
            .bind(e_reason)
            .bind(id)
            .bind(customer)
            .bind(key)
            .bind(hash)
            .bind(asset)
            .bind(amount)
            .bind(fee)
            .bind(usd)
            .bind(address)
            .bind(whitelist)
            .bind(initiator)
            .bind(actor)
            .bind(state)
            .bind(screening)
            .bind(score)
            .bind(case)
            .bind(review)
            .bind(version)
            .bind(rule)
            .bind(requirement)
            .bind(reason)
            .bind(expires)
            .bind(n_customer)
            .bind(n_kind)
            .bind(n_title)
            .bind(m_id)
            .bind(m_customer)
            .bind(m_kind)
            .bind(m_payload)
            .fetch_all(&mut *self.0)
            .await?;
        let head = match rows.first() {
            Some(row) => match (
                sqlx::Row::try_get::<Option<i64>, _>(row, "head_seq")?,
                sqlx::Row::try_get::<Option<Vec<u8>>, _>(row, "head_hash")?,
            ) {
                (Some(seq), Some(hash)) => audit::decode_head_position(seq, &hash)?,
                _ => audit::genesis(),
            },
            None => return Err(StoreError::Corrupt("a recording inserted no withdrawal".into())),
        };
        let inserted =
            rows.iter().map(<WithdrawalRecord as sqlx::FromRow<_>>::from_row).collect::<Result<Vec<_>, _>>()?;
        Ok((inserted, head))
    }
}

impl RecordTx for crate::sqlite::SqliteTx {
    async fn lock_customers(&mut self, customers: &[i64]) -> Result<Vec<CustomerGate>, StoreError> {
        let q = crate::backend::sqlite_placeholders(&format!(
            "SELECT id, status, withdrawal_lock_until, withdrawal_lock_reason, kyc_level FROM customers \
             WHERE id IN ({}) ORDER BY id",
            crate::backend::numbered(1, customers.len())
        ));
        let mut query = sqlx::query_as(&q);
        for c in customers {
            query = query.bind(c);
        }
        Ok(query.fetch_all(&mut *self.0).await?)
    }

    async fn recent_sums(
        &mut self,
        batch: &[NewWithdrawal],
        customers: &[i64],
        day_start_ns: u64,
        month_start_ns: u64,
    ) -> Result<Vec<SumsRow>, StoreError> {
        let list = crate::backend::numbered(4, customers.len());
        let first_pair = 4 + customers.len();
        let pairs: Vec<String> =
            (0..batch.len()).map(|k| format!("(${}, ${})", first_pair + 2 * k, first_pair + 2 * k + 1)).collect();
        let pairs = pairs.join(", ");
        let q = crate::backend::sqlite_placeholders(&format!(
            "SELECT customer_id, \
             CAST(SUM(CASE WHEN created_at >= $1 AND {LIVE} THEN usd_micro ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN created_at >= $2 AND {LIVE} THEN usd_micro ELSE 0 END) AS BIGINT), \
             MAX(CASE WHEN (customer_id, idempotency_key) IN (VALUES {pairs}) THEN id END) FROM withdrawals \
             WHERE customer_id IN ({list}) \
             AND (created_at >= $3 OR (customer_id, idempotency_key) IN (VALUES {pairs})) GROUP BY customer_id"
        ));
        let mut query = sqlx::query_as(&q)
            .bind(ts(day_start_ns))
            .bind(ts(month_start_ns))
            .bind(ts(day_start_ns.min(month_start_ns)));
        for c in customers {
            query = query.bind(c);
        }
        for w in batch {
            query = query.bind(w.customer_id).bind(&w.idempotency_key);
        }
        Ok(query.fetch_all(&mut *self.0).await?)
    }

    async fn insert_recorded(
        &mut self,
        r: Recorded<'_>,
    ) -> Result<(Vec<WithdrawalRecord>, (u64, [u8; 32])), StoreError> {
        let tx = self;
        let sql = |q: &str| crate::backend::sqlite_placeholders(q);
        crate::risk::insert_risk_events!(tx, sql, r.risk);
        insert_notices!(tx, sql, r.now_ns, r.notices);
        let q = sql(&format!(
            "INSERT INTO withdrawals (id, customer_id, idempotency_key, request_hash, asset, amount, fee_held, \
             usd_micro, address, whitelist_id, initiator, actor, state, screening, risk_score, risk_case, review_id, \
             policy_version, policy_rule, requirement, reason, expires_at, created_at, updated_at) VALUES {} \
             RETURNING {COLUMNS}",
            crate::backend::placeholders(r.rows.len(), 24)
        ));
        let mut query = sqlx::query_as(&q);
        for &k in r.rows {
            let row = r.row(k);
            let (new, then) = (row.new, row.then);
            query = query
                .bind(&new.id)
                .bind(new.customer_id)
                .bind(&new.idempotency_key)
                .bind(new.request_hash.to_vec())
                .bind(&new.asset)
                .bind(new.amount.to_string())
                .bind(new.fee_held.to_string())
                .bind(i(new.usd_micro)?)
                .bind(&new.address)
                .bind(new.whitelist_id)
                .bind(new.initiator)
                .bind(&new.actor)
                .bind(row.state.as_str())
                .bind(row.screening())
                .bind(then.and_then(|t| t.risk_score).unwrap_or(0))
                .bind(then.and_then(|t| t.risk_case))
                .bind(then.and_then(|t| t.review_id))
                .bind(then.and_then(|t| t.policy_version))
                .bind(then.and_then(|t| t.policy_rule.clone()))
                .bind(then.and_then(|t| t.requirement.clone()))
                .bind(row.reason())
                .bind(row.expires_at()?)
                .bind(ts(r.now_ns))
                .bind(ts(r.now_ns));
        }
        let inserted: Vec<WithdrawalRecord> = query.fetch_all(&mut *tx.0).await?;
        for chunk in r.events.chunks(crate::backend::ROWS_PER_INSERT) {
            let q = sql(&format!(
                "INSERT INTO withdrawal_events (withdrawal_id, seq, from_state, to_state, actor, reason, at) VALUES {}",
                crate::backend::placeholders(chunk.len(), 7)
            ));
            let mut query = sqlx::query(&q);
            for &(k, seq, from, to) in chunk {
                let t = r.then_of(k);
                query = query
                    .bind(&r.batch[k].id)
                    .bind(seq)
                    .bind(from.as_str())
                    .bind(to.as_str())
                    .bind(&t.actor)
                    .bind(&t.reason)
                    .bind(ts(r.now_ns));
            }
            query.execute(&mut *tx.0).await?;
        }
        let head = audit::AuditTx::lock_audit_head(tx).await?;
        Ok((inserted, head))
    }
}
