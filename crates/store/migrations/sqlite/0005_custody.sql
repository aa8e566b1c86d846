-- Custody: the custodians who hold shares of the cold keys, the wallets (cold threshold keys, hot keys sealed under
-- the data key), the ceremonies the server relays (key generation, refresh, repair, removal, signing), customers'
-- deposit addresses, what the chain watcher has seen (blocks, our outputs, deposits), the transactions we make
-- (sweeps, refills) and refill proposals with their approvals. Amounts in satoshis fit a 64-bit integer (21e14 < 2^63).

CREATE TABLE custodians (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    staff_id     INTEGER NOT NULL UNIQUE REFERENCES staff (id),
    name         TEXT NOT NULL,
    -- The custodian's Ed25519 identity key (signs every ceremony message) and X25519 key (receives secret packages).
    signing_key  BLOB NOT NULL UNIQUE,
    exchange_key BLOB NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'active', 'retired')),
    created_at   INTEGER NOT NULL
);

CREATE TABLE custody_wallets (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    asset          TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('cold', 'hot')),
    status         TEXT NOT NULL CHECK (status IN ('active', 'retired')),
    -- Cold: the key's version, raised by every refresh, repair or removal.
    epoch          INTEGER NOT NULL,
    threshold      INTEGER,
    -- Cold: the output script of the group key; hot: the wallet's own address (branch 0, index 0).
    script_pubkey  BLOB NOT NULL,
    -- Cold: the FROST public key package (group key and every member's verifying share).
    public_package BLOB,
    -- Hot: the extended private key, encrypted under the data key; its account-level xpub.
    hot_key        BLOB,
    account_xpub   TEXT,
    created_at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX custody_wallets_active ON custody_wallets (asset, kind) WHERE status = 'active';

-- Who holds which share of a cold key, per epoch.
CREATE TABLE wallet_members (
    wallet_id    INTEGER NOT NULL REFERENCES custody_wallets (id),
    epoch        INTEGER NOT NULL,
    identifier   INTEGER NOT NULL,
    custodian_id INTEGER NOT NULL REFERENCES custodians (id),
    PRIMARY KEY (wallet_id, epoch, identifier)
);

CREATE TABLE ceremonies (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('dkg', 'refresh', 'repair', 'remove', 'sign')),
    asset      TEXT NOT NULL,
    wallet_id  INTEGER REFERENCES custody_wallets (id),
    state      TEXT NOT NULL CHECK (state IN ('open', 'completed', 'failed', 'expired')),
    threshold  INTEGER NOT NULL,
    -- JSON: the participants, [{"identifier": 1, "custodian_id": 7}, …], and kind-specific parameters.
    roster     TEXT NOT NULL,
    params     TEXT NOT NULL,
    failure    TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Messages the server relays: each (ceremony, round, sender, recipient) once; recipient 0 is everyone. Payloads
-- addressed to one participant are encrypted to them; every message is signed by its sender's identity key.
CREATE TABLE ceremony_messages (
    ceremony_id INTEGER NOT NULL REFERENCES ceremonies (id),
    round       TEXT NOT NULL,
    sender      INTEGER NOT NULL,
    recipient   INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    signature   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (ceremony_id, round, sender, recipient)
);

CREATE TABLE deposit_addresses (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id   INTEGER NOT NULL REFERENCES customers (id),
    asset         TEXT NOT NULL,
    -- The derivation index (m/86'/coin'/0'/1/index), never reused within an asset.
    idx           INTEGER NOT NULL,
    script_pubkey BLOB NOT NULL UNIQUE,
    address       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (asset, idx)
);
CREATE INDEX deposit_addresses_customer ON deposit_addresses (customer_id, asset);

-- The blocks the watcher has processed (the recent ones, to find a fork point).
CREATE TABLE chain_blocks (
    asset  TEXT NOT NULL,
    height INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (asset, height)
);

-- Outputs that pay one of our scripts. `spent_by` is the txid of our transaction that spends it (reserved from
-- the moment it is built); `spent_height` the block that confirmed the spend.
CREATE TABLE custody_utxos (
    asset         TEXT NOT NULL,
    txid          BLOB NOT NULL,
    vout          INTEGER NOT NULL,
    wallet        TEXT NOT NULL CHECK (wallet IN ('cold', 'hot', 'deposit')),
    -- Hot and deposit outputs: the derivation branch and index of the key that spends them.
    branch        INTEGER,
    idx           INTEGER,
    script_pubkey BLOB NOT NULL,
    value         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    spent_by      BLOB,
    spent_height  INTEGER,
    PRIMARY KEY (asset, txid, vout)
);
CREATE INDEX custody_utxos_unspent ON custody_utxos (asset, wallet) WHERE spent_by IS NULL;

CREATE TABLE chain_deposits (
    asset       TEXT NOT NULL,
    txid        BLOB NOT NULL,
    vout        INTEGER NOT NULL,
    address_id  INTEGER NOT NULL REFERENCES deposit_addresses (id),
    customer_id INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'credited', 'dust', 'reversed', 'orphaned')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (asset, txid, vout)
);
CREATE INDEX chain_deposits_customer ON chain_deposits (customer_id);

-- Transactions the exchange makes: sweeps (signed by the hot key) and refills (signed by a quorum of custodians).
CREATE TABLE custody_txs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    asset       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('sweep', 'refill')),
    txid        BLOB NOT NULL UNIQUE,
    -- The transaction (unsigned until signed) and the outputs it spends, consensus-encoded.
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

CREATE TABLE refill_proposals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    asset       TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'done')),
    ceremony_id INTEGER REFERENCES ceremonies (id),
    created_at  INTEGER NOT NULL
);

CREATE TABLE refill_approvals (
    proposal_id INTEGER NOT NULL REFERENCES refill_proposals (id),
    staff_id    INTEGER NOT NULL REFERENCES staff (id),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (proposal_id, staff_id)
);
