//! The store port: durable workspaces, the op intent log, the event log, sessions,
//! token hashes and idempotency keys.
//!
//! # Writer model
//!
//! One engine writes a store's workspace rows at a time: every write of a row goes
//! through that workspace's gate in the engine, which therefore keeps the row it last
//! committed and serves reads from it. A store that is not shared (SQLite in a data
//! directory, held by one daemon through `daemon.lock`) needs nothing more.
//!
//! A store shared by several engines needs fencing, and the port carries the hook: every
//! row write ([`Store::commit`], [`Store::delete_workspace`]) carries the writer's
//! [`Fence`]. A store that knows a newer epoch for the workspace MUST refuse the write
//! with [`StoreError::Fenced`] and write nothing; the engine then forgets its cached
//! row. Single-writer stores accept every fence.

// mockall's generated mocks (feature `testkit`) use std's Mutex internally.
#![cfg_attr(feature = "testkit", allow(clippy::disallowed_types))]

use async_trait::async_trait;

use crate::ids::{
    EngineId, Generation, Incarnation, OpId, RuntimeKind, SessionName, TokenHash, WorkspaceId,
    WorkspaceName,
};
use crate::model::{Event, NewEvent, Operation, Pool, Session, Timestamp, Workspace};
use crate::state::State;

/// A store error. Callers never see a busy/locked database: adapters wait and retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A stale write: the row's version is not the expected one.
    #[error("{what} changed concurrently (stale version)")]
    Conflict {
        /// What was written.
        what: String,
    },
    /// A live workspace already has this name.
    #[error("workspace name {name} is taken")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The row to change does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What.
        what: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The store cannot be used (I/O, corruption, newer schema).
    #[error("store unavailable: {message}")]
    Unavailable {
        /// A sentence.
        message: String,
    },
    /// The writer's fence is older than one the store knows: another engine owns the row.
    #[error("{what} is fenced: epoch {epoch} is older than the store's")]
    Fenced {
        /// What was written.
        what: String,
        /// The refused epoch.
        epoch: u64,
    },
}

/// The writer's fencing epoch, carried by every row write (see the module's writer
/// model). `Fence::default()` (epoch 0) is the single-writer fence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence {
    /// The epoch; a store refuses writes whose epoch is below the one it holds.
    pub epoch: u64,
}

/// Which workspaces an engine acts on by itself: boot recovery, reconcile passes, the
/// orphan sweep and runtime watchers. An engine alone on its store owns every workspace
/// ([`OwnsAll`], the default). Engines that share a store own the workspaces whose
/// lease they hold; requests for the others are the embedding's to route (berth's
/// daemon forwards them to the owner), and a write the engine makes anyway is refused
/// by the store's fence.
pub trait Ownership: Send + Sync + std::fmt::Debug {
    /// Whether this engine owns `id` now.
    fn owns(&self, id: &WorkspaceId) -> bool;
}

/// The single-writer [`Ownership`]: every workspace.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnsAll;

impl Ownership for OwnsAll {
    fn owns(&self, _id: &WorkspaceId) -> bool {
        true
    }
}

/// One atomic write: a workspace row, its event, its token hash and op updates.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The new row. Its `version` MUST be `expected_version + 1`.
    pub workspace: Workspace,
    /// The version the writer read.
    pub expected_version: u64,
    /// The event for the state change, if any.
    pub event: Option<NewEvent>,
    /// A token hash for `workspace.incarnation` (minted by a start).
    pub token: Option<TokenHash>,
    /// Op rows to write in the same transaction, inserted or overwritten: an op that
    /// runs at once is first written by its first commit.
    pub ops: Vec<Operation>,
    /// The writer's fence.
    pub fence: Fence,
}

/// Which workspaces a listing returns: a page after a cursor, optionally filtered.
/// Filters are applied by the store, so a page is full whatever they exclude.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceQuery {
    /// The last id of the previous page.
    pub after: Option<WorkspaceId>,
    /// At most this many rows.
    pub limit: usize,
    /// Only workspaces in this state.
    pub state: Option<State>,
    /// Only workspaces of this runtime.
    pub runtime: Option<RuntimeKind>,
}

/// A page of workspaces ordered by creation.
#[derive(Debug, Clone)]
pub struct WorkspacePage {
    /// The rows.
    pub items: Vec<Workspace>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<WorkspaceId>,
}

/// A session row to insert (the store assigns the generation).
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Session name.
    pub name: SessionName,
    /// Its argv.
    pub command: Vec<String>,
    /// Its environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Durable state.
#[cfg_attr(feature = "testkit", mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The engine instance id of this data directory. MUST return the stored id when
    /// one exists; otherwise MUST store `candidate` and return it.
    async fn init_engine_id(&self, candidate: &EngineId) -> Result<EngineId, StoreError>;

    /// Inserts a new workspace (version 1) and its `created` event in one transaction.
    /// MUST return `NameTaken` when a workspace with the name exists, writing nothing.
    async fn create_workspace(
        &self,
        workspace: &Workspace,
        event: &NewEvent,
    ) -> Result<Event, StoreError>;

    /// One workspace by id. MUST return `Ok(None)` when it does not exist.
    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, StoreError>;

    /// One workspace by name. MUST return `Ok(None)` when none has it.
    async fn workspace_by_name(
        &self,
        name: &WorkspaceName,
    ) -> Result<Option<Workspace>, StoreError>;

    /// Workspaces ordered by creation, at most `query.limit`, after the cursor, that
    /// match the query's filters. MUST return every matching workspace exactly once
    /// across pages; `next` is `None` only when no matching workspace follows. A cursor
    /// naming a deleted workspace MUST still work; an unknown cursor is `NotFound`.
    async fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<WorkspacePage, StoreError>;

    /// How many workspaces are in each state (states with none may be left out).
    async fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError>;

    /// Applies a [`Commit`] atomically: the row (only if its stored version equals
    /// `expected_version`, else `Conflict`, and only if its fence is not older than the
    /// store's, else `Fenced`; a name another workspace holds is `NameTaken`; nothing
    /// written in each case), the event (numbered with the
    /// next `seq`), the token hash, the ops. Returns the stored event.
    async fn commit(&self, commit: &Commit) -> Result<Option<Event>, StoreError>;

    /// Removes the workspace, its sessions and token hashes, writes `ops` and appends
    /// `event` in one transaction, only if the stored version is `expected_version`
    /// (else `Conflict`) and `fence` is not older than the store's (else `Fenced`).
    /// Ops and events of the workspace are kept as history.
    async fn delete_workspace(
        &self,
        id: &WorkspaceId,
        expected_version: u64,
        ops: &[Operation],
        event: &NewEvent,
        fence: Fence,
    ) -> Result<Event, StoreError>;

    /// Inserts a new op. MUST return `Conflict` when the id exists.
    async fn insert_op(&self, op: &Operation) -> Result<(), StoreError>;

    /// Overwrites an op. MUST return `NotFound` when it does not exist.
    async fn update_op(&self, op: &Operation) -> Result<(), StoreError>;

    /// One op. MUST return `Ok(None)` when it does not exist.
    async fn op(&self, id: &OpId) -> Result<Option<Operation>, StoreError>;

    /// A workspace's ops, newest first, at most `limit`.
    async fn list_ops(
        &self,
        workspace_id: &WorkspaceId,
        limit: usize,
    ) -> Result<Vec<Operation>, StoreError>;

    /// Every op whose status is `queued` or `running` (for boot recovery).
    async fn unfinished_ops(&self) -> Result<Vec<Operation>, StoreError>;

    /// Events with `seq > after`, oldest first, at most `limit`, optionally of one
    /// workspace. MUST return events in strictly increasing `seq` with no gaps among
    /// the events that match.
    async fn events<'a>(
        &self,
        after: u64,
        workspace_id: Option<&'a WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The highest `seq` written so far (0 when none).
    async fn last_event_seq(&self) -> Result<u64, StoreError>;

    /// Inserts a session row with a fresh generation, greater than every generation
    /// this store handed out before. MUST return `Conflict` when the workspace already
    /// has a session with this name, and `NotFound` when the workspace does not exist.
    async fn insert_session(&self, session: &NewSession) -> Result<Session, StoreError>;

    /// Overwrites a session row of the same name and generation (exit code, state).
    /// MUST return `NotFound` when no row has that name and generation.
    async fn update_session(&self, session: &Session) -> Result<(), StoreError>;

    /// Deletes the session row only if its generation is `generation`; returns whether
    /// a row was deleted. A re-created session (another generation) is never deleted.
    async fn delete_session(
        &self,
        workspace_id: &WorkspaceId,
        name: &SessionName,
        generation: Generation,
    ) -> Result<bool, StoreError>;

    /// A workspace's sessions, by name.
    async fn sessions(&self, workspace_id: &WorkspaceId) -> Result<Vec<Session>, StoreError>;

    /// Every workspace that has at least one session row (one read, so a reconcile
    /// pass need not read each workspace's sessions).
    async fn workspaces_with_sessions(&self) -> Result<Vec<WorkspaceId>, StoreError>;

    /// The workspace and incarnation a token hash was minted for. MUST return
    /// `Ok(None)` for an unknown hash or a deleted workspace.
    async fn token_owner(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<(WorkspaceId, Incarnation)>, StoreError>;

    /// Claims an idempotency key: stores `(request_hash, result)` when the key is new
    /// and returns `None`; otherwise returns the stored pair unchanged.
    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        result: &str,
    ) -> Result<Option<(String, String)>, StoreError>;

    /// The stored `(request_hash, result)` of an idempotency key, without claiming it.
    async fn idempotency_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError>;

    /// Every warm pool, by name.
    async fn pools(&self) -> Result<Vec<Pool>, StoreError>;

    /// Creates or replaces the pool of `pool.name`.
    async fn put_pool(&self, pool: &Pool) -> Result<(), StoreError>;

    /// Removes a pool (its members stay until the engine drains them); returns whether
    /// it existed.
    async fn delete_pool(&self, name: &WorkspaceName) -> Result<bool, StoreError>;

    /// The unclaimed members of the pool `name` (every pool's with `None`), by
    /// creation. A claimed workspace (its `pool` is `None`) is never one.
    async fn pool_members<'a>(
        &self,
        name: Option<&'a WorkspaceName>,
    ) -> Result<Vec<Workspace>, StoreError>;

    /// Closes the store. MUST be idempotent; every later call returns `Closed`.
    async fn close(&self);
}
