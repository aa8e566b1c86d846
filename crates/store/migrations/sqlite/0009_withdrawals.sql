-- Withdrawals: the request and its state machine, the transitions it went through, staff approvals, the versioned
-- withdrawal policy (changed by four eyes), the customers' address whitelist, and custody transactions that pay
-- withdrawals.

-- SQLite cannot change a CHECK constraint: custody_txs is rebuilt with the new kind (no table refers to it yet:
-- withdrawals, below, will).
PRAGMA defer_foreign_keys = ON;
CREATE TABLE custody_txs_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    asset       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('sweep', 'refill', 'withdrawal')),
    txid        BLOB NOT NULL UNIQUE,
    tx          BLOB NOT NULL,
    prevouts    BLOB NOT NULL,
    to_cold     INTEGER NOT NULL,
    to_hot      INTEGER NOT NULL,
    fee         INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('signing', 'signed', 'broadcast', 'confirmed', 'failed')),
    ceremony_id INTEGER REFERENCES ceremonies (id),
    failure     TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
INSERT INTO custody_txs_new SELECT id, asset, kind, txid, tx, prevouts, to_cold, to_hot, fee, state, ceremony_id,
    failure, created_at, updated_at FROM custody_txs;
DROP TABLE custody_txs;
ALTER TABLE custody_txs_new RENAME TO custody_txs;

CREATE TABLE withdrawal_policies (
    version     INTEGER PRIMARY KEY,
    body        TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('proposed', 'active', 'superseded', 'rejected')),
    decided_by  TEXT,
    note        TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    decided_at  INTEGER
);
CREATE UNIQUE INDEX withdrawal_policies_one_active ON withdrawal_policies (state) WHERE state = 'active';

CREATE TABLE whitelist_addresses (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id  INTEGER NOT NULL REFERENCES customers (id),
    asset        TEXT NOT NULL,
    address      TEXT NOT NULL,
    label        TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('unconfirmed', 'active', 'removed')),
    created_at   INTEGER NOT NULL,
    confirmed_at INTEGER,
    usable_at    INTEGER,
    removed_at   INTEGER
);
CREATE UNIQUE INDEX whitelist_addresses_live ON whitelist_addresses (customer_id, asset, address)
    WHERE state <> 'removed';

ALTER TABLE customers ADD COLUMN whitelist_only INTEGER NOT NULL DEFAULT 0;

CREATE TABLE withdrawals (
    id              TEXT PRIMARY KEY,
    customer_id     INTEGER NOT NULL REFERENCES customers (id),
    idempotency_key TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    asset           TEXT NOT NULL,
    amount          TEXT NOT NULL,
    fee_held        TEXT NOT NULL,
    usd_micro       INTEGER NOT NULL,
    address         TEXT NOT NULL,
    whitelist_id    INTEGER REFERENCES whitelist_addresses (id),
    initiator       TEXT NOT NULL CHECK (initiator IN ('session', 'api_key')),
    actor           TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('requested', 'screened', 'awaiting_approval', 'awaiting_review',
        'frozen', 'rejected', 'approved', 'queued', 'signing', 'broadcast', 'confirmed', 'cancelled', 'failed',
        'expired')),
    -- What the gates found, as JSON (risk decision and reasons, screening verdict, policy decision).
    screening       TEXT NOT NULL DEFAULT '{}',
    risk_score      INTEGER NOT NULL DEFAULT 0,
    risk_case       INTEGER,
    review_id       INTEGER,
    policy_version  INTEGER,
    policy_rule     TEXT,
    requirement     TEXT,
    reason          TEXT,
    custody_tx      INTEGER REFERENCES custody_txs (id),
    network_fee     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    UNIQUE (customer_id, idempotency_key)
);
CREATE INDEX withdrawals_state ON withdrawals (state, updated_at);
CREATE INDEX withdrawals_customer ON withdrawals (customer_id, created_at);
CREATE INDEX withdrawals_address ON withdrawals (address);
CREATE INDEX withdrawals_custody_tx ON withdrawals (custody_tx);

-- Every transition, in order: the state machine's own record beside the audit log.
CREATE TABLE withdrawal_events (
    withdrawal_id TEXT NOT NULL REFERENCES withdrawals (id),
    seq           INTEGER NOT NULL,
    from_state    TEXT NOT NULL,
    to_state      TEXT NOT NULL,
    actor         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    at            INTEGER NOT NULL,
    PRIMARY KEY (withdrawal_id, seq)
);

CREATE TABLE withdrawal_approvals (
    withdrawal_id TEXT NOT NULL REFERENCES withdrawals (id),
    approver      TEXT NOT NULL,
    layer         INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (withdrawal_id, approver)
);

