-- The ledger: accounts, immutable transfers, and the state of pending transfers.
-- Ids are 128-bit values stored as 16-byte big-endian BLOBs; amounts are u128 stored exactly as decimal TEXT (SQLite
-- integers stop at 2^63); timestamps are nanoseconds since the Unix epoch.

CREATE TABLE ledger_accounts (
    id              BLOB PRIMARY KEY CHECK (length(id) = 16),
    asset           TEXT NOT NULL,
    code            INTEGER NOT NULL CHECK (code BETWEEN 0 AND 65535),
    flags           INTEGER NOT NULL CHECK (flags BETWEEN 0 AND 65535),
    user_data       BLOB NOT NULL CHECK (length(user_data) = 16),
    debits_pending  TEXT NOT NULL,
    debits_posted   TEXT NOT NULL,
    credits_pending TEXT NOT NULL,
    credits_posted  TEXT NOT NULL,
    timestamp       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE ledger_transfers (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
    debit_account_id  BLOB NOT NULL,
    credit_account_id BLOB NOT NULL,
    amount            TEXT NOT NULL,
    pending_id        BLOB,
    asset             TEXT NOT NULL,
    code              INTEGER NOT NULL CHECK (code BETWEEN 0 AND 65535),
    flags             INTEGER NOT NULL CHECK (flags BETWEEN 0 AND 65535),
    timeout_s         INTEGER NOT NULL CHECK (timeout_s BETWEEN 0 AND 4294967295),
    user_data         BLOB NOT NULL,
    timestamp         INTEGER NOT NULL
);
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account_id, seq);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account_id, seq);

CREATE TABLE ledger_pending (
    id         BLOB PRIMARY KEY REFERENCES ledger_transfers (id),
    status     TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX ledger_pending_due ON ledger_pending (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;

-- Transfers are immutable: mistakes are corrected by new transfers, never by editing old ones.
CREATE TRIGGER ledger_transfers_no_update BEFORE UPDATE ON ledger_transfers
BEGIN
    SELECT RAISE(ABORT, 'ledger transfers are immutable');
END;
CREATE TRIGGER ledger_transfers_no_delete BEFORE DELETE ON ledger_transfers
BEGIN
    SELECT RAISE(ABORT, 'ledger transfers are immutable');
END;
