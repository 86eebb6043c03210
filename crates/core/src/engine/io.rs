//! Ways into a workspace: exec, attach, logs and file copies. None of them changes the
//! workspace's state, so none goes through the gate: they read the row, check that the
//! process they need is there, and hand the runtime the resource of the row's
//! incarnation (fenced like every other runtime call).

use super::{Engine, EngineError};
use crate::ids::{SessionName, WorkspaceId};
use crate::model::Workspace;
use crate::ports::{
    ByteStream, CaptureTarget, CopyRequest, ExecIo, ExecRequest, LogQuery, LogStream,
    ProcessRuntime, RuntimeError, SessionRef, TermSize,
};
use crate::state::State;

impl Engine {
    /// The workspace and its runtime, or why not.
    pub(crate) async fn with_runtime(
        &self,
        workspace_id: &WorkspaceId,
    ) -> Result<(Workspace, std::sync::Arc<dyn ProcessRuntime>), EngineError> {
        let ws = self.existing(workspace_id).await?;
        let Some(rt) = self.runtime_for(&ws) else {
            return Err(EngineError::RuntimeUnavailable {
                runtime: ws.runtime.to_string(),
                message: "not configured on this engine".into(),
            });
        };
        Ok((ws, rt))
    }

    /// The running workspace and its runtime, or `NotRunning`.
    async fn running(
        &self,
        workspace_id: &WorkspaceId,
    ) -> Result<(Workspace, std::sync::Arc<dyn ProcessRuntime>), EngineError> {
        let (ws, rt) = self.with_runtime(workspace_id).await?;
        if ws.state != State::Running {
            return Err(EngineError::NotRunning {
                workspace: ws.id.to_string(),
                state: ws.state,
            });
        }
        Ok((ws, rt))
    }

    /// A runtime's `NotFound` for a workspace the row says runs: its process is gone
    /// (the reconciler will record it).
    fn gone(ws: &Workspace, e: RuntimeError) -> EngineError {
        if e.is_not_found() {
            EngineError::NotRunning {
                workspace: ws.id.to_string(),
                state: ws.state,
            }
        } else {
            EngineError::Runtime(e)
        }
    }

    /// The session's target, or `NotFound`.
    pub(crate) async fn session_target(
        &self,
        ws: &Workspace,
        name: &SessionName,
    ) -> Result<CaptureTarget, EngineError> {
        let row = self
            .inner
            .store
            .sessions(&ws.id)
            .await?
            .into_iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| EngineError::NotFound {
                what: format!("session {name} of workspace {}", ws.id),
            })?;
        Ok(CaptureTarget::Session(SessionRef {
            engine_id: self.inner.engine_id.clone(),
            workspace_id: ws.id.clone(),
            name: name.clone(),
            generation: Some(row.generation),
        }))
    }

    /// Runs `command` in the running workspace `workspace_id`: its directory, its
    /// environment (never its token), its sandbox. With `tty`, on a terminal of that
    /// size.
    ///
    /// # Errors
    /// `Validation` for an empty command, `NotFound`, `NotRunning`, runtime errors
    /// (`Unsupported` for a runtime without exec).
    pub async fn exec(
        &self,
        workspace_id: &WorkspaceId,
        command: Vec<String>,
        tty: Option<TermSize>,
        term: Option<String>,
    ) -> Result<ExecIo, EngineError> {
        if command.first().is_none_or(String::is_empty) {
            return Err(EngineError::Validation {
                field: "command".into(),
                message: "a command needs at least a program".into(),
            });
        }
        if command.iter().any(|a| a.contains('\0')) {
            return Err(EngineError::Validation {
                field: "command".into(),
                message: "an argument cannot hold a NUL byte".into(),
            });
        }
        let (ws, rt) = self.running(workspace_id).await?;
        let mut env = ws.spec.env.clone();
        env.insert("BERTH_WORKSPACE_ID".into(), ws.id.to_string());
        env.insert("BERTH_API_URL".into(), self.inner.config.api_url.clone());
        let request = ExecRequest {
            resource: self.resource(&ws),
            command,
            env,
            dir: ws.dir.clone(),
            spec: ws.spec.clone(),
            tty,
            term,
        };
        rt.exec(&request).await.map_err(|e| Self::gone(&ws, e))
    }

    /// An interactive terminal on the running workspace's main process, or one of its
    /// sessions.
    ///
    /// # Errors
    /// `NotFound` (workspace, session), `NotRunning`, runtime errors.
    pub async fn attach(
        &self,
        workspace_id: &WorkspaceId,
        session: Option<&SessionName>,
        size: TermSize,
        term: Option<String>,
    ) -> Result<ExecIo, EngineError> {
        let (ws, rt) = self.running(workspace_id).await?;
        let target = match session {
            Some(name) => self.session_target(&ws, name).await?,
            None => CaptureTarget::Main(self.resource(&ws)),
        };
        rt.attach(&target, size, term).await.map_err(|e| match e {
            RuntimeError::NotFound { .. } if session.is_some() => EngineError::NotFound {
                what: format!(
                    "a running session {} of workspace {}",
                    session.map(ToString::to_string).unwrap_or_default(),
                    ws.id
                ),
            },
            e => Self::gone(&ws, e),
        })
    }

    /// The output of the main process (of the workspace's current or last
    /// incarnation) or of a session, kept past the process's end where the runtime
    /// keeps it. A workspace that never started has none: an empty stream.
    ///
    /// # Errors
    /// `NotFound` (workspace, session), runtime errors.
    pub async fn logs(
        &self,
        workspace_id: &WorkspaceId,
        session: Option<&SessionName>,
        query: &LogQuery,
    ) -> Result<LogStream, EngineError> {
        let (ws, rt) = self.with_runtime(workspace_id).await?;
        let target = match session {
            Some(name) => self.session_target(&ws, name).await?,
            None if ws.incarnation.0 == 0 => return Ok(Box::pin(futures_util::stream::empty())),
            None => CaptureTarget::Main(self.resource(&ws)),
        };
        match rt.logs(&target, query).await {
            Ok(stream) => Ok(stream),
            Err(e) if e.is_not_found() => Ok(Box::pin(futures_util::stream::empty())),
            Err(e) => Err(e.into()),
        }
    }

    fn copy_request(&self, ws: &Workspace, path: &str) -> Result<CopyRequest, EngineError> {
        if path.is_empty() || path.contains('\0') {
            return Err(EngineError::Validation {
                field: "path".into(),
                message: "a path is required (and cannot hold a NUL byte)".into(),
            });
        }
        Ok(CopyRequest {
            resource: self.resource(ws),
            dir: ws.dir.clone(),
            spec: ws.spec.clone(),
            path: path.to_owned(),
        })
    }

    /// A tar archive of `path` in the workspace.
    ///
    /// # Errors
    /// `Validation` for an empty path, `NotFound` (workspace, path), runtime errors.
    pub async fn copy_out(
        &self,
        workspace_id: &WorkspaceId,
        path: &str,
    ) -> Result<ByteStream, EngineError> {
        let (ws, rt) = self.with_runtime(workspace_id).await?;
        let request = self.copy_request(&ws, path)?;
        rt.copy_out(&request).await.map_err(|e| match e {
            RuntimeError::NotFound { resource } => EngineError::NotFound { what: resource },
            e => EngineError::Runtime(e),
        })
    }

    /// Extracts the tar archive `archive` into the directory `path` of the workspace.
    ///
    /// # Errors
    /// `Validation` for an empty path, `NotFound` (workspace, directory), runtime
    /// errors.
    pub async fn copy_in(
        &self,
        workspace_id: &WorkspaceId,
        path: &str,
        archive: ByteStream,
    ) -> Result<(), EngineError> {
        let (ws, rt) = self.with_runtime(workspace_id).await?;
        let request = self.copy_request(&ws, path)?;
        rt.copy_in(&request, archive).await.map_err(|e| match e {
            RuntimeError::NotFound { resource } => EngineError::NotFound { what: resource },
            e => EngineError::Runtime(e),
        })
    }
}
