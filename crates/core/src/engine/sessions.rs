//! Sessions: extra named processes inside a running workspace.
//!
//! One process per name, also under concurrency: the first launch of a name does the
//! work and later launches of that name share its result. Launches are refused while
//! the workspace stops or is deleted; a stop waits for the launches in progress and
//! then stops their sessions too.

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::ids::{SessionName, WorkspaceId};
use crate::merge::{OpKind, Phase};
use crate::model::{Session, SessionState};
use crate::ports::{CaptureTarget, NewSession, SessionLaunch, SessionRef, StoreError};
use crate::state::State;

use super::gate::{Gate, LaunchResult, SessionsClosed};
use super::{Engine, EngineError};

impl Engine {
    /// Launches session `name` in a running workspace, or returns the running session
    /// of that name.
    ///
    /// # Errors
    /// `WorkspaceStopping`/`WorkspaceDeleting` while a stop or delete is pending,
    /// `InvalidTransition` when the workspace does not run, `NotFound`, runtime and
    /// store errors.
    pub async fn launch_session(
        &self,
        workspace_id: &WorkspaceId,
        name: SessionName,
        command: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Result<Session, EngineError> {
        if self.is_shutting_down() {
            return Err(EngineError::ShuttingDown);
        }
        if command.iter().any(|a| a.contains('\0'))
            || env
                .iter()
                .any(|(k, v)| !super::is_env_name(k) || v.contains('\0'))
        {
            return Err(EngineError::Validation {
                field: "command".into(),
                message: "arguments and env values must hold no NUL; env names must match [A-Za-z_][A-Za-z0-9_]*".into(),
            });
        }
        let ws = self.workspace(workspace_id).await?;
        let gate = self.inner.gates.get(workspace_id);
        refuse_if_pending(&gate, &ws).await?;
        if ws.state != State::Running {
            return Err(EngineError::InvalidTransition {
                workspace: ws.id.to_string(),
                from: ws.state,
                request: "launch a session in".into(),
            });
        }
        // Register as active before checking `closed`, so a stop that closes the gate
        // after this point waits for this launch and then stops its session.
        let role = {
            let mut sessions = gate.sessions.lock();
            match sessions.closed {
                Some(SessionsClosed::Stopping) => {
                    return Err(EngineError::WorkspaceStopping {
                        workspace: ws.id.to_string(),
                    });
                }
                Some(SessionsClosed::Deleting) => {
                    return Err(EngineError::WorkspaceDeleting {
                        workspace: ws.id.to_string(),
                    });
                }
                None => {}
            }
            if let Some(rx) = sessions.launching.get(&name) {
                Role::Follower(rx.clone())
            } else {
                let (tx, rx) = watch::channel(None);
                sessions.launching.insert(name.clone(), rx);
                sessions.active += 1;
                gate.no_sessions
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                Role::Leader(tx)
            }
        };
        match role {
            Role::Follower(mut rx) => match rx.wait_for(Option::is_some).await {
                Ok(result) => result.clone().unwrap_or_else(|| {
                    Err(EngineError::Internal(
                        "session launch ended without a result".into(),
                    ))
                }),
                Err(_) => Err(EngineError::Internal(format!(
                    "launch of session {name} ended without a result"
                ))),
            },
            Role::Leader(tx) => {
                // Unregisters even if this future is dropped mid-launch (a caller that
                // went away): otherwise a stop would wait for this launch forever.
                let _registered = Registered {
                    gate: gate.clone(),
                    name: name.clone(),
                };
                let result = self.launch_session_once(&ws, &name, command, env).await;
                tx.send_replace(Some(result.clone()));
                result
            }
        }
    }

    async fn launch_session_once(
        &self,
        ws: &crate::model::Workspace,
        name: &SessionName,
        command: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> LaunchResult {
        // Re-read: the state may have moved while this launch waited for the gate.
        let ws = self.workspace(&ws.id).await?;
        if ws.state != State::Running {
            return Err(EngineError::InvalidTransition {
                workspace: ws.id.to_string(),
                from: ws.state,
                request: "launch a session in".into(),
            });
        }
        if let Some(existing) = self
            .inner
            .store
            .sessions(&ws.id)
            .await?
            .into_iter()
            .find(|s| &s.name == name)
            && existing.state == SessionState::Running
        {
            return Ok(existing);
        }
        let Some(rt) = self.runtime_for(&ws) else {
            return Err(EngineError::RuntimeUnavailable {
                runtime: ws.runtime.to_string(),
                message: "not configured on this engine".into(),
            });
        };
        let row = NewSession {
            workspace_id: ws.id.clone(),
            name: name.clone(),
            command: command.clone(),
            env: env.clone(),
            created_at: self.inner.clock.now(),
        };
        let session = match self.inner.store.insert_session(&row).await {
            Ok(s) => s,
            Err(StoreError::Conflict { .. }) => {
                // An exited row of that name: forget it and take the name again.
                let stale: Vec<_> = self
                    .inner
                    .store
                    .sessions(&ws.id)
                    .await?
                    .into_iter()
                    .filter(|s| &s.name == name)
                    .collect();
                for s in stale {
                    self.inner
                        .store
                        .delete_session(&ws.id, name, s.generation)
                        .await?;
                }
                self.inner.store.insert_session(&row).await?
            }
            Err(e) => return Err(e.into()),
        };
        let mut full_env = ws.spec.env.clone();
        full_env.extend(env);
        full_env.insert("BERTH_WORKSPACE_ID".into(), ws.id.to_string());
        full_env.insert("BERTH_SESSION".into(), name.to_string());
        let launch = SessionLaunch {
            resource: self.resource(&ws),
            name: name.clone(),
            generation: session.generation,
            command,
            env: full_env,
            dir: ws.dir.clone(),
        };
        let bound = self.inner.config.start_ceiling;
        let outcome = tokio::time::timeout(bound, rt.launch_session(&launch)).await;
        let error = match outcome {
            Ok(Ok(())) => return Ok(session),
            Ok(Err(e)) => EngineError::Runtime(e),
            Err(_) => EngineError::Runtime(crate::ports::RuntimeError::Timeout {
                operation: format!("launch of session {name}"),
                after: bound,
            }),
        };
        let target = SessionRef {
            engine_id: self.inner.engine_id.clone(),
            workspace_id: ws.id.clone(),
            name: name.clone(),
            generation: Some(session.generation),
        };
        let cleanup = tokio::time::timeout(
            self.inner.config.stop_ceiling,
            rt.stop_session(&target, self.inner.config.stop_grace),
        )
        .await;
        if let Err(e) = cleanup.unwrap_or_else(|_| {
            Err(crate::ports::RuntimeError::Timeout {
                operation: format!("cleanup of session {name}"),
                after: self.inner.config.stop_ceiling,
            })
        }) {
            tracing::warn!(workspace = %ws.id, session = %name, error = %e, "could not clean up a failed session launch");
        }
        self.inner
            .store
            .delete_session(&ws.id, name, session.generation)
            .await?;
        Err(error)
    }

    /// Stops session `name` and forgets its row.
    ///
    /// # Errors
    /// `NotFound` for an unknown workspace or session, runtime and store errors.
    pub async fn stop_session(
        &self,
        workspace_id: &WorkspaceId,
        name: &SessionName,
    ) -> Result<(), EngineError> {
        let ws = self.workspace(workspace_id).await?;
        let Some(row) = self
            .inner
            .store
            .sessions(&ws.id)
            .await?
            .into_iter()
            .find(|s| &s.name == name)
        else {
            return Err(EngineError::NotFound {
                what: format!("session {name} of workspace {}", ws.id),
            });
        };
        if let Some(rt) = self.runtime_for(&ws) {
            let target = SessionRef {
                engine_id: self.inner.engine_id.clone(),
                workspace_id: ws.id.clone(),
                name: name.clone(),
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
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(EngineError::Runtime(crate::ports::RuntimeError::Timeout {
                        operation: format!("stop of session {name}"),
                        after: bound,
                    }));
                }
            }
        }
        self.inner
            .store
            .delete_session(&ws.id, name, row.generation)
            .await?;
        if let Some(gate) = self.inner.gates.existing(&ws.id) {
            gate.bump();
        }
        Ok(())
    }

    /// A workspace's sessions.
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn sessions(&self, workspace_id: &WorkspaceId) -> Result<Vec<Session>, EngineError> {
        let ws = self.workspace(workspace_id).await?;
        Ok(self.inner.store.sessions(&ws.id).await?)
    }

    /// Recent output of a session (or of the main process when `session` is `None`).
    ///
    /// # Errors
    /// `NotFound`, runtime errors.
    pub async fn output(
        &self,
        workspace_id: &WorkspaceId,
        session: Option<&SessionName>,
        lines: usize,
    ) -> Result<Vec<String>, EngineError> {
        let ws = self.workspace(workspace_id).await?;
        let Some(rt) = self.runtime_for(&ws) else {
            return Err(EngineError::RuntimeUnavailable {
                runtime: ws.runtime.to_string(),
                message: "not configured on this engine".into(),
            });
        };
        let target = match session {
            Some(name) => {
                let row = self
                    .inner
                    .store
                    .sessions(&ws.id)
                    .await?
                    .into_iter()
                    .find(|s| &s.name == name);
                let Some(row) = row else {
                    return Err(EngineError::NotFound {
                        what: format!("session {name} of workspace {}", ws.id),
                    });
                };
                CaptureTarget::Session(SessionRef {
                    engine_id: self.inner.engine_id.clone(),
                    workspace_id: ws.id.clone(),
                    name: name.clone(),
                    generation: Some(row.generation),
                })
            }
            None => CaptureTarget::Main(self.resource(&ws)),
        };
        Ok(rt.capture(&target, lines).await?)
    }
}

/// A launch registered on the gate (`active`, `launching`); undone on drop.
struct Registered {
    gate: std::sync::Arc<Gate>,
    name: SessionName,
}

impl Drop for Registered {
    fn drop(&mut self) {
        {
            let mut sessions = self.gate.sessions.lock();
            sessions.launching.remove(&self.name);
            sessions.active -= 1;
        }
        self.gate.bump();
        self.gate.sessions_idle.notify_waiters();
    }
}

enum Role {
    Leader(watch::Sender<Option<LaunchResult>>),
    Follower(watch::Receiver<Option<LaunchResult>>),
}

/// Refuses a launch while a stop or delete is pending on the gate.
async fn refuse_if_pending(gate: &Gate, ws: &crate::model::Workspace) -> Result<(), EngineError> {
    let slot = gate.slot.lock().await;
    let pending: Vec<_> = slot.in_flight.iter().chain(slot.queued.iter()).collect();
    if pending.iter().any(|p| p.op.kind == OpKind::Delete) {
        return Err(EngineError::WorkspaceDeleting {
            workspace: ws.id.to_string(),
        });
    }
    let stopping = |p: &&super::gate::PendingOp| {
        p.preempted_by.is_some()
            || p.op.kind == OpKind::Stop
            || (p.op.kind == OpKind::Restart && p.phase == Phase::StopPhase)
    };
    if pending.iter().any(stopping) {
        return Err(EngineError::WorkspaceStopping {
            workspace: ws.id.to_string(),
        });
    }
    Ok(())
}
