-- Child sagas: the saga and step that started a saga, for a child started by a parent's step.
-- Indexed to list a parent's children; NULL for sagas started by callers.
ALTER TABLE saga_instances ADD COLUMN parent_id UUID;
ALTER TABLE saga_instances ADD COLUMN parent_step TEXT;
CREATE INDEX saga_instances_parent ON saga_instances (parent_id) WHERE parent_id IS NOT NULL;
