//! Sessions: extra named processes inside a running workspace.
//!
//! One process per name, also under concurrency: the first launch of a name does the
//! work and later launches of that name share its result. Launching a running session's
//! name with the same command (and env) returns it; with another, 409
//! `session_exists`. A session whose process has exited frees its name at once: the
//! next launch is a new generation (the runtime replaces the exited one). Launches are
//! refused while the workspace stops or is deleted; a stop waits for the launches in
//! progress and then stops their sessions too.

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::ids::{SessionName, WorkspaceId};
use crate::merge::{OpKind, Phase};
use crate::model::{Session, Workspace};
use crate::ports::{
    CaptureTarget, NewSession, ProcessStatus, ResourceKind, RuntimeError, SessionLaunch,
    SessionRef, StoreError,
};
use crate::state::State;

use super::gate::{Gate, LaunchResult, SessionsClosed};
use super::{Engine, EngineError};

impl Engine {
    pub(crate) async fn launch_session_now(
        &self,
        workspace_id: &WorkspaceId,
        name: SessionName,
        command: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Result<Session, EngineError> {
        self.refuse_if_stopping()?;
        if command.first().is_none_or(String::is_empty) {
            return Err(EngineError::Validation {
                field: "command".into(),
                message: "the command needs a program (a non-empty first argument)".into(),
            });
        }
        if command.iter().any(|a| a.contains('\0')) {
            return Err(EngineError::Validation {
                field: "command".into(),
                message: "arguments must not contain NUL bytes".into(),
            });
        }
        if env
            .iter()
            .any(|(k, v)| !super::validate::is_env_name(k) || v.contains('\0'))
        {
            return Err(EngineError::Validation {
                field: "env".into(),
                message: "names must match [A-Za-z_][A-Za-z0-9_]* and values hold no NUL".into(),
            });
        }
        let snap =
            self.read_snapshot(workspace_id)
                .await?
                .ok_or_else(|| EngineError::NotFound {
                    what: format!("workspace {workspace_id}"),
                })?;
        let ws = snap.workspace;
        let gate = self.inner.gates.get(workspace_id);
        // Register as active before checking `closed`, so a stop that closes the gate
        // after this point waits for this launch and then stops its session.
        let role = gate.update(|st| -> Result<Role, EngineError> {
            // The row as committed now: a stop may have moved it since the snapshot.
            let now = st.row.clone().unwrap_or_else(|| ws.clone());
            refuse_if_pending(st, &now)?;
            if now.state != State::Running {
                return Err(not_running(&now));
            }
            match st.sessions.closed {
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
            if let Some(rx) = st.sessions.launching.get(&name) {
                return Ok(Role::Follower(rx.clone()));
            }
            let (tx, rx) = watch::channel(None);
            st.sessions.launching.insert(name.clone(), rx);
            st.sessions.active += 1;
            st.no_sessions = false;
            Ok(Role::Leader(tx))
        })?;
        match role {
            Role::Follower(mut rx) => {
                let result = match rx.wait_for(Option::is_some).await {
                    Ok(result) => result.clone().unwrap_or_else(|| {
                        Err(EngineError::Internal(
                            "session launch ended without a result".into(),
                        ))
                    }),
                    Err(_) => Err(EngineError::Internal(format!(
                        "launch of session {name} ended without a result"
                    ))),
                };
                // Another request for the name: the same command shares the session.
                match result {
                    Ok(s) if s.command != command || s.env != env => {
                        Err(EngineError::SessionExists {
                            workspace: ws.id.to_string(),
                            session: name.to_string(),
                        })
                    }
                    other => other,
                }
            }
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
        ws: &Workspace,
        name: &SessionName,
        command: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> LaunchResult {
        let Some(rt) = self.runtime_for(ws) else {
            return Err(EngineError::RuntimeUnavailable {
                runtime: ws.runtime.to_string(),
                message: "not configured on this engine".into(),
            });
        };
        let target = |generation| SessionRef {
            engine_id: self.inner.engine_id.clone(),
            workspace_id: ws.id.clone(),
            name: name.clone(),
            generation,
        };
        let existing = self
            .inner
            .store
            .sessions(&ws.id)
            .await?
            .into_iter()
            .find(|s| &s.name == name);
        if let Some(row) = existing {
            // The row says what was launched; the runtime says whether it still runs.
            let live = match rt.inspect_session(&target(None)).await? {
                Some(r) => {
                    r.status == ProcessStatus::Running
                        && matches!(r.kind, ResourceKind::Session { generation, .. } if generation == row.generation)
                }
                None => false,
            };
            if live {
                if row.command == command && row.env == env {
                    return Ok(row);
                }
                return Err(EngineError::SessionExists {
                    workspace: ws.id.to_string(),
                    session: name.to_string(),
                });
            }
            // Exited: forget that generation; its name launches anew.
            self.inner
                .store
                .delete_session(&ws.id, name, row.generation)
                .await?;
        }
        let row = NewSession {
            workspace_id: ws.id.clone(),
            name: name.clone(),
            command: command.clone(),
            env: env.clone(),
            created_at: self.inner.clock.now(),
        };
        let session = match self.inner.store.insert_session(&row).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => {
                return Err(EngineError::NotFound {
                    what: format!("workspace {}", ws.id),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let mut full_env = ws.spec.env.clone();
        full_env.extend(env);
        full_env.insert("BERTH_WORKSPACE_ID".into(), ws.id.to_string());
        full_env.insert("BERTH_SESSION".into(), name.to_string());
        let launch = SessionLaunch {
            spec: ws.spec.clone(),
            resource: self.resource(ws),
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
            // The main process is gone (it exited; the reconciler will record it).
            Ok(Err(RuntimeError::NotFound { .. })) => EngineError::InvalidTransition {
                workspace: ws.id.to_string(),
                from: ws.state,
                request: "launch a session in (its main process is not running)".into(),
            },
            Ok(Err(e)) => EngineError::Runtime(e),
            Err(_) => EngineError::Runtime(RuntimeError::Timeout {
                operation: format!("launch of session {name}"),
                after: bound,
            }),
        };
        let cleanup = tokio::time::timeout(
            self.inner.config.stop_ceiling,
            rt.stop_session(
                &target(Some(session.generation)),
                self.inner.config.stop_grace,
            ),
        )
        .await;
        if let Err(e) = cleanup.unwrap_or_else(|_| {
            Err(RuntimeError::Timeout {
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

    pub(crate) async fn stop_session_now(
        &self,
        workspace_id: &WorkspaceId,
        name: &SessionName,
    ) -> Result<(), EngineError> {
        let ws = self.existing(workspace_id).await?;
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
                    return Err(EngineError::Runtime(RuntimeError::Timeout {
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

    pub(crate) async fn sessions_of(
        &self,
        workspace_id: &WorkspaceId,
    ) -> Result<Vec<Session>, EngineError> {
        let ws = self.existing(workspace_id).await?;
        Ok(self.inner.store.sessions(&ws.id).await?)
    }

    /// Recent output of a session (or of the main process when `session` is `None`).
    /// A process the runtime no longer has (stopped, never started) has no output to
    /// show: an empty page, not an error.
    pub(crate) async fn output_of(
        &self,
        workspace_id: &WorkspaceId,
        session: Option<&SessionName>,
        lines: usize,
    ) -> Result<Vec<String>, EngineError> {
        let (ws, rt) = self.with_runtime(workspace_id).await?;
        let target = match session {
            Some(name) => self.session_target(&ws, name).await?,
            None if ws.incarnation.0 == 0 => return Ok(Vec::new()),
            None => CaptureTarget::Main(self.resource(&ws)),
        };
        match rt.capture(&target, lines).await {
            Ok(lines) => Ok(lines),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The workspace row, or `NotFound`.
    pub(crate) async fn existing(&self, id: &WorkspaceId) -> Result<Workspace, EngineError> {
        Ok(self
            .read_snapshot(id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("workspace {id}"),
            })?
            .workspace)
    }
}

fn not_running(ws: &Workspace) -> EngineError {
    if ws.state == State::Deleting {
        return EngineError::WorkspaceDeleting {
            workspace: ws.id.to_string(),
        };
    }
    EngineError::InvalidTransition {
        workspace: ws.id.to_string(),
        from: ws.state,
        request: "launch a session in".into(),
    }
}

/// A launch registered on the gate (`active`, `launching`); undone on drop.
struct Registered {
    gate: std::sync::Arc<Gate>,
    name: SessionName,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.gate.update(|st| {
            st.sessions.launching.remove(&self.name);
            st.sessions.active -= 1;
        });
        self.gate.bump();
        self.gate.sessions_idle.notify_waiters();
    }
}

enum Role {
    Leader(watch::Sender<Option<LaunchResult>>),
    Follower(watch::Receiver<Option<LaunchResult>>),
}

/// Refuses a launch while a stop or delete is pending on the gate.
fn refuse_if_pending(st: &super::gate::GateState, ws: &Workspace) -> Result<(), EngineError> {
    let pending: Vec<_> = st
        .slot
        .in_flight
        .iter()
        .chain(st.slot.queued.iter())
        .collect();
    if ws.state == State::Deleting || pending.iter().any(|p| p.op.kind == OpKind::Delete) {
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
