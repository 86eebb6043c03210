//! The engine: the per-workspace serial executor that enforces `lifecycle.md`.
//!
//! Requests meet the per-workspace gate ([`crate::merge`]); ops run on a driver task
//! per busy workspace, one after the other; every state change commits with its event;
//! the reconciler, boot recovery and `shutdown` go through the same gates. Every task
//! the engine spawns belongs to its [`TaskTracker`].

mod config;
mod error;
mod gate;
mod reconcile;
mod run;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::EngineConfig;
pub use error::{EngineError, runtime_code};
pub use reconcile::{ReconcileReport, RecoveryReport};

use crate::ids::{EngineId, OpId, RuntimeKind, WorkspaceId, WorkspaceName, WorkspaceToken};
use crate::merge::{Decision, OpKind, Refusal, merge};
use crate::model::{
    Actor, Cause, CreateWorkspace, Event, NewEvent, OpError, OpStatus, Operation, Workspace,
};
use crate::ports::{Clock, ProcessRuntime, Reporter, Store, SystemClock};
use crate::state::State;

use gate::{Gate, Gates, PendingOp};

/// Builds an [`Engine`] from its ports and config.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    store: Option<Arc<dyn Store>>,
    reporter: Option<Arc<dyn Reporter>>,
    clock: Option<Arc<dyn Clock>>,
    runtimes: Vec<Arc<dyn ProcessRuntime>>,
    config: EngineConfig,
}

impl EngineBuilder {
    /// The store (required).
    #[must_use]
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds a runtime; its [`ProcessRuntime::kind`] names it.
    #[must_use]
    pub fn runtime(mut self, runtime: Arc<dyn ProcessRuntime>) -> Self {
        self.runtimes.push(runtime);
        self
    }

    /// The reporter (required).
    #[must_use]
    pub fn reporter(mut self, reporter: Arc<dyn Reporter>) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// The clock (default: the host's).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Settings (default: [`EngineConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Opens the engine: loads (or creates) the engine id, starts the reporter, runs
    /// boot recovery, then starts the background reconciler.
    ///
    /// # Errors
    /// A missing store or reporter, a store that fails, or a recovery that cannot read
    /// the store.
    pub async fn build(self) -> Result<Engine, EngineError> {
        let store = self
            .store
            .ok_or_else(|| EngineError::Internal("engine builder needs a store".into()))?;
        let reporter = self
            .reporter
            .ok_or_else(|| EngineError::Internal("engine builder needs a reporter".into()))?;
        let engine_id = store.init_engine_id(&EngineId::generate()).await?;
        let ops_token = CancellationToken::new();
        let inner = Arc::new(Inner {
            engine_id,
            store,
            reporter,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            runtimes: self.runtimes.into_iter().map(|r| (r.kind(), r)).collect(),
            config: self.config,
            gates: Gates::default(),
            tracker: TaskTracker::new(),
            stop_token: CancellationToken::new(),
            loops_token: CancellationToken::new(),
            ops_token,
            accepting: parking_lot::RwLock::new(true),
            shutdown_result: OnceCell::new(),
            recovery: parking_lot::Mutex::new(None),
        });
        inner.reporter.start().await;
        let engine = Engine { inner };
        let report = engine.recover().await?;
        *engine.inner.recovery.lock() = Some(report);
        engine.spawn_reconciler();
        Ok(engine)
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) engine_id: EngineId,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) reporter: Arc<dyn Reporter>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) runtimes: HashMap<RuntimeKind, Arc<dyn ProcessRuntime>>,
    pub(crate) config: EngineConfig,
    pub(crate) gates: Gates,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when shutdown begins: waits and event streams end on it.
    pub(crate) stop_token: CancellationToken,
    /// Cancelled when shutdown begins: background loops stop.
    pub(crate) loops_token: CancellationToken,
    /// Cancelled past the drain deadline: in-flight ops end `interrupted`.
    pub(crate) ops_token: CancellationToken,
    /// False once shutdown began; held (read) around every spawn so no task starts
    /// after the drain barrier.
    accepting: parking_lot::RwLock<bool>,
    shutdown_result: OnceCell<ShutdownReport>,
    recovery: parking_lot::Mutex<Option<RecoveryReport>>,
}

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

/// What `shutdown` did. Every caller gets the first result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// All in-flight ops finished before the drain deadline.
    pub drained: bool,
    /// Ops ended as `interrupted`.
    pub interrupted: usize,
    /// The reporter's final flush finished within its bound.
    pub reporter_flushed: bool,
}

/// The ops pending on a workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingView {
    /// The op in flight.
    pub in_flight: Option<Operation>,
    /// The op queued behind it.
    pub queued: Option<Operation>,
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

    /// The store, for read paths (events, idempotency keys) of embedding layers.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The reporter.
    pub fn reporter(&self) -> &Arc<dyn Reporter> {
        &self.inner.reporter
    }

    fn refuse_if_stopping(&self) -> Result<(), EngineError> {
        if self.is_shutting_down() {
            Err(EngineError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Creates a stopped workspace and appends its `created` event.
    ///
    /// # Errors
    /// `Validation` for a bad spec, `RuntimeUnavailable` for a runtime this engine
    /// does not run, `NameTaken`, `ShuttingDown`, store errors.
    pub async fn create(&self, request: CreateWorkspace) -> Result<Workspace, EngineError> {
        self.refuse_if_stopping()?;
        validate_spec(&request)?;
        if !self.inner.runtimes.contains_key(&request.runtime) {
            return Err(EngineError::RuntimeUnavailable {
                runtime: request.runtime.to_string(),
                message: "this engine does not run it".into(),
            });
        }
        let now = self.inner.clock.now();
        let workspace = Workspace {
            id: WorkspaceId::generate(),
            name: request.name,
            runtime: request.runtime,
            state: State::Stopped,
            incarnation: Default::default(),
            dir: request.spec.dir.clone(),
            spec: request.spec,
            created_at: now,
            updated_at: now,
            last_error: None,
            version: 1,
        };
        let event = NewEvent {
            at: now,
            workspace_id: workspace.id.clone(),
            op_id: None,
            actor: request.actor,
            from: None,
            to: Some(State::Stopped),
            cause: Cause::Created,
            message: format!("workspace {} created", workspace.name),
        };
        let stored = self
            .inner
            .store
            .create_workspace(&workspace, &event)
            .await?;
        *self.inner.gates.get(&workspace.id).row.lock() = Some(workspace.clone());
        self.inner
            .reporter
            .report(crate::ports::Report::Event(stored));
        Ok(workspace)
    }

    /// A workspace by id.
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn workspace(&self, id: &WorkspaceId) -> Result<Workspace, EngineError> {
        self.inner
            .store
            .workspace(id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("workspace {id}"),
            })
    }

    /// A workspace by id or name (what the API's `{id}` accepts).
    ///
    /// # Errors
    /// `NotFound` when neither matches, store errors.
    pub async fn resolve(&self, id_or_name: &str) -> Result<Workspace, EngineError> {
        let found = if let Ok(id) = WorkspaceId::parse(id_or_name) {
            self.inner.store.workspace(&id).await?
        } else if let Ok(name) = WorkspaceName::parse(id_or_name) {
            self.inner.store.workspace_by_name(&name).await?
        } else {
            None
        };
        found.ok_or_else(|| EngineError::NotFound {
            what: format!("workspace {id_or_name:?}"),
        })
    }

    /// The ops in flight and queued on a workspace.
    pub async fn pending(&self, id: &WorkspaceId) -> PendingView {
        let Some(gate) = self.inner.gates.existing(id) else {
            return PendingView::default();
        };
        let slot = gate.slot.lock().await;
        PendingView {
            in_flight: slot.in_flight.as_ref().map(|p| p.op.clone()),
            queued: slot.queued.as_ref().map(|p| p.op.clone()),
        }
    }

    /// One op.
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn op(&self, id: &OpId) -> Result<Operation, EngineError> {
        self.inner
            .store
            .op(id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("operation {id}"),
            })
    }

    /// Events after a cursor.
    ///
    /// # Errors
    /// Store errors.
    pub async fn events(
        &self,
        after: u64,
        workspace: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        Ok(self.inner.store.events(after, workspace, limit).await?)
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
        let Some((id, incarnation)) = self.inner.store.token_owner(&token.hash()).await? else {
            return Ok(None);
        };
        let Some(ws) = self.inner.store.workspace(&id).await? else {
            return Ok(None);
        };
        let live = matches!(ws.state, State::Starting | State::Running | State::Stopping);
        Ok((ws.incarnation == incarnation && live).then_some(ws))
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
    /// `NotFound` for an unknown workspace, `WorkspaceDeleting` when a delete is in
    /// flight or queued, `ShuttingDown`, store errors.
    pub async fn request(
        &self,
        id: &WorkspaceId,
        kind: OpKind,
        actor: Actor,
        force: bool,
    ) -> Result<OpTicket, EngineError> {
        self.refuse_if_stopping()?;
        // A known gate with its row proves the workspace exists without a read; an
        // unknown id never creates a gate.
        let known = self
            .inner
            .gates
            .existing(id)
            .and_then(|g| g.row.lock().clone());
        let ws = match known {
            Some(ws) => ws,
            None => self.workspace(id).await?,
        };
        // The merge, the op insert and the slot update run in a tracked task: a caller
        // that goes away (an HTTP client disconnecting) cannot leave a persisted op
        // that nothing runs, or a replaced op whose waiters never hear.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let engine = self.clone();
        let id = id.clone();
        let submitted = self.spawn(async move {
            let _ = tx.send(engine.submit(ws, &id, kind, actor, force).await);
        });
        if !submitted {
            return Err(EngineError::ShuttingDown);
        }
        rx.await
            .map_err(|_| EngineError::Internal("the request task ended without an answer".into()))?
    }

    async fn submit(
        &self,
        ws: Workspace,
        id: &WorkspaceId,
        kind: OpKind,
        actor: Actor,
        force: bool,
    ) -> Result<OpTicket, EngineError> {
        let gate = self.inner.gates.get(id);
        let mut slot = gate.slot.lock().await;
        let decision = merge(slot.view(), kind);
        let joined = match decision {
            Decision::Refuse(Refusal::WorkspaceDeleting) => {
                return Err(EngineError::WorkspaceDeleting {
                    workspace: ws.id.to_string(),
                });
            }
            Decision::JoinInFlight => slot.in_flight.as_mut(),
            Decision::JoinQueued => slot.queued.as_mut(),
            Decision::Run | Decision::Queue | Decision::ReplaceQueued | Decision::Preempt => None,
        };
        if let Some(p) = joined {
            p.op.joined += 1;
            if force {
                p.op.force = true;
            }
            return Ok(OpTicket {
                op_id: p.op.id.clone(),
                rx: p.done.subscribe(),
            });
        }
        let now = self.inner.clock.now();
        let op = Operation {
            id: OpId::generate(),
            workspace_id: id.clone(),
            kind,
            status: if decision == Decision::Run {
                OpStatus::Running
            } else {
                OpStatus::Queued
            },
            actor,
            force,
            requested_at: now,
            started_at: (decision == Decision::Run).then_some(now),
            start_phase_at: None,
            finished_at: None,
            joined: 0,
            result_state: None,
            incarnation: None,
            error: None,
            superseded_by: None,
        };
        // A delete that would preempt a start checks for unsaved work first: a refused
        // delete must change nothing, not even the start it would have cancelled.
        if decision == Decision::Preempt
            && kind == OpKind::Delete
            && !force
            && let Some(refusal) = self.preflight(&ws).await
        {
            let mut refused = op;
            refused.status = OpStatus::Failed;
            refused.started_at = Some(now);
            refused.finished_at = Some(self.inner.clock.now());
            refused.result_state = Some(ws.state);
            refused.error = Some(refusal);
            self.inner.store.insert_op(&refused).await?;
            let (done, rx) = watch::channel(Some(refused.clone()));
            drop(done);
            return Ok(OpTicket {
                op_id: refused.id,
                rx,
            });
        }
        self.inner.store.insert_op(&op).await?;
        let pending = PendingOp::new(op.clone(), self.inner.ops_token.child_token());
        let ticket = OpTicket {
            op_id: op.id.clone(),
            rx: pending.done.subscribe(),
        };
        match decision {
            Decision::Run => {
                slot.in_flight = Some(pending);
                if !self.spawn_driver(gate.clone()) {
                    let p = slot.in_flight.take();
                    drop(slot);
                    if let Some(p) = p {
                        self.finish_unrun(p, OpStatus::Failed, None, Some(shutting_down_error()))
                            .await;
                    }
                    return Err(EngineError::ShuttingDown);
                }
            }
            Decision::Queue => slot.queued = Some(pending),
            Decision::ReplaceQueued | Decision::Preempt => {
                if decision == Decision::Preempt
                    && let Some(running) = slot.in_flight.as_mut()
                {
                    running.preempted_by = Some(op.id.clone());
                    running.cancel.cancel();
                }
                let old = slot.queued.replace(pending);
                if let Some(old) = old {
                    self.finish_unrun(old, OpStatus::Superseded, Some(op.id.clone()), None)
                        .await;
                }
            }
            Decision::JoinInFlight | Decision::JoinQueued | Decision::Refuse(_) => {}
        }
        Ok(ticket)
    }

    /// Ends an op that never ran (superseded in the queue, or refused at shutdown).
    async fn finish_unrun(
        &self,
        mut p: PendingOp,
        status: OpStatus,
        by: Option<OpId>,
        error: Option<OpError>,
    ) {
        p.op.status = status;
        p.op.superseded_by = by;
        p.op.error = error;
        p.op.finished_at = Some(self.inner.clock.now());
        // Answer the waiters first: if this future is dropped during the write, they
        // still learn how their op ended (the row is fixed by recovery at the latest).
        p.done.send_replace(Some(p.op.clone()));
        self.inner
            .reporter
            .report(crate::ports::Report::OpFinished(Box::new(p.op.clone())));
        if let Err(e) = self.inner.store.update_op(&p.op).await {
            tracing::warn!(op = %p.op.id, error = %e, "could not record the end of an op that never ran");
        }
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

    fn spawn_driver(&self, gate: Arc<Gate>) -> bool {
        let engine = self.clone();
        self.spawn(async move { engine.drive(gate).await })
    }

    fn spawn_reconciler(&self) {
        let Some(period) = self.inner.config.reconcile_period else {
            return;
        };
        let engine = self.clone();
        let token = self.inner.loops_token.clone();
        self.spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    report = engine.reconcile() => {
                        if report.listing_failures > 0 {
                            tracing::warn!(?report, "reconcile pass could not list every runtime");
                        }
                    }
                }
            }
        });
    }

    /// Shuts the engine down, once; every caller (concurrent or later) gets the first
    /// result. Refuses new ops, ends waits and streams, lets in-flight ops finish until
    /// the drain deadline and then cancels them (`interrupted`), waits for every task,
    /// flushes the reporter with a bounded detached wait, and closes the store last.
    /// Workspaces keep running.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.inner
            .shutdown_result
            .get_or_init(|| self.shutdown_once())
            .await
            .clone()
    }

    async fn shutdown_once(&self) -> ShutdownReport {
        let inner = &self.inner;
        *inner.accepting.write() = false;
        inner.stop_token.cancel();
        inner.loops_token.cancel();
        inner.tracker.close();
        let drained = tokio::time::timeout(inner.config.drain_deadline, inner.tracker.wait())
            .await
            .is_ok();
        let interrupted = if drained {
            0
        } else {
            let before = self.count_pending().await;
            inner.ops_token.cancel();
            inner.tracker.wait().await;
            before
        };
        let reporter_flushed =
            tokio::time::timeout(inner.config.final_flush_timeout, inner.reporter.shutdown())
                .await
                .is_ok();
        inner.store.close().await;
        ShutdownReport {
            drained,
            interrupted,
            reporter_flushed,
        }
    }

    async fn count_pending(&self) -> usize {
        let ids: Vec<_> = self.inner.gates.epochs().into_keys().collect();
        let mut n = 0;
        for id in ids {
            if let Some(gate) = self.inner.gates.existing(&id) {
                let slot = gate.slot.lock().await;
                n += usize::from(slot.in_flight.is_some()) + usize::from(slot.queued.is_some());
            }
        }
        n
    }
}

pub(crate) fn shutting_down_error() -> OpError {
    OpError {
        code: "shutting_down".into(),
        message: "the engine is shutting down".into(),
        details: BTreeMap::new(),
    }
}

fn validate_spec(request: &CreateWorkspace) -> Result<(), EngineError> {
    let bad = |field: &str, message: &str| {
        Err(EngineError::Validation {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    let spec = &request.spec;
    if spec.command.iter().any(|a| a.contains('\0')) {
        return bad("command", "arguments must not contain NUL bytes");
    }
    for (k, v) in &spec.env {
        if !is_env_name(k) {
            return bad("env", "variable names must match [A-Za-z_][A-Za-z0-9_]*");
        }
        if k.starts_with("BERTH_") {
            return bad("env", "variables starting with BERTH_ are set by berth");
        }
        if v.contains('\0') {
            return bad("env", "values must not contain NUL bytes");
        }
    }
    if spec.dir.is_some() && spec.git.is_some() {
        return bad("dir", "give either dir or git, not both");
    }
    if let Some(dir) = &spec.dir
        && (!dir.starts_with('/') || dir.contains('\0') || dir.split('/').any(|c| c == ".."))
    {
        return bad("dir", "must be an absolute path without '..'");
    }
    if let Some(git) = &spec.git
        && (git.repo.is_empty()
            || git.reference.is_empty()
            || git.reference.starts_with('-')
            || git.repo.starts_with('-'))
    {
        return bad(
            "git",
            "repo and ref must be non-empty and not start with '-'",
        );
    }
    Ok(())
}

/// A POSIX environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Short helper for durations in messages.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
