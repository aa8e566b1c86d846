-- Secrets at rest, staff, and the audit log.

-- The public facts of the one initialisation (rampart init): never the root key or its shares.
CREATE TABLE seal_config (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    init_id     BLOB NOT NULL CHECK (length(init_id) = 16),
    shares      INTEGER NOT NULL,
    threshold   INTEGER NOT NULL,
    root_check  BLOB NOT NULL,
    -- The public half of the audit signing key, for convenience; auditors should pin their own copy.
    audit_public_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Keys wrapped by the root key.
CREATE TABLE crypto_keys (
    purpose    TEXT NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    wrapped    BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (purpose, version)
);

-- The audit log: append-only, each entry committing to the previous one.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY CHECK (seq > 0),
    time_ns   INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE INDEX audit_log_time ON audit_log (time_ns);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);

CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      BLOB NOT NULL,
    time_ns   INTEGER NOT NULL,
    signature BLOB NOT NULL
);

-- The signed head: one row, rewritten with every append; appends lock it, which orders the chain.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      BLOB NOT NULL,
    signature BLOB NOT NULL
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
-- The head is rewritten by every append but never removed.
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
