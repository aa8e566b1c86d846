//! The PostgreSQL backend: row locks in id order, retried on conflicts, so several Rampart nodes can share it.

use std::str::FromStr;
use std::time::Duration;

use rampart_core::{AccountId, TransferId};
use rampart_ledger::{
    Account, CreateAccountResult, CreateTransferResult, Ledger, NewAccount, NewTransfer, PendingState, Transfer,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::audit::{self, AuditTx, AuditedBy, Auditor};
use crate::flow::{self, LedgerTx};
use crate::rows::{self, AccountRow, TransferRow};
use crate::{CONFLICT_RETRIES_MAX, ConnectOptions, LedgerReport, StoreError, StoredTransfer, ts};

const ACCOUNT_COLUMNS: &str = "id, asset, code, flags, user_data, debits_pending::text, debits_posted::text, \
                               credits_pending::text, credits_posted::text, timestamp";
const ACCOUNT_COLUMNS_A: &str = "a.id, a.asset, a.code, a.flags, a.user_data, a.debits_pending::text, \
                                 a.debits_posted::text, a.credits_pending::text, a.credits_posted::text, a.timestamp";
const TRANSFER_COLUMNS: &str = "t.id, t.debit_account_id, t.credit_account_id, t.amount::text, t.pending_id, t.asset, \
                                t.code, t.flags, t.timeout_s, t.user_data, t.timestamp";

/// A PostgreSQL connection pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
}

pub(crate) fn uuid(v: u128) -> Uuid {
    Uuid::from_u128(v)
}

fn account_row(row: &PgRow) -> Result<Account, StoreError> {
    AccountRow {
        id: row.try_get::<Uuid, _>(0)?.as_u128(),
        asset: row.try_get(1)?,
        code: i64::from(row.try_get::<i32, _>(2)?),
        flags: i64::from(row.try_get::<i32, _>(3)?),
        user_data: row.try_get::<Uuid, _>(4)?.as_u128(),
        debits_pending: row.try_get(5)?,
        debits_posted: row.try_get(6)?,
        credits_pending: row.try_get(7)?,
        credits_posted: row.try_get(8)?,
        timestamp: row.try_get(9)?,
    }
    .decode()
}

fn transfer_row(row: &PgRow) -> Result<Transfer, StoreError> {
    transfer_row_at(row, 0)
}

fn pending_row(row: &PgRow) -> Result<(TransferId, PendingState), StoreError> {
    let id = TransferId(row.try_get::<Uuid, _>(0)?.as_u128());
    Ok((id, rows::pending_state(row.try_get(1)?, row.try_get(2)?)?))
}

/// Whether an error means "another transaction got there first": retrying will see its effect.
fn is_conflict(e: &StoreError) -> bool {
    let StoreError::Database(e) = e else { return false };
    let Some(code) = e.as_database_error().and_then(|d| d.code()) else { return false };
    // serialization_failure, deadlock_detected, unique_violation.
    matches!(code.as_ref(), "40001" | "40P01" | "23505")
}

pub(crate) struct PgTx(pub(crate) Transaction<'static, Postgres>);

/// Runs a command in a fresh transaction, committing on success and starting over on a conflict.
///
/// A macro rather than a function taking an async closure: futures of async closures that borrow their arguments
/// are not provably `Send`, and the server runs commands on a multi-threaded runtime.
macro_rules! retrying {
    ($store:ident, $tx:ident => $command:expr) => {{
        let mut outcome = Err(StoreError::Contention(CONFLICT_RETRIES_MAX));
        for attempt in 0..CONFLICT_RETRIES_MAX {
            let mut tx = PgTx($store.pool.begin().await?);
            let result = {
                let $tx = &mut tx;
                $command.await
            };
            let result = match result {
                Ok(value) => tx.0.commit().await.map(|()| value).map_err(StoreError::from),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if is_conflict(&e) => {
                    tracing::debug!(attempt, error = %e, "ledger transaction conflicted; retrying");
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
                }
                other => {
                    outcome = other;
                    break;
                }
            }
        }
        outcome
    }};
}

impl LedgerTx for PgTx {
    async fn lock_pending(&mut self, ids: &[TransferId]) -> Result<Vec<(TransferId, PendingState)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.iter().map(|id| uuid(id.get())).collect();
        let rows = sqlx::query(
            "SELECT p.id, p.status, p.expires_at FROM UNNEST($1::uuid[]) AS u(id) \
             JOIN ledger_pending p ON p.id = u.id ORDER BY p.id FOR UPDATE OF p",
        )
        .bind(ids)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter().map(pending_row).collect()
    }

    async fn lock_due_pending(&mut self, now_ns: u64, limit: u32) -> Result<Vec<TransferId>, StoreError> {
        // SKIP LOCKED: several nodes may sweep at once; each takes the expired holds nobody else is resolving.
        let rows = sqlx::query(
            "SELECT id FROM ledger_pending WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= $1 \
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(ts(now_ns))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter().map(|r| Ok(TransferId(r.try_get::<Uuid, _>(0)?.as_u128()))).collect()
    }

    async fn load_transfers(&mut self, ids: &[TransferId]) -> Result<Vec<Transfer>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| uuid(id.get())).collect();
        let sql = format!("SELECT {TRANSFER_COLUMNS} FROM ledger_transfers t WHERE t.id = ANY($1)");
        let rows = sqlx::query(&sql).bind(ids).fetch_all(&mut *self.0).await?;
        rows.iter().map(transfer_row).collect()
    }

    async fn lock_accounts(&mut self, ids: &[AccountId]) -> Result<Vec<Account>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| uuid(id.get())).collect();
        // A join with the id list rather than `id = ANY($1)`: after waiting for a lock, PostgreSQL re-checks each
        // locked row against the WHERE clause, and re-scanning an 8,000-element array per row made contended batches
        // take seconds (rows × ids); the join re-checks one key.
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS_A} FROM UNNEST($1::uuid[]) AS u(id) JOIN ledger_accounts a ON a.id = u.id \
             ORDER BY a.id FOR UPDATE OF a"
        );
        let rows = sqlx::query(&sql).bind(ids).fetch_all(&mut *self.0).await?;
        rows.iter().map(account_row).collect()
    }

    /// One statement when none of the transfers exists (the usual case: new transfers checked for duplicates):
    /// the accounts locked, with whether any of the transfers exists; only then are they loaded too.
    async fn load_transfers_lock_accounts(
        &mut self,
        transfers: &[TransferId],
        accounts: &[AccountId],
    ) -> Result<(Vec<Transfer>, Vec<Account>), StoreError> {
        if transfers.is_empty() || accounts.is_empty() {
            let transfers = self.load_transfers(transfers).await?;
            return Ok((transfers, self.lock_accounts(accounts).await?));
        }
        let account_ids: Vec<Uuid> = accounts.iter().map(|id| uuid(id.get())).collect();
        let transfer_ids: Vec<Uuid> = transfers.iter().map(|id| uuid(id.get())).collect();
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS_A}, EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.id = ANY($2)) \
             FROM UNNEST($1::uuid[]) AS u(id) JOIN ledger_accounts a ON a.id = u.id ORDER BY a.id FOR UPDATE OF a"
        );
        let rows = sqlx::query(&sql).bind(account_ids).bind(transfer_ids).fetch_all(&mut *self.0).await?;
        // No account found says nothing of the transfers: they are looked up as well.
        let any = match rows.first() {
            Some(row) => row.try_get::<bool, _>(10)?,
            None => true,
        };
        let loaded = if any { self.load_transfers(transfers).await? } else { Vec::new() };
        Ok((loaded, rows.iter().map(account_row).collect::<Result<_, _>>()?))
    }

    /// One statement (data-modifying `WITH` over arrays; an empty array writes nothing): a round trip instead of
    /// up to four. The pending states refer to transfers inserted by the same statement, and foreign keys are
    /// checked at its end.
    async fn write_journal(
        &mut self,
        created: &[Account],
        updated: &[Account],
        transfers: &[Transfer],
        pending: &[(TransferId, PendingState)],
    ) -> Result<(), StoreError> {
        let c = AccountColumns::of(created);
        let u = AccountColumns::of(updated);
        let t = TransferColumns::of(transfers);
        let p_id: Vec<Uuid> = pending.iter().map(|(id, _)| uuid(id.get())).collect();
        let p_status: Vec<&str> = pending.iter().map(|(_, s)| s.status.as_str()).collect();
        let p_expires: Vec<Option<i64>> = pending.iter().map(|(_, s)| s.expires_at_ns.map(ts)).collect();
        sqlx::query(
            "WITH created AS (INSERT INTO ledger_accounts (id, asset, code, flags, user_data, debits_pending, \
             debits_posted, credits_pending, credits_posted, timestamp) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::int[], $5::uuid[], $6::text[]::numeric[], \
             $7::text[]::numeric[], $8::text[]::numeric[], $9::text[]::numeric[], $10::bigint[])), \
             balances AS (UPDATE ledger_accounts a SET debits_pending = u.dp, debits_posted = u.dpo, \
             credits_pending = u.cp, credits_posted = u.cpo \
             FROM UNNEST($11::uuid[], $12::text[]::numeric[], $13::text[]::numeric[], $14::text[]::numeric[], \
             $15::text[]::numeric[]) AS u(id, dp, dpo, cp, cpo) WHERE a.id = u.id), \
             transfers AS (INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, pending_id, \
             asset, code, flags, timeout_s, user_data, timestamp) \
             SELECT * FROM UNNEST($16::uuid[], $17::uuid[], $18::uuid[], $19::text[]::numeric[], $20::uuid[], \
             $21::text[], $22::int[], $23::int[], $24::bigint[], $25::uuid[], $26::bigint[])), \
             pending AS (INSERT INTO ledger_pending (id, status, expires_at) \
             SELECT * FROM UNNEST($27::uuid[], $28::text[], $29::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status) \
             SELECT 1",
        )
        .bind(c.id)
        .bind(c.asset)
        .bind(c.code)
        .bind(c.flags)
        .bind(c.user_data)
        .bind(c.debits_pending)
        .bind(c.debits_posted)
        .bind(c.credits_pending)
        .bind(c.credits_posted)
        .bind(c.timestamp)
        .bind(u.id)
        .bind(u.debits_pending)
        .bind(u.debits_posted)
        .bind(u.credits_pending)
        .bind(u.credits_posted)
        .bind(t.id)
        .bind(t.debit)
        .bind(t.credit)
        .bind(t.amount)
        .bind(t.pending_id)
        .bind(t.asset)
        .bind(t.code)
        .bind(t.flags)
        .bind(t.timeout_s)
        .bind(t.user_data)
        .bind(t.timestamp)
        .bind(p_id)
        .bind(p_status)
        .bind(p_expires)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }
}

impl AuditTx for PgTx {
    shared_audit_tx_methods!(crate::backend::postgres_placeholders);

    async fn lock_audit_head(&mut self) -> Result<(u64, [u8; 32]), StoreError> {
        // The head row orders appends across nodes; the very first appends race on the log's primary key instead,
        // and the loser is retried.
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *self.0)
            .await?;
        match row {
            None => Ok(audit::genesis()),
            Some(r) => audit::decode_head_position(r.try_get(0)?, r.try_get(1)?),
        }
    }

    /// One statement: the entries and the head that follows them.
    async fn append_entries(
        &mut self,
        entries: &[rampart_audit::AuditEntry],
        head: &rampart_audit::SignedHead,
    ) -> Result<(), StoreError> {
        let e = EntryColumns::of(entries);
        sqlx::query(
            "WITH entries AS (INSERT INTO audit_log (seq, time_ns, actor, action, target, outcome, details, \
             prev_hash, hash) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::bytea[], $9::bytea[])) \
             INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, $10, $11, $12) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, signature = excluded.signature",
        )
        .bind(e.seq)
        .bind(e.time)
        .bind(e.actor)
        .bind(e.action)
        .bind(e.target)
        .bind(e.outcome)
        .bind(e.details)
        .bind(e.prev)
        .bind(e.hash)
        .bind(i64::try_from(head.seq).expect("audit sequence fits i64"))
        .bind(head.hash.to_vec())
        .bind(head.signature.to_vec())
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }
}

/// Accounts as column arrays, for `UNNEST`.
struct AccountColumns {
    id: Vec<Uuid>,
    asset: Vec<String>,
    code: Vec<i32>,
    flags: Vec<i32>,
    user_data: Vec<Uuid>,
    debits_pending: Vec<String>,
    debits_posted: Vec<String>,
    credits_pending: Vec<String>,
    credits_posted: Vec<String>,
    timestamp: Vec<i64>,
}

impl AccountColumns {
    fn of(accounts: &[Account]) -> AccountColumns {
        AccountColumns {
            id: accounts.iter().map(|a| uuid(a.id.get())).collect(),
            asset: accounts.iter().map(|a| a.asset.as_str().to_owned()).collect(),
            code: accounts.iter().map(|a| i32::from(a.code)).collect(),
            flags: accounts.iter().map(|a| i32::from(a.flags.to_bits())).collect(),
            user_data: accounts.iter().map(|a| uuid(a.user_data)).collect(),
            debits_pending: accounts.iter().map(|a| a.debits_pending.units().to_string()).collect(),
            debits_posted: accounts.iter().map(|a| a.debits_posted.units().to_string()).collect(),
            credits_pending: accounts.iter().map(|a| a.credits_pending.units().to_string()).collect(),
            credits_posted: accounts.iter().map(|a| a.credits_posted.units().to_string()).collect(),
            timestamp: accounts.iter().map(|a| ts(a.timestamp)).collect(),
        }
    }
}

/// Audit entries as the arrays of an `UNNEST` insert.
struct EntryColumns<'a> {
    seq: Vec<i64>,
    time: Vec<i64>,
    actor: Vec<&'a str>,
    action: Vec<&'a str>,
    target: Vec<&'a str>,
    outcome: Vec<&'a str>,
    details: Vec<String>,
    prev: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl<'a> EntryColumns<'a> {
    fn of(entries: &'a [rampart_audit::AuditEntry]) -> EntryColumns<'a> {
        EntryColumns {
            seq: entries.iter().map(|e| i64::try_from(e.seq).expect("audit sequence fits i64")).collect(),
            time: entries.iter().map(|e| ts(e.record.time_ns)).collect(),
            actor: entries.iter().map(|e| e.record.actor.as_str()).collect(),
            action: entries.iter().map(|e| e.record.action.as_str()).collect(),
            target: entries.iter().map(|e| e.record.target.as_str()).collect(),
            outcome: entries.iter().map(|e| e.record.outcome.as_str()).collect(),
            details: entries.iter().map(audit::encode_details).collect(),
            prev: entries.iter().map(|e| e.prev_hash.to_vec()).collect(),
            hash: entries.iter().map(|e| e.hash.to_vec()).collect(),
        }
    }
}

/// Transfers as the arrays of an `UNNEST` insert.
struct TransferColumns {
    id: Vec<Uuid>,
    debit: Vec<Uuid>,
    credit: Vec<Uuid>,
    amount: Vec<String>,
    pending_id: Vec<Option<Uuid>>,
    asset: Vec<String>,
    code: Vec<i32>,
    flags: Vec<i32>,
    timeout_s: Vec<i64>,
    user_data: Vec<Uuid>,
    timestamp: Vec<i64>,
}

impl TransferColumns {
    fn of(transfers: &[Transfer]) -> TransferColumns {
        TransferColumns {
            id: transfers.iter().map(|t| uuid(t.id.get())).collect(),
            debit: transfers.iter().map(|t| uuid(t.debit_account_id.get())).collect(),
            credit: transfers.iter().map(|t| uuid(t.credit_account_id.get())).collect(),
            amount: transfers.iter().map(|t| t.amount.units().to_string()).collect(),
            pending_id: transfers.iter().map(|t| t.pending_id.map(|p| uuid(p.get()))).collect(),
            asset: transfers.iter().map(|t| t.asset.as_str().to_owned()).collect(),
            code: transfers.iter().map(|t| i32::from(t.code)).collect(),
            flags: transfers.iter().map(|t| i32::from(t.flags.to_bits())).collect(),
            timeout_s: transfers.iter().map(|t| i64::from(t.timeout_s)).collect(),
            user_data: transfers.iter().map(|t| uuid(t.user_data)).collect(),
            timestamp: transfers.iter().map(|t| ts(t.timestamp)).collect(),
        }
    }
}

/// A pooled connection idle longer than this is pinged before it is handed out again.
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl PgStore {
    pub(crate) async fn connect(url: &str, options: &ConnectOptions) -> Result<PgStore, StoreError> {
        // The parse error is reported without the URL, which may carry a password.
        let parsed =
            PgConnectOptions::from_str(url).map_err(|_| StoreError::InvalidUrl("malformed postgres url".into()))?;
        // A connection handed out again within a second of its last use is not pinged first: the ping is a round
        // trip before every transaction and read, the largest single cost of a short one on a busy machine. One
        // idle longer (the server may have restarted or closed it meanwhile) is checked as before.
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size_max.max(1))
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(parsed)
            .await?;
        Ok(PgStore { pool })
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn create_accounts(
        &self,
        batch: &[NewAccount],
        now_ns: u64,
        by: Option<&AuditedBy<'_>>,
    ) -> Result<Vec<CreateAccountResult>, StoreError> {
        retrying!(self, tx => async {
            let results = flow::create_accounts(tx, batch, now_ns).await?;
            if let Some(by) = by {
                let record = audit::accounts_record(by.actor, now_ns, batch, &results);
                audit::append_for(tx, record, by).await?;
            }
            Ok(results)
        })
    }

    pub(crate) async fn create_transfers(
        &self,
        batch: &[NewTransfer],
        now_ns: u64,
        by: Option<&AuditedBy<'_>>,
    ) -> Result<Vec<CreateTransferResult>, StoreError> {
        retrying!(self, tx => async {
            let results = flow::create_transfers(tx, batch, now_ns).await?;
            if let Some(by) = by {
                let record = audit::transfers_record(by.actor, now_ns, batch, &results);
                audit::append_for(tx, record, by).await?;
            }
            Ok(results)
        })
    }

    pub(crate) async fn append_audit(
        &self,
        records: Vec<rampart_audit::AuditRecord>,
        auditor: &Auditor<'_>,
    ) -> Result<Vec<rampart_audit::AuditEntry>, StoreError> {
        retrying!(self, tx => audit::append(tx, records.clone(), auditor))
    }

    pub(crate) async fn checkpoint_audit_head(
        &self,
        auditor: &Auditor<'_>,
        now_ns: u64,
    ) -> Result<Option<u64>, StoreError> {
        retrying!(self, tx => audit::checkpoint_head(tx, auditor, now_ns))
    }

    /// Verifies the audit log from one REPEATABLE READ snapshot: the head, the checkpoints and every entry as of one
    /// moment, so that appends running meanwhile are not mistaken for tampering.
    pub(crate) async fn verify_audit(&self, public_key: &[u8; 32]) -> Result<rampart_audit::VerifyReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let head =
            sqlx::query("SELECT seq, hash, signature FROM audit_head WHERE id = 1").fetch_optional(&mut *tx).await?;
        let head = head.map(|r| audit::decode_head(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)).transpose()?;
        let rows = sqlx::query("SELECT seq, hash, time_ns, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
        let checkpoints = rows
            .iter()
            .map(|r| audit::decode_checkpoint(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
            .collect::<Result<Vec<_>, _>>()?;
        let initialised: i64 = sqlx::query_scalar("SELECT count(*) FROM seal_config").fetch_one(&mut *tx).await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_log").fetch_one(&mut *tx).await?;
        let mut verifier = rampart_audit::Verifier::new(public_key, checkpoints).map_err(StoreError::Corrupt)?;
        let last = last.map_or(0, |v| u64::try_from(v).unwrap_or(0));
        let mut lo = 0;
        'pages: while lo < last {
            let rows = sqlx::query(
                "SELECT seq, time_ns, actor, action, target, outcome, details, prev_hash, hash FROM audit_log \
                 WHERE seq > $1 AND seq <= $2 ORDER BY seq",
            )
            .bind(i64::try_from(lo).unwrap_or(i64::MAX))
            .bind(i64::try_from(lo + audit::VERIFY_PAGE_LEN).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            for r in &rows {
                let entry = audit::decode_entry(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                    r.try_get(8)?,
                )?;
                if !verifier.push(&entry) {
                    break 'pages;
                }
            }
            lo += audit::VERIFY_PAGE_LEN;
        }
        tx.commit().await?;
        Ok(audit::finish(verifier, head, initialised > 0))
    }

    pub(crate) async fn expire_pending(&self, now_ns: u64, limit: u32) -> Result<Vec<TransferId>, StoreError> {
        retrying!(self, tx => flow::expire_pending(tx, now_ns, limit))
    }

    pub(crate) async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = $1");
        let row = sqlx::query(&sql).bind(uuid(id.get())).fetch_optional(&self.pool).await?;
        row.as_ref().map(account_row).transpose()
    }

    pub(crate) async fn transfer(&self, id: TransferId) -> Result<Option<StoredTransfer>, StoreError> {
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS}, p.status, p.expires_at FROM ledger_transfers t \
             LEFT JOIN ledger_pending p ON p.id = t.id WHERE t.id = $1"
        );
        let Some(row) = sqlx::query(&sql).bind(uuid(id.get())).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let transfer = transfer_row(&row)?;
        let status: Option<&str> = row.try_get(11)?;
        let pending = status.map(|s| rows::pending_state(s, row.try_get(12)?)).transpose()?;
        Ok(Some(StoredTransfer { transfer, pending }))
    }

    pub(crate) async fn account_transfers(&self, id: AccountId, limit: u32) -> Result<Vec<Transfer>, StoreError> {
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM ledger_transfers t WHERE t.seq IN ( \
               SELECT seq FROM ledger_transfers WHERE debit_account_id = $1 \
               UNION SELECT seq FROM ledger_transfers WHERE credit_account_id = $1) \
             ORDER BY t.seq DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql).bind(uuid(id.get())).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(transfer_row).collect()
    }

    /// The accounts of one code, every customer's id and handle, and the newest transfer's sequence, in one
    /// repeatable-read snapshot.
    pub(crate) async fn liabilities(&self, code: u16) -> Result<(i64, Vec<Account>, Vec<(i64, Vec<u8>)>), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM ledger_transfers").fetch_one(&mut *tx).await?;
        let rows = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE code = $1"))
            .bind(i32::from(code))
            .fetch_all(&mut *tx)
            .await?;
        let customers: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, handle FROM customers").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let accounts = rows.iter().map(account_row).collect::<Result<Vec<_>, _>>()?;
        Ok((seq, accounts, customers))
    }

    pub(crate) async fn verify_ledger(&self) -> Result<LedgerReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One snapshot for every statement below, so the sums are of one moment while writers go on.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let accounts =
            sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts")).fetch_all(&mut *tx).await?;
        let pending = sqlx::query(&format!(
            "SELECT p.id, p.status, p.expires_at, {TRANSFER_COLUMNS} FROM ledger_pending p \
             JOIN ledger_transfers t ON t.id = p.id WHERE p.status = 'pending'"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut ledger = Ledger::new();
        for row in &accounts {
            ledger.load_account(account_row(row)?);
        }
        for row in &pending {
            let (id, state) = pending_row(row)?;
            ledger.load_pending(id, state);
            ledger.load_transfer(transfer_row_at(row, 3)?);
        }
        Ok(crate::report(&ledger, accounts.len(), pending.len()))
    }
}

/// Decodes a transfer whose columns start at `offset` in `row`.
fn transfer_row_at(row: &PgRow, offset: usize) -> Result<Transfer, StoreError> {
    let o = offset;
    TransferRow {
        id: row.try_get::<Uuid, _>(o)?.as_u128(),
        debit_account_id: row.try_get::<Uuid, _>(o + 1)?.as_u128(),
        credit_account_id: row.try_get::<Uuid, _>(o + 2)?.as_u128(),
        amount: row.try_get(o + 3)?,
        pending_id: row.try_get::<Option<Uuid>, _>(o + 4)?.map(|u| u.as_u128()),
        asset: row.try_get(o + 5)?,
        code: i64::from(row.try_get::<i32, _>(o + 6)?),
        flags: i64::from(row.try_get::<i32, _>(o + 7)?),
        timeout_s: row.try_get(o + 8)?,
        user_data: row.try_get::<Uuid, _>(o + 9)?.as_u128(),
        timestamp: row.try_get(o + 10)?,
    }
    .decode()
}
