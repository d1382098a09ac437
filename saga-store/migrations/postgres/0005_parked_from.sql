-- The status a saga was in when an intervention item parked it (running or compensating):
-- where an operator's retry resumes it.
ALTER TABLE saga_interventions ADD COLUMN parked_from TEXT;
