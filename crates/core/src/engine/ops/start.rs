//! `start`, and the start phase of `restart`: `Start` (whose commit mints the
//! incarnation and token), the `Launch` effect bounded by the start ceiling, then
//! `Launched`, `StartFailed` or `StartCancelled` (whose `RemovePartial` runs after the
//! commit, bounded by one runtime call's bound, or by the deadline of the request that
//! preempted it).

use tokio::time::Instant;

use crate::code::ErrorCode;
use crate::model::{Cause, LastError, OpError, OpStatus, Workspace};
use crate::state::{FailureReason, LifecycleEvent, transition};

use super::super::effects::{EffectError, Exec, Failure, Outcome};
use super::super::gate::SessionsClosed;
use super::super::secs;
use super::{OpRun, PhaseEnd};

impl OpRun<'_> {
    pub(super) async fn start(&mut self, mut ws: Workspace) {
        let end = self.start_phase(&mut ws).await;
        self.conclude(&mut ws, end).await;
    }

    pub(super) async fn start_phase(&mut self, ws: &mut Workspace) -> PhaseEnd {
        if self.cancel.is_cancelled() {
            return if self.engine.inner.ops_token.is_cancelled() {
                PhaseEnd::Interrupted
            } else {
                PhaseEnd::Cancelled
            };
        }
        // A start that would launch needs the workspace's runtime on this engine;
        // refusing before the commit mints nothing.
        let launches =
            transition(ws.state, LifecycleEvent::Start).is_ok_and(|t| t.commits(ws.state));
        if launches && self.engine.runtime_for(ws).is_none() {
            return PhaseEnd::Failed(OpError::new(
                ErrorCode::RuntimeUnavailable,
                format!(
                    "runtime {} of workspace {} is not configured on this engine",
                    ws.runtime, ws.name
                ),
            ));
        }
        self.op.start_phase_at = Some(self.engine.inner.clock.now());
        let incarnation = ws.incarnation.next();
        let note = self.note(Cause::Start, format!("starting incarnation {incarnation}"));
        let committed = match self.commit(ws, LifecycleEvent::Start, note).await {
            Ok(c) => c,
            Err(e) => return PhaseEnd::Failed(e.to_op_error()),
        };
        if !committed.committed && committed.effects.is_empty() {
            // The table's no-op: a running workspace mints nothing and launches nothing.
            return PhaseEnd::Done;
        }
        let ceiling = self.engine.inner.config.start_ceiling;
        let x = Exec {
            gate: self.gate,
            op: Some(&self.op),
            deadline: Instant::now() + ceiling,
            cancel: Some(&self.cancel),
            token: committed.token.as_ref(),
            closing: SessionsClosed::Stopping,
        };
        match self.engine.run_effects(ws, &committed.effects, &x).await {
            Ok(outcome) => {
                if let Outcome::Launched(Some(dir)) = outcome {
                    ws.dir = Some(dir);
                }
                let note = self.final_note(
                    Cause::Launched,
                    format!("incarnation {} running", ws.incarnation),
                    OpStatus::Succeeded,
                    None,
                );
                match self.commit(ws, LifecycleEvent::Launched, note).await {
                    Ok(_) => PhaseEnd::Done,
                    Err(e) => PhaseEnd::Failed(e.to_op_error()),
                }
            }
            Err(e) => self.start_ended(ws, e).await,
        }
    }

    /// A launch that did not succeed: commit how the start ended (the op's final
    /// status goes with it), then run that transition's effects (`RemovePartial`).
    async fn start_ended(&mut self, ws: &mut Workspace, e: EffectError) -> PhaseEnd {
        let what = format!("start of {}", ws.name);
        let (event, cause, reason, status, end) = match &e.failure {
            Failure::Interrupted => return PhaseEnd::Interrupted,
            Failure::Cancelled => (
                LifecycleEvent::StartCancelled,
                Cause::StartCancelled,
                None,
                OpStatus::Cancelled,
                PhaseEnd::Cancelled,
            ),
            Failure::TimedOut { .. } => {
                let error = OpError::new(
                    ErrorCode::StartTimeout,
                    format!(
                        "{what} still running after the start ceiling of {}",
                        secs(self.engine.inner.config.start_ceiling)
                    ),
                );
                (
                    LifecycleEvent::StartFailed(FailureReason::StartTimeout),
                    Cause::StartTimeout,
                    Some(FailureReason::StartTimeout),
                    OpStatus::Failed,
                    PhaseEnd::Failed(error),
                )
            }
            Failure::Runtime { .. } => (
                LifecycleEvent::StartFailed(FailureReason::StartFailed),
                Cause::StartFailed,
                Some(FailureReason::StartFailed),
                OpStatus::Failed,
                PhaseEnd::Failed(e.to_op_error(&what)),
            ),
        };
        let (message, error) = match &end {
            PhaseEnd::Failed(err) => (err.message.clone(), Some(err.clone())),
            _ => (
                "start cancelled by a newer request".to_owned(),
                Some(self.cancelled_error()),
            ),
        };
        let mut note = self.final_note(cause, message.clone(), status, error);
        note.last_error = reason.map(|code| LastError {
            code,
            message,
            at: self.engine.inner.clock.now(),
        });
        let committed = match self.commit(ws, event, note).await {
            Ok(c) => c,
            Err(err) => return PhaseEnd::Failed(err.to_op_error()),
        };
        // The cleanup of a preempted start spends its preemptor's budget. That of a
        // start that failed or timed out gets one runtime call's bound, so the op ends
        // within its ceiling plus that; what a slow runtime keeps is the orphan sweep's.
        let deadline = self
            .gate
            .read()
            .slot
            .in_flight
            .as_ref()
            .and_then(|p| p.deadline)
            .unwrap_or_else(|| Instant::now() + self.engine.inner.config.runtime_call_timeout);
        let x = Exec::stopping(
            self.gate,
            Some(&self.op),
            deadline,
            SessionsClosed::Stopping,
        );
        if let Err(err) = self.engine.run_effects(ws, &committed.effects, &x).await {
            tracing::warn!(workspace = %ws.id, error = %err.message(), "could not remove what a failed start left; the orphan sweep will");
        }
        end
    }
}
