//! The engine: the per-workspace serial executor that enforces `lifecycle.md`.
//!
//! [`Engine`] is a thin facade; the work is split by concern:
//!
//! - `create`: creating workspaces, idempotency keys.
//! - `intake`: meeting op requests with the gate ([`crate::merge`]).
//! - `driver`: runs the op in flight, then the queued one, until the gate is idle.
//! - `ops/`: `start`, `stop`, `restart`, `delete` as sequences of lifecycle events.
//! - `commit`: the one commit path (every transition, every row write).
//! - `effects`: the interpreter that performs every [`crate::state::Effect`];
//!   `launch`: the launch effect's adopt/remove/retry.
//! - `queries`, `wait`: reads, as consistent snapshots that never wait on a gate.
//! - `reconcile`, `recovery`: making the store and the runtimes agree.
//! - `sessions`, `shutdown`, `gate`, `validate`, `config`, `error`.
//!
//! Only the interpreter performs the effects of a transition, and only the commit path
//! writes a workspace row. Every task the engine spawns belongs to its [`TaskTracker`].

mod builder;
mod commit;
mod config;
mod create;
mod driver;
mod effects;
mod error;
mod gate;
mod health;
mod intake;
mod io;
mod launch;
mod ops;
mod pools;
mod queries;
mod reconcile;
mod recovery;
mod sessions;
mod shutdown;
mod validate;
mod wait;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use builder::EngineBuilder;
pub(crate) use builder::Inner;
pub use config::EngineConfig;
pub use create::{Created, IdempotencyKey};
pub use error::{EngineError, runtime_code};
pub use gate::PendingView;
pub use health::{RuntimeHealth, RuntimeState};
pub use pools::{PoolStatus, PoolsReport};
pub use queries::{ListQuery, Page, Snapshot};
pub use reconcile::ReconcileReport;
pub use recovery::RecoveryReport;
pub use shutdown::ShutdownReport;
pub use validate::is_env_name;
pub use wait::{WaitOutcome, WaitTarget};

use crate::ids::{EngineId, OpId, RuntimeKind, SessionName, WorkspaceId, WorkspaceToken};
use crate::merge::OpKind;
use crate::model::{Actor, CreateWorkspace, Event, Operation, Session, Workspace};
use crate::ports::ReporterStats;
use crate::state::State;

/// The lifecycle engine. Cheap to clone; all clones share one engine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// A handle on a requested op: its id now, its final record later.
#[derive(Debug, Clone)]
pub struct OpTicket {
    op_id: OpId,
    rx: watch::Receiver<Option<Operation>>,
}

impl OpTicket {
    /// The op this request runs as (a joined request shares the op's id).
    pub fn op_id(&self) -> &OpId {
        &self.op_id
    }

    /// The final record, if the op has ended.
    pub fn finished(&self) -> Option<Operation> {
        self.rx.borrow().clone()
    }

    /// Waits for the op to end and returns its final record.
    ///
    /// # Errors
    /// [`EngineError::Internal`] if the op's driver vanished without a result.
    pub async fn wait(mut self) -> Result<Operation, EngineError> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(op) => op
                .clone()
                .ok_or_else(|| EngineError::Internal("op ended without a record".into())),
            Err(_) => Err(EngineError::Internal(format!(
                "op {} ended without a result",
                self.op_id
            ))),
        }
    }
}

impl Engine {
    /// A builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// This engine's instance id.
    pub fn engine_id(&self) -> &EngineId {
        &self.inner.engine_id
    }

    /// The configured runtimes.
    pub fn runtime_kinds(&self) -> Vec<RuntimeKind> {
        let mut kinds: Vec<_> = self.inner.runtimes.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    /// The settings in force.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Tasks the engine spawned that are still alive (0 after `shutdown`).
    pub fn live_tasks(&self) -> usize {
        self.inner.tracker.len()
    }

    /// A token cancelled when shutdown begins: long waits and event streams end on it.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stop_token.clone()
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        !*self.inner.accepting.read()
    }

    /// What boot recovery did.
    pub fn recovery_report(&self) -> Option<RecoveryReport> {
        self.inner.recovery.lock().clone()
    }

    /// Whether each runtime answers, as the last reconcile listing found it.
    pub fn runtime_health(&self) -> Vec<RuntimeHealth> {
        self.inner.health.all()
    }

    /// The reporter's queue figures (for metrics).
    pub fn reporter_stats(&self) -> ReporterStats {
        self.inner.reporter.stats()
    }

    /// Creates a stopped workspace and appends its `created` event.
    ///
    /// # Errors
    /// `Validation` for a bad spec, an unknown runtime, or a field the runtime cannot
    /// honour (naming the field); `NameTaken`, `ShuttingDown`, store errors.
    pub async fn create(&self, request: CreateWorkspace) -> Result<Workspace, EngineError> {
        self.create_stopped(request, None).await
    }

    /// Creates a workspace and, when `start`, requests its start. With a key, the same
    /// key and request hash give the first answer again (the same ids), whatever
    /// happened since; the same key with another hash is `IdempotencyConflict`.
    ///
    /// # Errors
    /// See [`Engine::create`]; `IdempotencyConflict`; the start request's errors.
    pub async fn create_workspace(
        &self,
        request: CreateWorkspace,
        start: bool,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, EngineError> {
        self.create_with_key(request, start, key).await
    }

    /// A workspace by id.
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn workspace(&self, id: &WorkspaceId) -> Result<Workspace, EngineError> {
        self.existing(id).await
    }

    /// A workspace and its pending ops, read at one moment.
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn snapshot(&self, id: &WorkspaceId) -> Result<Snapshot, EngineError> {
        self.read_snapshot(id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("workspace {id}"),
            })
    }

    /// A workspace by id or name (what the API's `{id}` accepts), with its pending ops.
    ///
    /// # Errors
    /// `NotFound` when neither matches, store errors.
    pub async fn resolve(&self, id_or_name: &str) -> Result<Snapshot, EngineError> {
        self.resolve_snapshot(id_or_name).await
    }

    /// The ops in flight and queued on a workspace.
    pub fn pending(&self, id: &WorkspaceId) -> PendingView {
        self.inner
            .gates
            .existing(id)
            .map(|g| g.read().slot.pending())
            .unwrap_or_default()
    }

    /// A page of workspaces by creation, filtered by the store.
    ///
    /// # Errors
    /// `Validation` for a bad limit or an unknown cursor, store errors.
    pub async fn list(&self, query: ListQuery) -> Result<Page, EngineError> {
        self.list_page(query).await
    }

    /// How many workspaces are in each state (every state listed).
    ///
    /// # Errors
    /// Store errors.
    pub async fn counts_by_state(&self) -> Result<BTreeMap<State, u64>, EngineError> {
        let mut counts: BTreeMap<State, u64> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for (state, n) in self.inner.store.count_by_state().await? {
            counts.insert(state, n);
        }
        Ok(counts)
    }

    /// One op (while pending, with its current `joined` count).
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn op(&self, id: &OpId) -> Result<Operation, EngineError> {
        self.op_now(id).await
    }

    /// A workspace's ops, newest first.
    ///
    /// # Errors
    /// `NotFound` for an unknown workspace, store errors.
    pub async fn ops(&self, id: &WorkspaceId, limit: usize) -> Result<Vec<Operation>, EngineError> {
        self.ops_page(id, limit).await
    }

    /// Events after a cursor, oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub async fn events(
        &self,
        after: u64,
        workspace: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        self.events_page(after, workspace, limit).await
    }

    /// The highest event `seq` written so far.
    ///
    /// # Errors
    /// Store errors.
    pub async fn last_event_seq(&self) -> Result<u64, EngineError> {
        Ok(self.inner.store.last_event_seq().await?)
    }

    /// The workspace a token belongs to, only while it is the token of the workspace's
    /// current incarnation and that incarnation's process may exist (`starting`,
    /// `running`, `stopping`: a process can call back before `running` is committed).
    /// Tokens of older incarnations, and of stopped or failed workspaces, never verify.
    ///
    /// # Errors
    /// Store errors.
    pub async fn verify_token(
        &self,
        token: &WorkspaceToken,
    ) -> Result<Option<Workspace>, EngineError> {
        self.token_workspace(token).await
    }

    /// Requests `start`.
    ///
    /// # Errors
    /// See [`Engine::request`].
    pub async fn start(&self, id: &WorkspaceId, actor: Actor) -> Result<OpTicket, EngineError> {
        self.request(id, OpKind::Start, actor, false).await
    }

    /// Requests `stop`.
    ///
    /// # Errors
    /// See [`Engine::request`].
    pub async fn stop(&self, id: &WorkspaceId, actor: Actor) -> Result<OpTicket, EngineError> {
        self.request(id, OpKind::Stop, actor, false).await
    }

    /// Requests `restart`.
    ///
    /// # Errors
    /// See [`Engine::request`].
    pub async fn restart(&self, id: &WorkspaceId, actor: Actor) -> Result<OpTicket, EngineError> {
        self.request(id, OpKind::Restart, actor, false).await
    }

    /// Requests `delete` (`force` skips the dirty preflight).
    ///
    /// # Errors
    /// See [`Engine::request`].
    pub async fn delete(
        &self,
        id: &WorkspaceId,
        force: bool,
        actor: Actor,
    ) -> Result<OpTicket, EngineError> {
        self.request(id, OpKind::Delete, actor, force).await
    }

    /// Submits an op to the workspace's gate, merged per the table of `lifecycle.md`.
    /// The op is persisted before this returns; the ticket resolves when it ends.
    ///
    /// # Errors
    /// `NotFound` for an unknown workspace, `WorkspaceDeleting` when a delete is pending
    /// or a failed delete left the workspace `deleting` (any request but a delete),
    /// `ShuttingDown`, store errors.
    pub async fn request(
        &self,
        id: &WorkspaceId,
        kind: OpKind,
        actor: Actor,
        force: bool,
    ) -> Result<OpTicket, EngineError> {
        self.refuse_if_stopping()?;
        // An unknown id never creates a gate.
        if self.read_snapshot(id).await?.is_none() {
            return Err(EngineError::NotFound {
                what: format!("workspace {id}"),
            });
        }
        // The intake runs in a tracked task: a caller that goes away (an HTTP client
        // disconnecting) cannot leave a persisted op that nothing runs.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let engine = self.clone();
        let id = id.clone();
        let submitted = self.spawn(async move {
            let _ = tx.send(engine.submit(&id, kind, actor, force, None).await);
        });
        if !submitted {
            return Err(EngineError::ShuttingDown);
        }
        rx.await
            .map_err(|_| EngineError::Internal("the request task ended without an answer".into()))?
    }

    /// Waits until the workspace reaches `target`, or settles where `target` can no
    /// longer be reached (answering `reached: false`), reading state and pending ops as
    /// one snapshot each time.
    ///
    /// # Errors
    /// `WaitTimeout` (with the state) when nothing settled in time; `NotFound`;
    /// `Validation` for a transitional target state; `ShuttingDown`.
    pub async fn wait(
        &self,
        id: &WorkspaceId,
        target: WaitTarget,
        timeout: Duration,
    ) -> Result<WaitOutcome, EngineError> {
        self.wait_for(id, target, timeout).await
    }

    /// Launches session `name` in a running workspace, or returns the running session of
    /// that name when the command and env are the same.
    ///
    /// # Errors
    /// `SessionExists` for a running session of that name with another command;
    /// `WorkspaceStopping`/`WorkspaceDeleting` while a stop or delete is pending;
    /// `InvalidTransition` when the workspace (or its main process) does not run;
    /// `NotFound`, runtime and store errors.
    pub async fn launch_session(
        &self,
        workspace_id: &WorkspaceId,
        name: SessionName,
        command: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Result<Session, EngineError> {
        self.launch_session_now(workspace_id, name, command, env)
            .await
    }

    /// Stops session `name` and forgets its row.
    ///
    /// # Errors
    /// `NotFound` for an unknown workspace or session, runtime and store errors.
    pub async fn stop_session(
        &self,
        workspace_id: &WorkspaceId,
        name: &SessionName,
    ) -> Result<(), EngineError> {
        self.stop_session_now(workspace_id, name).await
    }

    /// A workspace's sessions.
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn sessions(&self, workspace_id: &WorkspaceId) -> Result<Vec<Session>, EngineError> {
        self.sessions_of(workspace_id).await
    }

    /// Recent output of a session (or of the main process when `session` is `None`); an
    /// empty page when the runtime has no such process (stopped, never started).
    ///
    /// # Errors
    /// `NotFound`, runtime errors.
    pub async fn output(
        &self,
        workspace_id: &WorkspaceId,
        session: Option<&SessionName>,
        lines: usize,
    ) -> Result<Vec<String>, EngineError> {
        self.output_of(workspace_id, session, lines).await
    }

    /// One reconcile pass over every runtime. Reports a `ReconcilePass` when it ends.
    /// Once shutdown began it does nothing: no port is called after shutdown.
    pub async fn reconcile(&self) -> ReconcileReport {
        if self.is_shutting_down() {
            return ReconcileReport::default();
        }
        self.reconcile_once().await
    }

    /// Shuts the engine down, once; every caller (concurrent or later) gets the first
    /// result. Refuses new ops, ends waits and streams, lets in-flight ops finish until
    /// the drain deadline and then cancels them (`interrupted`), waits (bounded) for
    /// every task, flushes the reporter with a bounded detached wait, and closes the
    /// store last. Workspaces keep running.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.inner
            .shutdown_result
            .get_or_init(|| self.shutdown_once())
            .await
            .clone()
    }

    /// Spawns `fut` on the engine's tracker unless shutdown began. Returns whether it did.
    pub(crate) fn spawn<F>(&self, fut: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let accepting = self.inner.accepting.read();
        if !*accepting {
            return false;
        }
        self.inner.tracker.spawn(fut);
        true
    }
}

/// Short helper for durations in messages.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
