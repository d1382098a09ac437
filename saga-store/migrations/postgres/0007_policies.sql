-- Policies checked before a step's side effect, shared by every process on the database.

-- One row per counted use of a policy (a cap, a rate limit, a concurrency slot, a retry
-- budget) under its key. A use is keyed by saga, step and attempt, so counting it again is a
-- no-op. A use with an expiry counts until then; a concurrency slot (no expiry) counts while
-- its saga has not ended.
CREATE TABLE saga_policy_uses (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    use_key    TEXT NOT NULL,
    saga_id    UUID NOT NULL,
    step_index INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    used_at    TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    PRIMARY KEY (kind, name, use_key, saga_id, step_index, attempt)
);
CREATE INDEX saga_policy_uses_expiry ON saga_policy_uses (kind, name, use_key, expires_at);

-- Rate limits, one row per integration: when the next call may be granted (calls are spaced
-- by the limit's window over its bound), and until when the integration backs off because a
-- step reported throttling.
CREATE TABLE saga_rate_limits (
    name          TEXT PRIMARY KEY,
    next_at       TIMESTAMPTZ,
    backoff_until TIMESTAMPTZ
);

-- Operators' pauses of a saga type ('' step) or one step: who, when, why; kept once lifted,
-- with who lifted it and why. At most one in force per scope.
CREATE TABLE saga_pauses (
    id            BIGSERIAL PRIMARY KEY,
    saga_type     TEXT NOT NULL,
    step          TEXT NOT NULL DEFAULT '',
    paused_by     TEXT NOT NULL,
    reason        TEXT NOT NULL,
    paused_at     TIMESTAMPTZ NOT NULL,
    resumed_at    TIMESTAMPTZ,
    resumed_by    TEXT,
    resume_reason TEXT
);
CREATE UNIQUE INDEX saga_pauses_in_force ON saga_pauses (saga_type, step) WHERE resumed_at IS NULL;

-- Sagas started with a dedup window on their start key: kept from pruning until the window
-- ends (a repeat start inside it still finds them).
CREATE TABLE saga_start_windows (
    saga_id UUID PRIMARY KEY,
    until   TIMESTAMPTZ NOT NULL
);

-- Caps and retry budgets, counted in slots: at most `max` per key, each held by one use until
-- the use leaves its window. A use takes a free slot (or finds its own) in one statement,
-- without a lock of its own; two uses racing for one slot are ordered by its row.
CREATE TABLE saga_policy_slots (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    use_key    TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    saga_id    UUID NOT NULL,
    step_index INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, name, use_key, slot)
);
