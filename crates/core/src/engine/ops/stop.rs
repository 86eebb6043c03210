//! `stop`, and the stop phase of `restart`: `Stop`, its effects (sessions, then the
//! main process), then `Stopped` or `StopFailed`. The whole phase spends at most one
//! stop ceiling on runtime calls.

use crate::model::{Cause, LastError, OpStatus, Workspace};
use crate::state::{FailureReason, LifecycleEvent};

use super::super::effects::{Exec, Failure};
use super::super::gate::SessionsClosed;
use super::{OpRun, PhaseEnd};

impl OpRun<'_> {
    pub(super) async fn stop(&mut self, mut ws: Workspace) {
        let end = self.stop_phase(&mut ws, true).await;
        self.conclude(&mut ws, end).await;
    }

    /// The stop phase. `last`: it ends the op, so its final commit carries the op's
    /// final status.
    pub(super) async fn stop_phase(&mut self, ws: &mut Workspace, last: bool) -> PhaseEnd {
        let deadline = self.stop_deadline();
        let note = self.note(
            Cause::Stop,
            format!("stopping incarnation {}", ws.incarnation),
        );
        let committed = match self.commit(ws, LifecycleEvent::Stop, note).await {
            Ok(c) => c,
            Err(e) => return PhaseEnd::Failed(e.to_op_error()),
        };
        if !committed.committed && committed.effects.is_empty() {
            // The table's no-op: a stopped workspace stays stopped, nothing written.
            return PhaseEnd::Done;
        }
        let x = Exec::stopping(
            self.gate,
            Some(&self.op),
            deadline,
            SessionsClosed::Stopping,
        );
        let ran = self.engine.run_effects(ws, &committed.effects, &x).await;
        let failed = match ran {
            Ok(_) => None,
            Err(e) if matches!(e.failure, Failure::Interrupted) => return PhaseEnd::Interrupted,
            Err(e) => Some(e),
        };
        let Some(failed) = failed else {
            let message = format!("incarnation {} stopped", ws.incarnation);
            let note = if last {
                self.final_note(Cause::Stopped, message, OpStatus::Succeeded, None)
            } else {
                self.note(Cause::Stopped, message)
            };
            return match self.commit(ws, LifecycleEvent::Stopped, note).await {
                Ok(_) => PhaseEnd::Done,
                Err(e) => PhaseEnd::Failed(e.to_op_error()),
            };
        };
        let error = failed.to_op_error(&format!("stop of {}", ws.name));
        let message = error.message.clone();
        let mut note = if last {
            self.final_note(
                Cause::StopFailed,
                message.clone(),
                OpStatus::Failed,
                Some(error.clone()),
            )
        } else {
            self.note(Cause::StopFailed, message.clone())
        };
        note.last_error = Some(LastError {
            code: FailureReason::StopFailed,
            message,
            at: self.engine.inner.clock.now(),
        });
        match self.commit(ws, LifecycleEvent::StopFailed, note).await {
            Ok(_) => PhaseEnd::Failed(error),
            Err(e) => PhaseEnd::Failed(e.to_op_error()),
        }
    }
}
