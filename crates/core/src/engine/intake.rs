//! Request intake: meeting op requests with the gate through [`merge`]: join, absorb, queue, replace, preempt or refuse.
//! A queued op is persisted before anything can run it; an op that runs at once goes on
//! record with its driver's first write, and its request is answered once that write is
//! durable (see [`Recording`](super::gate::Recording)).
//!
//! A non-forced delete that would change other ops (preempt a start, replace a queued
//! op) runs its preflight first, outside the intake lock: a refused delete changes
//! nothing, not even the ops it would have replaced.

use tokio::sync::watch;
use tokio::time::Instant;

use crate::code::ErrorCode;
use crate::ids::{OpId, WorkspaceId, WorkspaceName};
use crate::merge::{Decision, OpKind, Phase, Refusal, merge};
use crate::model::{Actor, OpError, OpStatus, Operation, Workspace};
use crate::state::State;

use super::gate::{Gate, PendingOp, Record};
use super::{Engine, EngineError, OpTicket};

impl Engine {
    /// The op as the gate holds it while pending, else as stored.
    pub(crate) async fn op_record(&self, id: &OpId) -> Result<Operation, EngineError> {
        self.inner
            .store
            .op(id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("operation {id}"),
            })
    }

    /// Meets a request with the workspace's gate. The caller checked that the
    /// workspace exists. Runs in a tracked task, so a caller that goes away cannot leave
    /// a persisted op that nothing runs, or a replaced op whose waiters never hear.
    pub(crate) async fn submit(
        &self,
        id: &WorkspaceId,
        kind: OpKind,
        actor: Actor,
        force: bool,
        member_of: Option<&WorkspaceName>,
    ) -> Result<OpTicket, EngineError> {
        let gate = self.inner.gates.get(id);
        // A delete's one stop ceiling counts from its request when it preempts.
        let deadline = self.stop_deadline();
        let mut preflighted = false;
        loop {
            let intake = gate.intake.lock().await;
            let Some(ws) = self.current(&gate, id).await? else {
                drop(intake);
                self.inner.gates.remove(id);
                return Err(EngineError::NotFound {
                    what: format!("workspace {id}"),
                });
            };
            // A pool's own request (refill, drain) is for an unclaimed member only: a
            // claim holds this lock while it takes the member.
            if let Some(pool) = member_of
                && ws.pool.as_ref() != Some(pool)
            {
                return Err(EngineError::NotFound {
                    what: format!("member {id} of pool {pool} (claimed)"),
                });
            }
            let mut decision = merge(gate.read().slot.view(), kind);
            // A failed delete leaves `deleting`: only another delete gets past it.
            if ws.state == State::Deleting && kind != OpKind::Delete {
                decision = Decision::Refuse(Refusal::WorkspaceDeleting);
            }
            let replaces_others = matches!(decision, Decision::Preempt | Decision::ReplaceQueued);
            if kind == OpKind::Delete && !force && !preflighted && replaces_others {
                drop(intake);
                if let Some(refusal) = self.preflight(&ws, deadline).await {
                    return self.refused(id, kind, actor, &ws, refusal).await;
                }
                preflighted = true;
                continue;
            }
            let (ticket, record) = self
                .apply_decision(
                    &gate,
                    &ws,
                    decision,
                    kind,
                    actor,
                    force,
                    deadline,
                    preflighted,
                )
                .await?;
            // Wait for the op's record outside the intake lock: its driver may need a
            // lock whose holder waits for this one (a pool claim holds the exec lock and
            // then takes the intake lock).
            drop(intake);
            if let Some(record) = record {
                record.wait().await?;
            }
            return Ok(ticket);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_decision(
        &self,
        gate: &std::sync::Arc<Gate>,
        ws: &Workspace,
        decision: Decision,
        kind: OpKind,
        actor: Actor,
        force: bool,
        deadline: Instant,
        preflighted: bool,
    ) -> Result<(OpTicket, Option<Record>), EngineError> {
        let joined = |p: &mut PendingOp| {
            p.op.joined += 1;
            p.op.force |= force;
            OpTicket {
                op_id: p.op.id.clone(),
                rx: p.done.subscribe(),
            }
        };
        let ticket = match decision {
            Decision::Refuse(Refusal::WorkspaceDeleting) => {
                return Err(EngineError::WorkspaceDeleting {
                    workspace: ws.id.to_string(),
                });
            }
            Decision::JoinInFlight => {
                // The op may not be on record yet: answer when it is.
                let joined = gate.update(|st| {
                    st.slot
                        .in_flight
                        .as_mut()
                        .map(|p| (joined(p), p.record.clone()))
                });
                if let Some((ticket, record)) = joined {
                    return Ok((ticket, Some(record)));
                }
                None
            }
            Decision::JoinQueued => gate.update(|st| st.slot.queued.as_mut().map(joined)),
            Decision::Absorb => {
                let absorbed = gate.update(|st| {
                    st.slot.queued.as_mut().map(|q| {
                        q.op.kind = OpKind::Restart;
                        q.phase = Phase::StopPhase;
                        (joined(q), q.op.clone())
                    })
                });
                if let Some((ticket, op)) = absorbed {
                    if let Err(e) = self.inner.store.update_op(&op).await {
                        tracing::warn!(op = %op.id, error = %e, "could not record that a queued start became a restart");
                    }
                    Some(ticket)
                } else {
                    None
                }
            }
            Decision::Run | Decision::Queue | Decision::ReplaceQueued | Decision::Preempt => None,
        };
        if let Some(ticket) = ticket {
            return Ok((ticket, None));
        }
        let now = self.inner.clock.now();
        let runs = decision == Decision::Run;
        let op = Operation {
            id: OpId::generate(),
            workspace_id: ws.id.clone(),
            kind,
            status: if runs {
                OpStatus::Running
            } else {
                OpStatus::Queued
            },
            actor,
            force,
            requested_at: now,
            started_at: runs.then_some(now),
            start_phase_at: None,
            finished_at: None,
            joined: 0,
            result_state: None,
            incarnation: None,
            error: None,
            superseded_by: None,
        };
        // An op that runs at once goes on record with its first write (the driver's),
        // and this request is answered once that is durable; a queued op is inserted
        // now, as nothing will write it before it runs.
        if !runs {
            // History stays in request order: an op in flight that is not on record
            // yet (its first write is still to come) is inserted before this one. Its
            // driver's writes overwrite it; one that already landed wins.
            let unrecorded =
                gate.read().slot.in_flight.as_ref().and_then(|p| {
                    (!p.record.is_durable()).then(|| (p.op.clone(), p.record.clone()))
                });
            if let Some((first, record)) = unrecorded {
                match self.inner.store.insert_op(&first).await {
                    Ok(()) | Err(crate::ports::StoreError::Conflict { .. }) => {
                        record.settle(Ok(()));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.inner.store.insert_op(&op).await?;
        }
        let mut pending = PendingOp::new(op.clone(), self.inner.ops_token.child_token());
        pending.preflighted = preflighted;
        if runs {
            pending.record = Record::pending();
        }
        let record = pending.record.clone();
        let stop_side = matches!(kind, OpKind::Stop | OpKind::Delete);
        if stop_side && matches!(decision, Decision::Run | Decision::Preempt) {
            pending.deadline = Some(deadline);
        }
        let ticket = OpTicket {
            op_id: op.id.clone(),
            rx: pending.done.subscribe(),
        };
        let mut spawn = false;
        let replaced = gate.update(|st| match decision {
            Decision::Run => {
                st.slot.in_flight = Some(pending);
                // A driver still looping (it just finished the previous op) runs this
                // one; only an idle gate gets a new driver.
                spawn = !std::mem::replace(&mut st.driving, true);
                None
            }
            Decision::Queue => {
                st.slot.queued = Some(pending);
                None
            }
            Decision::Preempt => {
                if let Some(running) = st.slot.in_flight.as_mut() {
                    running.preempted_by = Some(op.id.clone());
                    running.deadline = pending.deadline;
                    running.cancel.cancel();
                }
                st.slot.queued.replace(pending)
            }
            _ => st.slot.queued.replace(pending),
        });
        if spawn && !self.spawn_driver(gate.clone()) {
            let p = gate.update(|st| {
                st.driving = false;
                st.slot.in_flight.take()
            });
            if let Some(p) = p {
                // Never written: nothing to record, and nothing ran.
                p.record.settle(Err(EngineError::ShuttingDown));
                let e = OpError::new(ErrorCode::ShuttingDown, "the engine is shutting down");
                self.finished(&p.done, {
                    let mut op = p.op;
                    op.status = OpStatus::Failed;
                    op.error = Some(e);
                    op.finished_at = Some(self.inner.clock.now());
                    op
                });
            }
            return Err(EngineError::ShuttingDown);
        }
        if let Some(old) = replaced {
            self.finish_unrun(gate, old, OpStatus::Superseded, Some(op.id.clone()), None)
                .await;
        }
        Ok((ticket, Some(record)))
    }

    /// A delete refused by its preflight at intake: recorded as a failed op, nothing
    /// else changed.
    async fn refused(
        &self,
        id: &WorkspaceId,
        kind: OpKind,
        actor: Actor,
        ws: &Workspace,
        refusal: OpError,
    ) -> Result<OpTicket, EngineError> {
        let now = self.inner.clock.now();
        let op = Operation {
            id: OpId::generate(),
            workspace_id: id.clone(),
            kind,
            status: OpStatus::Failed,
            actor,
            force: false,
            requested_at: now,
            started_at: Some(now),
            start_phase_at: None,
            finished_at: Some(self.inner.clock.now()),
            joined: 0,
            result_state: Some(ws.state),
            incarnation: None,
            error: Some(refusal),
            superseded_by: None,
        };
        self.inner.store.insert_op(&op).await?;
        let (done, rx) = watch::channel(Some(op.clone()));
        drop(done);
        Ok(OpTicket { op_id: op.id, rx })
    }

    /// Ends an op that never ran (superseded in the queue, or refused at shutdown).
    pub(crate) async fn finish_unrun(
        &self,
        gate: &Gate,
        mut p: PendingOp,
        status: OpStatus,
        by: Option<OpId>,
        error: Option<OpError>,
    ) {
        p.op.status = status;
        p.op.error = error.or_else(|| {
            by.as_ref().map(|by| {
                OpError::new(
                    ErrorCode::Superseded,
                    format!(
                        "{} was replaced in the queue by op {by}",
                        p.op.kind.as_str()
                    ),
                )
            })
        });
        p.op.superseded_by = by;
        p.op.finished_at = Some(self.inner.clock.now());
        // Answer the waiters first: if this future is dropped during the write, they
        // still learn how their op ended (the row is fixed by recovery at the latest).
        self.finished(&p.done, p.op.clone());
        if let Err(e) = self.inner.store.update_op(&p.op).await {
            tracing::warn!(op = %p.op.id, error = %e, "could not record the end of an op that never ran");
        }
        gate.update(|_| ());
    }

    pub(crate) fn refuse_if_stopping(&self) -> Result<(), EngineError> {
        if self.is_shutting_down() {
            Err(EngineError::ShuttingDown)
        } else {
            Ok(())
        }
    }
}
