-- Staff accounts, their sessions, and four-eyes role changes. Integers are BIGINT so both backends decode as i64.

CREATE TABLE staff (
    id                   BIGSERIAL PRIMARY KEY,
    username             TEXT NOT NULL UNIQUE,
    -- Argon2id PHC string; NULL until enrolled.
    password_hash        TEXT,
    -- The TOTP secret, encrypted under the data key with the row's identity as associated data.
    totp_secret          BYTEA,
    -- The last TOTP time step accepted: each step is accepted at most once, across every node.
    totp_last_step       BIGINT,
    -- Comma-separated role names.
    roles                TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('enrolling', 'active', 'disabled')),
    -- SHA-256 of the one-time enrolment code, and when it stops working.
    enrolment_hash       BYTEA,
    enrolment_expires_at BIGINT,
    created_at           BIGINT NOT NULL
);

CREATE TABLE staff_sessions (
    token_hash BYTEA PRIMARY KEY,
    staff_id   BIGINT NOT NULL REFERENCES staff (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX staff_sessions_staff ON staff_sessions (staff_id);

CREATE TABLE staff_role_requests (
    id           BIGSERIAL PRIMARY KEY,
    staff_id     BIGINT NOT NULL REFERENCES staff (id),
    role         TEXT NOT NULL,
    grant_role   BIGINT NOT NULL CHECK (grant_role IN (0, 1)),
    requested_by TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    decided_by   TEXT,
    created_at   BIGINT NOT NULL,
    decided_at   BIGINT
);
