-- Custody: the custodians who hold shares of the cold keys, the wallets (cold threshold keys, hot keys sealed under
-- the data key), the ceremonies the server relays (key generation, refresh, repair, removal, signing), customers'
-- deposit addresses, what the chain watcher has seen (blocks, our outputs, deposits), the transactions we make
-- (sweeps, refills) and refill proposals with their approvals. Amounts in satoshis fit BIGINT (21e14 < 2^63).

CREATE TABLE custodians (
    id           BIGSERIAL PRIMARY KEY,
    staff_id     BIGINT NOT NULL UNIQUE REFERENCES staff (id),
    name         TEXT NOT NULL,
    -- The custodian's Ed25519 identity key (signs every ceremony message) and X25519 key (receives secret packages).
    signing_key  BYTEA NOT NULL UNIQUE,
    exchange_key BYTEA NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'active', 'retired')),
    created_at   BIGINT NOT NULL
);

CREATE TABLE custody_wallets (
    id             BIGSERIAL PRIMARY KEY,
    asset          TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('cold', 'hot')),
    status         TEXT NOT NULL CHECK (status IN ('active', 'retired')),
    -- Cold: the key's version, raised by every refresh, repair or removal.
    epoch          BIGINT NOT NULL,
    threshold      BIGINT,
    -- Cold: the output script of the group key; hot: the wallet's own address (branch 0, index 0).
    script_pubkey  BYTEA NOT NULL,
    -- Cold: the FROST public key package (group key and every member's verifying share).
    public_package BYTEA,
    -- Hot: the extended private key, encrypted under the data key; its account-level xpub.
    hot_key        BYTEA,
    account_xpub   TEXT,
    created_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX custody_wallets_active ON custody_wallets (asset, kind) WHERE status = 'active';

-- Who holds which share of a cold key, per epoch.
CREATE TABLE wallet_members (
    wallet_id    BIGINT NOT NULL REFERENCES custody_wallets (id),
    epoch        BIGINT NOT NULL,
    identifier   BIGINT NOT NULL,
    custodian_id BIGINT NOT NULL REFERENCES custodians (id),
    PRIMARY KEY (wallet_id, epoch, identifier)
);

CREATE TABLE ceremonies (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('dkg', 'refresh', 'repair', 'remove', 'sign')),
    asset      TEXT NOT NULL,
    wallet_id  BIGINT REFERENCES custody_wallets (id),
    state      TEXT NOT NULL CHECK (state IN ('open', 'completed', 'failed', 'expired')),
    threshold  BIGINT NOT NULL,
    -- JSON: the participants, [{"identifier": 1, "custodian_id": 7}, …], and kind-specific parameters.
    roster     TEXT NOT NULL,
    params     TEXT NOT NULL,
    failure    TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Messages the server relays: each (ceremony, round, sender, recipient) once; recipient 0 is everyone. Payloads
-- addressed to one participant are encrypted to them; every message is signed by its sender's identity key.
CREATE TABLE ceremony_messages (
    ceremony_id BIGINT NOT NULL REFERENCES ceremonies (id),
    round       TEXT NOT NULL,
    sender      BIGINT NOT NULL,
    recipient   BIGINT NOT NULL,
    payload     BYTEA NOT NULL,
    signature   BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (ceremony_id, round, sender, recipient)
);

CREATE TABLE deposit_addresses (
    id            BIGSERIAL PRIMARY KEY,
    customer_id   BIGINT NOT NULL REFERENCES customers (id),
    asset         TEXT NOT NULL,
    -- The derivation index (m/86'/coin'/0'/1/index), never reused within an asset.
    idx           BIGINT NOT NULL,
    script_pubkey BYTEA NOT NULL UNIQUE,
    address       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (asset, idx)
);
CREATE INDEX deposit_addresses_customer ON deposit_addresses (customer_id, asset);

-- The blocks the watcher has processed (the recent ones, to find a fork point).
CREATE TABLE chain_blocks (
    asset  TEXT NOT NULL,
    height BIGINT NOT NULL,
    hash   BYTEA NOT NULL,
    PRIMARY KEY (asset, height)
);

-- Outputs that pay one of our scripts. `spent_by` is the txid of our transaction that spends it (reserved from
-- the moment it is built); `spent_height` the block that confirmed the spend.
CREATE TABLE custody_utxos (
    asset         TEXT NOT NULL,
    txid          BYTEA NOT NULL,
    vout          BIGINT NOT NULL,
    wallet        TEXT NOT NULL CHECK (wallet IN ('cold', 'hot', 'deposit')),
    -- Hot and deposit outputs: the derivation branch and index of the key that spends them.
    branch        BIGINT,
    idx           BIGINT,
    script_pubkey BYTEA NOT NULL,
    value         BIGINT NOT NULL,
    height        BIGINT NOT NULL,
    spent_by      BYTEA,
    spent_height  BIGINT,
    PRIMARY KEY (asset, txid, vout)
);
CREATE INDEX custody_utxos_unspent ON custody_utxos (asset, wallet) WHERE spent_by IS NULL;

CREATE TABLE chain_deposits (
    asset       TEXT NOT NULL,
    txid        BYTEA NOT NULL,
    vout        BIGINT NOT NULL,
    address_id  BIGINT NOT NULL REFERENCES deposit_addresses (id),
    customer_id BIGINT NOT NULL,
    amount      BIGINT NOT NULL,
    height      BIGINT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'credited', 'dust', 'reversed', 'orphaned')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (asset, txid, vout)
);
CREATE INDEX chain_deposits_customer ON chain_deposits (customer_id);

-- Transactions the exchange makes: sweeps (signed by the hot key) and refills (signed by a quorum of custodians).
CREATE TABLE custody_txs (
    id          BIGSERIAL PRIMARY KEY,
    asset       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('sweep', 'refill')),
    txid        BYTEA NOT NULL UNIQUE,
    -- The transaction (unsigned until signed) and the outputs it spends, consensus-encoded.
    tx          BYTEA NOT NULL,
    prevouts    BYTEA NOT NULL,
    to_cold     BIGINT NOT NULL,
    to_hot      BIGINT NOT NULL,
    fee         BIGINT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('signing', 'signed', 'broadcast', 'confirmed', 'failed')),
    ceremony_id BIGINT REFERENCES ceremonies (id),
    failure     TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE refill_proposals (
    id          BIGSERIAL PRIMARY KEY,
    asset       TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'done')),
    ceremony_id BIGINT REFERENCES ceremonies (id),
    created_at  BIGINT NOT NULL
);

CREATE TABLE refill_approvals (
    proposal_id BIGINT NOT NULL REFERENCES refill_proposals (id),
    staff_id    BIGINT NOT NULL REFERENCES staff (id),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (proposal_id, staff_id)
);
