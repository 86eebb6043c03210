//! Request intake: creating workspaces (with idempotency keys), and meeting op requests
//! with the gate through [`merge`]: join, absorb, queue, replace, preempt or refuse,
//! persisting a new op before anything can run it.
//!
//! A non-forced delete that would change other ops (preempt a start, replace a queued
//! op) runs its preflight first, outside the intake lock: a refused delete changes
//! nothing, not even the ops it would have replaced.

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::code::ErrorCode;
use crate::ids::{OpId, WorkspaceId};
use crate::merge::{Decision, OpKind, Phase, Refusal, merge};
use crate::model::{
    Actor, Cause, CreateWorkspace, NewEvent, OpError, OpStatus, Operation, Workspace,
};
use crate::ports::Report;
use crate::state::State;

use super::gate::{Gate, PendingOp};
use super::queries::Snapshot;
use super::{Engine, EngineError, OpTicket};

/// An idempotency key and the hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key (1 to 255 visible ASCII characters).
    pub key: String,
    /// A digest of the request body; the same key with another body is refused.
    pub request_hash: String,
}

/// What a create answered.
#[derive(Debug, Clone)]
pub struct Created {
    /// The workspace as it is now.
    pub workspace: Snapshot,
    /// The start op, when the create asked for a start.
    pub operation: Option<Operation>,
    /// The answer is a replay of an earlier request with the same key.
    pub replayed: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCreate {
    workspace_id: WorkspaceId,
    op_id: Option<OpId>,
    /// The workspace as the first answer gave it, replayed once it is deleted (records
    /// written before this field existed lack it).
    #[serde(default)]
    created: Option<Workspace>,
}

impl Engine {
    /// Validates and inserts a stopped workspace with its `created` event.
    pub(crate) async fn create_stopped(
        &self,
        request: CreateWorkspace,
    ) -> Result<Workspace, EngineError> {
        self.refuse_if_stopping()?;
        super::validate::validate_spec(&request)?;
        let Some(rt) = self.inner.runtimes.get(&request.runtime) else {
            return Err(EngineError::Validation {
                field: "runtime".into(),
                message: format!(
                    "unknown runtime {}; this daemon runs: {}",
                    request.runtime,
                    self.runtime_kinds()
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        rt.check_spec(&request.spec)
            .map_err(|refusal| EngineError::Validation {
                field: refusal.field.to_owned(),
                message: refusal.message,
            })?;
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
        let gate = self.inner.gates.get(&workspace.id);
        gate.update(|st| {
            st.row = Some(workspace.clone());
            st.no_sessions = true;
        });
        self.inner.reporter.report(Report::Event(stored));
        Ok(workspace)
    }

    /// Creates (and starts) a workspace; with a key, the same key and request give the
    /// first answer again (the same ids), and another request with that key is refused.
    pub(crate) async fn create_with_key(
        &self,
        request: CreateWorkspace,
        start: bool,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, EngineError> {
        let Some(key) = key else {
            return self.create_and_start(request, start, None).await;
        };
        let stripe = Sha256::digest(key.key.as_bytes())[0] as usize % self.inner.idempotency.len();
        let _one_at_a_time = self.inner.idempotency[stripe].lock().await;
        if let Some((hash, result)) = self.inner.store.idempotency_key(&key.key).await? {
            return self.replay(&key, &hash, &result).await;
        }
        match self.create_and_start(request, start, Some(&key)).await {
            // Another engine of a shared store is creating with this key (the same
            // name): its record appears right after its create; answer from it.
            Err(taken) if taken.code() == ErrorCode::NameTaken => {
                let deadline = Instant::now() + std::time::Duration::from_secs(5);
                loop {
                    if let Some((hash, result)) = self.inner.store.idempotency_key(&key.key).await?
                    {
                        return self.replay(&key, &hash, &result).await;
                    }
                    if Instant::now() >= deadline {
                        return Err(taken);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            other => other,
        }
    }

    /// The first answer of a create made with `key`, whose record is `(hash, result)`.
    async fn replay(
        &self,
        key: &IdempotencyKey,
        hash: &str,
        result: &str,
    ) -> Result<Created, EngineError> {
        if hash != key.request_hash {
            return Err(EngineError::IdempotencyConflict {
                key: key.key.clone(),
            });
        }
        let stored: StoredCreate = serde_json::from_str(result).map_err(|e| {
            EngineError::Internal(format!("idempotency record of {:?}: {e}", key.key))
        })?;
        // The workspace as it is now; once deleted, the first answer as recorded
        // (the same ids; a read of it then says `not_found`).
        let workspace = match self.read_snapshot(&stored.workspace_id).await? {
            Some(now) => now,
            None => match stored.created {
                Some(created) => Snapshot {
                    workspace: created,
                    pending: Default::default(),
                },
                None => {
                    return Err(EngineError::NotFound {
                        what: format!(
                            "workspace {} (created with this key, since deleted)",
                            stored.workspace_id
                        ),
                    });
                }
            },
        };
        let operation = match &stored.op_id {
            Some(id) => match self.op_record(id).await {
                Ok(op) => Some(op),
                // Deleted with its workspace.
                Err(EngineError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(Created {
            workspace,
            operation,
            replayed: true,
        })
    }

    /// Creates, requests the start, and claims the key right after (with the start op's
    /// id when the start was accepted), so a retry finds the workspace instead of
    /// `name_taken`.
    async fn create_and_start(
        &self,
        request: CreateWorkspace,
        start: bool,
        key: Option<&IdempotencyKey>,
    ) -> Result<Created, EngineError> {
        let actor = request.actor;
        let ws = self.create_stopped(request).await?;
        let ticket = if start {
            Some(self.request(&ws.id, OpKind::Start, actor, false).await)
        } else {
            None
        };
        if let Some(key) = key {
            let stored = StoredCreate {
                workspace_id: ws.id.clone(),
                op_id: match &ticket {
                    Some(Ok(t)) => Some(t.op_id().clone()),
                    _ => None,
                },
                created: Some(ws.clone()),
            };
            let text = serde_json::to_string(&stored)
                .map_err(|e| EngineError::Internal(format!("idempotency record: {e}")))?;
            self.inner
                .store
                .claim_idempotency_key(&key.key, &key.request_hash, &text)
                .await?;
        }
        let operation = match ticket {
            Some(t) => Some(self.op_record(t?.op_id()).await?),
            None => None,
        };
        let workspace = self.read_snapshot(&ws.id).await?.unwrap_or(Snapshot {
            workspace: ws,
            pending: Default::default(),
        });
        Ok(Created {
            workspace,
            operation,
            replayed: false,
        })
    }

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
            return self
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
                .await;
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
    ) -> Result<OpTicket, EngineError> {
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
            Decision::JoinInFlight => gate.update(|st| st.slot.in_flight.as_mut().map(joined)),
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
            return Ok(ticket);
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
        self.inner.store.insert_op(&op).await?;
        let mut pending = PendingOp::new(op.clone(), self.inner.ops_token.child_token());
        pending.preflighted = preflighted;
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
                let e = OpError::new(ErrorCode::ShuttingDown, "the engine is shutting down");
                self.finish_unrun(gate, p, OpStatus::Failed, None, Some(e))
                    .await;
            }
            return Err(EngineError::ShuttingDown);
        }
        if let Some(old) = replaced {
            self.finish_unrun(gate, old, OpStatus::Superseded, Some(op.id.clone()), None)
                .await;
        }
        Ok(ticket)
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
