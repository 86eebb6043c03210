//! The ops: each is a short sequence of lifecycle events fed to the interpreter.
//! `start` is [`LifecycleEvent::Start`] then the launch's outcome; `stop` is `Stop` then
//! `Stopped` or `StopFailed`; `restart` is a stop phase then a start phase; `delete` is
//! the preflight, `Delete`, then `Deleted`. Whether a phase does anything is the
//! transition table's call (a stop of a stopped workspace commits nothing and runs
//! nothing), never a test of the state here.
//!
//! [`LifecycleEvent::Start`]: crate::state::LifecycleEvent::Start

mod delete;
mod restart;
mod start;
mod stop;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::code::ErrorCode;
use crate::merge::OpKind;
use crate::model::{Cause, OpError, OpStatus, Operation, Workspace};
use crate::state::{LifecycleEvent, State};

use super::commit::{Committed, Note};
use super::gate::{Gate, Record};
use super::{Engine, EngineError};

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

/// One op being run by the driver, under the gate's exec lock.
#[derive(Debug)]
pub(crate) struct OpRun<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) gate: &'a Gate,
    pub(crate) op: Operation,
    pub(crate) cancel: CancellationToken,
    /// The op's runtime work ends by this instant (stop and delete).
    pub(crate) deadline: Option<Instant>,
    /// A delete whose preflight passed at intake.
    pub(crate) preflighted: bool,
    /// The op's final status went out with its last commit (one write fewer).
    pub(crate) final_written: bool,
    /// Whether the op is on record: it goes out with its first write.
    pub(crate) record: Record,
}

impl OpRun<'_> {
    pub(crate) async fn run(&mut self) {
        let ws = match self.engine.current(self.gate, &self.op.workspace_id).await {
            Ok(Some(ws)) => ws,
            Ok(None) => {
                let e = OpError::new(
                    ErrorCode::NotFound,
                    format!("workspace {} not found", self.op.workspace_id),
                );
                return self.finish(OpStatus::Failed, None, Some(e)).await;
            }
            Err(e) => {
                return self
                    .finish(OpStatus::Failed, None, Some(e.to_op_error()))
                    .await;
            }
        };
        // A transitional state with no op running (a final commit that failed, a
        // driver that panicked) is finished first, as recovery would; a delete finishes
        // a `deleting` workspace itself.
        let ws = if ws.state.is_transitional()
            && !(self.op.kind == OpKind::Delete && ws.state == State::Deleting)
        {
            if let Err(e) = self.ensure_recorded().await {
                let e = e.to_op_error();
                return self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await;
            }
            self.engine
                .finish_transitional(self.gate, ws, super::recovery::Mode::Background)
                .await;
            match self.engine.current(self.gate, &self.op.workspace_id).await {
                Ok(Some(ws)) => ws,
                Ok(None) => {
                    let e = OpError::new(
                        ErrorCode::NotFound,
                        format!("workspace {} was deleted", self.op.workspace_id),
                    );
                    return self.finish(OpStatus::Failed, None, Some(e)).await;
                }
                Err(e) => {
                    return self
                        .finish(OpStatus::Failed, None, Some(e.to_op_error()))
                        .await;
                }
            }
        } else {
            ws
        };
        match self.op.kind {
            OpKind::Start => self.start(ws).await,
            OpKind::Stop => self.stop(ws).await,
            OpKind::Restart => self.restart(ws).await,
            OpKind::Delete => self.delete(ws).await,
        }
    }

    async fn finish(&mut self, status: OpStatus, state: Option<State>, error: Option<OpError>) {
        self.engine
            .end_op(&mut self.op, &self.record, status, state, error)
            .await;
    }

    /// Puts the op on record before work that comes ahead of its first commit (runtime
    /// calls, waits), so its request is not kept waiting by them. An error: the write
    /// failed (its requests get that error) and the op must not go on.
    async fn ensure_recorded(&mut self) -> Result<(), EngineError> {
        if self.record.is_durable() {
            return Ok(());
        }
        let written = self.engine.record_op(&self.op).await;
        self.record.settle(written.clone());
        written
    }

    /// Ends the op after its last phase.
    async fn conclude(&mut self, ws: &mut Workspace, end: PhaseEnd) {
        if self.final_written {
            return;
        }
        match end {
            PhaseEnd::Done => self.finish(OpStatus::Succeeded, Some(ws.state), None).await,
            PhaseEnd::Cancelled => {
                let e = self.cancelled_error();
                self.finish(OpStatus::Cancelled, Some(ws.state), Some(e))
                    .await;
            }
            PhaseEnd::Failed(e) => self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await,
            PhaseEnd::Interrupted => {
                let written = self
                    .engine
                    .commit_interrupted(self.gate, ws, &mut self.op)
                    .await;
                self.record.settle(written);
                self.final_written = true;
            }
        }
    }

    fn cancelled_error(&self) -> OpError {
        OpError::new(
            ErrorCode::Superseded,
            format!(
                "{} of {} was cancelled by a newer stop or delete",
                self.op.kind.as_str(),
                self.op.workspace_id
            ),
        )
    }

    fn note(&self, cause: Cause, message: impl Into<String>) -> Note {
        let mut n = Note::new(cause, self.op.actor, message);
        n.op = Some(self.op.clone());
        n
    }

    /// A note that also ends the op: its final status goes out in the same commit.
    fn final_note(
        &self,
        cause: Cause,
        message: impl Into<String>,
        status: OpStatus,
        error: Option<OpError>,
    ) -> Note {
        let mut n = self.note(cause, message);
        if let Some(op) = n.op.as_mut() {
            op.status = status;
            op.finished_at = Some(self.engine.inner.clock.now());
            op.error = error;
        }
        n
    }

    /// Commits a transition; a final note ends the op without another write.
    async fn commit(
        &mut self,
        ws: &mut Workspace,
        event: LifecycleEvent,
        note: Note,
    ) -> Result<Committed, EngineError> {
        let ending = note.op.clone().filter(|op| op.status.is_terminal());
        let committed = self
            .engine
            .commit_transition(self.gate, ws, event, note)
            .await?;
        if committed.committed {
            // The commit wrote the op's row.
            self.record.settle(Ok(()));
        } else if !committed.effects.is_empty() {
            // A self-loop (a retried delete of a `deleting` workspace) runs effects
            // without a commit: the op goes on record before them.
            self.ensure_recorded().await?;
        }
        if let Some(mut op) = ending {
            op.result_state = (event != LifecycleEvent::Deleted).then_some(ws.state);
            if committed.committed {
                if let Some(e) = &op.error {
                    self.engine.report_error(&op.workspace_id, e);
                }
                self.op = op;
                self.final_written = true;
            }
        } else if let Some(inc) = committed.token.as_ref().map(|_| ws.incarnation) {
            self.op.incarnation = Some(inc);
        }
        Ok(committed)
    }

    /// Whether this delete is forced, counting forced requests that joined it.
    fn forced(&mut self) -> bool {
        let joined_forced = self
            .gate
            .read()
            .slot
            .in_flight
            .as_ref()
            .is_some_and(|p| p.op.force);
        self.op.force |= joined_forced;
        self.op.force
    }

    /// The deadline of this op's stop-side work: set when it became in flight (or
    /// preempted a start), else one stop ceiling from now.
    fn stop_deadline(&self) -> Instant {
        self.deadline.unwrap_or_else(|| self.engine.stop_deadline())
    }
}

impl Engine {
    /// Marks an op ended (without a state change) and persists it: an insert if it is
    /// not on record yet.
    pub(crate) async fn end_op(
        &self,
        op: &mut Operation,
        record: &Record,
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
            self.report_error(&op.workspace_id, e);
        }
        op.error = error;
        if record.is_durable() {
            self.write_op_detached(op).await;
            return;
        }
        let written = self.record_op(op).await;
        if let Err(e) = &written {
            tracing::warn!(op = %op.id, error = %e, "could not record the op");
        }
        record.settle(written);
    }

    /// Writes an op that may not be on record yet, with a bounded wait: an insert, or
    /// an update when a write whose outcome was in doubt did put it there.
    async fn record_op(&self, op: &Operation) -> Result<(), EngineError> {
        let write = async {
            match self.inner.store.insert_op(op).await {
                Err(crate::ports::StoreError::Conflict { .. }) => {
                    self.inner.store.update_op(op).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.inner.config.final_flush_timeout, write).await {
            Ok(r) => r.map_err(EngineError::from),
            Err(_) => Err(EngineError::Internal(format!(
                "recording op {} timed out",
                op.id
            ))),
        }
    }

    pub(crate) fn report_error(&self, workspace: &crate::ids::WorkspaceId, e: &OpError) {
        self.inner.reporter.report(crate::ports::Report::Error {
            at: self.inner.clock.now(),
            workspace_id: Some(workspace.clone()),
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
        });
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
}
