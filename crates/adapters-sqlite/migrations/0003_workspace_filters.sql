-- berth schema version 3: listings filter by state and runtime in the database, so a
-- filtered page is full whatever the filter excludes. The runtime gets its own column
-- (it never changes after create), back-filled from the JSON bodies.

ALTER TABLE workspaces ADD COLUMN runtime TEXT NOT NULL DEFAULT '';
UPDATE workspaces SET runtime = json_extract(body, '$.runtime');

CREATE INDEX workspaces_by_state ON workspaces (state, created_seq);
CREATE INDEX workspaces_by_runtime ON workspaces (runtime, created_seq);
