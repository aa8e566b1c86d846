//! Persistence for Rampart: the ledger in SQLite (the embedded default) and PostgreSQL (production).
//!
//! This is the only crate that knows SQL. Every command runs in one database transaction that loads exactly the
//! records it reads, lets the pure [`rampart_ledger::Ledger`] decide, and writes back what the ledger's journal says
//! changed; so the decision logic is the same code on both backends and in the in-memory model.
//!
//! Concurrency (see ARCHITECTURE.md): on SQLite every write transaction is `BEGIN IMMEDIATE` on a single writer
//! connection, so writers are serialised. On PostgreSQL a transaction locks the pending-transfer rows and then the
//! account rows it touches (`SELECT … FOR UPDATE`, each in id order, so that two transactions never wait on each other
//! in a cycle) and retries on serialisation failures, deadlocks and unique violations (a concurrent insert of the same
//! id, which the retry then answers with `exists`).

#[macro_use]
mod backend;
mod audit;
mod compliance;
#[macro_use]
mod custody;
#[macro_use]
mod customers;
mod flow;
mod platform;
mod postgres;
mod reserves;
mod risk;
mod rows;
mod sqlite;
mod staff;
mod withdrawals;

use std::path::Path;
use std::time::Duration;

pub use audit::{AuditFilter, AuditSigner, AuditedBy, Auditor};
pub use compliance::{
    AddressListing, ComplianceCase, ComplianceResolution, ComplianceResolved, DEPOSIT_HOLD, KycDecided, KycDocument,
    KycSubmission, ListVersion, NewCase, NewDocument, ReviewDecided, ScreeningRecord, TransferReview, TravelRuleRecord,
};
pub use custody::{
    BlockFindings, CeremonyMessage, CeremonyRecord, ChainDeposit, CustodianRecord, CustodyBalances, CustodyTx,
    DepositAddress, KeyOutcome, Member, NewCeremony, OutputSpend, PostOutcome, RefillDecision, RefillProposal, Utxo,
    WalletRecord, txid_text,
};
pub use customers::{
    Admission, ApiKeyRecord, CustomerRecord, CustomerSession, CustomerStatus, DeviceRecord, Effects, NewCustomer,
    NewSession, NewTicket, Notice, NotificationRecord, OutboxEmail, SecurityChange, ThrottleState, Ticket,
    WebauthnCredentialRecord,
};
use rampart_audit::{AuditEntry, AuditRecord, VerifyReport};
use rampart_core::{AccountId, AssetCode, TransferId};
use rampart_ledger::{
    Account, AssetTotals, CreateAccountResult, CreateTransferResult, InvariantViolation, NewAccount, NewTransfer,
    PendingState, Transfer,
};
pub use reserves::{
    Attestation, LiabilitiesRead, LiabilityOwner, NewReservesSnapshot, ReserveOutput, ReservesSnapshot,
};
pub use risk::{CaseResolution, CaseResolved, RiskCase, RiskCaseNote, RiskEventRecord};
pub use staff::{RoleDecision, RoleRequest, StaffRecord, StaffStatus};
pub use withdrawals::{
    Advanced, Approved, Changes, GatePosition, NewWithdrawal, Payment, PolicyDecided, PolicyRecord, Position,
    PositionAsk, QueueItem, Requested, Then, WhitelistEntry, WithdrawalRecord,
};

/// The largest batch of accounts or transfers one command accepts, as in TigerBeetle.
pub const BATCH_LEN_MAX: usize = 8190;

/// How many times a PostgreSQL transaction is retried after a conflict before the command fails.
const CONFLICT_RETRIES_MAX: u32 = 32;

/// Why a storage operation failed. Business rejections are not errors: they are ledger result codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no backend we support, or cannot be parsed.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// More items than [`BATCH_LEN_MAX`].
    #[error("batch of {len} exceeds the maximum of {max}")]
    BatchTooLarge {
        /// Items in the batch.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value cannot be decoded: a bug or tampering, never bad input.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Concurrent transactions kept conflicting.
    #[error("gave up after {0} conflicting attempts")]
    Contention(u32),
}

impl StoreError {
    /// The database cannot be reached for this reason (the machine failed to give what a connection needs).
    pub fn unreachable(e: std::io::Error) -> StoreError {
        StoreError::Database(sqlx::Error::Io(e))
    }

    /// Whether the database could not be reached (as opposed to answering with an error): worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed))
    }
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// A stable name: `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The result of checking the whole stored ledger.
#[derive(Debug, Clone)]
pub struct LedgerReport {
    /// Accounts in the ledger.
    pub accounts: u64,
    /// Live pending transfers.
    pub pending: u64,
    /// Per-asset sums of all balances.
    pub totals: Vec<(AssetCode, AssetTotals)>,
    /// The first broken invariant, if any.
    pub violation: Option<InvariantViolation>,
}

/// A transfer with, if it is a pending transfer, its current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTransfer {
    /// The immutable transfer.
    pub transfer: Transfer,
    /// The state of a pending transfer; `None` for every other kind.
    pub pending: Option<PendingState>,
}

/// A connection pool to the ledger's database.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite.
    Sqlite(sqlite::SqliteStore),
    /// PostgreSQL.
    Postgres(postgres::PgStore),
}

/// Options for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Connections in the PostgreSQL pool (and readers in the SQLite pool).
    pub pool_size_max: u32,
    /// How long to wait for a connection.
    pub acquire_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions { pool_size_max: 16, acquire_timeout: Duration::from_secs(10) }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://…` or `postgresql://…`). A SQLite file is
    /// created if missing. Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::SqliteStore::connect(url, options).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(postgres::PgStore::connect(url, options).await?))
        } else {
            Err(StoreError::InvalidUrl("expected sqlite://… or postgres://…".to_owned()))
        }
    }

    /// The URL of the SQLite file `rampart.db` inside `data_dir`.
    pub fn sqlite_url_in(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("rampart.db").display())
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.migrate().await)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Brings the query planner's statistics up to date (`ANALYZE`), as a running database's autovacuum (or
    /// SQLite's `PRAGMA optimize`) keeps them: after a bulk load, before its tables' new sizes are known.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => sqlx::query("ANALYZE").execute(&s.writer).await.map(|_| ())?,
            Store::Postgres(s) => sqlx::query("ANALYZE").execute(&s.pool).await.map(|_| ())?,
        }
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    /// Creates a batch of accounts atomically, one result per request.
    pub async fn create_accounts(
        &self,
        batch: &[NewAccount],
        now_ns: u64,
    ) -> Result<Vec<CreateAccountResult>, StoreError> {
        check_batch(batch.len())?;
        dispatch!(self, s => s.create_accounts(batch, now_ns, None).await)
    }

    /// Creates accounts as [`Store::create_accounts`] does, recording the batch in the audit log in the same
    /// transaction.
    pub async fn create_accounts_audited(
        &self,
        batch: &[NewAccount],
        now_ns: u64,
        by: &AuditedBy<'_>,
    ) -> Result<Vec<CreateAccountResult>, StoreError> {
        check_batch(batch.len())?;
        dispatch!(self, s => s.create_accounts(batch, now_ns, Some(by)).await)
    }

    /// Creates a batch of transfers atomically, one result per request. Either every applied transfer of the batch
    /// is durable when this returns `Ok`, or none is.
    pub async fn create_transfers(
        &self,
        batch: &[NewTransfer],
        now_ns: u64,
    ) -> Result<Vec<CreateTransferResult>, StoreError> {
        check_batch(batch.len())?;
        dispatch!(self, s => s.create_transfers(batch, now_ns, None).await)
    }

    /// Creates a batch of transfers as [`Store::create_transfers`] does, and records it in the audit log in the same
    /// transaction: if the audit append fails, nothing is applied.
    pub async fn create_transfers_audited(
        &self,
        batch: &[NewTransfer],
        now_ns: u64,
        by: &AuditedBy<'_>,
    ) -> Result<Vec<CreateTransferResult>, StoreError> {
        check_batch(batch.len())?;
        dispatch!(self, s => s.create_transfers(batch, now_ns, Some(by)).await)
    }

    /// Appends records to the audit log on their own (events that change nothing else, such as a refused request).
    pub async fn append_audit(
        &self,
        records: Vec<AuditRecord>,
        auditor: &Auditor<'_>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        dispatch!(self, s => s.append_audit(records, auditor).await)
    }

    /// Signs a checkpoint at the head of the audit log if entries were appended since the last one; returns its
    /// sequence number. The service calls it every few seconds so that no entry stays long without a signature.
    pub async fn checkpoint_audit_head(&self, auditor: &Auditor<'_>, now_ns: u64) -> Result<Option<u64>, StoreError> {
        dispatch!(self, s => s.checkpoint_audit_head(auditor, now_ns).await)
    }

    /// Verifies the whole audit log against `public_key` from one consistent snapshot, in pages.
    pub async fn verify_audit(&self, public_key: &[u8; 32]) -> Result<VerifyReport, StoreError> {
        dispatch!(self, s => s.verify_audit(public_key).await)
    }

    /// Expires up to `limit` pending transfers whose timeout has passed at `now_ns`, releasing their holds.
    pub async fn expire_pending(&self, now_ns: u64, limit: u32) -> Result<Vec<TransferId>, StoreError> {
        dispatch!(self, s => s.expire_pending(now_ns, limit).await)
    }

    /// The account with this id.
    pub async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        dispatch!(self, s => s.account(id).await)
    }

    /// The transfer with this id and, if pending, its state.
    pub async fn transfer(&self, id: TransferId) -> Result<Option<StoredTransfer>, StoreError> {
        dispatch!(self, s => s.transfer(id).await)
    }

    /// The most recent transfers that debit or credit an account, newest first.
    pub async fn account_transfers(&self, id: AccountId, limit: u32) -> Result<Vec<Transfer>, StoreError> {
        dispatch!(self, s => s.account_transfers(id, limit).await)
    }

    /// Loads the whole ledger from one consistent snapshot and checks every invariant.
    pub async fn verify_ledger(&self) -> Result<LedgerReport, StoreError> {
        dispatch!(self, s => s.verify_ledger().await)
    }
}

fn check_batch(len: usize) -> Result<(), StoreError> {
    if len > BATCH_LEN_MAX {
        return Err(StoreError::BatchTooLarge { len, max: BATCH_LEN_MAX });
    }
    Ok(())
}

/// Converts a ledger timestamp to a database `BIGINT`. The ledger never produces one above `i64::MAX`; a caller
/// passing such a `now` is a bug.
fn ts(ns: u64) -> i64 {
    i64::try_from(ns).expect("ledger timestamps fit in i64")
}

fn report(ledger: &rampart_ledger::Ledger, accounts: usize, pending: usize) -> LedgerReport {
    LedgerReport {
        accounts: accounts as u64,
        pending: pending as u64,
        totals: ledger.totals(),
        violation: ledger.check_invariants().err(),
    }
}

pub mod testing;
