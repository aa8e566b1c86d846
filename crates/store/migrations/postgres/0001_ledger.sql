-- The ledger: accounts, immutable transfers, and the state of pending transfers.
-- Ids are 128-bit values stored as UUID (16 bytes); amounts are u128 stored exactly as NUMERIC(39,0), which holds
-- every value up to 2^128 - 1; timestamps are nanoseconds since the Unix epoch.

CREATE TABLE ledger_accounts (
    id              UUID PRIMARY KEY,
    asset           TEXT NOT NULL,
    code            INTEGER NOT NULL CHECK (code BETWEEN 0 AND 65535),
    flags           INTEGER NOT NULL CHECK (flags BETWEEN 0 AND 65535),
    user_data       UUID NOT NULL,
    debits_pending  NUMERIC(39, 0) NOT NULL CHECK (debits_pending >= 0),
    debits_posted   NUMERIC(39, 0) NOT NULL CHECK (debits_posted >= 0),
    credits_pending NUMERIC(39, 0) NOT NULL CHECK (credits_pending >= 0),
    credits_posted  NUMERIC(39, 0) NOT NULL CHECK (credits_posted >= 0),
    timestamp       BIGINT NOT NULL
);

CREATE TABLE ledger_transfers (
    seq               BIGSERIAL NOT NULL UNIQUE,
    id                UUID PRIMARY KEY,
    debit_account_id  UUID NOT NULL,
    credit_account_id UUID NOT NULL,
    amount            NUMERIC(39, 0) NOT NULL CHECK (amount >= 0),
    pending_id        UUID,
    asset             TEXT NOT NULL,
    code              INTEGER NOT NULL CHECK (code BETWEEN 0 AND 65535),
    flags             INTEGER NOT NULL CHECK (flags BETWEEN 0 AND 65535),
    timeout_s         BIGINT NOT NULL CHECK (timeout_s BETWEEN 0 AND 4294967295),
    user_data         UUID NOT NULL,
    timestamp         BIGINT NOT NULL
);
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account_id, seq);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account_id, seq);

CREATE TABLE ledger_pending (
    id         UUID PRIMARY KEY REFERENCES ledger_transfers (id),
    status     TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    expires_at BIGINT
);
CREATE INDEX ledger_pending_due ON ledger_pending (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;

-- Transfers are immutable: mistakes are corrected by new transfers, never by editing old ones.
CREATE FUNCTION ledger_transfers_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger transfers are immutable';
END;
$$;
CREATE TRIGGER ledger_transfers_no_update BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_immutable();
