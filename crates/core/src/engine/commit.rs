//! The one commit path: every write of a workspace row goes through [`Engine::write`],
//! which keeps the gate's copy of the row in step with the store (the store's writer
//! model), and every transition goes through [`Engine::commit_transition`], which asks
//! [`transition`] what to do and writes the move, its record effects, its event and the
//! op row in one store call.

use crate::ids::{Incarnation, WorkspaceToken};
use crate::model::{Actor, Cause, LastError, NewEvent, OpStatus, Operation, Workspace};
use crate::ports::{Commit, Report};
use crate::state::{Effect, LifecycleEvent, Next, State, transition};

use super::gate::Gate;
use super::{Engine, EngineError, error::invalid_transition};

/// What a transition records besides the move itself.
#[derive(Debug)]
pub(crate) struct Note {
    pub(crate) cause: Cause,
    pub(crate) message: String,
    pub(crate) actor: Actor,
    /// The op row written in the same commit (its status may already be final).
    pub(crate) op: Option<Operation>,
    /// Recorded when the move is to `failed`.
    pub(crate) last_error: Option<LastError>,
}

impl Note {
    pub(crate) fn new(cause: Cause, actor: Actor, message: impl Into<String>) -> Self {
        Self {
            cause,
            message: message.into(),
            actor,
            op: None,
            last_error: None,
        }
    }
}

/// A committed (or commit-free) transition: the runtime effects to run, in order, and
/// the token its record effects minted.
#[derive(Debug)]
pub(crate) struct Committed {
    /// Whether anything was written (a no-op writes nothing).
    pub(crate) committed: bool,
    pub(crate) effects: Vec<Effect>,
    pub(crate) token: Option<WorkspaceToken>,
}

/// A row write in progress on a gate. Readers do not fill the gate's row from the
/// store while one is in progress or since one finished; when the write ends (however:
/// returned, failed, or dropped by a timeout), the gate holds the committed row, or
/// forgets its row when the outcome is unknown.
struct Writing<'a> {
    gate: &'a Gate,
    committed: Option<Workspace>,
}

impl<'a> Writing<'a> {
    fn begin(gate: &'a Gate) -> Self {
        gate.update(|st| st.writing += 1);
        Self {
            gate,
            committed: None,
        }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let row = self.committed.take();
        self.gate.update(|st| {
            st.writing -= 1;
            st.writes += 1;
            st.row = row;
        });
    }
}

impl Engine {
    /// Applies `event` to `ws`: the table decides; a transition that commits writes
    /// the move, its record effects (a minted incarnation and token), the event and
    /// `note.op` in one store write, and `ws` becomes the stored row. Returns the
    /// runtime effects to run next. A deletion (`Next::Gone`) removes the rows.
    ///
    /// # Errors
    /// `InvalidTransition` when the table refuses the event; store errors (the gate
    /// then forgets its row).
    pub(crate) async fn commit_transition(
        &self,
        gate: &Gate,
        ws: &mut Workspace,
        event: LifecycleEvent,
        note: Note,
    ) -> Result<Committed, EngineError> {
        let t = transition(ws.state, event)
            .map_err(|e| invalid_transition(ws.id.as_str(), &e, e.event))?;
        let runtime_effects: Vec<Effect> = t
            .effects
            .iter()
            .copied()
            .filter(|e| !e.is_record())
            .collect();
        if !t.commits(ws.state) {
            return Ok(Committed {
                committed: false,
                effects: runtime_effects,
                token: None,
            });
        }
        let now = self.inner.clock.now();
        let to = match t.next {
            Next::State(to) => to,
            Next::Gone => {
                self.remove_rows(gate, ws, note).await?;
                return Ok(Committed {
                    committed: true,
                    effects: runtime_effects,
                    token: None,
                });
            }
        };
        let mut next = ws.clone();
        next.state = to;
        next.updated_at = now;
        let mut token = None;
        for effect in t.effects.iter().filter(|e| e.is_record()) {
            match effect {
                Effect::MintIncarnation => {
                    next.incarnation = ws.incarnation.next();
                    token = Some(WorkspaceToken::mint());
                }
                Effect::Launch
                | Effect::RemovePartial
                | Effect::StopSessions
                | Effect::StopMain
                | Effect::RemoveExited
                | Effect::RemoveResources => {}
            }
        }
        match to {
            State::Failed => next.last_error = note.last_error,
            State::Starting | State::Running => next.last_error = None,
            State::Stopped | State::Stopping | State::Deleting => {}
        }
        let event = NewEvent {
            at: now,
            workspace_id: ws.id.clone(),
            op_id: note.op.as_ref().map(|o| o.id.clone()),
            actor: note.actor,
            from: Some(ws.state),
            to: Some(to),
            cause: note.cause,
            message: note.message,
        };
        let ops = note
            .op
            .map(|mut op| {
                if op.status.is_terminal() {
                    op.result_state = Some(to);
                }
                if token.is_some() {
                    op.incarnation = Some(next.incarnation);
                }
                op
            })
            .into_iter()
            .collect();
        self.write(gate, ws, next, event, token.as_ref(), ops)
            .await?;
        if to == State::Running {
            gate.open_sessions();
        }
        Ok(Committed {
            committed: true,
            effects: runtime_effects,
            token,
        })
    }

    /// Writes `next` (version + 1) with its event, token hash and op rows; on success
    /// `ws` becomes `next` and the gate holds it; on failure the gate forgets its row.
    /// The only place a workspace row is updated.
    pub(crate) async fn write(
        &self,
        gate: &Gate,
        ws: &mut Workspace,
        mut next: Workspace,
        event: NewEvent,
        token: Option<&WorkspaceToken>,
        ops: Vec<Operation>,
    ) -> Result<(), EngineError> {
        next.version = ws.version + 1;
        let commit = Commit {
            workspace: next,
            expected_version: ws.version,
            event: Some(event),
            token: token.map(WorkspaceToken::hash),
            ops,
            fence: self.inner.fence,
        };
        let mut guard = Writing::begin(gate);
        let stored = self.inner.store.commit(&commit).await;
        if stored.is_ok() {
            guard.committed = Some(commit.workspace.clone());
        }
        drop(guard);
        let stored = stored?;
        *ws = commit.workspace;
        if let Some(ev) = stored {
            self.inner.reporter.report(Report::Event(ev));
        }
        Ok(())
    }

    /// Removes the rows of a `deleting` workspace and appends `deleted`, writing
    /// `note.op` (now succeeded) in the same transaction.
    async fn remove_rows(
        &self,
        gate: &Gate,
        ws: &Workspace,
        note: Note,
    ) -> Result<(), EngineError> {
        let now = self.inner.clock.now();
        let ops: Vec<Operation> = note
            .op
            .map(|mut op| {
                op.result_state = None;
                op
            })
            .into_iter()
            .collect();
        let event = NewEvent {
            at: now,
            workspace_id: ws.id.clone(),
            op_id: ops.first().map(|o| o.id.clone()),
            actor: note.actor,
            from: Some(ws.state),
            to: None,
            cause: note.cause,
            message: note.message,
        };
        let guard = Writing::begin(gate);
        let stored = self
            .inner
            .store
            .delete_workspace(&ws.id, ws.version, &ops, &event, self.inner.fence)
            .await;
        drop(guard);
        if stored.is_ok() {
            gate.update(|st| st.gone = true);
        }
        let ev = stored?;
        self.inner.reporter.report(Report::Event(ev));
        self.inner.gates.remove(&ws.id);
        Ok(())
    }

    /// Records that shutdown interrupted `op` while `ws` was in its current state: the
    /// op row (interrupted) and an `interrupted` event, the state unchanged, with a
    /// write bounded by the final-flush timeout that no cancelled token can cut short.
    pub(crate) async fn commit_interrupted(
        &self,
        gate: &Gate,
        ws: &mut Workspace,
        op: &mut Operation,
    ) -> Result<(), EngineError> {
        let now = self.inner.clock.now();
        op.status = OpStatus::Interrupted;
        op.finished_at = Some(now);
        op.result_state = Some(ws.state);
        op.error = Some(crate::model::OpError::new(
            crate::code::ErrorCode::Interrupted,
            "the engine shut down while this op ran; recovery finishes it at the next boot",
        ));
        let mut next = ws.clone();
        next.updated_at = now;
        let event = NewEvent {
            at: now,
            workspace_id: ws.id.clone(),
            op_id: Some(op.id.clone()),
            actor: Actor::Engine,
            from: Some(ws.state),
            to: Some(ws.state),
            cause: Cause::Interrupted,
            message: format!(
                "{} interrupted by shutdown while {}",
                op.kind.as_str(),
                ws.state
            ),
        };
        let bound = self.inner.config.final_flush_timeout;
        let write = self.write(gate, ws, next, event, None, vec![op.clone()]);
        match tokio::time::timeout(bound, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(op = %op.id, error = %e, "could not record the interruption");
                Err(e)
            }
            Err(_) => {
                tracing::warn!(op = %op.id, "recording the interruption timed out");
                Err(EngineError::Internal(format!(
                    "recording the interruption of op {} timed out",
                    op.id
                )))
            }
        }
    }

    /// The workspace row: the gate's copy of the last commit, else the store's (which
    /// the gate then keeps). The caller holds the exec lock.
    pub(crate) async fn current(
        &self,
        gate: &Gate,
        id: &crate::ids::WorkspaceId,
    ) -> Result<Option<Workspace>, EngineError> {
        {
            let st = gate.read();
            if st.gone {
                return Ok(None);
            }
            if let Some(row) = &st.row {
                return Ok(Some(row.clone()));
            }
        }
        let fetched = self.inner.store.workspace(id).await?;
        gate.update(|st| {
            if st.row.is_none() && st.writing == 0 {
                st.row.clone_from(&fetched);
            }
        });
        Ok(fetched)
    }

    /// The incarnation a record names as its resource's, for fencing runtime calls.
    pub(crate) fn resource(&self, ws: &Workspace) -> crate::ports::ResourceRef {
        self.resource_at(ws, ws.incarnation)
    }

    pub(crate) fn resource_at(
        &self,
        ws: &Workspace,
        incarnation: Incarnation,
    ) -> crate::ports::ResourceRef {
        crate::ports::ResourceRef {
            engine_id: self.inner.engine_id.clone(),
            workspace_id: ws.id.clone(),
            incarnation,
        }
    }
}
