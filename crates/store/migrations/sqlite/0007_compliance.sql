-- Compliance: versions of sanctions lists with their files and what each import changed, what each customer is
-- screened as (encrypted), compliance cases with notes, the exchange's own address block and risk lists, KYC levels
-- and submissions (encrypted, documents included), Travel Rule records (encrypted) and the three-level review of
-- large transfers.

CREATE TABLE sanctions_lists (
    version     INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL,
    -- SHA-256 over the files (name, length, bytes in name order): an identical import is refused.
    digest      BLOB NOT NULL,
    entries     INTEGER NOT NULL,
    -- The import's report as JSON: counts, what was added, removed and changed, and the rows that could not be read.
    report      TEXT NOT NULL,
    imported_by TEXT NOT NULL,
    imported_at INTEGER NOT NULL,
    -- The re-screening of every customer against this version, once done.
    rescreened_at INTEGER,
    rescreen_report TEXT
);

CREATE TABLE sanctions_list_files (
    version INTEGER NOT NULL REFERENCES sanctions_lists (version),
    name    TEXT NOT NULL,
    body    BLOB NOT NULL,
    PRIMARY KEY (version, name)
);

-- What a customer is screened as: name, country and date of birth, encrypted (AAD customer:<handle>:screening).
CREATE TABLE customer_screening (
    customer_id  INTEGER PRIMARY KEY REFERENCES customers (id),
    data         BLOB NOT NULL,
    list_version INTEGER,
    best_score   INTEGER,
    best_entry   INTEGER,
    screened_at  INTEGER NOT NULL
);

CREATE TABLE compliance_cases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    kind        TEXT NOT NULL CHECK (kind IN ('sanctions_match', 'address_match', 'offboarding', 'kyc')),
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
CREATE INDEX compliance_cases_open ON compliance_cases (state, id);
-- One open case of a kind per customer: re-screening does not pile up duplicates.
CREATE UNIQUE INDEX compliance_cases_one_open ON compliance_cases (customer_id, kind) WHERE state = 'open';

CREATE TABLE compliance_case_notes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id    INTEGER NOT NULL REFERENCES compliance_cases (id),
    author     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- The exchange's own lists of addresses: blocked (refused like a sanctioned one) or risk (held for review).
CREATE TABLE address_listings (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Canonical form (lower case where the chain ignores case).
    address     TEXT NOT NULL,
    asset       TEXT,
    category    TEXT NOT NULL CHECK (category IN ('blocked', 'risk')),
    reason      TEXT NOT NULL,
    added_by    TEXT NOT NULL,
    added_at    INTEGER NOT NULL,
    removed_by  TEXT,
    removed_at  INTEGER
);
CREATE UNIQUE INDEX address_listings_live ON address_listings (address) WHERE removed_at IS NULL;

ALTER TABLE customers ADD COLUMN kyc_level INTEGER NOT NULL DEFAULT 0;

CREATE TABLE kyc_submissions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    level       INTEGER NOT NULL CHECK (level IN (1, 2)),
    state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    -- The identity as JSON, encrypted (AAD kyc:<id>:identity).
    data        BLOB NOT NULL,
    provider    TEXT NOT NULL,
    provider_ref TEXT,
    reviewed_by TEXT,
    reason      TEXT,
    submitted_at INTEGER NOT NULL,
    reviewed_at INTEGER
);
CREATE INDEX kyc_submissions_by_state ON kyc_submissions (state, id);
CREATE UNIQUE INDEX kyc_submissions_one_pending ON kyc_submissions (customer_id) WHERE state = 'pending';

CREATE TABLE kyc_documents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_id INTEGER NOT NULL REFERENCES kyc_submissions (id),
    kind          TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    -- SHA-256 of the plaintext, so a reviewer can tell identical uploads apart without opening them.
    sha256        BLOB NOT NULL,
    -- Encrypted (AAD kyc_document:<id>).
    body          BLOB NOT NULL
);

CREATE TABLE travel_rule_records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- What the record travels with (a withdrawal's id).
    reference   TEXT NOT NULL UNIQUE,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    asset       TEXT NOT NULL,
    amount      TEXT NOT NULL,
    amount_usd  INTEGER NOT NULL,
    -- Originator and beneficiary as JSON, encrypted (AAD travel_rule:<reference>).
    data        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE transfer_reviews (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    reference   TEXT NOT NULL UNIQUE,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    requested_by TEXT NOT NULL,
    asset       TEXT NOT NULL,
    amount      TEXT NOT NULL,
    amount_usd  INTEGER NOT NULL,
    -- pending (with the level waiting), approved or rejected.
    state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    level       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    decided_at  INTEGER
);
CREATE INDEX transfer_reviews_by_state ON transfer_reviews (state, id);

CREATE TABLE transfer_review_decisions (
    review_id  INTEGER NOT NULL REFERENCES transfer_reviews (id),
    level      INTEGER NOT NULL,
    reviewer   TEXT NOT NULL,
    approve    BOOLEAN NOT NULL,
    reason     TEXT NOT NULL,
    decided_at INTEGER NOT NULL,
    PRIMARY KEY (review_id, level),
    UNIQUE (review_id, reviewer)
);
