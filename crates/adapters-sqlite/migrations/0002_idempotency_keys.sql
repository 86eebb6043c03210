-- berth schema version 2: idempotency keys for create requests, and an index that
-- makes the cascade from workspaces to tokens cheap.

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY NOT NULL,
    request_hash TEXT NOT NULL,
    result       TEXT NOT NULL,
    created_at   TEXT NOT NULL
) STRICT;

CREATE INDEX tokens_by_workspace ON tokens (workspace_id);
