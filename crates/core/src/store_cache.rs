//! [`CachedStore`]: a [`Store`] decorator that answers `workspace(id)` from memory.
//!
//! The API's hottest read is one workspace by id; through SQLite it is a round trip to
//! a connection thread and a JSON decode. Every write of a workspace row goes through
//! `create_workspace`, `commit` or `delete_workspace`, so a decorator that sees all
//! writes can keep a copy of the rows it read. That holds while this process is the
//! only writer of the store (one daemon per data directory, which berth assumes).
//!
//! Invariant: a cached row is never older than the last write that returned. A write
//! first reaches the inner store, then, whatever its result, removes the row from the
//! cache and bumps `epoch` (both under the lock). A read that misses notes the epoch
//! before it fetches and inserts what it fetched only if no write finished meanwhile;
//! so a row fetched before a write committed can never be inserted after that write
//! invalidated the cache.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::ids::{EngineId, Incarnation, OpId, SessionName, TokenHash, WorkspaceId};
use crate::ids::{Generation, WorkspaceName};
use crate::model::{Event, NewEvent, Operation, Session, Workspace};
use crate::ports::{Commit, NewSession, Store, StoreError, WorkspacePage};

#[derive(Debug, Default)]
struct Rows {
    rows: HashMap<WorkspaceId, Workspace>,
    /// Bumped by every finished workspace write.
    epoch: u64,
}

/// A store whose `workspace(id)` reads are served from memory after the first.
#[derive(Debug)]
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: Mutex<Rows>,
    capacity: usize,
    #[cfg(feature = "testkit")]
    breakpoints: Option<Arc<crate::testkit::Breakpoints>>,
}

impl CachedStore {
    /// The default number of rows kept (about 1 KiB each).
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// Wraps `inner`, keeping up to [`Self::DEFAULT_CAPACITY`] rows.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self::with_capacity(inner, Self::DEFAULT_CAPACITY)
    }

    /// Wraps `inner`, keeping up to `capacity` rows (reads past it go to `inner`).
    pub fn with_capacity(inner: Arc<dyn Store>, capacity: usize) -> Self {
        Self {
            inner,
            cache: Mutex::new(Rows::default()),
            capacity,
            #[cfg(feature = "testkit")]
            breakpoints: None,
        }
    }

    /// Test hook: a miss stops at breakpoint `"cache.fetched"` after its fetch,
    /// before it may insert the row.
    #[cfg(feature = "testkit")]
    #[must_use]
    pub fn with_breakpoints(mut self, breakpoints: Arc<crate::testkit::Breakpoints>) -> Self {
        self.breakpoints = Some(breakpoints);
        self
    }

    /// Rows held now.
    pub fn cached_rows(&self) -> usize {
        self.cache.lock().rows.len()
    }

    fn invalidate(&self, id: &WorkspaceId) {
        let mut cache = self.cache.lock();
        cache.rows.remove(id);
        cache.epoch += 1;
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn init_engine_id(&self, candidate: &EngineId) -> Result<EngineId, StoreError> {
        self.inner.init_engine_id(candidate).await
    }

    async fn create_workspace(
        &self,
        workspace: &Workspace,
        event: &NewEvent,
    ) -> Result<Event, StoreError> {
        let result = self.inner.create_workspace(workspace, event).await;
        self.invalidate(&workspace.id);
        result
    }

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        let epoch = {
            let cache = self.cache.lock();
            if let Some(row) = cache.rows.get(id) {
                return Ok(Some(row.clone()));
            }
            cache.epoch
        };
        let fetched = self.inner.workspace(id).await?;
        #[cfg(feature = "testkit")]
        if let Some(b) = &self.breakpoints {
            b.hit("cache.fetched").await;
        }
        if let Some(row) = &fetched {
            let mut cache = self.cache.lock();
            if cache.epoch == epoch && cache.rows.len() < self.capacity {
                cache.rows.insert(id.clone(), row.clone());
            }
        }
        Ok(fetched)
    }

    async fn workspace_by_name(
        &self,
        name: &WorkspaceName,
    ) -> Result<Option<Workspace>, StoreError> {
        self.inner.workspace_by_name(name).await
    }

    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<WorkspacePage, StoreError> {
        self.inner.list_workspaces(after, limit).await
    }

    async fn commit(&self, commit: &Commit) -> Result<Option<Event>, StoreError> {
        let result = self.inner.commit(commit).await;
        self.invalidate(&commit.workspace.id);
        result
    }

    async fn delete_workspace(
        &self,
        id: &WorkspaceId,
        expected_version: u64,
        ops: &[Operation],
        event: &NewEvent,
    ) -> Result<Event, StoreError> {
        let result = self
            .inner
            .delete_workspace(id, expected_version, ops, event)
            .await;
        self.invalidate(id);
        result
    }

    async fn insert_op(&self, op: &Operation) -> Result<(), StoreError> {
        self.inner.insert_op(op).await
    }

    async fn update_op(&self, op: &Operation) -> Result<(), StoreError> {
        self.inner.update_op(op).await
    }

    async fn op(&self, id: &OpId) -> Result<Option<Operation>, StoreError> {
        self.inner.op(id).await
    }

    async fn list_ops(
        &self,
        workspace_id: &WorkspaceId,
        limit: usize,
    ) -> Result<Vec<Operation>, StoreError> {
        self.inner.list_ops(workspace_id, limit).await
    }

    async fn unfinished_ops(&self) -> Result<Vec<Operation>, StoreError> {
        self.inner.unfinished_ops().await
    }

    async fn events(
        &self,
        after: u64,
        workspace_id: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events(after, workspace_id, limit).await
    }

    async fn last_event_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_event_seq().await
    }

    async fn insert_session(&self, session: &NewSession) -> Result<Session, StoreError> {
        self.inner.insert_session(session).await
    }

    async fn update_session(&self, session: &Session) -> Result<(), StoreError> {
        self.inner.update_session(session).await
    }

    async fn delete_session(
        &self,
        workspace_id: &WorkspaceId,
        name: &SessionName,
        generation: Generation,
    ) -> Result<bool, StoreError> {
        self.inner
            .delete_session(workspace_id, name, generation)
            .await
    }

    async fn sessions(&self, workspace_id: &WorkspaceId) -> Result<Vec<Session>, StoreError> {
        self.inner.sessions(workspace_id).await
    }

    async fn token_owner(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<(WorkspaceId, Incarnation)>, StoreError> {
        self.inner.token_owner(hash).await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        result: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.inner
            .claim_idempotency_key(key, request_hash, result)
            .await
    }

    async fn idempotency_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        self.inner.idempotency_key(key).await
    }

    async fn close(&self) {
        self.inner.close().await;
        // Later reads must see `Closed`, not a cached row.
        let mut cache = self.cache.lock();
        cache.rows.clear();
        cache.epoch += 1;
    }
}
