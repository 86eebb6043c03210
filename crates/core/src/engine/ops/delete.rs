//! `delete`: refuse session launches, the preflight (unless forced, already passed at
//! intake, or the workspace is already `deleting`), `Delete` and its effects (sessions,
//! the main process, the resources), then `Deleted`, which removes the rows. All its
//! runtime calls, the dirty check included, share one stop ceiling. A refusal changes
//! nothing; a runtime error keeps the rows and leaves the workspace `deleting`, which
//! only another delete gets past.

use futures_util::FutureExt as _;
use tokio::time::Instant;

use crate::code::ErrorCode;
use crate::model::{Cause, OpError, OpStatus, Workspace};
use crate::ports::{DirtyReport, Step};
use crate::state::{LifecycleEvent, State};

use super::super::Engine;
use super::super::effects::{Exec, Failure};
use super::super::gate::SessionsClosed;
use super::{OpRun, PhaseEnd};

impl OpRun<'_> {
    pub(super) async fn delete(&mut self, mut ws: Workspace) {
        let deadline = self.stop_deadline();
        // Waits and runtime calls ahead of the first commit (launches to finish, the
        // preflight) do not keep the request waiting: the op goes on record first.
        let checks = !self.preflighted && ws.state != State::Deleting && !self.forced();
        if checks && let Err(e) = self.ensure_recorded().await {
            let e = e.to_op_error();
            return self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await;
        }
        if self.engine.inner.ops_token.is_cancelled() {
            return self.conclude(&mut ws, PhaseEnd::Interrupted).await;
        }
        // `deleting` for the whole call: the gate refuses launches, starts and restarts.
        let close =
            tokio::time::timeout_at(deadline, self.gate.close_sessions(SessionsClosed::Deleting));
        tokio::pin!(close);
        // Closed at once unless launches are in flight; then the op goes on record
        // before waiting for them.
        let closed = match (&mut close).now_or_never() {
            Some(r) => Some(r.is_ok()),
            None => {
                if let Err(e) = self.ensure_recorded().await {
                    self.gate.open_sessions();
                    let e = e.to_op_error();
                    return self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await;
                }
                tokio::select! {
                    biased;
                    () = self.engine.inner.ops_token.cancelled() => None,
                    r = &mut close => Some(r.is_ok()),
                }
            }
        };
        match closed {
            None => return self.conclude(&mut ws, PhaseEnd::Interrupted).await,
            Some(false) => {
                self.gate.open_sessions();
                let e = OpError::new(
                    ErrorCode::RuntimeTimeout,
                    format!(
                        "delete of {}: session launches in progress did not end within {}",
                        ws.name,
                        self.engine.ceiling_text()
                    ),
                );
                return self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await;
            }
            Some(true) => {}
        }
        // A forced delete may join this one at any time before the preflight's verdict.
        if !self.preflighted
            && ws.state != State::Deleting
            && !self.forced()
            && let Some(e) = self.engine.preflight(&ws, deadline).await
            && !self.forced()
        {
            self.gate.open_sessions();
            return self.finish(OpStatus::Failed, Some(ws.state), Some(e)).await;
        }
        self.engine.step(&ws, Some(&self.op), Step::PreflightPassed);
        let note = self.note(Cause::Delete, format!("deleting workspace {}", ws.name));
        let committed = match self.commit(&mut ws, LifecycleEvent::Delete, note).await {
            Ok(c) => c,
            Err(e) => {
                // `deleting` was never committed: nothing changed, sessions may launch.
                if ws.state != State::Deleting {
                    self.gate.open_sessions();
                }
                return self
                    .finish(OpStatus::Failed, Some(ws.state), Some(e.to_op_error()))
                    .await;
            }
        };
        let x = Exec::stopping(
            self.gate,
            Some(&self.op),
            deadline,
            SessionsClosed::Deleting,
        );
        if let Err(e) = self.engine.run_effects(&ws, &committed.effects, &x).await {
            if matches!(e.failure, Failure::Interrupted) {
                return self.conclude(&mut ws, PhaseEnd::Interrupted).await;
            }
            let mut error = e.to_op_error(&format!(
                "delete of {} (rows kept; delete again to finish)",
                ws.name
            ));
            if error.code == ErrorCode::Internal {
                error.code = ErrorCode::RuntimeError;
            }
            return self
                .finish(OpStatus::Failed, Some(ws.state), Some(error))
                .await;
        }
        let note = self.final_note(
            Cause::Deleted,
            format!("workspace {} deleted", ws.name),
            OpStatus::Succeeded,
            None,
        );
        match self.commit(&mut ws, LifecycleEvent::Deleted, note).await {
            Ok(_) => self.engine.step(&ws, Some(&self.op), Step::RowsRemoved),
            Err(e) => {
                self.finish(OpStatus::Failed, Some(ws.state), Some(e.to_op_error()))
                    .await;
            }
        }
    }
}

impl Engine {
    /// A delete's preflight, bounded by `deadline`: `Some(error)` when the workspace
    /// holds unsaved work (`workspace_dirty`, with the files) or cannot be checked
    /// (`dirty_check_failed`). Without its runtime berth touches nothing on disk, so
    /// there is nothing to check.
    pub(crate) async fn preflight(&self, ws: &Workspace, deadline: Instant) -> Option<OpError> {
        let rt = self.runtime_for(ws)?;
        match tokio::time::timeout_at(deadline, rt.dirty_check(&self.workspace_ref(ws))).await {
            Ok(Ok(DirtyReport::Clean)) => None,
            Ok(Ok(DirtyReport::Dirty(files))) => Some(
                OpError::new(
                    ErrorCode::WorkspaceDirty,
                    format!(
                        "workspace {} has unsaved work in {} file(s); delete with force to discard it",
                        ws.name,
                        files.len()
                    ),
                )
                .with_detail("files", files),
            ),
            Ok(Err(e)) => Some(OpError::new(
                ErrorCode::DirtyCheckFailed,
                format!("could not check workspace {} for unsaved work: {e}", ws.name),
            )),
            Err(_) => Some(OpError::new(
                ErrorCode::DirtyCheckFailed,
                format!(
                    "checking workspace {} for unsaved work did not finish within {}",
                    ws.name,
                    self.ceiling_text()
                ),
            )),
        }
    }
}
