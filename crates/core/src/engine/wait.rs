//! `wait`: until a workspace reaches a target, or settles somewhere else.
//!
//! Every evaluation reads the state and the pending ops as one snapshot, so `wait` never
//! answers for a moment when an op is in flight or queued: a state target is reached
//! only when the workspace is settled in that state, and missed as soon as it is
//! settled in another one (or deleted).

use std::time::Duration;

use crate::ids::{OpId, WorkspaceId};
use crate::model::Operation;
use crate::state::{FailureReason, State};

use super::queries::Snapshot;
use super::{Engine, EngineError};

/// What to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitTarget {
    /// Settled in this state (`running`, `stopped` or `failed`).
    State(State),
    /// Settled in any state.
    Settled,
    /// This op ended (reached when it succeeded).
    Op(OpId),
}

/// How a wait ended.
#[derive(Debug, Clone)]
pub struct WaitOutcome {
    /// The workspace and its pending ops; `None` once it is deleted.
    pub workspace: Option<Snapshot>,
    /// Whether the target was reached.
    pub reached: bool,
    /// The state it settled in; `None` when deleted.
    pub settled_state: Option<State>,
    /// The failure reason when it settled `failed`.
    pub cause: Option<FailureReason>,
    /// The awaited op, or the workspace's latest op for a state target.
    pub operation: Option<Operation>,
}

impl Engine {
    pub(crate) async fn wait_for(
        &self,
        id: &WorkspaceId,
        target: WaitTarget,
        timeout: Duration,
    ) -> Result<WaitOutcome, EngineError> {
        if let WaitTarget::State(s) = target
            && s.is_transitional()
        {
            return Err(EngineError::Validation {
                field: "state".into(),
                message: format!(
                    "{s} is transitional: wait for running, stopped, failed or settled"
                ),
            });
        }
        if let WaitTarget::Op(op) = &target {
            let found = self.op_record(op).await?;
            if &found.workspace_id != id {
                return Err(EngineError::NotFound {
                    what: format!("operation {op} of workspace {id}"),
                });
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.inner.gates.existing(id).map(|g| g.changes());
        loop {
            if let Some(rx) = changes.as_mut() {
                rx.borrow_and_update();
            }
            let snap = self.read_snapshot(id).await?;
            if changes.is_none() {
                changes = self.inner.gates.existing(id).map(|g| g.changes());
            }
            if let Some(answer) = self.evaluate(id, snap.clone(), &target).await? {
                return Ok(answer);
            }
            let changed = async {
                match changes.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = changed => {}
                // A safety net for changes made outside the gate (an op row written
                // after its waiters were answered).
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(EngineError::WaitTimeout {
                        workspace: id.to_string(),
                        state: snap.map_or(State::Deleting, |s| s.workspace.state),
                    });
                }
                () = self.inner.stop_token.cancelled() => return Err(EngineError::ShuttingDown),
            }
        }
    }

    async fn evaluate(
        &self,
        id: &WorkspaceId,
        snap: Option<Snapshot>,
        target: &WaitTarget,
    ) -> Result<Option<WaitOutcome>, EngineError> {
        let settled = snap.as_ref().is_none_or(Snapshot::is_settled);
        let settled_state = snap.as_ref().map(|s| s.workspace.state);
        let cause = snap
            .as_ref()
            .filter(|s| s.workspace.state == State::Failed)
            .and_then(|s| s.workspace.last_error.as_ref())
            .map(|e| e.code);
        let (reached, operation) = match target {
            WaitTarget::Op(op_id) => {
                let pending = snap.as_ref().is_some_and(|s| {
                    [&s.pending.in_flight, &s.pending.queued]
                        .into_iter()
                        .flatten()
                        .any(|o| &o.id == op_id)
                });
                if pending {
                    return Ok(None);
                }
                let op = self.op_record(op_id).await?;
                if !op.status.is_terminal() {
                    return Ok(None);
                }
                (op.status == crate::model::OpStatus::Succeeded, Some(op))
            }
            WaitTarget::State(_) | WaitTarget::Settled => {
                if !settled {
                    return Ok(None);
                }
                let reached = match target {
                    WaitTarget::State(s) => settled_state == Some(*s),
                    _ => true,
                };
                let last = self.ops_page(id, 1).await?;
                (reached, last.into_iter().next())
            }
        };
        Ok(Some(WaitOutcome {
            workspace: snap,
            reached,
            settled_state,
            cause,
            operation,
        }))
    }
}
