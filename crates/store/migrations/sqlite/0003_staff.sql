-- Staff accounts, their sessions, and four-eyes role changes. Integers are 64-bit, as in PostgreSQL.

CREATE TABLE staff (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    username             TEXT NOT NULL UNIQUE,
    -- Argon2id PHC string; NULL until enrolled.
    password_hash        TEXT,
    -- The TOTP secret, encrypted under the data key with the row's identity as associated data.
    totp_secret          BLOB,
    -- The last TOTP time step accepted: each step is accepted at most once, across every node.
    totp_last_step       INTEGER,
    -- Comma-separated role names.
    roles                TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('enrolling', 'active', 'disabled')),
    -- SHA-256 of the one-time enrolment code, and when it stops working.
    enrolment_hash       BLOB,
    enrolment_expires_at INTEGER,
    created_at           INTEGER NOT NULL
);

CREATE TABLE staff_sessions (
    token_hash BLOB PRIMARY KEY,
    staff_id   INTEGER NOT NULL REFERENCES staff (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX staff_sessions_staff ON staff_sessions (staff_id);

CREATE TABLE staff_role_requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    staff_id     INTEGER NOT NULL REFERENCES staff (id),
    role         TEXT NOT NULL,
    grant_role   INTEGER NOT NULL CHECK (grant_role IN (0, 1)),
    requested_by TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    decided_by   TEXT,
    created_at   INTEGER NOT NULL,
    decided_at   INTEGER
);
