-- Deposit screening: the addresses that funded each deposit transaction (its inputs' previous outputs), screened when
-- the deposit is about to be credited; a deposit from a listed address is `held` until compliance releases it
-- (`released`, then credited) or keeps it (`refused`, never credited).

CREATE TABLE deposit_sources (
    asset   TEXT NOT NULL,
    txid    BYTEA NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (asset, txid, address)
);

ALTER TABLE chain_deposits DROP CONSTRAINT chain_deposits_state_check;
ALTER TABLE chain_deposits ADD CONSTRAINT chain_deposits_state_check
    CHECK (state IN ('pending', 'credited', 'dust', 'reversed', 'orphaned', 'held', 'released', 'refused'));

-- A deposit from a listed address opens a case of the new kind `deposit_hold`.
ALTER TABLE compliance_cases DROP CONSTRAINT compliance_cases_kind_check;
ALTER TABLE compliance_cases ADD CONSTRAINT compliance_cases_kind_check
    CHECK (kind IN ('sanctions_match', 'address_match', 'offboarding', 'kyc', 'deposit_hold'));
