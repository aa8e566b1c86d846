//! The state machine.

use std::collections::BTreeSet;

use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rustc_hash::FxHashMap;

use crate::account::{Account, NewAccount};
use crate::results::{CreateAccountResult as AR, CreateTransferResult as TR};
use crate::transfer::{NewTransfer, PendingState, PendingStatus, Transfer};
use crate::{NANOS_PER_SECOND, TIMESTAMP_MAX_NS};

/// What changed since the journal was last taken: the records a store must write back.
///
/// Lists may repeat an id (an account touched twice); writers dedupe. Order is the order of application.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Journal {
    /// Accounts created.
    pub accounts_created: Vec<AccountId>,
    /// Accounts whose balances changed.
    pub accounts_updated: Vec<AccountId>,
    /// Transfers created.
    pub transfers_created: Vec<TransferId>,
    /// Pending transfers whose state was created or changed.
    pub pending_changed: Vec<TransferId>,
}

impl Journal {
    fn lens(&self) -> [usize; 4] {
        [
            self.accounts_created.len(),
            self.accounts_updated.len(),
            self.transfers_created.len(),
            self.pending_changed.len(),
        ]
    }

    fn truncate(&mut self, lens: [usize; 4]) {
        self.accounts_created.truncate(lens[0]);
        self.accounts_updated.truncate(lens[1]);
        self.transfers_created.truncate(lens[2]);
        self.pending_changed.truncate(lens[3]);
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.lens() == [0; 4]
    }
}

/// The records a batch of transfers may read, which a store must load before applying it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransferDependencies {
    /// Transfers that may already exist (the batch's own ids: a retry answers `exists`) and pending transfers the
    /// batch posts or voids.
    pub transfer_ids: Vec<TransferId>,
    /// Pending transfers whose state the batch reads.
    pub pending_ids: Vec<TransferId>,
    /// Accounts named by the batch. The accounts of the pending transfers must be loaded too, once those are known.
    pub account_ids: Vec<AccountId>,
}

/// A broken ledger invariant. Seeing one means a bug, never bad input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvariantViolation {
    /// Σ debits ≠ Σ credits for an asset.
    Unbalanced {
        /// The asset.
        asset: AssetCode,
        /// The per-asset totals.
        totals: Box<AssetTotals>,
    },
    /// An account's balances break its flags.
    FlagsBroken(AccountId),
    /// An account's pending balances differ from the sum of its live pending transfers.
    PendingMismatch(AccountId),
}

/// Sums of all accounts' balances of one asset. The sums are wide (256-bit, as two words) so they cannot overflow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssetTotals {
    /// Σ pending debits.
    pub debits_pending: WideSum,
    /// Σ posted debits.
    pub debits_posted: WideSum,
    /// Σ pending credits.
    pub credits_pending: WideSum,
    /// Σ posted credits.
    pub credits_posted: WideSum,
}

impl AssetTotals {
    /// Whether Σ debits = Σ credits, both pending and posted.
    pub fn is_balanced(&self) -> bool {
        self.debits_pending == self.credits_pending && self.debits_posted == self.credits_posted
    }

    /// Adds one account's balances.
    pub fn add(&mut self, account: &Account) {
        self.debits_pending.add(account.debits_pending);
        self.debits_posted.add(account.debits_posted);
        self.credits_pending.add(account.credits_pending);
        self.credits_posted.add(account.credits_posted);
    }
}

/// A 256-bit unsigned sum of amounts: `high * 2^128 + low`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WideSum {
    /// How many times the low word wrapped.
    pub high: u128,
    /// The low 128 bits.
    pub low: u128,
}

impl WideSum {
    /// Adds an amount.
    pub fn add(&mut self, amount: Amount) {
        let (low, carried) = self.low.overflowing_add(amount.units());
        self.low = low;
        self.high += u128::from(carried);
    }
}

/// One change made while inside a linked chain, so that the chain can be rolled back if a later link fails.
#[derive(Debug)]
enum Undo {
    Account(Account),
    Transfer(TransferId),
    Pending(TransferId, Option<PendingState>),
}

/// The double-entry ledger: accounts, transfers and the state of pending transfers.
#[derive(Debug, Default)]
pub struct Ledger {
    accounts: FxHashMap<AccountId, Account>,
    transfers: FxHashMap<TransferId, Transfer>,
    pending: FxHashMap<TransferId, PendingState>,
    /// Live pending transfers with a timeout, by expiry instant.
    expiries: BTreeSet<(u64, TransferId)>,
    journal: Option<Journal>,
    undo: Option<Vec<Undo>>,
}

impl Ledger {
    /// An empty ledger that keeps no journal: the in-memory model.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// An empty ledger that records what changes in a [`Journal`], for a store to write back.
    pub fn with_journal() -> Ledger {
        Ledger { journal: Some(Journal::default()), ..Ledger::default() }
    }

    /// Takes the journal of changes since the last call, leaving an empty one.
    pub fn take_journal(&mut self) -> Journal {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    // --- Hydration: a store loads existing records without journaling them. ---

    /// Loads an existing account.
    pub fn load_account(&mut self, account: Account) {
        self.accounts.insert(account.id, account);
    }

    /// Loads an existing transfer.
    pub fn load_transfer(&mut self, transfer: Transfer) {
        self.transfers.insert(transfer.id, transfer);
    }

    /// Loads the state of an existing pending transfer.
    pub fn load_pending(&mut self, id: TransferId, state: PendingState) {
        self.set_pending(id, Some(state));
    }

    /// The records a batch of transfers reads, for a store to load first.
    pub fn transfer_dependencies(batch: &[NewTransfer]) -> TransferDependencies {
        let mut deps = TransferDependencies::default();
        for t in batch {
            deps.transfer_ids.push(t.id);
            if let Some(p) = t.pending_id {
                deps.transfer_ids.push(p);
                deps.pending_ids.push(p);
            }
            for a in [t.debit_account_id, t.credit_account_id] {
                if a.get() != 0 {
                    deps.account_ids.push(a);
                }
            }
        }
        for v in [&mut deps.transfer_ids, &mut deps.pending_ids] {
            v.sort_unstable();
            v.dedup();
        }
        deps.account_ids.sort_unstable();
        deps.account_ids.dedup();
        deps
    }

    // --- Reads. ---

    /// The account with this id.
    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(&id)
    }

    /// The transfer with this id.
    pub fn transfer(&self, id: TransferId) -> Option<&Transfer> {
        self.transfers.get(&id)
    }

    /// The state of the pending transfer with this id.
    pub fn pending_state(&self, id: TransferId) -> Option<PendingState> {
        self.pending.get(&id).copied()
    }

    /// Every account, in no particular order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// Every transfer, in no particular order.
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    /// The earliest expiry among live pending transfers, if any.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Per-asset sums of every account's balances.
    pub fn totals(&self) -> Vec<(AssetCode, AssetTotals)> {
        let mut by_asset: FxHashMap<AssetCode, AssetTotals> = FxHashMap::default();
        for a in self.accounts.values() {
            by_asset.entry(a.asset).or_default().add(a);
        }
        let mut totals: Vec<_> = by_asset.into_iter().collect();
        totals.sort_by_key(|(asset, _)| *asset);
        totals
    }

    /// Checks every invariant over the whole ledger: Σ debits = Σ credits per asset, every account within its flags,
    /// and every account's pending balances equal to the sum of its live pending transfers.
    ///
    /// Meaningful only on a complete ledger (not on the partial view a store hydrates for one request).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        for (asset, totals) in self.totals() {
            if !totals.is_balanced() {
                return Err(InvariantViolation::Unbalanced { asset, totals: Box::new(totals) });
            }
        }
        let mut pending_debits: FxHashMap<AccountId, u128> = FxHashMap::default();
        let mut pending_credits: FxHashMap<AccountId, u128> = FxHashMap::default();
        for (id, state) in &self.pending {
            if state.status == PendingStatus::Pending {
                let t = &self.transfers[id];
                *pending_debits.entry(t.debit_account_id).or_default() += t.amount.units();
                *pending_credits.entry(t.credit_account_id).or_default() += t.amount.units();
            }
        }
        for a in self.accounts.values() {
            if !a.respects_flags() {
                return Err(InvariantViolation::FlagsBroken(a.id));
            }
            let debits = pending_debits.get(&a.id).copied().unwrap_or(0);
            let credits = pending_credits.get(&a.id).copied().unwrap_or(0);
            if debits != a.debits_pending.units() || credits != a.credits_pending.units() {
                return Err(InvariantViolation::PendingMismatch(a.id));
            }
        }
        Ok(())
    }

    // --- Commands. ---

    /// Creates a batch of accounts at `now_ns`, returning one result per request.
    pub fn create_accounts(&mut self, batch: &[NewAccount], now_ns: u64) -> Vec<AR> {
        batch.iter().map(|a| self.create_account(a, now_ns)).collect()
    }

    fn create_account(&mut self, request: &NewAccount, now_ns: u64) -> AR {
        if request.id.get() == 0 {
            return AR::IdMustNotBeZero;
        }
        if request.id.get() == u128::MAX {
            return AR::IdMustNotBeIntMax;
        }
        if request.flags.debits_must_not_exceed_credits && request.flags.credits_must_not_exceed_debits {
            return AR::FlagsAreMutuallyExclusive;
        }
        if let Some(existing) = self.accounts.get(&request.id) {
            let same = existing.asset == request.asset
                && existing.code == request.code
                && existing.flags == request.flags
                && existing.user_data == request.user_data;
            return if same { AR::Exists } else { AR::ExistsWithDifferentFields };
        }
        let timestamp = now_ns;
        self.accounts.insert(request.id, Account::new(request, timestamp));
        if let Some(j) = &mut self.journal {
            j.accounts_created.push(request.id);
        }
        AR::Ok
    }

    /// Creates a batch of transfers at `now_ns`, returning one result per request, in order.
    ///
    /// Transfers apply in order, each seeing the effects of those before it. A linked chain (transfers with the
    /// `linked` flag, ended by the first without it) applies entirely or not at all.
    pub fn create_transfers(&mut self, batch: &[NewTransfer], now_ns: u64) -> Vec<TR> {
        let mut results = Vec::with_capacity(batch.len());
        let mut chain: Option<(usize, [usize; 4])> = None;
        let mut chain_broken = false;
        for (i, request) in batch.iter().enumerate() {
            if request.flags.linked && chain.is_none() {
                let journal_lens = self.journal.as_ref().map(Journal::lens).unwrap_or_default();
                chain = Some((i, journal_lens));
                chain_broken = false;
                self.undo = Some(Vec::new());
            }
            let result = if chain_broken {
                TR::LinkedEventFailed
            } else if request.flags.linked && i == batch.len() - 1 {
                TR::LinkedEventChainOpen
            } else {
                self.create_transfer(request, now_ns)
            };
            results.push(result);
            if let Some((start, journal_lens)) = chain {
                if result != TR::Ok && !chain_broken {
                    chain_broken = true;
                    self.roll_back_chain(journal_lens);
                    for r in &mut results[start..i] {
                        *r = TR::LinkedEventFailed;
                    }
                }
                if !request.flags.linked {
                    chain = None;
                    chain_broken = false;
                    self.undo = None;
                }
            }
        }
        // A chain left open at the end of the batch was rolled back when its last link answered chain_open.
        self.undo = None;
        results
    }

    fn roll_back_chain(&mut self, journal_lens: [usize; 4]) {
        let undo = self.undo.take().unwrap_or_default();
        for change in undo.into_iter().rev() {
            match change {
                Undo::Account(previous) => {
                    self.accounts.insert(previous.id, previous);
                }
                Undo::Transfer(id) => {
                    self.transfers.remove(&id);
                }
                Undo::Pending(id, previous) => self.set_pending(id, previous),
            }
        }
        if let Some(j) = &mut self.journal {
            j.truncate(journal_lens);
        }
        // The chain stays open until its last link; later links answer linked_event_failed without touching state.
        self.undo = Some(Vec::new());
    }

    fn set_pending(&mut self, id: TransferId, state: Option<PendingState>) {
        let previous = match state {
            Some(s) => self.pending.insert(id, s),
            None => self.pending.remove(&id),
        };
        if let Some(PendingState { status: PendingStatus::Pending, expires_at_ns: Some(at) }) = previous {
            self.expiries.remove(&(at, id));
        }
        if let Some(PendingState { status: PendingStatus::Pending, expires_at_ns: Some(at) }) = state {
            self.expiries.insert((at, id));
        }
    }

    fn record_pending(&mut self, id: TransferId, state: PendingState) {
        let previous = self.pending.get(&id).copied();
        if let Some(undo) = &mut self.undo {
            undo.push(Undo::Pending(id, previous));
        }
        self.set_pending(id, Some(state));
        if let Some(j) = &mut self.journal {
            j.pending_changed.push(id);
        }
    }

    fn record_accounts(&mut self, debit: Account, credit: Account) {
        for account in [debit, credit] {
            let previous = self.accounts.insert(account.id, account).expect("a recorded account exists");
            if let Some(undo) = &mut self.undo {
                undo.push(Undo::Account(previous));
            }
            if let Some(j) = &mut self.journal {
                j.accounts_updated.push(account.id);
            }
        }
    }

    fn record_transfer(&mut self, transfer: Transfer) {
        let previous = self.transfers.insert(transfer.id, transfer);
        assert!(previous.is_none(), "transfer {} recorded twice", transfer.id);
        if let Some(undo) = &mut self.undo {
            undo.push(Undo::Transfer(transfer.id));
        }
        if let Some(j) = &mut self.journal {
            j.transfers_created.push(transfer.id);
        }
    }

    fn create_transfer(&mut self, t: &NewTransfer, now_ns: u64) -> TR {
        if t.id.get() == 0 {
            return TR::IdMustNotBeZero;
        }
        if t.id.get() == u128::MAX {
            return TR::IdMustNotBeIntMax;
        }
        let f = t.flags;
        if (f.post_pending_transfer && f.void_pending_transfer) || (f.pending && f.resolves_pending()) {
            return TR::FlagsAreMutuallyExclusive;
        }
        if f.resolves_pending() {
            return self.resolve_pending(t, now_ns);
        }
        if t.pending_id.is_some() {
            return TR::PendingIdMustBeZero;
        }
        if t.timeout_s != 0 && !f.pending {
            return TR::TimeoutReservedForPendingTransfer;
        }
        if t.debit_account_id.get() == 0 {
            return TR::DebitAccountIdMustNotBeZero;
        }
        if t.credit_account_id.get() == 0 {
            return TR::CreditAccountIdMustNotBeZero;
        }
        if t.debit_account_id == t.credit_account_id {
            return TR::AccountsMustBeDifferent;
        }
        if t.amount.is_zero() {
            return TR::AmountMustNotBeZero;
        }
        if let Some(existing) = self.transfers.get(&t.id) {
            return same_fields(t, existing, None);
        }
        let Some(mut dr) = self.accounts.get(&t.debit_account_id).copied() else {
            return TR::DebitAccountNotFound;
        };
        let Some(mut cr) = self.accounts.get(&t.credit_account_id).copied() else {
            return TR::CreditAccountNotFound;
        };
        if dr.asset != cr.asset {
            return TR::AccountsMustHaveTheSameAsset;
        }
        if t.asset != dr.asset {
            return TR::TransferMustHaveTheSameAssetAsAccounts;
        }
        let amount = t.amount;
        if f.pending {
            let Some(dp) = dr.debits_pending.checked_add(amount) else { return TR::OverflowsDebitsPending };
            let Some(cp) = cr.credits_pending.checked_add(amount) else { return TR::OverflowsCreditsPending };
            dr.debits_pending = dp;
            cr.credits_pending = cp;
        } else {
            let Some(dp) = dr.debits_posted.checked_add(amount) else { return TR::OverflowsDebitsPosted };
            let Some(cp) = cr.credits_posted.checked_add(amount) else { return TR::OverflowsCreditsPosted };
            dr.debits_posted = dp;
            cr.credits_posted = cp;
        }
        let Some(dr_debits) = dr.debits_pending.checked_add(dr.debits_posted) else { return TR::OverflowsDebits };
        let Some(cr_credits) = cr.credits_pending.checked_add(cr.credits_posted) else { return TR::OverflowsCredits };
        if dr.flags.debits_must_not_exceed_credits && dr_debits > dr.credits_posted {
            return TR::ExceedsCredits;
        }
        if cr.flags.credits_must_not_exceed_debits && cr_credits > cr.debits_posted {
            return TR::ExceedsDebits;
        }
        // Every record of a batch carries the batch's time, so a ledger hydrated with only a batch's records decides
        // exactly as a complete one would: nothing depends on records it did not load.
        let timestamp = now_ns;
        let expires_at_ns = if f.pending && t.timeout_s > 0 {
            let Some(at) = u64::from(t.timeout_s)
                .checked_mul(NANOS_PER_SECOND)
                .and_then(|d| timestamp.checked_add(d))
                .filter(|at| *at <= TIMESTAMP_MAX_NS)
            else {
                return TR::OverflowsTimeout;
            };
            Some(at)
        } else {
            None
        };
        self.record_accounts(dr, cr);
        self.record_transfer(Transfer {
            id: t.id,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            amount,
            pending_id: None,
            asset: t.asset,
            code: t.code,
            flags: f,
            timeout_s: t.timeout_s,
            user_data: t.user_data,
            timestamp,
        });
        if f.pending {
            self.record_pending(t.id, PendingState { status: PendingStatus::Pending, expires_at_ns });
        }
        TR::Ok
    }

    fn resolve_pending(&mut self, t: &NewTransfer, now_ns: u64) -> TR {
        let Some(pending_id) = t.pending_id else { return TR::PendingIdMustNotBeZero };
        if pending_id.get() == 0 {
            return TR::PendingIdMustNotBeZero;
        }
        if pending_id == t.id {
            return TR::PendingIdMustBeDifferent;
        }
        if t.timeout_s != 0 {
            return TR::TimeoutReservedForPendingTransfer;
        }
        let pending = self.transfers.get(&pending_id).copied();
        if let Some(existing) = self.transfers.get(&t.id) {
            return same_fields(t, existing, pending.as_ref());
        }
        let Some(p) = pending else { return TR::PendingTransferNotFound };
        if !p.flags.pending {
            return TR::PendingTransferNotPending;
        }
        if t.debit_account_id.get() != 0 && t.debit_account_id != p.debit_account_id {
            return TR::PendingTransferHasDifferentDebitAccountId;
        }
        if t.credit_account_id.get() != 0 && t.credit_account_id != p.credit_account_id {
            return TR::PendingTransferHasDifferentCreditAccountId;
        }
        if t.asset != p.asset {
            return TR::PendingTransferHasDifferentAsset;
        }
        if t.code != 0 && t.code != p.code {
            return TR::PendingTransferHasDifferentCode;
        }
        let post = t.flags.post_pending_transfer;
        let amount = if post {
            if t.amount > p.amount {
                return TR::ExceedsPendingTransferAmount;
            }
            if t.amount.is_zero() { p.amount } else { t.amount }
        } else {
            if !t.amount.is_zero() && t.amount != p.amount {
                return TR::PendingTransferHasDifferentAmount;
            }
            p.amount
        };
        let state = self.pending.get(&pending_id).copied().expect("a pending transfer has a pending state");
        match state.status {
            PendingStatus::Pending => {}
            PendingStatus::Posted => return TR::PendingTransferAlreadyPosted,
            PendingStatus::Voided => return TR::PendingTransferAlreadyVoided,
            PendingStatus::Expired => return TR::PendingTransferExpired,
        }
        if state.expires_at_ns.is_some_and(|at| at <= now_ns) {
            return TR::PendingTransferExpired;
        }
        let mut dr = self.accounts[&p.debit_account_id];
        let mut cr = self.accounts[&p.credit_account_id];
        dr.debits_pending = dr.debits_pending.checked_sub(p.amount).expect("a hold is within pending debits");
        cr.credits_pending = cr.credits_pending.checked_sub(p.amount).expect("a hold is within pending credits");
        if post {
            let Some(dp) = dr.debits_posted.checked_add(amount) else { return TR::OverflowsDebitsPosted };
            let Some(cp) = cr.credits_posted.checked_add(amount) else { return TR::OverflowsCreditsPosted };
            dr.debits_posted = dp;
            cr.credits_posted = cp;
        }
        // Posting moves at most the held amount from pending to posted, so it can never break a flag that the hold
        // respected; assert it rather than trust it.
        assert!(dr.respects_flags() && cr.respects_flags(), "resolving {pending_id} broke an account's flags");
        let timestamp = now_ns;
        self.record_accounts(dr, cr);
        self.record_transfer(Transfer {
            id: t.id,
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            amount,
            pending_id: Some(pending_id),
            asset: p.asset,
            code: p.code,
            flags: t.flags,
            timeout_s: 0,
            user_data: t.user_data,
            timestamp,
        });
        let status = if post { PendingStatus::Posted } else { PendingStatus::Voided };
        self.record_pending(pending_id, PendingState { status, expires_at_ns: state.expires_at_ns });
        TR::Ok
    }

    /// Expires every live pending transfer whose expiry instant is at or before `now_ns`, releasing its hold.
    /// Returns the ids expired, earliest first.
    pub fn expire_pending(&mut self, now_ns: u64) -> Vec<TransferId> {
        let due: Vec<(u64, TransferId)> = self.expiries.iter().take_while(|(at, _)| *at <= now_ns).copied().collect();
        let mut expired = Vec::with_capacity(due.len());
        for (at, id) in due {
            let p = self.transfers[&id];
            let mut dr = self.accounts[&p.debit_account_id];
            let mut cr = self.accounts[&p.credit_account_id];
            dr.debits_pending = dr.debits_pending.checked_sub(p.amount).expect("a hold is within pending debits");
            cr.credits_pending = cr.credits_pending.checked_sub(p.amount).expect("a hold is within pending credits");
            self.record_accounts(dr, cr);
            self.record_pending(id, PendingState { status: PendingStatus::Expired, expires_at_ns: Some(at) });
            expired.push(id);
        }
        expired
    }
}

/// Compares a retried request with the transfer its id already names.
fn same_fields(t: &NewTransfer, existing: &Transfer, pending: Option<&Transfer>) -> TR {
    let accounts_match = if t.flags.resolves_pending() {
        (t.debit_account_id.get() == 0 || t.debit_account_id == existing.debit_account_id)
            && (t.credit_account_id.get() == 0 || t.credit_account_id == existing.credit_account_id)
            && (t.code == 0 || t.code == existing.code)
    } else {
        t.debit_account_id == existing.debit_account_id
            && t.credit_account_id == existing.credit_account_id
            && t.code == existing.code
    };
    let amount_matches = if t.amount == existing.amount || (t.amount.is_zero() && t.flags.void_pending_transfer) {
        true
    } else if t.amount.is_zero() && t.flags.post_pending_transfer {
        // Zero asks for the whole hold: the same request if the earlier post took the whole hold.
        pending.is_some_and(|p| p.amount == existing.amount)
    } else {
        false
    };
    let same = accounts_match
        && amount_matches
        && t.pending_id == existing.pending_id
        && t.asset == existing.asset
        && t.flags == existing.flags
        && t.timeout_s == existing.timeout_s
        && t.user_data == existing.user_data;
    if same { TR::Exists } else { TR::ExistsWithDifferentFields }
}
