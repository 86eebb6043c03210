-- berth PostgreSQL schema version 2: warm pools. A pool is one JSON body; its members
-- are workspaces whose body names the pool (until a create claims them), found through
-- a partial index that holds the members only.

CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE INDEX workspaces_by_pool ON workspaces (((body::jsonb) ->> 'pool'), created_seq)
    WHERE ((body::jsonb) ->> 'pool') IS NOT NULL;
