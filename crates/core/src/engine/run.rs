//! Running ops: the driver loop of a busy workspace and the start, stop, restart and
//! delete runners, which execute the effects of [`crate::state::transition`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{Incarnation, TokenHash, WorkspaceToken};
use crate::merge::{OpKind, Phase};
use crate::model::{Actor, Cause, LastError, NewEvent, OpError, OpStatus, Operation, Workspace};
use crate::ports::{
    Commit, ConflictReason, DirtyReport, LaunchRequest, ProcessRuntime, ProcessStatus, Report,
    ResourceRef, RuntimeError, SessionRef, Step, WorkspaceRef,
};
use crate::state::{Effect, FailureReason, LifecycleEvent, Next, State, transition};

use super::gate::{Gate, SessionsClosed};
use super::{Engine, EngineError, error::invalid_transition, runtime_code, secs};

/// How a phase of an op ended.
#[derive(Debug)]
pub(crate) enum PhaseEnd {
    Done,
    /// Preempted by a stop or delete.
    Cancelled,
    /// Cancelled by shutdown past the drain deadline.
    Interrupted,
    Failed(OpError),
}

/// One state change to commit.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) event: LifecycleEvent,
    pub(crate) cause: Cause,
    pub(crate) message: String,
    pub(crate) actor: Actor,
    pub(crate) op: Option<Operation>,
    pub(crate) token: Option<TokenHash>,
    pub(crate) incarnation: Option<Incarnation>,
    pub(crate) last_error: Option<LastError>,
}

impl Change {
    pub(crate) fn new(event: LifecycleEvent, cause: Cause, actor: Actor, message: String) -> Self {
        Self {
            event,
            cause,
            message,
            actor,
            op: None,
            token: None,
            incarnation: None,
            last_error: None,
        }
    }
}

pub(crate) fn op_error(code: &str, message: impl Into<String>) -> OpError {
    OpError {
        code: code.to_owned(),
        message: message.into(),
        details: BTreeMap::new(),
    }
}

fn runtime_op_error(e: &RuntimeError) -> OpError {
    op_error(runtime_code(e), e.to_string())
}

fn engine_op_error(e: &EngineError) -> OpError {
    op_error(e.code(), e.to_string())
}

impl Engine {
    pub(crate) fn runtime_for(&self, ws: &Workspace) -> Option<Arc<dyn ProcessRuntime>> {
        self.inner.runtimes.get(&ws.runtime).cloned()
    }

    pub(crate) fn resource(&self, ws: &Workspace) -> ResourceRef {
        ResourceRef {
            engine_id: self.inner.engine_id.clone(),
            workspace_id: ws.id.clone(),
            incarnation: ws.incarnation,
        }
    }

    pub(crate) fn workspace_ref(&self, ws: &Workspace) -> WorkspaceRef {
        WorkspaceRef {
            engine_id: self.inner.engine_id.clone(),
            workspace_id: ws.id.clone(),
            spec: ws.spec.clone(),
        }
    }

    pub(crate) fn step(&self, ws: &Workspace, op: Option<&Operation>, step: Step) {
        self.inner.reporter.report(Report::Step {
            at: self.inner.clock.now(),
            workspace_id: ws.id.clone(),
            op_id: op.map(|o| o.id.clone()),
            step,
        });
    }

    /// Records the row just committed in the workspace's gate.
    pub(crate) fn remember(&self, ws: &Workspace) {
        if let Some(gate) = self.inner.gates.existing(&ws.id) {
            *gate.row.lock() = Some(ws.clone());
        }
    }

    /// Forgets the gate's copy of a row whose stored state is unknown.
    pub(crate) fn forget(&self, id: &crate::ids::WorkspaceId) {
        if let Some(gate) = self.inner.gates.existing(id) {
            *gate.row.lock() = None;
        }
    }

    /// The workspace row: the gate's copy of the last commit, else the store's.
    pub(crate) async fn current(
        &self,
        gate: &Gate,
        id: &crate::ids::WorkspaceId,
    ) -> Result<Option<Workspace>, crate::ports::StoreError> {
        let cached = gate.row.lock().clone();
        match cached {
            Some(ws) => Ok(Some(ws)),
            None => {
                let ws = self.inner.store.workspace(id).await?;
                gate.row.lock().clone_from(&ws);
                Ok(ws)
            }
        }
    }

    /// Commits one transition with its event (and the op row) in one store write.
    pub(crate) async fn apply(
        &self,
        ws: &mut Workspace,
        change: Change,
    ) -> Result<Vec<Effect>, EngineError> {
        let t = transition(ws.state, change.event).map_err(|e| {
            let name = e.event;
            invalid_transition(ws.id.as_str(), e, name)
        })?;
        let Next::State(to) = t.next else {
            return Err(EngineError::Internal(
                "a deletion must go through delete_rows".into(),
            ));
        };
        let now = self.inner.clock.now();
        let mut next = ws.clone();
        next.state = to;
        next.version += 1;
        next.updated_at = now;
        if let Some(inc) = change.incarnation {
            next.incarnation = inc;
        }
        match to {
            State::Failed => next.last_error = change.last_error,
            State::Starting | State::Running => next.last_error = None,
            _ => {}
        }
        let event = NewEvent {
            at: now,
            workspace_id: ws.id.clone(),
            op_id: change.op.as_ref().map(|o| o.id.clone()),
            actor: change.actor,
            from: Some(ws.state),
            to: Some(to),
            cause: change.cause,
            message: change.message,
        };
        let ops = change
            .op
            .map(|mut op| {
                if op.status.is_terminal() {
                    op.result_state = Some(to);
                }
                op
            })
            .into_iter()
            .collect();
        let commit = Commit {
            workspace: next.clone(),
            expected_version: ws.version,
            event: Some(event),
            token: change.token,
            ops,
        };
        let stored = match self.inner.store.commit(&commit).await {
            Ok(stored) => {
                self.remember(&next);
                if to == State::Running
                    && let Some(gate) = self.inner.gates.existing(&next.id)
                {
                    gate.open_sessions();
                }
                stored
            }
            Err(e) => {
                self.forget(&ws.id);
                return Err(e.into());
            }
        };
        if let Some(ev) = stored {
            self.inner.reporter.report(Report::Event(ev));
        }
        *ws = next;
        Ok(t.effects)
    }

    /// The driver of a busy workspace: runs the op in flight, then the queued one,
    /// until the gate is idle. One driver per busy gate.
    pub(crate) async fn drive(&self, gate: Arc<Gate>) {
        loop {
            let current = {
                let slot = gate.slot.lock().await;
                slot.in_flight
                    .as_ref()
                    .map(|p| (p.op.clone(), p.cancel.clone()))
            };
            let Some((op, cancel)) = current else { return };
            let mut done = if self.inner.ops_token.is_cancelled() {
                let mut op = op;
                self.end_op(&mut op, OpStatus::Interrupted, None, None)
                    .await;
                op
            } else {
                let _exec = gate.exec.lock().await;
                let mut run = OpRun {
                    engine: self,
                    gate: &gate,
                    op,
                    cancel,
                    final_written: false,
                };
                run.run().await;
                run.op
            };
            gate.bump();
            let mut slot = gate.slot.lock().await;
            if let Some(p) = slot.in_flight.take() {
                // Joins and preemption may have happened while it ran.
                let mut fixed = done.clone();
                fixed.joined = p.op.joined;
                if fixed.status == OpStatus::Cancelled {
                    fixed.superseded_by.clone_from(&p.preempted_by);
                }
                if fixed != done {
                    done = fixed;
                    self.write_op_detached(&done).await;
                }
                self.inner
                    .reporter
                    .report(crate::ports::Report::OpFinished(Box::new(done.clone())));
                p.done.send_replace(Some(done));
            }
            match slot.queued.take() {
                Some(mut next) => {
                    next.op.status = OpStatus::Running;
                    next.op.started_at = Some(self.inner.clock.now());
                    slot.in_flight = Some(next);
                }
                None => return,
            }
        }
    }

    /// Writes an op row with a bounded wait that does not depend on any cancelled token.
    pub(crate) async fn write_op_detached(&self, op: &Operation) {
        match tokio::time::timeout(
            self.inner.config.final_flush_timeout,
            self.inner.store.update_op(op),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(op = %op.id, error = %e, "could not record the op's final status")
            }
            Err(_) => tracing::warn!(op = %op.id, "recording the op's final status timed out"),
        }
    }

    /// Marks an op ended (without a state change) and persists it.
    pub(crate) async fn end_op(
        &self,
        op: &mut Operation,
        status: OpStatus,
        state: Option<State>,
        error: Option<OpError>,
    ) {
        op.status = status;
        op.finished_at = Some(self.inner.clock.now());
        if state.is_some() {
            op.result_state = state;
        }
        if let Some(e) = &error {
            self.inner.reporter.report(Report::Error {
                at: self.inner.clock.now(),
                workspace_id: Some(op.workspace_id.clone()),
                code: e.code.clone(),
                message: e.message.clone(),
            });
        }
        op.error = error;
        self.write_op_detached(op).await;
    }

    /// Runs stop-side effects (sessions, main process, removals). Returns the resources
    /// that could not be handled; keeps going past a failure so every session is tried.
    pub(crate) async fn run_effects(
        &self,
        gate: &Gate,
        ws: &Workspace,
        op: Option<&Operation>,
        effects: &[Effect],
        closing: SessionsClosed,
    ) -> Vec<String> {
        let mut failures = Vec::new();
        let runtime = self.runtime_for(ws);
        let bound = self.inner.config.stop_ceiling;
        let grace = self.inner.config.stop_grace;
        for effect in effects {
            match effect {
                Effect::StopSessions => {
                    failures.extend(self.stop_sessions(gate, ws, op, closing).await)
                }
                Effect::StopMain | Effect::RemoveExited | Effect::RemovePartial => {
                    let Some(rt) = &runtime else { continue };
                    if ws.incarnation == Incarnation(0) {
                        continue;
                    }
                    let call = self.on_main(rt.as_ref(), ws, *effect, grace);
                    match tokio::time::timeout(bound, call).await {
                        Ok(Ok(())) => self.step(
                            ws,
                            op,
                            match effect {
                                Effect::StopMain => Step::MainStopped,
                                _ => Step::PartialRemoved,
                            },
                        ),
                        Ok(Err(e)) if e.is_not_found() => {}
                        Ok(Err(e)) => {
                            failures.push(format!("{} of {}: {e}", effect_name(*effect), ws.id))
                        }
                        Err(_) => failures.push(format!(
                            "{} of {}: timed out after {}",
                            effect_name(*effect),
                            ws.id,
                            secs(bound)
                        )),
                    }
                }
                Effect::RemoveResources => {
                    let Some(rt) = &runtime else { continue };
                    if ws.incarnation > Incarnation(0) {
                        match tokio::time::timeout(
                            bound,
                            self.on_main(rt.as_ref(), ws, Effect::RemoveResources, grace),
                        )
                        .await
                        {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) if e.is_not_found() => {}
                            Ok(Err(e)) => failures.push(format!("main resource of {}: {e}", ws.id)),
                            Err(_) => failures
                                .push(format!("main resource of {}: removal timed out", ws.id)),
                        }
                    }
                    match tokio::time::timeout(bound, rt.cleanup(&self.workspace_ref(ws))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) if e.is_not_found() => {}
                        Ok(Err(e)) => failures.push(format!("data of {}: {e}", ws.id)),
                        Err(_) => failures.push(format!("data of {}: cleanup timed out", ws.id)),
                    }
                    if failures.is_empty() {
                        self.step(ws, op, Step::ResourcesRemoved);
                    }
                }
                Effect::MintIncarnation | Effect::Launch | Effect::RemoveRows => {}
            }
        }
        failures
    }

    /// Stops or removes the workspace's main resource. The call is fenced by the
    /// current incarnation; when the runtime holds an OLDER incarnation of ours instead
    /// (a stopped container kept while the next launch never created anything), the
    /// call applies to that one under its own incarnation. A newer one is never touched.
    async fn on_main(
        &self,
        rt: &dyn ProcessRuntime,
        ws: &Workspace,
        effect: Effect,
        grace: std::time::Duration,
    ) -> Result<(), RuntimeError> {
        let call = |target: ResourceRef| async move {
            match effect {
                Effect::StopMain => rt.stop(&target, grace).await,
                _ => rt.remove(&target).await,
            }
        };
        match call(self.resource(ws)).await {
            Err(RuntimeError::Conflict {
                reason: ConflictReason::IncarnationMismatch,
                ..
            }) => {}
            other => return other,
        }
        match rt.inspect(&self.inner.engine_id, &ws.id).await? {
            None => Ok(()),
            Some(found) if found.incarnation < ws.incarnation => {
                call(ResourceRef {
                    incarnation: found.incarnation,
                    ..self.resource(ws)
                })
                .await
            }
            Some(found) => Err(RuntimeError::Conflict {
                resource: ws.id.to_string(),
                reason: ConflictReason::IncarnationMismatch,
                message: format!(
                    "holds incarnation {}, newer than the record's {}",
                    found.incarnation, ws.incarnation
                ),
            }),
        }
    }

    /// Closes the session gate (waiting for launches in progress), then stops every
    /// session of the workspace and forgets its row.
    pub(crate) async fn stop_sessions(
        &self,
        gate: &Gate,
        ws: &Workspace,
        op: Option<&Operation>,
        closing: SessionsClosed,
    ) -> Vec<String> {
        gate.close_sessions(closing).await;
        if gate.no_sessions.load(std::sync::atomic::Ordering::SeqCst) {
            return Vec::new();
        }
        let rows = match self.inner.store.sessions(&ws.id).await {
            Ok(rows) => rows,
            Err(e) => return vec![format!("sessions of {}: {e}", ws.id)],
        };
        let runtime = self.runtime_for(ws);
        let mut failures = Vec::new();
        for row in rows {
            if let Some(rt) = &runtime {
                let target = SessionRef {
                    engine_id: self.inner.engine_id.clone(),
                    workspace_id: ws.id.clone(),
                    name: row.name.clone(),
                    generation: Some(row.generation),
                };
                let bound = self.inner.config.stop_ceiling;
                match tokio::time::timeout(
                    bound,
                    rt.stop_session(&target, self.inner.config.stop_grace),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.is_not_found() => {}
                    Ok(Err(e)) => {
                        failures.push(format!("session {} of {}: {e}", row.name, ws.id));
                        continue;
                    }
                    Err(_) => {
                        failures.push(format!(
                            "session {} of {}: stop timed out after {}",
                            row.name,
                            ws.id,
                            secs(bound)
                        ));
                        continue;
                    }
                }
            }
            if let Err(e) = self
                .inner
                .store
                .delete_session(&ws.id, &row.name, row.generation)
                .await
            {
                failures.push(format!("session row {} of {}: {e}", row.name, ws.id));
                continue;
            }
            self.step(ws, op, Step::SessionStopped(row.name.clone()));
        }
        if failures.is_empty() {
            gate.no_sessions
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        failures
    }
}

fn effect_name(e: Effect) -> &'static str {
    match e {
        Effect::StopMain => "stop",
        Effect::RemoveExited | Effect::RemovePartial => "removal",
        _ => "effect",
    }
}

/// One op being run by the driver.
struct OpRun<'a> {
    engine: &'a Engine,
    gate: &'a Gate,
    op: Operation,
    cancel: tokio_util::sync::CancellationToken,
    /// The op's final status went out with its last state change (one write fewer).
    final_written: bool,
}

impl OpRun<'_> {
    async fn run(&mut self) {
        let ws = match self.engine.current(self.gate, &self.op.workspace_id).await {
            Ok(Some(ws)) => ws,
            Ok(None) => {
                let e = op_error(
                    "not_found",
                    format!("workspace {} not found", self.op.workspace_id),
                );
                return self.finish(OpStatus::Failed, None, Some(e)).await;
            }
            Err(e) => {
                return self
                    .finish(OpStatus::Failed, None, Some(engine_op_error(&e.into())))
                    .await;
            }
        };
        match self.op.kind {
            OpKind::Start => self.start(ws).await,
            OpKind::Stop => self.stop(ws).await,
            OpKind::Restart => self.restart(ws).await,
            OpKind::Delete => self.delete(ws).await,
        }
    }

    async fn finish(&mut self, status: OpStatus, state: Option<State>, error: Option<OpError>) {
        self.engine.end_op(&mut self.op, status, state, error).await;
    }

    /// Ends the op after its last phase.
    async fn conclude(&mut self, ws: &mut Workspace, end: PhaseEnd) {
        if self.final_written {
            return;
        }
        match end {
            PhaseEnd::Done => self.finish(OpStatus::Succeeded, Some(ws.state), None).await,
            PhaseEnd::Cancelled => self.finish(OpStatus::Cancelled, Some(ws.state), None).await,
            PhaseEnd::Failed(e) => self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await,
            PhaseEnd::Interrupted => self.interrupted(ws).await,
        }
    }

    /// Shutdown cancelled the op: record it and an event, with detached bounded writes.
    async fn interrupted(&mut self, ws: &mut Workspace) {
        let now = self.engine.inner.clock.now();
        self.op.status = OpStatus::Interrupted;
        self.op.finished_at = Some(now);
        self.op.result_state = Some(ws.state);
        self.op.error = Some(op_error(
            "interrupted",
            "the engine shut down while this op ran; recovery finishes it at the next boot",
        ));
        let mut next = ws.clone();
        next.version += 1;
        next.updated_at = now;
        let commit = Commit {
            workspace: next.clone(),
            expected_version: ws.version,
            event: Some(NewEvent {
                at: now,
                workspace_id: ws.id.clone(),
                op_id: Some(self.op.id.clone()),
                actor: Actor::Engine,
                from: Some(ws.state),
                to: Some(ws.state),
                cause: Cause::Interrupted,
                message: format!(
                    "{} interrupted by shutdown while {}",
                    self.op.kind.as_str(),
                    ws.state
                ),
            }),
            token: None,
            ops: vec![self.op.clone()],
        };
        let bound = self.engine.inner.config.final_flush_timeout;
        match tokio::time::timeout(bound, self.engine.inner.store.commit(&commit)).await {
            Ok(Ok(ev)) => {
                self.engine.remember(&next);
                *ws = next;
                if let Some(ev) = ev {
                    self.engine.inner.reporter.report(Report::Event(ev));
                }
            }
            Ok(Err(e)) => {
                self.engine.forget(&ws.id);
                tracing::warn!(op = %self.op.id, error = %e, "could not record the interruption");
            }
            Err(_) => {
                self.engine.forget(&ws.id);
                tracing::warn!(op = %self.op.id, "recording the interruption timed out");
            }
        }
    }

    fn change(&self, event: LifecycleEvent, cause: Cause, message: String) -> Change {
        let mut c = Change::new(event, cause, self.op.actor, message);
        c.op = Some(self.op.clone());
        c
    }

    /// A change that also ends the op: its final status goes out in the same commit.
    fn final_change(
        &self,
        event: LifecycleEvent,
        cause: Cause,
        message: String,
        status: OpStatus,
        error: Option<OpError>,
    ) -> Change {
        let mut c = self.change(event, cause, message);
        if let Some(op) = c.op.as_mut() {
            op.status = status;
            op.finished_at = Some(self.engine.inner.clock.now());
            op.error = error;
        }
        c
    }

    /// Commits a final change; on success the op is ended without another write.
    async fn apply_final(&mut self, ws: &mut Workspace, change: Change) -> Result<(), EngineError> {
        let mut ended = change.op.clone();
        self.engine.apply(ws, change).await?;
        if let Some(op) = ended.as_mut() {
            op.result_state = Some(ws.state);
            if let Some(e) = &op.error {
                self.engine.inner.reporter.report(Report::Error {
                    at: self.engine.inner.clock.now(),
                    workspace_id: Some(ws.id.clone()),
                    code: e.code.clone(),
                    message: e.message.clone(),
                });
            }
        }
        if let Some(op) = ended {
            self.op = op;
            self.final_written = true;
        }
        Ok(())
    }

    async fn start(&mut self, mut ws: Workspace) {
        let end = self.start_phase(&mut ws).await;
        self.conclude(&mut ws, end).await;
    }

    async fn stop(&mut self, mut ws: Workspace) {
        let end = self.stop_phase(&mut ws, true).await;
        self.conclude(&mut ws, end).await;
    }

    async fn restart(&mut self, mut ws: Workspace) {
        if !matches!(ws.state, State::Stopped | State::Failed) {
            match self.stop_phase(&mut ws, false).await {
                PhaseEnd::Done => {}
                other => return self.conclude(&mut ws, other).await,
            }
        }
        let end = if self.enter_start_phase().await {
            self.start_phase(&mut ws).await
        } else {
            PhaseEnd::Cancelled
        };
        self.conclude(&mut ws, end).await;
    }

    /// Whether this delete is forced, counting forced requests that joined it.
    async fn forced(&mut self) -> bool {
        let joined_forced = self
            .gate
            .slot
            .lock()
            .await
            .in_flight
            .as_ref()
            .is_some_and(|p| p.op.force);
        self.op.force |= joined_forced;
        self.op.force
    }

    /// Moves the in-flight op to its start phase, unless it was preempted.
    async fn enter_start_phase(&self) -> bool {
        let mut slot = self.gate.slot.lock().await;
        match slot.in_flight.as_mut() {
            Some(p) if p.preempted_by.is_none() => {
                p.phase = Phase::StartPhase;
                true
            }
            _ => false,
        }
    }

    async fn start_phase(&mut self, ws: &mut Workspace) -> PhaseEnd {
        if self.cancel.is_cancelled() {
            return if self.engine.inner.ops_token.is_cancelled() {
                PhaseEnd::Interrupted
            } else {
                PhaseEnd::Cancelled
            };
        }
        if ws.state == State::Running {
            // A no-op: it mints no incarnation and no token.
            return PhaseEnd::Done;
        }
        if let Err(e) = transition(ws.state, LifecycleEvent::Start) {
            return PhaseEnd::Failed(engine_op_error(&invalid_transition(
                ws.id.as_str(),
                e,
                "start",
            )));
        }
        let Some(runtime) = self.engine.runtime_for(ws) else {
            let e = EngineError::RuntimeUnavailable {
                runtime: ws.runtime.to_string(),
                message: "not configured on this engine".into(),
            };
            return PhaseEnd::Failed(engine_op_error(&e));
        };
        let token = WorkspaceToken::mint();
        let incarnation = ws.incarnation.next();
        let now = self.engine.inner.clock.now();
        self.op.start_phase_at = Some(now);
        self.op.incarnation = Some(incarnation);
        let mut change = self.change(
            LifecycleEvent::Start,
            Cause::Start,
            format!("starting incarnation {incarnation}"),
        );
        change.token = Some(token.hash());
        change.incarnation = Some(incarnation);
        if let Err(e) = self.engine.apply(ws, change).await {
            return PhaseEnd::Failed(engine_op_error(&e));
        }
        let ceiling = self.engine.inner.config.start_ceiling;
        let outcome = tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            r = tokio::time::timeout(ceiling, self.engine.launch_main(runtime.as_ref(), ws, &token)) => Some(r),
        };
        let (event, cause, reason, message, end) = match outcome {
            None if self.engine.inner.ops_token.is_cancelled() => return PhaseEnd::Interrupted,
            None => {
                self.engine
                    .remove_partial(runtime.as_ref(), ws, Some(&self.op))
                    .await;
                (
                    LifecycleEvent::StartCancelled,
                    Cause::StartCancelled,
                    None,
                    "start cancelled by a newer request".to_owned(),
                    PhaseEnd::Cancelled,
                )
            }
            Some(Ok(Ok(dir))) => {
                ws.dir = dir.or(ws.dir.take());
                let change = self.final_change(
                    LifecycleEvent::Launched,
                    Cause::Launched,
                    format!("incarnation {incarnation} running"),
                    OpStatus::Succeeded,
                    None,
                );
                return match self.apply_final(ws, change).await {
                    Ok(()) => {
                        self.gate.open_sessions();
                        self.engine.step(ws, Some(&self.op), Step::MainLaunched);
                        PhaseEnd::Done
                    }
                    Err(e) => PhaseEnd::Failed(engine_op_error(&e)),
                };
            }
            Some(Err(_)) => {
                self.engine
                    .remove_partial(runtime.as_ref(), ws, Some(&self.op))
                    .await;
                let msg = format!(
                    "start of {} still running after the start ceiling of {}",
                    ws.id,
                    secs(ceiling)
                );
                let e = op_error("start_timeout", msg.clone());
                (
                    LifecycleEvent::StartFailed(FailureReason::StartTimeout),
                    Cause::StartTimeout,
                    Some(FailureReason::StartTimeout),
                    msg,
                    PhaseEnd::Failed(e),
                )
            }
            Some(Ok(Err(e))) => {
                self.engine
                    .remove_partial(runtime.as_ref(), ws, Some(&self.op))
                    .await;
                let msg = format!("start of {} failed: {e}", ws.id);
                (
                    LifecycleEvent::StartFailed(FailureReason::StartFailed),
                    Cause::StartFailed,
                    Some(FailureReason::StartFailed),
                    msg,
                    PhaseEnd::Failed(runtime_op_error(&e)),
                )
            }
        };
        let (status, error) = match &end {
            PhaseEnd::Cancelled => (OpStatus::Cancelled, None),
            PhaseEnd::Failed(e) => (OpStatus::Failed, Some(e.clone())),
            PhaseEnd::Done | PhaseEnd::Interrupted => (OpStatus::Failed, None),
        };
        let mut change = self.final_change(event, cause, message.clone(), status, error);
        change.last_error = reason.map(|code| LastError {
            code,
            message,
            at: self.engine.inner.clock.now(),
        });
        match self.apply_final(ws, change).await {
            Ok(()) => end,
            Err(e) => PhaseEnd::Failed(engine_op_error(&e)),
        }
    }

    async fn stop_phase(&mut self, ws: &mut Workspace, last: bool) -> PhaseEnd {
        if ws.state == State::Stopped {
            return PhaseEnd::Done;
        }
        let change = self.change(
            LifecycleEvent::Stop,
            Cause::Stop,
            format!("stopping incarnation {}", ws.incarnation),
        );
        let effects = match self.engine.apply(ws, change).await {
            Ok(effects) => effects,
            Err(e) => return PhaseEnd::Failed(engine_op_error(&e)),
        };
        let failures = tokio::select! {
            biased;
            () = self.engine.inner.ops_token.cancelled() => return PhaseEnd::Interrupted,
            f = self.engine.run_effects(self.gate, ws, Some(&self.op), &effects, SessionsClosed::Stopping) => f,
        };
        if failures.is_empty() {
            let message = format!("incarnation {} stopped", ws.incarnation);
            let result = if last {
                let change = self.final_change(
                    LifecycleEvent::Stopped,
                    Cause::Stopped,
                    message,
                    OpStatus::Succeeded,
                    None,
                );
                self.apply_final(ws, change).await
            } else {
                self.engine
                    .apply(
                        ws,
                        self.change(LifecycleEvent::Stopped, Cause::Stopped, message),
                    )
                    .await
                    .map(|_| ())
            };
            return match result {
                Ok(()) => PhaseEnd::Done,
                Err(e) => PhaseEnd::Failed(engine_op_error(&e)),
            };
        }
        let message = format!("stop of {} failed: {}", ws.id, failures.join("; "));
        let mut change = self.change(
            LifecycleEvent::StopFailed,
            Cause::StopFailed,
            message.clone(),
        );
        change.last_error = Some(LastError {
            code: FailureReason::StopFailed,
            message: message.clone(),
            at: self.engine.inner.clock.now(),
        });
        if let Err(e) = self.engine.apply(ws, change).await {
            return PhaseEnd::Failed(engine_op_error(&e));
        }
        let mut error = op_error("runtime_error", message);
        error.details.insert("resources".into(), failures);
        PhaseEnd::Failed(error)
    }

    async fn delete(&mut self, mut ws: Workspace) {
        // 1. `deleting` for the whole call: the gate refuses launches, starts and restarts.
        tokio::select! {
            biased;
            () = self.engine.inner.ops_token.cancelled() => return self.interrupted(&mut ws).await,
            () = self.gate.close_sessions(SessionsClosed::Deleting) => {}
        }
        // 2. Preflight. Without its runtime berth touches nothing on disk, so there is
        //    no unsaved work to protect and nothing to check.
        // A forced delete may join this one at any time before the preflight's verdict.
        if !self.forced().await
            && ws.state != State::Deleting
            && let Some(e) = self.engine.preflight(&ws).await
            && !self.forced().await
        {
            self.gate.open_sessions();
            return self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await;
        }
        self.engine.step(&ws, Some(&self.op), Step::PreflightPassed);
        // A completed stop already stopped the main process: skip stopping it again
        // (the removal that follows stops anything still there).
        let was_stopped = ws.state == State::Stopped;
        let change = self.change(
            LifecycleEvent::Delete,
            Cause::Delete,
            format!("deleting workspace {}", ws.name),
        );
        let effects = match self.engine.apply(&mut ws, change).await {
            Ok(effects) => effects,
            Err(e) => {
                // `deleting` was never committed: nothing changed, sessions may launch.
                self.gate.open_sessions();
                return self
                    .finish(OpStatus::Failed, Some(ws.state), Some(engine_op_error(&e)))
                    .await;
            }
        };
        let effects: Vec<Effect> = effects
            .into_iter()
            .filter(|e| !(was_stopped && *e == Effect::StopMain))
            .collect();
        // 3 and 4. Stop sessions and the main process, remove the resources.
        let failures = tokio::select! {
            biased;
            () = self.engine.inner.ops_token.cancelled() => return self.interrupted(&mut ws).await,
            f = self.engine.run_effects(self.gate, &ws, Some(&self.op), &effects, SessionsClosed::Deleting) => f,
        };
        if !failures.is_empty() {
            let mut e = op_error(
                "runtime_error",
                format!(
                    "delete of {} incomplete (rows kept, retry to finish): {}",
                    ws.name,
                    failures.join("; ")
                ),
            );
            e.details.insert("resources".into(), failures);
            return self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await;
        }
        // 5. The rows and the `deleted` event.
        let actor = self.op.actor;
        match self
            .engine
            .delete_rows(&ws, Some(&mut self.op), actor)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                self.finish(OpStatus::Failed, Some(ws.state), Some(engine_op_error(&e)))
                    .await
            }
        }
    }
}

impl Engine {
    /// A delete's preflight: `Some(error)` when the workspace holds unsaved work
    /// (`workspace_dirty`, with the files) or cannot be checked (`dirty_check_failed`).
    /// Without its runtime berth touches nothing on disk, so there is nothing to check.
    pub(crate) async fn preflight(&self, ws: &Workspace) -> Option<OpError> {
        let rt = self.runtime_for(ws)?;
        let bound = self.inner.config.stop_ceiling;
        match tokio::time::timeout(bound, rt.dirty_check(&self.workspace_ref(ws))).await {
            Ok(Ok(DirtyReport::Clean)) => None,
            Ok(Ok(DirtyReport::Dirty(files))) => {
                let mut e = op_error(
                    "workspace_dirty",
                    format!(
                        "workspace {} has unsaved work in {} file(s); delete with force to discard it",
                        ws.name,
                        files.len()
                    ),
                );
                e.details.insert("files".into(), files);
                Some(e)
            }
            Ok(Err(e)) => Some(op_error(
                "dirty_check_failed",
                format!(
                    "could not check workspace {} for unsaved work: {e}",
                    ws.name
                ),
            )),
            Err(_) => Some(op_error(
                "dirty_check_failed",
                format!("checking workspace {} for unsaved work timed out", ws.name),
            )),
        }
    }

    /// Removes the rows of a `deleting` workspace and appends `deleted`; ends `op`.
    pub(crate) async fn delete_rows(
        &self,
        ws: &Workspace,
        op: Option<&mut Operation>,
        actor: Actor,
    ) -> Result<(), EngineError> {
        if let Err(e) = transition(ws.state, LifecycleEvent::Deleted) {
            return Err(invalid_transition(ws.id.as_str(), e, "delete"));
        }
        let now = self.inner.clock.now();
        let mut ops = Vec::new();
        let op_id = op.as_ref().map(|o| o.id.clone());
        let mut finished = None;
        if let Some(op) = op {
            op.status = OpStatus::Succeeded;
            op.finished_at = Some(now);
            op.result_state = None;
            ops.push(op.clone());
            finished = Some(op);
        }
        let event = NewEvent {
            at: now,
            workspace_id: ws.id.clone(),
            op_id,
            actor,
            from: Some(ws.state),
            to: None,
            cause: Cause::Deleted,
            message: format!("workspace {} deleted", ws.name),
        };
        let stored = self
            .inner
            .store
            .delete_workspace(&ws.id, ws.version, &ops, &event)
            .await;
        match stored {
            Ok(ev) => {
                self.step(ws, finished.as_deref(), Step::RowsRemoved);
                self.inner.reporter.report(Report::Event(ev));
                self.forget(&ws.id);
                self.inner.gates.remove(&ws.id);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes what a cancelled or failed launch may have created, bounded. A failure
    /// is logged and left to the orphan sweep.
    pub(crate) async fn remove_partial(
        &self,
        rt: &dyn ProcessRuntime,
        ws: &Workspace,
        op: Option<&Operation>,
    ) {
        let target = self.resource(ws);
        match tokio::time::timeout(self.inner.config.stop_ceiling, rt.remove(&target)).await {
            Ok(Ok(())) => self.step(ws, op, Step::PartialRemoved),
            Ok(Err(e)) if e.is_not_found() => self.step(ws, op, Step::PartialRemoved),
            Ok(Err(e)) => {
                tracing::warn!(workspace = %ws.id, error = %e, "could not remove a partial start; the orphan sweep will")
            }
            Err(_) => {
                tracing::warn!(workspace = %ws.id, "removing a partial start timed out; the orphan sweep will")
            }
        }
    }

    /// Prepares the directory and launches the main process of `ws.incarnation`,
    /// treating "name in use" and "removal in progress" for our own resource as
    /// transient: adopt this incarnation, remove an older one, wait and retry. The
    /// caller bounds it by the start ceiling.
    pub(crate) async fn launch_main(
        &self,
        rt: &dyn ProcessRuntime,
        ws: &Workspace,
        token: &WorkspaceToken,
    ) -> Result<Option<String>, RuntimeError> {
        let dir = rt.prepare(&self.workspace_ref(ws)).await?;
        let mut env = ws.spec.env.clone();
        env.insert("BERTH_WORKSPACE_ID".into(), ws.id.to_string());
        env.insert(
            "BERTH_WORKSPACE_TOKEN".into(),
            token.expose_secret().to_owned(),
        );
        env.insert("BERTH_API_URL".into(), self.inner.config.api_url.clone());
        let request = LaunchRequest {
            resource: self.resource(ws),
            name: ws.name.clone(),
            spec: ws.spec.clone(),
            dir: dir.clone().or_else(|| ws.dir.clone()),
            env,
        };
        loop {
            let reason = match rt.launch(&request).await {
                Ok(()) => return Ok(dir),
                Err(RuntimeError::Conflict {
                    reason: reason @ (ConflictReason::NameInUse | ConflictReason::RemovalInProgress),
                    ..
                }) => reason,
                Err(e) => return Err(e),
            };
            match rt.inspect(&self.inner.engine_id, &ws.id).await? {
                Some(found)
                    if found.incarnation == ws.incarnation
                        && found.status == ProcessStatus::Running =>
                {
                    return Ok(dir);
                }
                Some(found)
                    if found.incarnation <= ws.incarnation
                        && reason == ConflictReason::NameInUse =>
                {
                    let stale = ResourceRef {
                        incarnation: found.incarnation,
                        ..self.resource(ws)
                    };
                    match rt.remove(&stale).await {
                        Ok(()) => continue,
                        Err(e) if e.is_not_found() => continue,
                        Err(RuntimeError::Conflict {
                            reason: ConflictReason::RemovalInProgress,
                            ..
                        }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(found) if found.incarnation > ws.incarnation => {
                    return Err(RuntimeError::Other {
                        resource: ws.id.to_string(),
                        message: format!(
                            "a newer incarnation {} exists than {}",
                            found.incarnation, ws.incarnation
                        ),
                    });
                }
                _ => {}
            }
            tokio::time::sleep(self.inner.config.conflict_backoff).await;
        }
    }
}
