//! JSON shapes of the operator ledger API, and their parsing into ledger types at the boundary.
//!
//! Amounts travel as decimal strings in the asset's unit ("0.00012345"), ids as decimal strings, and nanosecond
//! timestamps as decimal strings: JSON numbers cannot carry 128 bits, nor even 64 exactly in JavaScript.

use rampart_core::{AccountId, Amount, Asset, AssetCode, AssetRegistry, TransferId};
use rampart_ledger::{Account, AccountFlags, NewAccount, NewTransfer, PendingState, Transfer, TransferFlags};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// A request to create an account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountRequest {
    /// Client-chosen id (a non-zero 128-bit integer as a decimal string); retrying with it is safe.
    #[schema(value_type = String, example = "1001")]
    pub id: AccountId,
    /// The asset code, one of `GET /v1/assets`.
    #[schema(example = "BTC")]
    pub asset: String,
    /// What kind of account this is, chosen by the caller.
    #[serde(default)]
    pub code: u16,
    /// `debits_must_not_exceed_credits` and/or `credits_must_not_exceed_debits`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// An opaque 128-bit reference, such as the owner's id.
    #[serde(default)]
    #[schema(value_type = String)]
    pub user_data: Option<AccountId>,
}

/// A request to create a transfer, or to post or void a pending one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Client-chosen id; retrying with it is safe (the answer is `exists`).
    #[schema(value_type = String, example = "5001")]
    pub id: TransferId,
    /// The account debited; may be omitted when posting or voiding.
    #[serde(default)]
    #[schema(value_type = String)]
    pub debit_account_id: Option<AccountId>,
    /// The account credited; may be omitted when posting or voiding.
    #[serde(default)]
    #[schema(value_type = String)]
    pub credit_account_id: Option<AccountId>,
    /// The asset code; it must be both accounts' asset.
    #[schema(example = "BTC")]
    pub asset: String,
    /// A decimal string in the asset's unit. Omitted when posting means the whole hold.
    #[serde(default)]
    #[schema(example = "0.5")]
    pub amount: Option<String>,
    /// The pending transfer to post or void.
    #[serde(default)]
    #[schema(value_type = String)]
    pub pending_id: Option<TransferId>,
    /// Why the money moved, chosen by the caller.
    #[serde(default)]
    pub code: u16,
    /// Any of `linked`, `pending`, `post_pending_transfer`, `void_pending_transfer`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// For a pending transfer: seconds until it expires (0 or omitted: never).
    #[serde(default)]
    pub timeout_s: u32,
    /// An opaque 128-bit reference, such as a withdrawal id.
    #[serde(default)]
    #[schema(value_type = String)]
    pub user_data: Option<TransferId>,
}

/// An account and its balances, in the asset's unit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    /// The id.
    pub id: String,
    /// The asset.
    pub asset: String,
    /// The caller's kind code.
    pub code: u16,
    /// Balance constraints.
    pub flags: Vec<String>,
    /// The caller's reference.
    pub user_data: String,
    /// Debits held by pending transfers.
    pub debits_pending: String,
    /// Debits posted.
    pub debits_posted: String,
    /// Credits held by pending transfers.
    pub credits_pending: String,
    /// Credits posted.
    pub credits_posted: String,
    /// Posted credits minus posted and pending debits (zero if negative): what a customer can spend.
    pub available: String,
    /// Creation time, nanoseconds since the Unix epoch.
    pub timestamp_ns: String,
}

/// A transfer as recorded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    /// The id.
    pub id: String,
    /// The account debited.
    pub debit_account_id: String,
    /// The account credited.
    pub credit_account_id: String,
    /// The asset.
    pub asset: String,
    /// The amount, in the asset's unit.
    pub amount: String,
    /// The pending transfer this one posts or voids.
    pub pending_id: Option<String>,
    /// The caller's reason code.
    pub code: u16,
    /// Kind and linkage.
    pub flags: Vec<String>,
    /// The timeout of a pending transfer, in seconds.
    pub timeout_s: u32,
    /// The caller's reference.
    pub user_data: String,
    /// When it was applied, nanoseconds since the Unix epoch.
    pub timestamp_ns: String,
    /// For a pending transfer: `pending`, `posted`, `voided` or `expired`.
    pub pending_status: Option<String>,
    /// For a pending transfer with a timeout: when it expires, nanoseconds since the Unix epoch.
    pub expires_at_ns: Option<String>,
}

/// The outcome of one item of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemResult {
    /// The item's position in the batch.
    pub index: usize,
    /// The item's id.
    pub id: String,
    /// `ok`, `exists`, or the reason it was refused (`exceeds_credits`, `linked_event_failed`, …).
    pub result: String,
}

/// The outcomes of a batch, one per item, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResults {
    /// One per item.
    pub results: Vec<ItemResult>,
}

/// Per-asset totals and the verdict of the invariant check.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerCheck {
    /// Whether every invariant holds.
    pub balanced: bool,
    /// Accounts in the ledger.
    pub accounts: u64,
    /// Live pending transfers.
    pub pending: u64,
    /// Per asset.
    pub assets: Vec<AssetTotalsView>,
    /// The broken invariant, if any.
    pub violation: Option<String>,
}

/// Sums of one asset's balances across all accounts, in the asset's unit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssetTotalsView {
    /// The asset.
    pub asset: String,
    /// Σ posted debits.
    pub debits_posted: String,
    /// Σ posted credits.
    pub credits_posted: String,
    /// Σ pending debits.
    pub debits_pending: String,
    /// Σ pending credits.
    pub credits_pending: String,
}

/// An asset of the registry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssetView {
    /// The code.
    pub code: String,
    /// Decimal places of its smallest unit.
    pub decimals: u8,
    /// The chain it lives on.
    pub chain: String,
    /// Confirmations before a deposit is credited.
    pub confirmations: u32,
}

fn asset<'a>(assets: &'a AssetRegistry, code: &str, at: &str) -> Result<&'a Asset, ApiError> {
    assets.lookup(code).map_err(|e| ApiError::bad_request("unknown_asset", format!("{at}asset: {e}")))
}

fn flag_names(pairs: &[(bool, &str)]) -> Vec<String> {
    pairs.iter().filter(|(set, _)| *set).map(|(_, name)| (*name).to_owned()).collect()
}

fn unknown_flag(at: &str, name: &str, allowed: &str) -> ApiError {
    ApiError::bad_request("invalid_flag", format!("{at}flags: unknown flag \"{name}\" (expected {allowed})"))
}

impl AccountRequest {
    /// Parses the request into a ledger command; `at` prefixes error messages (such as `accounts[3].`).
    pub fn parse(&self, assets: &AssetRegistry, at: &str) -> Result<NewAccount, ApiError> {
        let asset = asset(assets, &self.asset, at)?;
        let mut flags = AccountFlags::default();
        for name in &self.flags {
            match name.as_str() {
                "debits_must_not_exceed_credits" => flags.debits_must_not_exceed_credits = true,
                "credits_must_not_exceed_debits" => flags.credits_must_not_exceed_debits = true,
                other => {
                    return Err(unknown_flag(
                        at,
                        other,
                        "debits_must_not_exceed_credits, credits_must_not_exceed_debits",
                    ));
                }
            }
        }
        Ok(NewAccount {
            id: self.id,
            asset: asset.code,
            code: self.code,
            flags,
            user_data: self.user_data.map_or(0, AccountId::get),
        })
    }
}

impl TransferRequest {
    /// Parses the request into a ledger command; `at` prefixes error messages (such as `transfers[3].`).
    pub fn parse(&self, assets: &AssetRegistry, at: &str) -> Result<NewTransfer, ApiError> {
        let asset = asset(assets, &self.asset, at)?;
        let amount = match &self.amount {
            None => Amount::ZERO,
            Some(s) => asset.parse_amount(s).map_err(|e| {
                ApiError::bad_request("invalid_amount", format!("{at}amount \"{}\": {e}", s.escape_debug()))
            })?,
        };
        let mut flags = TransferFlags::default();
        for name in &self.flags {
            match name.as_str() {
                "linked" => flags.linked = true,
                "pending" => flags.pending = true,
                "post_pending_transfer" => flags.post_pending_transfer = true,
                "void_pending_transfer" => flags.void_pending_transfer = true,
                other => {
                    return Err(unknown_flag(
                        at,
                        other,
                        "linked, pending, post_pending_transfer, void_pending_transfer",
                    ));
                }
            }
        }
        Ok(NewTransfer {
            id: self.id,
            debit_account_id: self.debit_account_id.unwrap_or_default(),
            credit_account_id: self.credit_account_id.unwrap_or_default(),
            amount,
            pending_id: self.pending_id,
            asset: asset.code,
            code: self.code,
            flags,
            timeout_s: self.timeout_s,
            user_data: self.user_data.map_or(0, TransferId::get),
        })
    }
}

fn format(assets: &AssetRegistry, code: AssetCode, amount: Amount) -> String {
    match assets.get(code) {
        Some(asset) => asset.format_amount(amount),
        // An asset removed from the configuration after use: show the raw smallest units, marked as such.
        None => format!("{} units", amount.units()),
    }
}

impl AccountView {
    /// The view of an account.
    pub fn of(a: &Account, assets: &AssetRegistry) -> AccountView {
        let f = |amount| format(assets, a.asset, amount);
        AccountView {
            id: a.id.to_string(),
            asset: a.asset.to_string(),
            code: a.code,
            flags: flag_names(&[
                (a.flags.debits_must_not_exceed_credits, "debits_must_not_exceed_credits"),
                (a.flags.credits_must_not_exceed_debits, "credits_must_not_exceed_debits"),
            ]),
            user_data: a.user_data.to_string(),
            debits_pending: f(a.debits_pending),
            debits_posted: f(a.debits_posted),
            credits_pending: f(a.credits_pending),
            credits_posted: f(a.credits_posted),
            available: f(a.available()),
            timestamp_ns: a.timestamp.to_string(),
        }
    }
}

impl TransferView {
    /// The view of a transfer and, if pending, its state.
    pub fn of(t: &Transfer, pending: Option<PendingState>, assets: &AssetRegistry) -> TransferView {
        TransferView {
            id: t.id.to_string(),
            debit_account_id: t.debit_account_id.to_string(),
            credit_account_id: t.credit_account_id.to_string(),
            asset: t.asset.to_string(),
            amount: format(assets, t.asset, t.amount),
            pending_id: t.pending_id.map(|p| p.to_string()),
            code: t.code,
            flags: flag_names(&[
                (t.flags.linked, "linked"),
                (t.flags.pending, "pending"),
                (t.flags.post_pending_transfer, "post_pending_transfer"),
                (t.flags.void_pending_transfer, "void_pending_transfer"),
            ]),
            timeout_s: t.timeout_s,
            user_data: t.user_data.to_string(),
            timestamp_ns: t.timestamp.to_string(),
            pending_status: pending.map(|p| p.status.as_str().to_owned()),
            expires_at_ns: pending.and_then(|p| p.expires_at_ns).map(|at| at.to_string()),
        }
    }
}

impl AssetTotalsView {
    /// The view of one asset's totals. Sums beyond 2^128 (possible only across many accounts) show in raw units.
    pub fn of(code: AssetCode, t: &rampart_ledger::AssetTotals, assets: &AssetRegistry) -> AssetTotalsView {
        let f = |sum: rampart_ledger::WideSum| {
            if sum.high == 0 {
                format(assets, code, Amount::new(sum.low))
            } else {
                format!("{}*2^128+{} units", sum.high, sum.low)
            }
        };
        AssetTotalsView {
            asset: code.to_string(),
            debits_posted: f(t.debits_posted),
            credits_posted: f(t.credits_posted),
            debits_pending: f(t.debits_pending),
            credits_pending: f(t.credits_pending),
        }
    }
}
