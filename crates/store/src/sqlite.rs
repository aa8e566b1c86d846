//! The SQLite backend: one file under the data directory, WAL mode, a single writer connection.

use std::str::FromStr;
use std::time::Duration;

use rampart_core::{AccountId, TransferId};
use rampart_ledger::{
    Account, CreateAccountResult, CreateTransferResult, Ledger, NewAccount, NewTransfer, PendingState, Transfer,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::audit::{self, AuditTx, AuditedBy, Auditor};
use crate::flow::{self, LedgerTx};
use crate::rows::{self, AccountRow, TransferRow};
use crate::{ConnectOptions, LedgerReport, StoreError, StoredTransfer, ts};

/// Rows per multi-row statement: well under SQLite's limit of 32,766 bound parameters.
const ROWS_PER_STATEMENT_MAX: usize = 500;

const ACCOUNT_COLUMNS: &str = "id, asset, code, flags, user_data, debits_pending, debits_posted, credits_pending, \
                               credits_posted, timestamp";
const TRANSFER_COLUMNS: &str = "id, debit_account_id, credit_account_id, amount, pending_id, asset, code, flags, \
                                timeout_s, user_data, timestamp";

/// A SQLite database: one writer connection (SQLite admits one writer at a time anyway, and a single connection
/// makes that explicit and free of `SQLITE_BUSY`) and a pool of readers.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
}

fn blob(v: u128) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn unblob(b: &[u8]) -> Result<u128, StoreError> {
    let bytes: [u8; 16] = b.try_into().map_err(|_| StoreError::Corrupt(format!("id of {} bytes", b.len())))?;
    Ok(u128::from_be_bytes(bytes))
}

fn account_row(row: &SqliteRow) -> Result<Account, StoreError> {
    AccountRow {
        id: unblob(row.try_get::<&[u8], _>(0)?)?,
        asset: row.try_get(1)?,
        code: row.try_get(2)?,
        flags: row.try_get(3)?,
        user_data: unblob(row.try_get::<&[u8], _>(4)?)?,
        debits_pending: row.try_get(5)?,
        debits_posted: row.try_get(6)?,
        credits_pending: row.try_get(7)?,
        credits_posted: row.try_get(8)?,
        timestamp: row.try_get(9)?,
    }
    .decode()
}

fn transfer_row(row: &SqliteRow) -> Result<Transfer, StoreError> {
    TransferRow {
        id: unblob(row.try_get::<&[u8], _>(0)?)?,
        debit_account_id: unblob(row.try_get::<&[u8], _>(1)?)?,
        credit_account_id: unblob(row.try_get::<&[u8], _>(2)?)?,
        amount: row.try_get(3)?,
        pending_id: row.try_get::<Option<&[u8]>, _>(4)?.map(unblob).transpose()?,
        asset: row.try_get(5)?,
        code: row.try_get(6)?,
        flags: row.try_get(7)?,
        timeout_s: row.try_get(8)?,
        user_data: unblob(row.try_get::<&[u8], _>(9)?)?,
        timestamp: row.try_get(10)?,
    }
    .decode()
}

fn pending_row(row: &SqliteRow) -> Result<(TransferId, PendingState), StoreError> {
    let id = TransferId(unblob(row.try_get::<&[u8], _>(0)?)?);
    Ok((id, rows::pending_state(row.try_get(1)?, row.try_get(2)?)?))
}

/// Runs `SELECT {select} WHERE {column} IN (…)` over `ids` in chunks and decodes every row.
async fn select_in<T>(
    conn: &mut sqlx::SqliteConnection,
    select: &str,
    column: &str,
    ids: &[u128],
    decode: impl Fn(&SqliteRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT_MAX) {
        let mut q = QueryBuilder::<Sqlite>::new(select);
        q.push(" WHERE ").push(column).push(" IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(blob(*id));
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            out.push(decode(&row)?);
        }
    }
    Ok(out)
}

pub(crate) struct SqliteTx(pub(crate) Transaction<'static, Sqlite>);

impl LedgerTx for SqliteTx {
    async fn lock_pending(&mut self, ids: &[TransferId]) -> Result<Vec<(TransferId, PendingState)>, StoreError> {
        let ids: Vec<u128> = ids.iter().map(|id| id.get()).collect();
        select_in(&mut self.0, "SELECT id, status, expires_at FROM ledger_pending", "id", &ids, pending_row).await
    }

    async fn lock_due_pending(&mut self, now_ns: u64, limit: u32) -> Result<Vec<TransferId>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM ledger_pending WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= ? \
             ORDER BY expires_at, id LIMIT ?",
        )
        .bind(ts(now_ns))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter().map(|r| Ok(TransferId(unblob(r.try_get::<&[u8], _>(0)?)?))).collect()
    }

    async fn load_transfers(&mut self, ids: &[TransferId]) -> Result<Vec<Transfer>, StoreError> {
        let ids: Vec<u128> = ids.iter().map(|id| id.get()).collect();
        let select = format!("SELECT {TRANSFER_COLUMNS} FROM ledger_transfers");
        select_in(&mut self.0, &select, "id", &ids, transfer_row).await
    }

    async fn lock_accounts(&mut self, ids: &[AccountId]) -> Result<Vec<Account>, StoreError> {
        let ids: Vec<u128> = ids.iter().map(|id| id.get()).collect();
        let select = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts");
        select_in(&mut self.0, &select, "id", &ids, account_row).await
    }

    async fn write_journal(
        &mut self,
        created: &[Account],
        updated: &[Account],
        transfers: &[Transfer],
        pending: &[(TransferId, PendingState)],
    ) -> Result<(), StoreError> {
        if !created.is_empty() {
            self.insert_accounts(created).await?;
        }
        if !updated.is_empty() {
            self.update_balances(updated).await?;
        }
        if !transfers.is_empty() {
            self.insert_transfers(transfers).await?;
        }
        if !pending.is_empty() {
            self.upsert_pending(pending).await?;
        }
        Ok(())
    }
}

/// Entries `lo < seq <= hi`, read as one JSON document built inside SQLite: the driver hands each row to the async
/// side through a channel, and at a million rows that per-row hand-off, not SQLite, was most of `audit verify`'s
/// time (perf: thread switches and allocator churn).
async fn audit_range(
    conn: &mut sqlx::SqliteConnection,
    lo: u64,
    hi: u64,
) -> Result<Vec<rampart_audit::AuditEntry>, StoreError> {
    let json: Option<String> = sqlx::query_scalar(
        "SELECT json_group_array(json_array(seq, time_ns, actor, action, target, outcome, details, \
         hex(prev_hash), hex(hash))) FROM (SELECT * FROM audit_log WHERE seq > ?1 AND seq <= ?2 ORDER BY seq)",
    )
    .bind(i64::try_from(lo).unwrap_or(i64::MAX))
    .bind(i64::try_from(hi).unwrap_or(i64::MAX))
    .fetch_one(&mut *conn)
    .await?;
    type Row = (i64, i64, String, String, String, String, String, String, String);
    let rows: Vec<Row> = serde_json::from_str(json.as_deref().unwrap_or("[]"))
        .map_err(|e| StoreError::Corrupt(format!("audit page: {e}")))?;
    let unhex = |h: &str| hex::decode(h).map_err(|_| StoreError::Corrupt("audit hash is not hex".into()));
    let mut entries = rows
        .into_iter()
        .map(|(seq, time, actor, action, target, outcome, details, prev, hash)| {
            audit::decode_entry(seq, time, actor, action, target, &outcome, &details, &unhex(&prev)?, &unhex(&hash)?)
        })
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

impl AuditTx for SqliteTx {
    shared_audit_tx_methods!(crate::backend::sqlite_placeholders);

    async fn lock_audit_head(&mut self) -> Result<(u64, [u8; 32]), StoreError> {
        // The writer connection's IMMEDIATE transaction already orders appends.
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_optional(&mut *self.0).await?;
        match row {
            None => Ok(audit::genesis()),
            Some(r) => audit::decode_head_position(r.try_get(0)?, r.try_get(1)?),
        }
    }

    async fn append_entries(
        &mut self,
        entries: &[rampart_audit::AuditEntry],
        head: &rampart_audit::SignedHead,
    ) -> Result<(), StoreError> {
        self.insert_audit_entries(entries).await?;
        self.write_audit_head(head).await
    }
}

impl SqliteTx {
    async fn insert_accounts(&mut self, accounts: &[Account]) -> Result<(), StoreError> {
        self.write_accounts(accounts, "").await
    }

    async fn update_balances(&mut self, accounts: &[Account]) -> Result<(), StoreError> {
        self.write_accounts(
            accounts,
            " ON CONFLICT (id) DO UPDATE SET debits_pending = excluded.debits_pending, \
             debits_posted = excluded.debits_posted, credits_pending = excluded.credits_pending, \
             credits_posted = excluded.credits_posted",
        )
        .await
    }

    async fn insert_transfers(&mut self, transfers: &[Transfer]) -> Result<(), StoreError> {
        for chunk in transfers.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO ledger_transfers ({TRANSFER_COLUMNS}) "));
            q.push_values(chunk, |mut b, t| {
                b.push_bind(blob(t.id.get()))
                    .push_bind(blob(t.debit_account_id.get()))
                    .push_bind(blob(t.credit_account_id.get()))
                    .push_bind(t.amount.units().to_string())
                    .push_bind(t.pending_id.map(|p| blob(p.get())))
                    .push_bind(t.asset.as_str().to_owned())
                    .push_bind(i64::from(t.code))
                    .push_bind(i64::from(t.flags.to_bits()))
                    .push_bind(i64::from(t.timeout_s))
                    .push_bind(blob(t.user_data))
                    .push_bind(ts(t.timestamp));
            });
            q.build().execute(&mut *self.0).await?;
        }
        Ok(())
    }

    async fn upsert_pending(&mut self, states: &[(TransferId, PendingState)]) -> Result<(), StoreError> {
        for chunk in states.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO ledger_pending (id, status, expires_at) ");
            q.push_values(chunk, |mut b, (id, state)| {
                b.push_bind(blob(id.get())).push_bind(state.status.as_str()).push_bind(state.expires_at_ns.map(ts));
            });
            q.push(" ON CONFLICT (id) DO UPDATE SET status = excluded.status");
            q.build().execute(&mut *self.0).await?;
        }
        Ok(())
    }

    async fn insert_audit_entries(&mut self, entries: &[rampart_audit::AuditEntry]) -> Result<(), StoreError> {
        for chunk in entries.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO audit_log (seq, time_ns, actor, action, target, outcome, details, prev_hash, hash) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(i64::try_from(e.seq).expect("audit sequence fits i64"))
                    .push_bind(ts(e.record.time_ns))
                    .push_bind(e.record.actor.clone())
                    .push_bind(e.record.action.clone())
                    .push_bind(e.record.target.clone())
                    .push_bind(e.record.outcome.as_str())
                    .push_bind(audit::encode_details(e))
                    .push_bind(e.prev_hash.to_vec())
                    .push_bind(e.hash.to_vec());
            });
            q.build().execute(&mut *self.0).await?;
        }
        Ok(())
    }

    async fn write_audit_head(&mut self, head: &rampart_audit::SignedHead) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, ?1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, signature = excluded.signature",
        )
        .bind(i64::try_from(head.seq).expect("audit sequence fits i64"))
        .bind(head.hash.to_vec())
        .bind(head.signature.to_vec())
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn write_accounts(&mut self, accounts: &[Account], on_conflict: &str) -> Result<(), StoreError> {
        for chunk in accounts.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO ledger_accounts ({ACCOUNT_COLUMNS}) "));
            q.push_values(chunk, |mut b, a| {
                b.push_bind(blob(a.id.get()))
                    .push_bind(a.asset.as_str().to_owned())
                    .push_bind(i64::from(a.code))
                    .push_bind(i64::from(a.flags.to_bits()))
                    .push_bind(blob(a.user_data))
                    .push_bind(a.debits_pending.units().to_string())
                    .push_bind(a.debits_posted.units().to_string())
                    .push_bind(a.credits_pending.units().to_string())
                    .push_bind(a.credits_posted.units().to_string())
                    .push_bind(ts(a.timestamp));
            });
            q.push(on_conflict);
            q.build().execute(&mut *self.0).await?;
        }
        Ok(())
    }
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str, options: &ConnectOptions) -> Result<SqliteStore, StoreError> {
        let parsed = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let in_memory = url.contains(":memory:");
        let writer_options = parsed
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, so an acknowledged transfer survives a power loss,
            // not only a crash of the process.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(writer_options)
            .await?;
        // An in-memory database exists only inside its one connection, so it must also serve the reads.
        let reader = if in_memory {
            writer.clone()
        } else {
            let reader_options = parsed.read_only(true).busy_timeout(Duration::from_secs(5));
            SqlitePoolOptions::new()
                .max_connections(options.pool_size_max.clamp(1, 8))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(reader_options)
                .await?
        };
        Ok(SqliteStore { writer, reader })
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite").run(&self.writer).await?;
        Ok(())
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(crate) async fn begin(&self) -> Result<SqliteTx, StoreError> {
        // IMMEDIATE takes the write lock at once: a deferred transaction that read first could find its snapshot
        // stale when it tries to write, which SQLite reports as an error rather than waiting.
        Ok(SqliteTx(self.writer.begin_with("BEGIN IMMEDIATE").await?))
    }

    pub(crate) async fn create_accounts(
        &self,
        batch: &[NewAccount],
        now_ns: u64,
        by: Option<&AuditedBy<'_>>,
    ) -> Result<Vec<CreateAccountResult>, StoreError> {
        let mut tx = self.begin().await?;
        let results = flow::create_accounts(&mut tx, batch, now_ns).await?;
        if let Some(by) = by {
            let record = audit::accounts_record(by.actor, now_ns, batch, &results);
            audit::append_for(&mut tx, record, by).await?;
        }
        tx.0.commit().await?;
        Ok(results)
    }

    pub(crate) async fn create_transfers(
        &self,
        batch: &[NewTransfer],
        now_ns: u64,
        by: Option<&AuditedBy<'_>>,
    ) -> Result<Vec<CreateTransferResult>, StoreError> {
        let mut tx = self.begin().await?;
        let results = flow::create_transfers(&mut tx, batch, now_ns).await?;
        if let Some(by) = by {
            let record = audit::transfers_record(by.actor, now_ns, batch, &results);
            audit::append_for(&mut tx, record, by).await?;
        }
        tx.0.commit().await?;
        Ok(results)
    }

    pub(crate) async fn append_audit(
        &self,
        records: Vec<rampart_audit::AuditRecord>,
        auditor: &Auditor<'_>,
    ) -> Result<Vec<rampart_audit::AuditEntry>, StoreError> {
        let mut tx = self.begin().await?;
        let entries = audit::append(&mut tx, records, auditor).await?;
        tx.0.commit().await?;
        Ok(entries)
    }

    pub(crate) async fn checkpoint_audit_head(
        &self,
        auditor: &Auditor<'_>,
        now_ns: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.begin().await?;
        let done = audit::checkpoint_head(&mut tx, auditor, now_ns).await?;
        tx.0.commit().await?;
        Ok(done)
    }

    /// Verifies the audit log from one snapshot: the head, the checkpoints and every entry as of one moment, so
    /// that appends running meanwhile are not mistaken for tampering.
    pub(crate) async fn verify_audit(&self, public_key: &[u8; 32]) -> Result<rampart_audit::VerifyReport, StoreError> {
        let mut tx = self.reader.begin().await?;
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
            for entry in audit_range(&mut tx, lo, lo + audit::VERIFY_PAGE_LEN).await? {
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
        let mut tx = self.begin().await?;
        let expired = flow::expire_pending(&mut tx, now_ns, limit).await?;
        tx.0.commit().await?;
        Ok(expired)
    }

    pub(crate) async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = ?");
        let row = sqlx::query(&sql).bind(blob(id.get())).fetch_optional(&self.reader).await?;
        row.as_ref().map(account_row).transpose()
    }

    pub(crate) async fn transfer(&self, id: TransferId) -> Result<Option<StoredTransfer>, StoreError> {
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS}, p.status, p.expires_at FROM ledger_transfers t \
             LEFT JOIN ledger_pending p USING (id) WHERE t.id = ?"
        );
        let Some(row) = sqlx::query(&sql).bind(blob(id.get())).fetch_optional(&self.reader).await? else {
            return Ok(None);
        };
        let transfer = transfer_row(&row)?;
        let status: Option<&str> = row.try_get(11)?;
        let pending = status.map(|s| rows::pending_state(s, row.try_get(12)?)).transpose()?;
        Ok(Some(StoredTransfer { transfer, pending }))
    }

    pub(crate) async fn account_transfers(&self, id: AccountId, limit: u32) -> Result<Vec<Transfer>, StoreError> {
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM ledger_transfers WHERE seq IN ( \
               SELECT seq FROM ledger_transfers WHERE debit_account_id = ?1 \
               UNION SELECT seq FROM ledger_transfers WHERE credit_account_id = ?1) \
             ORDER BY seq DESC LIMIT ?2"
        );
        let rows = sqlx::query(&sql).bind(blob(id.get())).bind(i64::from(limit)).fetch_all(&self.reader).await?;
        rows.iter().map(transfer_row).collect()
    }

    /// The accounts of one code, every customer's id and handle, and the newest transfer's sequence, in one read
    /// transaction (one WAL snapshot).
    pub(crate) async fn liabilities(&self, code: u16) -> Result<(i64, Vec<Account>, Vec<(i64, Vec<u8>)>), StoreError> {
        let mut tx = self.reader.begin().await?;
        let seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM ledger_transfers").fetch_one(&mut *tx).await?;
        let rows = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE code = ?1"))
            .bind(i64::from(code))
            .fetch_all(&mut *tx)
            .await?;
        let customers: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, handle FROM customers").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let accounts = rows.iter().map(account_row).collect::<Result<Vec<_>, _>>()?;
        Ok((seq, accounts, customers))
    }

    pub(crate) async fn verify_ledger(&self) -> Result<LedgerReport, StoreError> {
        // One read transaction: in WAL mode it sees a single consistent snapshot while writers go on.
        let mut tx = self.reader.begin().await?;
        let accounts =
            sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts")).fetch_all(&mut *tx).await?;
        let pending = sqlx::query("SELECT id, status, expires_at FROM ledger_pending WHERE status = 'pending'")
            .fetch_all(&mut *tx)
            .await?;
        let mut ledger = Ledger::new();
        for row in &accounts {
            ledger.load_account(account_row(row)?);
        }
        let mut pending_ids = Vec::with_capacity(pending.len());
        for row in &pending {
            let (id, state) = pending_row(row)?;
            ledger.load_pending(id, state);
            pending_ids.push(id.get());
        }
        let select = format!("SELECT {TRANSFER_COLUMNS} FROM ledger_transfers");
        for transfer in select_in(&mut tx, &select, "id", &pending_ids, transfer_row).await? {
            ledger.load_transfer(transfer);
        }
        tx.commit().await?;
        Ok(crate::report(&ledger, accounts.len(), pending.len()))
    }
}
