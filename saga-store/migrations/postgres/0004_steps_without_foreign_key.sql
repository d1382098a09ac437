-- Steps are written only with their saga's fenced update, or with its creation, in the same
-- statement, so they cannot outlive or precede it; pruning deletes them with the saga. The
-- foreign key checked that again for every step row begun, with a query and a row lock on the
-- saga (a WAL record) each time.
ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_saga_id_fkey;
