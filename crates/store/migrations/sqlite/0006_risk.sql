-- Risk: the events the engine scored (the log a restart replays after the newest snapshot, and what back-tests
-- read), the engine's snapshots, and the review queue of held and frozen items with reviewers' notes.

CREATE TABLE risk_events (
    -- Assigned by the engine's owner in the order it scored the events.
    seq           INTEGER PRIMARY KEY,
    at_ns         INTEGER NOT NULL,
    customer_id   INTEGER NOT NULL,
    -- The event as JSON (rampart_risk::Event).
    event         TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    rules_version INTEGER NOT NULL
);

CREATE TABLE risk_snapshots (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The last event the snapshot includes.
    last_seq   INTEGER NOT NULL,
    state      BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE risk_cases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    event_seq   INTEGER NOT NULL,
    -- The kind of event that opened it (sign_in, withdrawal, security_change, …).
    kind        TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('hold', 'freeze')),
    state       TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    -- The decision's reasons as JSON: rule names, descriptions and the feature values they read.
    reasons     TEXT NOT NULL,
    assigned_to TEXT,
    resolution  TEXT CHECK (resolution IN ('release', 'keep_frozen', 'escalate')),
    resolved_by TEXT,
    created_at  INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX risk_cases_open ON risk_cases (state, id);

CREATE TABLE risk_case_notes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id    INTEGER NOT NULL REFERENCES risk_cases (id),
    author     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
