-- Sagas, their steps, their history and the manual-intervention queue.
-- Created in the store's schema (the connection's search_path puts it first).

CREATE TABLE saga_instances (
    id                   uuid PRIMARY KEY,
    saga_type            text NOT NULL,
    version              integer NOT NULL,
    fingerprint          text NOT NULL,
    status               text NOT NULL,
    status_reason        text,
    input                jsonb NOT NULL,
    input_hash           text NOT NULL,
    idempotency_key      text UNIQUE,
    next_run_at          timestamptz,
    lease_owner          text,
    lease_expires_at     timestamptz,
    lease_previous_owner text,
    fencing_token        bigint NOT NULL DEFAULT 0,
    trace_context        text,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);

-- The claim query: active sagas by due time.
CREATE INDEX saga_instances_due ON saga_instances (next_run_at)
    WHERE status IN ('running', 'compensating');
-- Listing by status, in id (creation) order.
CREATE INDEX saga_instances_status ON saga_instances (status, id);
CREATE INDEX saga_instances_type ON saga_instances (saga_type, id);

CREATE TABLE saga_steps (
    saga_id         uuid NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    step_index      integer NOT NULL,
    phase           text NOT NULL,
    name            text NOT NULL,
    status          text NOT NULL,
    attempt         integer NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    output          jsonb,
    last_error      text,
    next_attempt_at timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (saga_id, step_index, phase)
);

CREATE TABLE saga_events (
    seq     bigserial PRIMARY KEY,
    saga_id uuid NOT NULL,
    at      timestamptz NOT NULL,
    kind    text NOT NULL,
    step    text,
    phase   text,
    attempt integer,
    detail  text
);

CREATE INDEX saga_events_saga ON saga_events (saga_id, seq);

CREATE TABLE saga_interventions (
    id                uuid PRIMARY KEY,
    saga_id           uuid NOT NULL,
    kind              text NOT NULL,
    step_index        integer,
    step_name         text,
    phase             text,
    idempotency_key   text,
    input             jsonb,
    output            jsonb,
    error             text NOT NULL,
    status            text NOT NULL,
    opened_at         timestamptz NOT NULL,
    resolved_at       timestamptz,
    resolved_by       text,
    resolution        text,
    resolution_reason text
);

CREATE INDEX saga_interventions_status ON saga_interventions (status, opened_at);
CREATE INDEX saga_interventions_saga ON saga_interventions (saga_id);
