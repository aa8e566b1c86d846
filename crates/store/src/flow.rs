//! The shape every ledger command takes, whatever the backend: lock and load what the command reads, let the pure
//! ledger decide, write back what its journal says changed.

use rampart_core::{AccountId, TransferId};
use rampart_ledger::{
    Account, CreateAccountResult, CreateTransferResult, Ledger, NewAccount, NewTransfer, PendingState, Transfer,
};

use crate::StoreError;

/// The operations of one open write transaction. Implementations lock what they load, so that the loaded records
/// stay current until the transaction ends.
pub(crate) trait LedgerTx {
    /// Locks and loads the states of these pending transfers (those that exist).
    async fn lock_pending(&mut self, ids: &[TransferId]) -> Result<Vec<(TransferId, PendingState)>, StoreError>;
    /// Locks and returns up to `limit` live pending transfers due at `now_ns`.
    async fn lock_due_pending(&mut self, now_ns: u64, limit: u32) -> Result<Vec<TransferId>, StoreError>;
    /// Loads these transfers (those that exist).
    async fn load_transfers(&mut self, ids: &[TransferId]) -> Result<Vec<Transfer>, StoreError>;
    /// Locks and loads these accounts (those that exist).
    async fn lock_accounts(&mut self, ids: &[AccountId]) -> Result<Vec<Account>, StoreError>;
    /// [`LedgerTx::load_transfers`] of `transfers`, then [`LedgerTx::lock_accounts`] of `accounts`, which an
    /// implementation may do in fewer round trips.
    async fn load_transfers_lock_accounts(
        &mut self,
        transfers: &[TransferId],
        accounts: &[AccountId],
    ) -> Result<(Vec<Transfer>, Vec<Account>), StoreError> {
        let transfers = self.load_transfers(transfers).await?;
        Ok((transfers, self.lock_accounts(accounts).await?))
    }
    /// Writes what a command changed: the accounts it created (with their balances as it left them), the balances
    /// of the other accounts it changed, the transfers it created, the pending states it changed. A statement for
    /// each kind that has any, or one for all.
    async fn write_journal(
        &mut self,
        created: &[Account],
        updated: &[Account],
        transfers: &[Transfer],
        pending: &[(TransferId, PendingState)],
    ) -> Result<(), StoreError>;
}

fn sorted_unique<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Creates accounts inside `tx`.
pub(crate) async fn create_accounts<T: LedgerTx>(
    tx: &mut T,
    batch: &[NewAccount],
    now_ns: u64,
) -> Result<Vec<CreateAccountResult>, StoreError> {
    let ids = sorted_unique(batch.iter().map(|a| a.id).collect());
    let mut ledger = Ledger::with_journal();
    for account in tx.lock_accounts(&ids).await? {
        ledger.load_account(account);
    }
    let results = ledger.create_accounts(batch, now_ns);
    write_back(tx, &mut ledger).await?;
    Ok(results)
}

/// Creates transfers inside `tx`.
pub(crate) async fn create_transfers<T: LedgerTx>(
    tx: &mut T,
    batch: &[NewTransfer],
    now_ns: u64,
) -> Result<Vec<CreateTransferResult>, StoreError> {
    let deps = Ledger::transfer_dependencies(batch);
    let mut ledger = Ledger::with_journal();
    // Lock order: pending states first, then accounts, each in id order; every command follows it.
    for (id, state) in tx.lock_pending(&deps.pending_ids).await? {
        ledger.load_pending(id, state);
    }
    let mut account_ids = deps.account_ids;
    let accounts = if deps.pending_ids.is_empty() {
        // No pending transfer names accounts to add: the transfers and the accounts at once.
        let (transfers, accounts) =
            tx.load_transfers_lock_accounts(&deps.transfer_ids, &sorted_unique(account_ids)).await?;
        for transfer in transfers {
            ledger.load_transfer(transfer);
        }
        accounts
    } else {
        for transfer in tx.load_transfers(&deps.transfer_ids).await? {
            if deps.pending_ids.binary_search(&transfer.id).is_ok() {
                account_ids.extend([transfer.debit_account_id, transfer.credit_account_id]);
            }
            ledger.load_transfer(transfer);
        }
        tx.lock_accounts(&sorted_unique(account_ids)).await?
    };
    for account in accounts {
        ledger.load_account(account);
    }
    let results = ledger.create_transfers(batch, now_ns);
    write_back(tx, &mut ledger).await?;
    Ok(results)
}

/// Expires due pending transfers inside `tx`.
pub(crate) async fn expire_pending<T: LedgerTx>(
    tx: &mut T,
    now_ns: u64,
    limit: u32,
) -> Result<Vec<TransferId>, StoreError> {
    let due = tx.lock_due_pending(now_ns, limit).await?;
    if due.is_empty() {
        return Ok(due);
    }
    let mut ledger = Ledger::with_journal();
    for (id, state) in tx.lock_pending(&due).await? {
        ledger.load_pending(id, state);
    }
    let mut account_ids = Vec::with_capacity(due.len() * 2);
    for transfer in tx.load_transfers(&due).await? {
        account_ids.extend([transfer.debit_account_id, transfer.credit_account_id]);
        ledger.load_transfer(transfer);
    }
    for account in tx.lock_accounts(&sorted_unique(account_ids)).await? {
        ledger.load_account(account);
    }
    let expired = ledger.expire_pending(now_ns);
    write_back(tx, &mut ledger).await?;
    Ok(expired)
}

async fn write_back<T: LedgerTx>(tx: &mut T, ledger: &mut Ledger) -> Result<(), StoreError> {
    let journal = ledger.take_journal();
    let account = |id: &AccountId| *ledger.account(*id).expect("a journaled account is in the ledger");
    let created: Vec<Account> = journal.accounts_created.iter().map(account).collect();
    // An account created by this command is inserted with its final balances: it is not updated too.
    let created_ids = sorted_unique(journal.accounts_created.clone());
    let updated: Vec<Account> = sorted_unique(journal.accounts_updated)
        .iter()
        .filter(|id| created_ids.binary_search(id).is_err())
        .map(account)
        .collect();
    let transfers: Vec<Transfer> = journal
        .transfers_created
        .iter()
        .map(|id| *ledger.transfer(*id).expect("a journaled transfer is in the ledger"))
        .collect();
    let pending: Vec<(TransferId, PendingState)> = sorted_unique(journal.pending_changed)
        .into_iter()
        .map(|id| (id, ledger.pending_state(id).expect("a journaled pending state is in the ledger")))
        .collect();
    if created.is_empty() && updated.is_empty() && transfers.is_empty() && pending.is_empty() {
        return Ok(());
    }
    tx.write_journal(&created, &updated, &transfers, &pending).await
}
