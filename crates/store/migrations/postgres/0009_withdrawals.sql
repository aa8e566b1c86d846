-- Withdrawals: the request and its state machine, the transitions it went through, staff approvals, the versioned
-- withdrawal policy (changed by four eyes), the customers' address whitelist, and custody transactions that pay
-- withdrawals.

CREATE TABLE withdrawal_policies (
    version     INTEGER PRIMARY KEY,
    body        TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('proposed', 'active', 'superseded', 'rejected')),
    decided_by  TEXT,
    note        TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    decided_at  BIGINT
);
CREATE UNIQUE INDEX withdrawal_policies_one_active ON withdrawal_policies (state) WHERE state = 'active';

CREATE TABLE whitelist_addresses (
    id           BIGSERIAL PRIMARY KEY,
    customer_id  BIGINT NOT NULL REFERENCES customers (id),
    asset        TEXT NOT NULL,
    address      TEXT NOT NULL,
    label        TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('unconfirmed', 'active', 'removed')),
    created_at   BIGINT NOT NULL,
    confirmed_at BIGINT,
    usable_at    BIGINT,
    removed_at   BIGINT
);
CREATE UNIQUE INDEX whitelist_addresses_live ON whitelist_addresses (customer_id, asset, address)
    WHERE state <> 'removed';

ALTER TABLE customers ADD COLUMN whitelist_only BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE withdrawals (
    id              TEXT PRIMARY KEY,
    customer_id     BIGINT NOT NULL REFERENCES customers (id),
    idempotency_key TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    asset           TEXT NOT NULL,
    amount          TEXT NOT NULL,
    fee_held        TEXT NOT NULL,
    usd_micro       BIGINT NOT NULL,
    address         TEXT NOT NULL,
    whitelist_id    BIGINT REFERENCES whitelist_addresses (id),
    initiator       TEXT NOT NULL CHECK (initiator IN ('session', 'api_key')),
    actor           TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('requested', 'screened', 'awaiting_approval', 'awaiting_review',
        'frozen', 'rejected', 'approved', 'queued', 'signing', 'broadcast', 'confirmed', 'cancelled', 'failed',
        'expired')),
    -- What the gates found, as JSON (risk decision and reasons, screening verdict, policy decision).
    screening       TEXT NOT NULL DEFAULT '{}',
    risk_score      BIGINT NOT NULL DEFAULT 0,
    risk_case       BIGINT,
    review_id       BIGINT,
    policy_version  BIGINT,
    policy_rule     TEXT,
    requirement     TEXT,
    reason          TEXT,
    custody_tx      BIGINT REFERENCES custody_txs (id),
    network_fee     BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    UNIQUE (customer_id, idempotency_key)
);
CREATE INDEX withdrawals_state ON withdrawals (state, updated_at);
CREATE INDEX withdrawals_customer ON withdrawals (customer_id, created_at);
CREATE INDEX withdrawals_address ON withdrawals (address);
CREATE INDEX withdrawals_custody_tx ON withdrawals (custody_tx);

-- Every transition, in order: the state machine's own record beside the audit log.
CREATE TABLE withdrawal_events (
    withdrawal_id TEXT NOT NULL REFERENCES withdrawals (id),
    seq           BIGINT NOT NULL,
    from_state    TEXT NOT NULL,
    to_state      TEXT NOT NULL,
    actor         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    at            BIGINT NOT NULL,
    PRIMARY KEY (withdrawal_id, seq)
);

CREATE TABLE withdrawal_approvals (
    withdrawal_id TEXT NOT NULL REFERENCES withdrawals (id),
    approver      TEXT NOT NULL,
    layer         BIGINT NOT NULL,
    reason        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (withdrawal_id, approver)
);

ALTER TABLE custody_txs DROP CONSTRAINT custody_txs_kind_check;
ALTER TABLE custody_txs ADD CONSTRAINT custody_txs_kind_check CHECK (kind IN ('sweep', 'refill', 'withdrawal'));
