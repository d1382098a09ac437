-- Writes are one statement each (fence, changes and events in one WITH ... SELECT). A change
-- that finds nothing to act on (beginning a completed step, finishing one never started) raises
-- through this function, which rolls the whole statement back.
CREATE FUNCTION saga_refuse(message text) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = message, ERRCODE = 'SG001';
END
$$;

-- Every write touches updated_at: with no index on it, those updates of saga_instances can be
-- HOT (no index entries written). Retention finds finished sagas through the status index.
DROP INDEX saga_instances_finished;

-- Room on each page for the new row versions of HOT updates.
ALTER TABLE saga_instances SET (fillfactor = 80);
ALTER TABLE saga_steps SET (fillfactor = 80);

-- History is read per saga in order: one index, (saga_id, seq), serves as its primary key
-- (seq comes from a sequence), instead of two written for every event.
ALTER TABLE saga_events DROP CONSTRAINT saga_events_pkey;
DROP INDEX saga_events_saga;
ALTER TABLE saga_events ADD PRIMARY KEY (saga_id, seq);

-- A step's idempotency key is derived from (saga, step name, phase), so the primary key
-- (saga_id, step_index, phase) already makes it unique; nothing looks steps up by key.
ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_idempotency_key_key;
