-- berth's PostgreSQL schema, version 1: the same records as the SQLite store (JSON
-- bodies beside the columns that are queried or constrained), plus what several daemons
-- sharing the database need: the daemons, the workspace leases with their fencing
-- epochs, and one event counter that makes event numbers commit in order.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Creation order for listing, kept for deleted workspaces so a cursor naming one works.
CREATE TABLE workspace_order (
    created_seq  BIGSERIAL PRIMARY KEY,
    workspace_id TEXT NOT NULL UNIQUE
);

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    created_seq BIGINT NOT NULL UNIQUE,
    name        TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL,
    runtime     TEXT NOT NULL,
    version     BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX workspaces_by_state ON workspaces (state, created_seq);
CREATE INDEX workspaces_by_runtime ON workspaces (runtime, created_seq);

CREATE TABLE ops (
    ord          BIGSERIAL UNIQUE,
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    status       TEXT NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX ops_by_workspace ON ops (workspace_id, ord);
CREATE INDEX ops_unfinished ON ops (ord) WHERE status IN ('queued', 'running');

-- Event numbers come from this one row, updated as the last statement of the writing
-- transaction: its row lock is held until that transaction is visible, so numbers
-- become visible in order and a reader that saw seq N has seen every seq below it.
CREATE TABLE event_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO event_counter (id, seq) VALUES (1, 0);

CREATE TABLE events (
    seq          BIGINT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX events_by_workspace ON events (workspace_id, seq);

CREATE SEQUENCE session_generations;

CREATE TABLE sessions (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    generation   BIGINT NOT NULL,
    body         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

CREATE TABLE tokens (
    hash         TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    incarnation  BIGINT NOT NULL
);
CREATE INDEX tokens_by_workspace ON tokens (workspace_id);

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    result       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Every start of a daemon takes a new epoch from here: the fencing epoch of every
-- lease it acquires, and of every write it makes.
CREATE SEQUENCE daemon_epochs;

-- One row per daemon id; its epoch is the current process's. The daemon renews
-- `expires_at` (the database's clock, never a daemon's) while it lives.
CREATE TABLE daemons (
    id         TEXT PRIMARY KEY,
    epoch      BIGINT NOT NULL,
    url        TEXT NOT NULL,
    host       TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- A workspace's owner. The lease is live while its owner's daemon row has the same
-- epoch and has not expired; a write of the workspace is accepted only under the
-- lease's epoch. Tmux workspaces belong to a host: `host` says which.
CREATE TABLE leases (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    owner        TEXT NOT NULL,
    epoch        BIGINT NOT NULL,
    host         TEXT NOT NULL,
    movable      BOOLEAN NOT NULL,
    acquired_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX leases_by_owner ON leases (owner, epoch);
