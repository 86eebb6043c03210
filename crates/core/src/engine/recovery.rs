//! Boot recovery, and finishing a workspace left in a transitional state with no op
//! running (a crash, an interrupted shutdown, a final commit that failed).
//!
//! - `starting`: inspect the runtime; adopt a live resource of the current incarnation
//!   (`Launched`), else `StartFailed(interrupted)` and its `RemovePartial`.
//! - `stopping`: re-run the effects of `Stop` (the table's re-entry, which commits
//!   nothing), then `Stopped`, or `StopFailed`.
//! - `deleting`: re-run the effects of `Delete`, then `Deleted`.
//!
//! At boot, workspaces are finished concurrently (at most
//! [`EngineConfig::recovery_concurrency`](super::EngineConfig) at once), and every runtime error is retried with backoff within one stop ceiling, and a
//! workspace that still cannot be finished ends `failed` with the reason: after boot
//! recovery no workspace is transitional. In the background (the reconciler, an op
//! finding a leftover), a `starting` that cannot be inspected and a `deleting` that
//! cannot be finished are left for the next pass.

use std::time::Duration;

use futures_util::StreamExt as _;

use tokio::time::Instant;

use crate::code::ErrorCode;
use crate::model::{Actor, Cause, LastError, OpError, OpStatus, Operation, Workspace};
use crate::ports::ProcessStatus;
use crate::state::{FailureReason, LifecycleEvent, State};

use super::commit::Note;
use super::effects::{EffectError, Exec};
use super::gate::{Gate, Record, SessionsClosed};
use super::reconcile::ReconcileReport;
use super::{Engine, EngineError};

/// What boot recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// `starting` workspaces whose live resource of the current incarnation was adopted.
    pub adopted: usize,
    /// `starting` workspaces with no live resource, now `failed{interrupted}`.
    pub failed_starts: usize,
    /// `stopping` workspaces whose stop was finished.
    pub stops_finished: usize,
    /// `deleting` workspaces whose delete was finished.
    pub deletes_finished: usize,
    /// Workspaces that could not be finished and are now `failed` with the reason.
    pub failed: usize,
    /// Ops left `queued` or `running` by the previous engine, now `interrupted`.
    pub ops_interrupted: usize,
    /// Workspaces still transitional after recovery; always 0 at boot.
    pub still_transitional: usize,
    /// The first reconcile pass after recovery, when the engine runs no background
    /// loop (`reconcile_period: None`). With loops, each runtime's loop runs its first
    /// pass at once after recovery, beside readiness: a runtime that does not answer
    /// never delays it.
    pub reconcile: ReconcileReport,
}

/// Who is finishing a transitional workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Boot recovery: retry, then give up to `failed`.
    Boot,
    /// The reconciler or an op: one attempt; what cannot be decided is left.
    Background,
}

/// How finishing one workspace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    Adopted,
    StartFailed,
    Stopped,
    Deleted,
    /// Could not be finished; now `failed` with the reason.
    Failed,
    /// Left transitional (background only).
    Left,
}

const BOOT_ATTEMPTS: u32 = 4;

impl Engine {
    /// Ends a stored op that nothing runs any more as `interrupted`.
    async fn interrupt_stored(&self, op: &mut Operation, message: &str) {
        let e = OpError::new(ErrorCode::Interrupted, message);
        self.end_op(op, &Record::durable(), OpStatus::Interrupted, None, Some(e))
            .await;
    }

    /// Boot recovery: marks the ops the previous engine left as `interrupted`, finishes
    /// every transitional workspace, then (without background loops) runs one
    /// reconcile pass.
    pub(crate) async fn recover(&self) -> Result<RecoveryReport, EngineError> {
        let mut report = RecoveryReport::default();
        let owned = |id: &crate::ids::WorkspaceId| self.inner.ownership.owns(id);
        for mut op in self.inner.store.unfinished_ops().await? {
            if !owned(&op.workspace_id) {
                continue;
            }
            self.interrupt_stored(
                &mut op,
                "the engine stopped while this op was pending; boot recovery finished the workspace",
            )
            .await;
            report.ops_interrupted += 1;
        }
        // Workspaces are independent: finish them concurrently (bounded), so the
        // outage after a crash is about one stop ceiling, not one per workspace.
        let transitional: Vec<Workspace> = self
            .all_workspaces()
            .await?
            .into_iter()
            .filter(|ws| ws.state.is_transitional() && owned(&ws.id))
            .collect();
        let mut finishing = futures_util::stream::iter(transitional)
            .map(|ws| async move {
                let gate = self.inner.gates.get(&ws.id);
                let _exec = gate.exec.lock().await;
                self.finish_transitional(&gate, ws, Mode::Boot).await
            })
            .buffer_unordered(self.inner.config.recovery_concurrency.max(1));
        while let Some(finished) = finishing.next().await {
            match finished {
                Finished::Adopted => report.adopted += 1,
                Finished::StartFailed => report.failed_starts += 1,
                Finished::Stopped => report.stops_finished += 1,
                Finished::Deleted => report.deletes_finished += 1,
                Finished::Failed => report.failed += 1,
                Finished::Left => report.still_transitional += 1,
            }
        }
        drop(finishing);
        if self.inner.config.reconcile_period.is_none() {
            report.reconcile = self.reconcile_once().await;
        }
        Ok(report)
    }

    /// Takes a workspace over from an engine that stopped owning it (another daemon of
    /// a shared store died, or gave it up): forgets what this engine remembered of it,
    /// marks the ops the previous owner left `interrupted`, and finishes a transitional
    /// workspace as boot recovery does. Call after the store granted this engine the
    /// workspace's lease; a workspace that no longer exists is a no-op.
    ///
    /// # Errors
    /// A store error.
    pub async fn adopt(&self, id: &crate::ids::WorkspaceId) -> Result<(), EngineError> {
        let gate = self.inner.gates.get(id);
        // The driver's order: exec, then intake. Under intake no request adds an op;
        // one that came in before is in the gate's slot and is this engine's own.
        let _exec = gate.exec.lock().await;
        let intake = gate.intake.lock().await;
        gate.update(|st| {
            st.row = None;
            st.gone = false;
            st.no_sessions = false;
        });
        gate.bump();
        let ours: Vec<crate::ids::OpId> = {
            let pending = gate.read().slot.pending();
            [pending.in_flight, pending.queued]
                .into_iter()
                .flatten()
                .map(|op| op.id)
                .collect()
        };
        for mut op in self.inner.store.list_ops(id, 64).await? {
            if matches!(op.status, OpStatus::Queued | OpStatus::Running) && !ours.contains(&op.id) {
                self.interrupt_stored(
                    &mut op,
                    "the daemon that ran this op stopped; the daemon that took the workspace over finished it",
                )
                .await;
            }
        }
        drop(intake);
        let Some(ws) = self.current(&gate, id).await? else {
            drop(_exec);
            self.inner.gates.remove(id);
            return Ok(());
        };
        if ws.state.is_transitional() {
            self.finish_transitional(&gate, ws, Mode::Boot).await;
        }
        Ok(())
    }

    /// Forgets what this engine remembered of a workspace whose lease it lost: the next
    /// read goes to the store. A write it still makes is refused by the store's fence.
    pub fn forget(&self, id: &crate::ids::WorkspaceId) {
        if let Some(gate) = self.inner.gates.existing(id) {
            gate.update(|st| st.row = None);
            gate.bump();
        }
    }

    /// Whether this engine owns `id` (see [`crate::ports::Ownership`]).
    pub fn owns(&self, id: &crate::ids::WorkspaceId) -> bool {
        self.inner.ownership.owns(id)
    }

    /// Finishes a workspace left transitional with no op running. The caller holds the
    /// gate's exec lock.
    pub(crate) async fn finish_transitional(
        &self,
        gate: &Gate,
        mut ws: Workspace,
        mode: Mode,
    ) -> Finished {
        let deadline = self.stop_deadline();
        let result = match ws.state {
            State::Starting => self.finish_start(gate, &mut ws, mode, deadline).await,
            State::Stopping => self.finish_stop(gate, &mut ws, mode, deadline).await,
            State::Deleting => self.finish_delete(gate, &mut ws, mode, deadline).await,
            State::Stopped | State::Running | State::Failed => return Finished::Left,
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(workspace = %ws.id, error = %e, "could not record how a transitional workspace ended");
            Finished::Left
        })
    }

    async fn finish_start(
        &self,
        gate: &Gate,
        ws: &mut Workspace,
        mode: Mode,
        deadline: Instant,
    ) -> Result<Finished, EngineError> {
        let inspected = match self.runtime_for(ws) {
            None => Ok(None),
            Some(rt) => {
                let (engine_id, id) = (&self.inner.engine_id, &ws.id);
                retry(mode, deadline, || async {
                    match tokio::time::timeout_at(deadline, rt.inspect(engine_id, id)).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("the inspect did not answer in time".to_owned()),
                    }
                })
                .await
            }
        };
        let live = match &inspected {
            Ok(found) => found.as_ref().is_some_and(|r| {
                r.incarnation == ws.incarnation && r.status == ProcessStatus::Running
            }),
            Err(e) if mode == Mode::Background => {
                // Cannot tell: never fail a workspace that may be running on a guess in
                // the background; the next pass retries.
                tracing::warn!(workspace = %ws.id, error = %e, "could not inspect a starting workspace; leaving it for the next pass");
                return Ok(Finished::Left);
            }
            Err(_) => false,
        };
        if live {
            let note = Note::new(
                Cause::Adopted,
                Actor::Engine,
                format!(
                    "recovery adopted incarnation {} of {}",
                    ws.incarnation, ws.name
                ),
            );
            self.commit_transition(gate, ws, LifecycleEvent::Launched, note)
                .await?;
            return Ok(Finished::Adopted);
        }
        let message = match &inspected {
            Err(e) => format!(
                "the engine stopped while {} was starting, and the runtime could not be inspected: {e}",
                ws.name
            ),
            Ok(_) => format!(
                "the engine stopped while {} was starting and no live process of incarnation {} was found",
                ws.name, ws.incarnation
            ),
        };
        let mut note = Note::new(Cause::Recovered, Actor::Engine, message.clone());
        note.last_error = Some(LastError {
            code: FailureReason::Interrupted,
            message,
            at: self.inner.clock.now(),
        });
        let committed = self
            .commit_transition(
                gate,
                ws,
                LifecycleEvent::StartFailed(FailureReason::Interrupted),
                note,
            )
            .await?;
        let x = Exec::stopping(gate, None, deadline, SessionsClosed::Stopping);
        if let Err(e) = self.run_effects(ws, &committed.effects, &x).await {
            tracing::warn!(workspace = %ws.id, error = %e.message(), "could not remove what an interrupted start left; the orphan sweep will");
        }
        Ok(Finished::StartFailed)
    }

    async fn finish_stop(
        &self,
        gate: &Gate,
        ws: &mut Workspace,
        mode: Mode,
        deadline: Instant,
    ) -> Result<Finished, EngineError> {
        let ran = self
            .rerun(
                gate,
                ws,
                LifecycleEvent::Stop,
                mode,
                deadline,
                SessionsClosed::Stopping,
            )
            .await?;
        match ran {
            Ok(()) => {
                let note = Note::new(
                    Cause::Recovered,
                    Actor::Engine,
                    format!("recovery finished the stop of {}", ws.name),
                );
                self.commit_transition(gate, ws, LifecycleEvent::Stopped, note)
                    .await?;
                Ok(Finished::Stopped)
            }
            Err(e) => {
                let message = format!("recovery could not stop {}: {}", ws.name, e.message());
                let mut note = Note::new(Cause::StopFailed, Actor::Engine, message.clone());
                note.last_error = Some(LastError {
                    code: FailureReason::StopFailed,
                    message,
                    at: self.inner.clock.now(),
                });
                self.commit_transition(gate, ws, LifecycleEvent::StopFailed, note)
                    .await?;
                Ok(Finished::Failed)
            }
        }
    }

    async fn finish_delete(
        &self,
        gate: &Gate,
        ws: &mut Workspace,
        mode: Mode,
        deadline: Instant,
    ) -> Result<Finished, EngineError> {
        let ran = self
            .rerun(
                gate,
                ws,
                LifecycleEvent::Delete,
                mode,
                deadline,
                SessionsClosed::Deleting,
            )
            .await?;
        match ran {
            Ok(()) => {
                let note = Note::new(
                    Cause::Deleted,
                    Actor::Engine,
                    format!(
                        "workspace {} deleted (recovery finished the delete)",
                        ws.name
                    ),
                );
                self.commit_transition(gate, ws, LifecycleEvent::Deleted, note)
                    .await?;
                Ok(Finished::Deleted)
            }
            Err(e) if mode == Mode::Background => {
                tracing::warn!(workspace = %ws.id, error = %e.message(), "could not finish a delete; the next pass (or a delete) retries");
                Ok(Finished::Left)
            }
            Err(e) => {
                let message = format!(
                    "recovery could not finish the delete of {}: {}; delete it again",
                    ws.name,
                    e.message()
                );
                let mut note = Note::new(Cause::Recovered, Actor::Engine, message.clone());
                note.last_error = Some(LastError {
                    code: FailureReason::DeleteFailed,
                    message,
                    at: self.inner.clock.now(),
                });
                self.commit_transition(gate, ws, LifecycleEvent::DeleteFailed, note)
                    .await?;
                Ok(Finished::Failed)
            }
        }
    }

    /// Re-enters the transitional state (`event` on it commits nothing) and re-runs its
    /// effects, retried at boot.
    async fn rerun(
        &self,
        gate: &Gate,
        ws: &mut Workspace,
        event: LifecycleEvent,
        mode: Mode,
        deadline: Instant,
        closing: SessionsClosed,
    ) -> Result<Result<(), EffectError>, EngineError> {
        let note = Note::new(
            Cause::Recovered,
            Actor::Engine,
            "recovery re-runs the effects",
        );
        let committed = self.commit_transition(gate, ws, event, note).await?;
        let x = Exec::stopping(gate, None, deadline, closing);
        let row: &Workspace = ws;
        Ok(retry(mode, deadline, || async {
            self.run_effects(row, &committed.effects, &x)
                .await
                .map(|_| ())
        })
        .await)
    }
}

/// Runs `attempt` once in the background, and at boot up to [`BOOT_ATTEMPTS`] times
/// with doubling backoff while the deadline allows.
async fn retry<T, E, F, Fut>(mode: Mode, deadline: Instant, mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if mode == Mode::Background
                    || tries >= BOOT_ATTEMPTS
                    || Instant::now() + backoff >= deadline
                {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}
