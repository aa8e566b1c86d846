//! Decoding stored rows into ledger records, shared by both backends. A value that does not decode is corruption.

use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_ledger::{Account, AccountFlags, PendingState, PendingStatus, Transfer, TransferFlags};

use crate::StoreError;

/// An account row with columns in backend-neutral types.
pub(crate) struct AccountRow {
    pub id: u128,
    pub asset: String,
    pub code: i64,
    pub flags: i64,
    pub user_data: u128,
    pub debits_pending: String,
    pub debits_posted: String,
    pub credits_pending: String,
    pub credits_posted: String,
    pub timestamp: i64,
}

/// A transfer row with columns in backend-neutral types.
pub(crate) struct TransferRow {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: String,
    pub pending_id: Option<u128>,
    pub asset: String,
    pub code: i64,
    pub flags: i64,
    pub timeout_s: i64,
    pub user_data: u128,
    pub timestamp: i64,
}

fn corrupt(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {value}"))
}

pub(crate) fn amount(s: &str) -> Result<Amount, StoreError> {
    s.parse::<u128>().map(Amount::new).map_err(|_| corrupt("amount", s))
}

fn asset(s: &str) -> Result<AssetCode, StoreError> {
    s.parse().map_err(|_| corrupt("asset", s))
}

fn u16_of(what: &str, v: i64) -> Result<u16, StoreError> {
    u16::try_from(v).map_err(|_| corrupt(what, v))
}

pub(crate) fn timestamp(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt("timestamp", v))
}

impl AccountRow {
    pub(crate) fn decode(self) -> Result<Account, StoreError> {
        Ok(Account {
            id: AccountId(self.id),
            asset: asset(&self.asset)?,
            code: u16_of("account code", self.code)?,
            flags: AccountFlags::from_bits(u16_of("account flags", self.flags)?)
                .ok_or_else(|| corrupt("account flags", self.flags))?,
            user_data: self.user_data,
            debits_pending: amount(&self.debits_pending)?,
            debits_posted: amount(&self.debits_posted)?,
            credits_pending: amount(&self.credits_pending)?,
            credits_posted: amount(&self.credits_posted)?,
            timestamp: timestamp(self.timestamp)?,
        })
    }
}

impl TransferRow {
    pub(crate) fn decode(self) -> Result<Transfer, StoreError> {
        Ok(Transfer {
            id: TransferId(self.id),
            debit_account_id: AccountId(self.debit_account_id),
            credit_account_id: AccountId(self.credit_account_id),
            amount: amount(&self.amount)?,
            pending_id: self.pending_id.map(TransferId),
            asset: asset(&self.asset)?,
            code: u16_of("transfer code", self.code)?,
            flags: TransferFlags::from_bits(u16_of("transfer flags", self.flags)?)
                .ok_or_else(|| corrupt("transfer flags", self.flags))?,
            timeout_s: u32::try_from(self.timeout_s).map_err(|_| corrupt("timeout", self.timeout_s))?,
            user_data: self.user_data,
            timestamp: timestamp(self.timestamp)?,
        })
    }
}

pub(crate) fn pending_state(status: &str, expires_at: Option<i64>) -> Result<PendingState, StoreError> {
    Ok(PendingState {
        status: PendingStatus::parse(status).ok_or_else(|| corrupt("pending status", status))?,
        expires_at_ns: expires_at.map(timestamp).transpose()?,
    })
}
