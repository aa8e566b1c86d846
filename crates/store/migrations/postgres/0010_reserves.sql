-- Proof of reserves: each liabilities snapshot — its published parameters, root and totals — and what it takes to
-- answer a customer's inclusion proof later (the balances as read, and the tree's secret sealed under the data key).

CREATE TABLE reserves_snapshots (
    id          BIGSERIAL PRIMARY KEY,
    -- The snapshot's public name, which every hash of its tree is bound to.
    name        TEXT NOT NULL UNIQUE,
    -- The ledger point read: the newest transfer's sequence number at the read.
    ledger_seq  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    -- The tree's parameters as JSON (exchange, snapshot, height, assets with their maxima).
    params      TEXT NOT NULL,
    root        BYTEA NOT NULL,
    -- Per-asset totals of liabilities, a JSON array of decimal strings in the parameters' asset order.
    totals      TEXT NOT NULL,
    users       BIGINT NOT NULL,
    -- The tree's 32-byte secret (salts, padding, placement), sealed with AAD reserves:<name>:secret.
    secret      BYTEA NOT NULL,
    -- Every customer's non-zero balances as read (the builder's input), encoded by the service.
    holdings    BYTEA NOT NULL
);
