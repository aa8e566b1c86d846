-- Deposit screening: the addresses that funded each deposit transaction (its inputs' previous outputs), screened when
-- the deposit is about to be credited; a deposit from a listed address is `held` until compliance releases it
-- (`released`, then credited) or keeps it (`refused`, never credited).

CREATE TABLE deposit_sources (
    asset   TEXT NOT NULL,
    txid    BLOB NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (asset, txid, address)
);

-- SQLite cannot change a CHECK constraint: the tables are rebuilt with the new values. The migration runs in one
-- transaction, where foreign keys cannot be switched off; they are deferred instead, and a table others refer to
-- (compliance_cases, by its notes) is copied aside, dropped, created anew and refilled, so that every reference its
-- drop broke is mended before the commit checks them.
PRAGMA defer_foreign_keys = ON;

CREATE TABLE chain_deposits_new (
    asset       TEXT NOT NULL,
    txid        BLOB NOT NULL,
    vout        INTEGER NOT NULL,
    address_id  INTEGER NOT NULL REFERENCES deposit_addresses (id),
    customer_id INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'credited', 'dust', 'reversed', 'orphaned', 'held',
                                               'released', 'refused')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (asset, txid, vout)
);
INSERT INTO chain_deposits_new SELECT asset, txid, vout, address_id, customer_id, amount, height, state, created_at,
    updated_at FROM chain_deposits;
DROP TABLE chain_deposits;
ALTER TABLE chain_deposits_new RENAME TO chain_deposits;
CREATE INDEX chain_deposits_customer ON chain_deposits (customer_id);

-- A deposit from a listed address opens a case of the new kind `deposit_hold`.
CREATE TABLE compliance_cases_copy AS SELECT * FROM compliance_cases;
DROP TABLE compliance_cases;
CREATE TABLE compliance_cases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    kind        TEXT NOT NULL CHECK (kind IN ('sanctions_match', 'address_match', 'offboarding', 'kyc',
                                              'deposit_hold')),
    -- freeze: the account is frozen while the case is open; hold: an item waits; flag: for review only.
    outcome     TEXT NOT NULL CHECK (outcome IN ('freeze', 'hold', 'flag')),
    state       TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    -- What was found, as JSON (the matched entry and score, the address and its listing, the country ...).
    details     TEXT NOT NULL,
    assigned_to TEXT,
    resolution  TEXT CHECK (resolution IN ('release', 'keep_frozen', 'offboard')),
    resolved_by TEXT,
    created_at  INTEGER NOT NULL,
    resolved_at INTEGER
);
INSERT INTO compliance_cases (id, customer_id, kind, outcome, state, details, assigned_to, resolution, resolved_by,
    created_at, resolved_at)
    SELECT id, customer_id, kind, outcome, state, details, assigned_to, resolution, resolved_by, created_at,
        resolved_at FROM compliance_cases_copy;
DROP TABLE compliance_cases_copy;
CREATE INDEX compliance_cases_open ON compliance_cases (state, id);
-- One open case of a kind per customer.
CREATE UNIQUE INDEX compliance_cases_one_open ON compliance_cases (customer_id, kind) WHERE state = 'open';
