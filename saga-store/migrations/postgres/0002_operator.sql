-- A pending operator request to cancel a running saga ("cancel requested by alice: reason").
ALTER TABLE saga_instances ADD COLUMN cancel_requested text;
-- Retention: finished sagas by age.
CREATE INDEX saga_instances_finished ON saga_instances (updated_at)
    WHERE status IN ('completed', 'compensated', 'cancelled');
