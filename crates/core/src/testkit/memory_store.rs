//! An in-memory [`Store`]: the reference implementation of the store contract, with
//! planned failures for crash-window tests.

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;

use crate::ids::{
    EngineId, Generation, Incarnation, OpId, SessionName, TokenHash, WorkspaceId, WorkspaceName,
};
use crate::model::{Event, NewEvent, OpStatus, Operation, Pool, Session, SessionState, Workspace};
use crate::ports::{Commit, Fence, NewSession, Store, StoreError, WorkspacePage, WorkspaceQuery};
use crate::state::State;

#[derive(Debug, Default)]
struct Mem {
    engine_id: Option<EngineId>,
    workspaces: HashMap<WorkspaceId, Workspace>,
    /// Creation order: seq → id; `created_seq` keeps the seq of deleted ids for cursors.
    order: BTreeMap<u64, WorkspaceId>,
    created_seq: HashMap<WorkspaceId, u64>,
    next_created: u64,
    ops: HashMap<OpId, Operation>,
    op_order: Vec<OpId>,
    events: Vec<Event>,
    sessions: BTreeMap<(WorkspaceId, SessionName), Session>,
    next_generation: u64,
    tokens: HashMap<[u8; 32], (WorkspaceId, Incarnation)>,
    idempotency: HashMap<String, (String, String)>,
    /// The lowest fence epoch a write of the workspace may carry (a shared store's
    /// lease, for fencing tests).
    fences: HashMap<WorkspaceId, u64>,
    pools: BTreeMap<WorkspaceName, Pool>,
    closed: bool,
}

/// Which store call a planned failure hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Commit(Option<State>),
    /// A listing that continues after a cursor (a page past the first).
    ListAfterCursor,
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    mem: parking_lot::Mutex<Mem>,
    planned: parking_lot::Mutex<HashMap<Call, VecDeque<StoreError>>>,
    /// Time each write takes to be acknowledged, after it landed.
    write_latency: parking_lot::Mutex<std::time::Duration>,
    breakpoints: super::Breakpoints,
    session_reads: std::sync::atomic::AtomicU64,
    op_inserts: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next commit that moves a workspace to `state` fails with `error` and writes
    /// nothing (for "resource created, row never committed" windows).
    pub fn fail_commit_to(&self, state: State, error: StoreError) {
        self.planned
            .lock()
            .entry(Call::Commit(Some(state)))
            .or_default()
            .push_back(error);
    }

    /// The next listing of workspaces after a cursor (a page past the first) fails
    /// with `error`.
    pub fn fail_next_page(&self, error: StoreError) {
        self.planned
            .lock()
            .entry(Call::ListAfterCursor)
            .or_default()
            .push_back(error);
    }

    /// Every write lands at once but is acknowledged only after `latency` (tokio time):
    /// a caller dropped in that window leaves a written row behind, as with a real
    /// database whose commit succeeded but whose answer was never read.
    pub fn set_write_latency(&self, latency: std::time::Duration) {
        *self.write_latency.lock() = latency;
    }

    async fn acknowledge(&self) {
        let latency = *self.write_latency.lock();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Writes of `ws` with a fence epoch below `epoch` are refused with `Fenced` from now
    /// on, as a store shared by several engines does once another one took the lease.
    pub fn fence_at(&self, ws: &WorkspaceId, epoch: u64) {
        self.mem.lock().fences.insert(ws.clone(), epoch);
    }

    /// Breakpoints: `store.workspace` is hit by `workspace(id)` after it read the row and
    /// before it returns it (a read that fetched, then lost the CPU);
    /// `store.delete_session` by `delete_session` before it deletes (a caller that
    /// decided on old information).
    /// How many times one workspace's session rows were read ([`Store::sessions`]).
    pub fn session_reads(&self) -> u64 {
        self.session_reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times [`Store::insert_op`] was called.
    pub fn op_inserts(&self) -> u64 {
        self.op_inserts.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn breakpoints(&self) -> &super::Breakpoints {
        &self.breakpoints
    }

    /// Opens the store again after `close` (a daemon restart on the same data dir).
    pub fn reopen(&self) {
        self.mem.lock().closed = false;
    }

    /// Every op row, in insertion order.
    pub fn all_ops(&self) -> Vec<Operation> {
        let mem = self.mem.lock();
        mem.op_order
            .iter()
            .filter_map(|id| mem.ops.get(id).cloned())
            .collect()
    }

    /// Every event.
    pub fn all_events(&self) -> Vec<Event> {
        self.mem.lock().events.clone()
    }

    /// Every workspace.
    pub fn all_workspaces(&self) -> Vec<Workspace> {
        let mem = self.mem.lock();
        mem.order
            .values()
            .filter_map(|id| mem.workspaces.get(id).cloned())
            .collect()
    }

    /// Every session row.
    pub fn all_sessions(&self) -> Vec<Session> {
        self.mem.lock().sessions.values().cloned().collect()
    }

    fn planned(&self, call: Call) -> Option<StoreError> {
        self.planned
            .lock()
            .get_mut(&call)
            .and_then(VecDeque::pop_front)
    }
}

fn open(mem: &Mem) -> Result<(), StoreError> {
    if mem.closed {
        Err(StoreError::Closed)
    } else {
        Ok(())
    }
}

fn fenced(mem: &Mem, id: &WorkspaceId, fence: Fence) -> Result<(), StoreError> {
    match mem.fences.get(id) {
        Some(min) if fence.epoch < *min => Err(StoreError::Fenced {
            what: format!("workspace {id}"),
            epoch: fence.epoch,
        }),
        _ => Ok(()),
    }
}

fn append(mem: &mut Mem, event: &NewEvent) -> Event {
    let seq = mem.events.last().map_or(0, |e| e.seq) + 1;
    let stored = Event {
        seq,
        event: event.clone(),
    };
    mem.events.push(stored.clone());
    stored
}

fn write_ops(mem: &mut Mem, ops: &[Operation]) {
    for op in ops {
        if !mem.ops.contains_key(&op.id) {
            mem.op_order.push(op.id.clone());
        }
        mem.ops.insert(op.id.clone(), op.clone());
    }
}

impl MemoryStore {
    /// [`Store::commit`]'s checks and writes, under the lock.
    fn commit_now(&self, commit: &Commit) -> Result<Option<Event>, StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        let id = &commit.workspace.id;
        fenced(&mem, id, commit.fence)?;
        match mem.workspaces.get(id) {
            None => {
                return Err(StoreError::NotFound {
                    what: format!("workspace {id}"),
                });
            }
            Some(current)
                if current.version != commit.expected_version
                    || commit.workspace.version != commit.expected_version + 1 =>
            {
                return Err(StoreError::Conflict {
                    what: format!("workspace {id}"),
                });
            }
            Some(_) => {}
        }
        if mem
            .workspaces
            .values()
            .any(|w| w.name == commit.workspace.name && w.id != *id)
        {
            return Err(StoreError::NameTaken {
                name: commit.workspace.name.to_string(),
            });
        }
        mem.workspaces.insert(id.clone(), commit.workspace.clone());
        if let Some(hash) = &commit.token {
            mem.tokens
                .insert(hash.0, (id.clone(), commit.workspace.incarnation));
        }
        write_ops(&mut mem, &commit.ops);
        Ok(commit.event.as_ref().map(|e| append(&mut mem, e)))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn init_engine_id(&self, candidate: &EngineId) -> Result<EngineId, StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        Ok(mem
            .engine_id
            .get_or_insert_with(|| candidate.clone())
            .clone())
    }

    async fn create_workspace(
        &self,
        workspace: &Workspace,
        event: &NewEvent,
    ) -> Result<Event, StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        if mem.workspaces.values().any(|w| w.name == workspace.name) {
            return Err(StoreError::NameTaken {
                name: workspace.name.to_string(),
            });
        }
        if mem.workspaces.contains_key(&workspace.id) {
            return Err(StoreError::Conflict {
                what: format!("workspace {}", workspace.id),
            });
        }
        mem.next_created += 1;
        let seq = mem.next_created;
        mem.order.insert(seq, workspace.id.clone());
        mem.created_seq.insert(workspace.id.clone(), seq);
        mem.workspaces
            .insert(workspace.id.clone(), workspace.clone());
        Ok(append(&mut mem, event))
    }

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        let row = {
            let mem = self.mem.lock();
            open(&mem)?;
            mem.workspaces.get(id).cloned()
        };
        self.breakpoints.hit("store.workspace").await;
        Ok(row)
    }

    async fn workspace_by_name(
        &self,
        name: &WorkspaceName,
    ) -> Result<Option<Workspace>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem.workspaces.values().find(|w| &w.name == name).cloned())
    }

    async fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<WorkspacePage, StoreError> {
        if query.after.is_some()
            && let Some(e) = self.planned(Call::ListAfterCursor)
        {
            return Err(e);
        }
        let mem = self.mem.lock();
        open(&mem)?;
        let from = match &query.after {
            Some(id) => match mem.created_seq.get(id) {
                Some(seq) => seq + 1,
                None => {
                    return Err(StoreError::NotFound {
                        what: format!("cursor {id}"),
                    });
                }
            },
            None => 0,
        };
        let mut items = Vec::new();
        let mut more = false;
        for (_, id) in mem.order.range(from..) {
            let Some(ws) = mem.workspaces.get(id) else {
                continue;
            };
            if query.state.is_some_and(|s| s != ws.state)
                || query.runtime.as_ref().is_some_and(|r| r != &ws.runtime)
            {
                continue;
            }
            if items.len() == query.limit {
                more = true;
                break;
            }
            items.push(ws.clone());
        }
        let next = if more {
            items.last().map(|w| w.id.clone())
        } else {
            None
        };
        Ok(WorkspacePage { items, next })
    }

    async fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        let mut counts: HashMap<State, u64> = HashMap::new();
        for ws in mem.workspaces.values() {
            *counts.entry(ws.state).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    async fn commit(&self, commit: &Commit) -> Result<Option<Event>, StoreError> {
        if let Some(e) = self.planned(Call::Commit(Some(commit.workspace.state))) {
            return Err(e);
        }
        let event = self.commit_now(commit)?;
        self.acknowledge().await;
        Ok(event)
    }

    async fn delete_workspace(
        &self,
        id: &WorkspaceId,
        expected_version: u64,
        ops: &[Operation],
        event: &NewEvent,
        fence: Fence,
    ) -> Result<Event, StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        fenced(&mem, id, fence)?;
        match mem.workspaces.get(id) {
            None => {
                return Err(StoreError::NotFound {
                    what: format!("workspace {id}"),
                });
            }
            Some(w) if w.version != expected_version => {
                return Err(StoreError::Conflict {
                    what: format!("workspace {id}"),
                });
            }
            Some(_) => {}
        }
        mem.workspaces.remove(id);
        if let Some(seq) = mem.created_seq.get(id).copied() {
            mem.order.remove(&seq);
        }
        mem.sessions.retain(|(ws, _), _| ws != id);
        mem.tokens.retain(|_, (ws, _)| ws != id);
        write_ops(&mut mem, ops);
        Ok(append(&mut mem, event))
    }

    async fn insert_op(&self, op: &Operation) -> Result<(), StoreError> {
        self.op_inserts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        {
            let mut mem = self.mem.lock();
            open(&mem)?;
            if mem.ops.contains_key(&op.id) {
                return Err(StoreError::Conflict {
                    what: format!("operation {}", op.id),
                });
            }
            write_ops(&mut mem, std::slice::from_ref(op));
        }
        self.acknowledge().await;
        Ok(())
    }

    async fn update_op(&self, op: &Operation) -> Result<(), StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        match mem.ops.get_mut(&op.id) {
            Some(slot) => {
                *slot = op.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound {
                what: format!("operation {}", op.id),
            }),
        }
    }

    async fn op(&self, id: &OpId) -> Result<Option<Operation>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem.ops.get(id).cloned())
    }

    async fn list_ops(
        &self,
        workspace_id: &WorkspaceId,
        limit: usize,
    ) -> Result<Vec<Operation>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem
            .op_order
            .iter()
            .rev()
            .filter_map(|id| mem.ops.get(id))
            .filter(|o| &o.workspace_id == workspace_id)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn unfinished_ops(&self) -> Result<Vec<Operation>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem
            .op_order
            .iter()
            .filter_map(|id| mem.ops.get(id))
            .filter(|o| matches!(o.status, OpStatus::Queued | OpStatus::Running))
            .cloned()
            .collect())
    }

    async fn events<'a>(
        &self,
        after: u64,
        workspace_id: Option<&'a WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        let start = mem.events.partition_point(|e| e.seq <= after);
        Ok(mem.events[start..]
            .iter()
            .filter(|e| workspace_id.is_none_or(|w| &e.event.workspace_id == w))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn last_event_seq(&self) -> Result<u64, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem.events.last().map_or(0, |e| e.seq))
    }

    async fn insert_session(&self, session: &NewSession) -> Result<Session, StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        if !mem.workspaces.contains_key(&session.workspace_id) {
            return Err(StoreError::NotFound {
                what: format!("workspace {}", session.workspace_id),
            });
        }
        let key = (session.workspace_id.clone(), session.name.clone());
        if mem.sessions.contains_key(&key) {
            return Err(StoreError::Conflict {
                what: format!("session {}", session.name),
            });
        }
        mem.next_generation += 1;
        let row = Session {
            workspace_id: session.workspace_id.clone(),
            name: session.name.clone(),
            command: session.command.clone(),
            env: session.env.clone(),
            generation: Generation(mem.next_generation),
            created_at: session.created_at,
            state: SessionState::Running,
            exit_code: None,
        };
        mem.sessions.insert(key, row.clone());
        Ok(row)
    }

    async fn update_session(&self, session: &Session) -> Result<(), StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        match mem
            .sessions
            .get_mut(&(session.workspace_id.clone(), session.name.clone()))
        {
            Some(row) if row.generation == session.generation => {
                *row = session.clone();
                Ok(())
            }
            _ => Err(StoreError::NotFound {
                what: format!("session {} generation {}", session.name, session.generation),
            }),
        }
    }

    async fn delete_session(
        &self,
        workspace_id: &WorkspaceId,
        name: &SessionName,
        generation: Generation,
    ) -> Result<bool, StoreError> {
        self.breakpoints.hit("store.delete_session").await;
        let mut mem = self.mem.lock();
        open(&mem)?;
        let key = (workspace_id.clone(), name.clone());
        if mem
            .sessions
            .get(&key)
            .is_some_and(|s| s.generation == generation)
        {
            mem.sessions.remove(&key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn sessions(&self, workspace_id: &WorkspaceId) -> Result<Vec<Session>, StoreError> {
        self.session_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem
            .sessions
            .iter()
            .filter(|((ws, _), _)| ws == workspace_id)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn workspaces_with_sessions(&self) -> Result<Vec<WorkspaceId>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        let mut ids: Vec<WorkspaceId> = mem.sessions.keys().map(|(ws, _)| ws.clone()).collect();
        ids.dedup();
        Ok(ids)
    }

    async fn token_owner(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<(WorkspaceId, Incarnation)>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem.tokens.get(&hash.0).cloned())
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        result: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        if let Some(found) = mem.idempotency.get(key) {
            return Ok(Some(found.clone()));
        }
        mem.idempotency
            .insert(key.to_owned(), (request_hash.to_owned(), result.to_owned()));
        Ok(None)
    }

    async fn idempotency_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem.idempotency.get(key).cloned())
    }

    async fn pools(&self) -> Result<Vec<Pool>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem.pools.values().cloned().collect())
    }

    async fn put_pool(&self, pool: &Pool) -> Result<(), StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        mem.pools.insert(pool.name.clone(), pool.clone());
        Ok(())
    }

    async fn delete_pool(&self, name: &WorkspaceName) -> Result<bool, StoreError> {
        let mut mem = self.mem.lock();
        open(&mem)?;
        Ok(mem.pools.remove(name).is_some())
    }

    async fn pool_members<'a>(
        &self,
        name: Option<&'a WorkspaceName>,
    ) -> Result<Vec<Workspace>, StoreError> {
        let mem = self.mem.lock();
        open(&mem)?;
        Ok(mem
            .order
            .values()
            .filter_map(|id| mem.workspaces.get(id))
            .filter(|w| match (&w.pool, name) {
                (Some(pool), Some(name)) => pool == name,
                (Some(_), None) => true,
                (None, _) => false,
            })
            .cloned()
            .collect())
    }

    async fn close(&self) {
        self.mem.lock().closed = true;
    }
}
