-- A pending operator request to cancel a running saga ("cancel requested by alice: reason").
ALTER TABLE saga_instances ADD COLUMN cancel_requested TEXT;
