-- Sagas that wait: what a saga waits for (a timer, a signal) while a step waits, and how many
-- signals it received (a worker giving a saga back to wait is told when one arrived meanwhile).
-- Neither is indexed, so writes that change them stay HOT.
ALTER TABLE saga_instances ADD COLUMN waiting_for TEXT;
ALTER TABLE saga_instances ADD COLUMN signals_received BIGINT NOT NULL DEFAULT 0;
-- The deadline a start call set, if any.
ALTER TABLE saga_instances ADD COLUMN deadline_at TIMESTAMPTZ;

-- Signals delivered to sagas: one per (saga, name); the key makes a repeated delivery a
-- duplicate. Kept until the saga is pruned.
CREATE TABLE saga_signals (
    saga_id     UUID NOT NULL,
    name        TEXT NOT NULL,
    signal_key  TEXT NOT NULL,
    payload     JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    seq         BIGSERIAL NOT NULL,
    PRIMARY KEY (saga_id, name)
);
