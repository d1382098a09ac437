-- Sagas, their steps, their history and the manual-intervention queue.
-- Ids and keys are text, JSON is text, timestamps are milliseconds since the Unix epoch (UTC).

CREATE TABLE saga_instances (
    id                   TEXT PRIMARY KEY NOT NULL,
    saga_type            TEXT NOT NULL,
    version              INTEGER NOT NULL,
    fingerprint          TEXT NOT NULL,
    status               TEXT NOT NULL,
    status_reason        TEXT,
    input                TEXT NOT NULL,
    input_hash           TEXT NOT NULL,
    idempotency_key      TEXT UNIQUE,
    next_run_at          INTEGER,
    lease_owner          TEXT,
    lease_expires_at     INTEGER,
    lease_previous_owner TEXT,
    fencing_token        INTEGER NOT NULL DEFAULT 0,
    trace_context        TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

CREATE INDEX saga_instances_due ON saga_instances (next_run_at)
    WHERE status IN ('running', 'compensating');
CREATE INDEX saga_instances_status ON saga_instances (status, id);

CREATE TABLE saga_steps (
    saga_id         TEXT NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    step_index      INTEGER NOT NULL,
    phase           TEXT NOT NULL,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    output          TEXT,
    last_error      TEXT,
    next_attempt_at INTEGER,
    started_at      INTEGER,
    finished_at     INTEGER,
    PRIMARY KEY (saga_id, step_index, phase)
);

CREATE TABLE saga_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id TEXT NOT NULL,
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    step    TEXT,
    phase   TEXT,
    attempt INTEGER,
    detail  TEXT
);

CREATE INDEX saga_events_saga ON saga_events (saga_id, seq);

CREATE TABLE saga_interventions (
    id                TEXT PRIMARY KEY NOT NULL,
    saga_id           TEXT NOT NULL,
    kind              TEXT NOT NULL,
    step_index        INTEGER,
    step_name         TEXT,
    phase             TEXT,
    idempotency_key   TEXT,
    input             TEXT,
    output            TEXT,
    error             TEXT NOT NULL,
    status            TEXT NOT NULL,
    opened_at         INTEGER NOT NULL,
    resolved_at       INTEGER,
    resolved_by       TEXT,
    resolution        TEXT,
    resolution_reason TEXT
);

CREATE INDEX saga_interventions_status ON saga_interventions (status, opened_at);
CREATE INDEX saga_interventions_saga ON saga_interventions (saga_id);
