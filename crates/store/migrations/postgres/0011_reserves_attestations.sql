-- Proof of reserves, the reserves' side: for each snapshot, every address of the exchange's wallets that held coins
-- at the block the snapshot names, its balance and outputs there, and the BIP-340 signature by the address's key
-- over a statement naming the exchange, the snapshot, the asset, the block and the address
-- (docs/reserves-spec.md §9). Hot and deposit addresses are signed by the hot key when the snapshot is taken; the
-- cold wallet's address through a signing session of its custodians (ceremony_id), until which signature is NULL.

CREATE TABLE reserves_attestations (
    snapshot_id   BIGINT NOT NULL REFERENCES reserves_snapshots (id),
    asset         TEXT NOT NULL,
    script_pubkey BYTEA NOT NULL,
    wallet        TEXT NOT NULL CHECK (wallet IN ('cold', 'hot', 'deposit')),
    -- The block: its height and hash (as Bitcoin displays it, hex).
    height        BIGINT NOT NULL,
    block_hash    TEXT NOT NULL,
    balance       BIGINT NOT NULL,
    -- The outputs that make the balance, a JSON array of ["<txid>:<vout>", value].
    outputs       TEXT NOT NULL,
    signature     BYTEA,
    ceremony_id   BIGINT REFERENCES ceremonies (id),
    PRIMARY KEY (snapshot_id, asset, script_pubkey)
);
CREATE INDEX reserves_attestations_ceremony ON reserves_attestations (ceremony_id);

-- The form of a snapshot's tree: 'revealed' (sibling sums in proofs, spec §4) or 'private' (Pedersen commitments and
-- range proofs, spec §8), whose publication (top nodes' commitments and their range proofs, totals and blindings) is
-- stored as the bytes verifiers download.
ALTER TABLE reserves_snapshots ADD COLUMN form TEXT NOT NULL DEFAULT 'revealed' CHECK (form IN ('revealed', 'private'));
ALTER TABLE reserves_snapshots ADD COLUMN publication BYTEA;
