-- berth schema version 1: workspaces, the op intent log, the event log, sessions,
-- token hashes. Records are stored as JSON bodies next to the columns that are
-- queried or constrained.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

-- Creation order for listing, kept for deleted workspaces too so a cursor that names a
-- deleted workspace still works.
CREATE TABLE workspace_order (
    created_seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL UNIQUE
) STRICT;

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY NOT NULL,
    created_seq INTEGER NOT NULL UNIQUE,
    name        TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    body        TEXT NOT NULL
) STRICT;

CREATE TABLE ops (
    id           TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL,
    status       TEXT NOT NULL,
    body         TEXT NOT NULL
) STRICT;
CREATE INDEX ops_by_workspace ON ops (workspace_id);
CREATE INDEX ops_unfinished ON ops (status) WHERE status IN ('queued', 'running');

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    body         TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_workspace ON events (workspace_id, seq);

-- Session generations: AUTOINCREMENT never hands out a number twice.
CREATE TABLE session_generations (
    generation   INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL
) STRICT;

CREATE TABLE sessions (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    generation   INTEGER NOT NULL,
    body         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name)
) STRICT;

CREATE TABLE tokens (
    hash         TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    incarnation  INTEGER NOT NULL
) STRICT;
