-- berth schema version 4: warm pools. A pool is one JSON body; its members are
-- workspaces whose body names the pool (until a create claims them), found through a
-- partial index that holds the members only.

CREATE TABLE pools (
    name TEXT PRIMARY KEY NOT NULL,
    body TEXT NOT NULL
) STRICT;

CREATE INDEX workspaces_by_pool ON workspaces (json_extract(body, '$.pool'), created_seq)
    WHERE json_extract(body, '$.pool') IS NOT NULL;
