-- Sagas that wait: what a saga waits for (a timer, a signal) while a step waits, and how many
-- signals it received (a worker giving a saga back to wait is told when one arrived meanwhile).
ALTER TABLE saga_instances ADD COLUMN waiting_for TEXT;
ALTER TABLE saga_instances ADD COLUMN signals_received INTEGER NOT NULL DEFAULT 0;
-- The deadline a start call set (milliseconds since the epoch), if any.
ALTER TABLE saga_instances ADD COLUMN deadline_at INTEGER;

-- Signals delivered to sagas: one per (saga, name); the key makes a repeated delivery a
-- duplicate. Kept until the saga is pruned.
CREATE TABLE saga_signals (
    saga_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    signal_key  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (saga_id, name)
);
