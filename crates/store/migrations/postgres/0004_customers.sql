-- Customers and how they prove who they are: passwords, second factors, devices and sessions, brute-force
-- counters, API keys, and the notifications (in-app and the email outbox) they receive. Integers are BIGINT so
-- both backends decode them as i64. Personal data and secrets are ciphertexts under the data key, with the row's identity as associated
-- data; an email is found through its keyed blind index.

CREATE TABLE customers (
    id                   BIGSERIAL PRIMARY KEY,
    -- A random 16-byte handle: the public id, the WebAuthn user handle, and the identity in associated data.
    handle               BYTEA NOT NULL UNIQUE,
    email_index          BYTEA NOT NULL UNIQUE,
    email                BYTEA NOT NULL,
    password_hash        TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('active', 'locked', 'frozen')),
    email_verified_at    BIGINT,
    -- The confirmed TOTP secret (encrypted), and one being enrolled, not yet proven.
    totp_secret          BYTEA,
    totp_pending         BYTEA,
    -- The last TOTP time step accepted: each step is accepted at most once, across every node.
    totp_last_step       BIGINT,
    anti_phishing_code   BYTEA,
    -- Withdrawals are refused until then, after a security change (24 h) or a recovery (48 h).
    withdrawal_lock_until BIGINT,
    withdrawal_lock_reason TEXT,
    created_at           BIGINT NOT NULL
);

-- One-time backup codes, by the hash of the normalised code.
CREATE TABLE customer_backup_codes (
    customer_id BIGINT NOT NULL REFERENCES customers (id),
    code_hash   BYTEA NOT NULL,
    used_at     BIGINT,
    PRIMARY KEY (customer_id, code_hash)
);

-- WebAuthn credentials (passkeys, security keys) of customers and staff: owner is `customer:<id>` or `staff:<id>`.
CREATE TABLE webauthn_credentials (
    credential_id BYTEA PRIMARY KEY,
    owner         TEXT NOT NULL,
    name          TEXT NOT NULL,
    data          BYTEA NOT NULL,
    counter       BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX webauthn_credentials_owner ON webauthn_credentials (owner);

-- A ceremony between its two requests (sign-in tickets, WebAuthn challenges, emailed links), by the hash of its
-- token; each is consumed once.
CREATE TABLE auth_tickets (
    token_hash  BYTEA PRIMARY KEY,
    purpose     TEXT NOT NULL,
    owner       TEXT NOT NULL,
    data        BYTEA,
    attempts    BIGINT NOT NULL DEFAULT 0,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX auth_tickets_expiry ON auth_tickets (expires_at);

CREATE TABLE customer_devices (
    id            BIGSERIAL PRIMARY KEY,
    customer_id   BIGINT NOT NULL REFERENCES customers (id),
    -- SHA-256 of the device token the client keeps and sends with every request.
    token_hash    BYTEA NOT NULL UNIQUE,
    user_agent    TEXT NOT NULL,
    ip            TEXT NOT NULL,
    country       TEXT,
    confirmed_at  BIGINT,
    revoked_at    BIGINT,
    first_seen_at BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL
);
CREATE INDEX customer_devices_customer ON customer_devices (customer_id);

CREATE TABLE customer_sessions (
    token_hash       BYTEA PRIMARY KEY,
    customer_id      BIGINT NOT NULL REFERENCES customers (id),
    device_id        BIGINT NOT NULL REFERENCES customer_devices (id),
    created_at       BIGINT NOT NULL,
    last_seen_at     BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    -- When a second factor was last proven in this session, and which: the basis of step-up.
    second_factor_at BIGINT NOT NULL,
    second_factor    TEXT NOT NULL
);
CREATE INDEX customer_sessions_customer ON customer_sessions (customer_id);

-- Failed sign-ins per account (by email blind index) and per source address: progressive delays, then a lock.
CREATE TABLE auth_throttle (
    scope          TEXT NOT NULL CHECK (scope IN ('account', 'ip')),
    subject        TEXT NOT NULL,
    failures       BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL,
    blocked_until  BIGINT NOT NULL,
    PRIMARY KEY (scope, subject)
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    customer_id  BIGINT NOT NULL REFERENCES customers (id),
    label        TEXT NOT NULL,
    secret       BYTEA NOT NULL,
    scopes       TEXT NOT NULL,
    allow_list   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_keys_customer ON api_keys (customer_id);

-- Signatures already accepted, until their timestamp leaves the window: each is usable once, across every node.
CREATE TABLE api_signatures (
    key_id     TEXT NOT NULL,
    signature  BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, signature)
);
CREATE INDEX api_signatures_expiry ON api_signatures (expires_at);

CREATE TABLE customer_notifications (
    id          BIGSERIAL PRIMARY KEY,
    customer_id BIGINT NOT NULL REFERENCES customers (id),
    kind        TEXT NOT NULL,
    title       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    read_at     BIGINT
);
CREATE INDEX customer_notifications_customer ON customer_notifications (customer_id, id);

-- Emails to send, written in the same transaction as the event they tell of; a worker delivers them.
CREATE TABLE email_outbox (
    id              BYTEA PRIMARY KEY,
    customer_id     BIGINT NOT NULL REFERENCES customers (id),
    kind            TEXT NOT NULL,
    -- The notification as JSON, encrypted (it may carry a confirmation link).
    payload         BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    sent_at         BIGINT,
    failed_at       BIGINT,
    last_error      TEXT
);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;
