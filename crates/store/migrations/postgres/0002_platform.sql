-- Secrets at rest, staff, and the audit log.

-- The public facts of the one initialisation (rampart init): never the root key or its shares.
CREATE TABLE seal_config (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    init_id     BYTEA NOT NULL CHECK (length(init_id) = 16),
    shares      INTEGER NOT NULL,
    threshold   INTEGER NOT NULL,
    root_check  BYTEA NOT NULL,
    -- The public half of the audit signing key, for convenience; auditors should pin their own copy.
    audit_public_key BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Keys wrapped by the root key.
CREATE TABLE crypto_keys (
    purpose    TEXT NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    wrapped    BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (purpose, version)
);

-- The audit log: append-only, each entry committing to the previous one.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY CHECK (seq > 0),
    time_ns   BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL
);
CREATE INDEX audit_log_time ON audit_log (time_ns);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      BYTEA NOT NULL,
    time_ns   BIGINT NOT NULL,
    signature BYTEA NOT NULL
);

-- The signed head: one row, rewritten with every append; appends lock it, which orders the chain.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL,
    hash      BYTEA NOT NULL,
    signature BYTEA NOT NULL
);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
-- The head is rewritten by every append but never removed.
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
