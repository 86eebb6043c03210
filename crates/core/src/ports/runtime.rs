//! The runtime port: what runs the processes of a workspace (tmux, docker, ...).
//!
//! Resources are fenced by `{engine id, workspace id, incarnation}`: a runtime labels
//! every resource with them and refuses to stop or remove a resource whose incarnation
//! does not match the caller's.

// mockall's generated mocks (feature `testkit`) use std's Mutex internally.
#![cfg_attr(feature = "testkit", allow(clippy::disallowed_types))]

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::ids::{
    EngineId, Generation, Incarnation, RuntimeKind, SessionName, WorkspaceId, WorkspaceName,
};
use crate::model::{Timestamp, WorkspaceSpec};
use tokio_util::sync::CancellationToken;

use super::io::{ByteStream, CopyRequest, ExecIo, ExecRequest, LogQuery, LogStream, TermSize};

/// Why a runtime refused with a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    /// A resource with the workspace's name exists (ours, another incarnation): transient.
    NameInUse,
    /// The runtime is still removing the workspace's resource: transient.
    RemovalInProgress,
    /// The resource carries another incarnation than the caller's: fenced.
    IncarnationMismatch,
    /// The name is held by something that is not ours: never touched.
    Foreign,
}

/// A runtime error. `NotFound` counts as gone everywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The resource does not exist.
    #[error("{resource} not found")]
    NotFound {
        /// The resource named.
        resource: String,
    },
    /// The resource is in a conflicting state.
    #[error("{resource}: {message}")]
    Conflict {
        /// The resource named.
        resource: String,
        /// Why.
        reason: ConflictReason,
        /// A sentence.
        message: String,
    },
    /// The runtime cannot be reached (daemon down, socket missing).
    #[error("runtime unavailable: {message}")]
    Unavailable {
        /// A sentence.
        message: String,
    },
    /// A call did not answer in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// Which call.
        operation: String,
        /// After how long.
        after: Duration,
    },
    /// The runtime does not offer this call (an exec on a runtime without one), or
    /// not for this resource.
    #[error("{message}")]
    Unsupported {
        /// A sentence.
        message: String,
    },
    /// The caller's input cannot be used (an archive that is not one, a path that
    /// is not a directory): nothing was changed.
    #[error("{message}")]
    BadInput {
        /// A sentence.
        message: String,
    },
    /// Anything else, with the resource named.
    #[error("{resource}: {message}")]
    Other {
        /// The resource named.
        resource: String,
        /// A sentence.
        message: String,
    },
}

impl RuntimeError {
    /// Whether this error means "already gone".
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }
}

/// Names one incarnation of a workspace's main resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    /// The engine that owns it.
    pub engine_id: EngineId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The fencing incarnation.
    pub incarnation: Incarnation,
}

/// The file name of a workspace's API socket in the directory
/// [`WorkspaceSockets::open`] returns.
pub const API_SOCKET: &str = "api.sock";

/// A way into the API from inside a workspace: one Unix socket per workspace, served
/// by whoever embeds the engine (the `berth` daemon), which accepts that workspace's
/// token only. A runtime given one opens it when it launches a workspace, tells the
/// process where it is (`BERTH_API_SOCKET`), and closes it on cleanup.
pub trait WorkspaceSockets: Send + Sync + std::fmt::Debug {
    /// Serves `workspace`'s socket (again, after a daemon restart; at once when it is
    /// already served) and returns the host directory holding it ([`API_SOCKET`]).
    ///
    /// # Errors
    /// The socket cannot be made (a sentence naming the path).
    fn open(&self, workspace: &WorkspaceId) -> Result<std::path::PathBuf, String>;
    /// Stops serving `workspace`'s socket and removes its directory.
    fn close(&self, workspace: &WorkspaceId);
}

/// A workspace as far as directories go (prepare, cleanup, dirty check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRef {
    /// The engine that owns it.
    pub engine_id: EngineId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Its spec (dir, git, image).
    pub spec: WorkspaceSpec,
}

/// Everything a launch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// The resource to create, with its fencing labels.
    pub resource: ResourceRef,
    /// The workspace's human name (for display only; never part of a target).
    pub name: WorkspaceName,
    /// What to run.
    pub spec: WorkspaceSpec,
    /// The directory `prepare` returned.
    pub dir: Option<String>,
    /// The full environment: the spec's plus `BERTH_WORKSPACE_ID`,
    /// `BERTH_WORKSPACE_TOKEN`, `BERTH_API_URL`.
    pub env: BTreeMap<String, String>,
    /// A warm pool member: `env` has no token; its process is told in
    /// `BERTH_TOKEN_FILE` where [`ProcessRuntime::deliver_token`] will put the token
    /// when a create claims it.
    pub token_by_file: bool,
}

/// A session launch inside a running workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLaunch {
    /// The workspace's main resource (the session belongs to this incarnation).
    pub resource: ResourceRef,
    /// Session name.
    pub name: SessionName,
    /// Its creation generation (a marker on the runtime resource).
    pub generation: Generation,
    /// Its argv.
    pub command: Vec<String>,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// The workspace directory.
    pub dir: Option<String>,
    /// The workspace's spec: its sandbox and network apply to its sessions too.
    pub spec: WorkspaceSpec,
}

/// Names one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    /// The engine that owns it.
    pub engine_id: EngineId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Session name.
    pub name: SessionName,
    /// When set, only the session carrying this generation is meant: a re-created
    /// session of the same name (another generation) is never touched.
    pub generation: Option<Generation>,
}

/// What output to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureTarget {
    /// The main process.
    Main(ResourceRef),
    /// A session.
    Session(SessionRef),
}

/// Whether a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessStatus {
    /// Running.
    Running,
    /// Exited, with its code when the runtime kept it.
    Exited(Option<i64>),
}

/// What kind of resource an owned resource is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// A workspace's main process.
    Main,
    /// A session with its generation.
    Session {
        /// Session name.
        name: SessionName,
        /// Creation generation.
        generation: Generation,
    },
}

/// A resource carrying our engine id, as listed for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedResource {
    /// The workspace it belongs to.
    pub workspace_id: WorkspaceId,
    /// The incarnation it carries.
    pub incarnation: Incarnation,
    /// Main process or session.
    pub kind: ResourceKind,
    /// When the runtime created it (orphan grace counts from here).
    pub created_at: Timestamp,
    /// Whether its process runs.
    pub status: ProcessStatus,
}

/// Result of a dirty check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtyReport {
    /// Nothing unsaved (or not a git work tree).
    Clean,
    /// Uncommitted or untracked files, by path.
    Dirty(Vec<String>),
}

/// A spec field a runtime cannot honour: the create is refused with 422
/// `validation_failed` naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecRefusal {
    /// The field (`image`, `git`, `limits`, ...).
    pub field: &'static str,
    /// Why, as a sentence naming the runtime.
    pub message: String,
}

/// How a runtime's event stream asks the engine for a reconcile pass. Wake-ups that
/// arrive while a pass is pending coalesce into it.
#[derive(Debug, Clone, Default)]
pub struct EventWake(std::sync::Arc<tokio::sync::Notify>);

impl EventWake {
    /// A new wake-up channel.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a reconcile pass.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next wake-up (or at once for one that is pending).
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

/// Runs the processes of workspaces.
#[cfg_attr(feature = "testkit", mockall::automock)]
#[async_trait]
pub trait ProcessRuntime: Send + Sync + std::fmt::Debug {
    /// The runtime's name (`tmux`, `docker`, ...).
    fn kind(&self) -> RuntimeKind;

    /// Whether the runtime can honour `spec`, checked at create before anything is
    /// stored. MUST refuse every field it would otherwise ignore or cannot apply (an
    /// image on a runtime without images, a git source it cannot check out, limits it
    /// cannot enforce, a missing image with no default) naming that field. MUST NOT do
    /// I/O: it is a check of the settings the runtime was built with.
    ///
    /// # Errors
    /// [`SpecRefusal`] naming the first field it cannot honour.
    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRefusal>;

    /// Creates the workspace directory (worktree, volume) if the spec asks for one and
    /// returns its path. MUST be idempotent. MUST NOT create or modify a directory the
    /// user brought; MUST return `BadInput` naming the path when it does not exist (the
    /// caller's input, answered with a 4xx).
    async fn prepare(&self, workspace: &WorkspaceRef) -> Result<Option<String>, RuntimeError>;

    /// Launches the main process labelled with `request.resource`.
    /// MUST be idempotent for the same `ResourceRef` (a live resource of this
    /// incarnation is adopted, never duplicated). MUST return `Conflict{NameInUse}` or
    /// `Conflict{RemovalInProgress}` while a resource of another incarnation of the
    /// same workspace exists, and `Conflict{Foreign}` when the name is held by a
    /// resource without our engine id. Never leaves two resources for one workspace.
    async fn launch(&self, request: &LaunchRequest) -> Result<(), RuntimeError>;

    /// Stops the main process: SIGTERM to the whole process group, `grace`, then SIGKILL.
    /// MUST return `Ok` when the resource is already gone. MUST return
    /// `Conflict{IncarnationMismatch}` (and touch nothing) when the workspace's resource
    /// carries another incarnation.
    async fn stop(&self, resource: &ResourceRef, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes the main resource (stopping it first if needed). MUST return `Ok` when
    /// already gone; MUST refuse another incarnation with `Conflict{IncarnationMismatch}`.
    async fn remove(&self, resource: &ResourceRef) -> Result<(), RuntimeError>;

    /// Removes what `prepare` created (volume, worktree) on delete. MUST NOT remove a
    /// directory the user brought. MUST return `Ok` when nothing is left.
    async fn cleanup(&self, workspace: &WorkspaceRef) -> Result<(), RuntimeError>;

    /// The workspace's main resource, whatever its incarnation. MUST return `Ok(None)`
    /// when there is none, and only consider resources with our engine id.
    async fn inspect(
        &self,
        engine_id: &EngineId,
        workspace_id: &WorkspaceId,
    ) -> Result<Option<OwnedResource>, RuntimeError>;

    /// Every resource (main and sessions) carrying `engine_id`. MUST return an error,
    /// never a partial or empty list, when the listing fails. MUST NOT list resources
    /// of other engines or without our labels.
    async fn list_owned(&self, engine_id: &EngineId) -> Result<Vec<OwnedResource>, RuntimeError>;

    /// Launches a session. MUST be idempotent for the same name and generation.
    /// MUST return `NotFound` when the workspace's main resource does not run. A
    /// session of the same name with another generation whose process has exited MUST
    /// be replaced (its output goes with it); one whose process still runs MUST be
    /// refused with `Conflict{NameInUse}` and left alone.
    async fn launch_session(&self, launch: &SessionLaunch) -> Result<(), RuntimeError>;

    /// The session resource of `session.name`, whatever its generation (the
    /// `generation` field of `session` is ignored). MUST return `Ok(None)` when there
    /// is none, and only consider resources with our engine id.
    async fn inspect_session(
        &self,
        session: &SessionRef,
    ) -> Result<Option<OwnedResource>, RuntimeError>;

    /// Stops a session and its process tree. MUST return `Ok` when already gone, and
    /// `Ok` without touching anything when `session.generation` is set and the live
    /// session carries another generation.
    async fn stop_session(&self, session: &SessionRef, grace: Duration)
    -> Result<(), RuntimeError>;

    /// Recent output, oldest first, at most `lines` lines. MUST return `NotFound` when
    /// the target does not exist.
    async fn capture(
        &self,
        target: &CaptureTarget,
        lines: usize,
    ) -> Result<Vec<String>, RuntimeError>;

    /// Output of the main process or a session, kept past the process's end where the
    /// runtime can (the last incarnation's at least), oldest first. The default reads
    /// [`ProcessRuntime::capture`] (no times, no follow). MUST return `NotFound` when
    /// nothing of the target is known.
    async fn logs(
        &self,
        target: &CaptureTarget,
        query: &LogQuery,
    ) -> Result<LogStream, RuntimeError> {
        let lines = self.capture(target, query.tail.unwrap_or(10_000)).await?;
        Ok(super::io::captured(lines))
    }

    /// Runs a command beside the workspace's main process (same directory, user,
    /// environment without its token, sandbox and network). MUST return `NotFound`
    /// when the main resource of `request.resource` does not run. When the caller
    /// drops the output end, the command MUST be ended where the runtime can.
    async fn exec(&self, request: &ExecRequest) -> Result<ExecIo, RuntimeError> {
        let _ = request;
        Err(RuntimeError::Unsupported {
            message: format!(
                "the {} runtime cannot run commands in a workspace",
                self.kind()
            ),
        })
    }

    /// An interactive terminal on the main process (`session` `None`) or a session:
    /// the process's own terminal where the runtime has one (tmux), else a shell in
    /// the workspace (Docker). Dropping the output end detaches; the process goes on.
    async fn attach(
        &self,
        target: &CaptureTarget,
        size: TermSize,
        term: Option<String>,
    ) -> Result<ExecIo, RuntimeError> {
        let _ = (target, size, term);
        Err(RuntimeError::Unsupported {
            message: format!("the {} runtime has no terminal to attach to", self.kind()),
        })
    }

    /// A tar archive of `request.path`. MUST return `NotFound` when the path does not
    /// exist.
    async fn copy_out(&self, request: &CopyRequest) -> Result<ByteStream, RuntimeError> {
        let _ = request;
        Err(RuntimeError::Unsupported {
            message: format!("the {} runtime cannot copy files", self.kind()),
        })
    }

    /// Extracts the tar archive `archive` into the directory `request.path`. MUST
    /// return `NotFound` when that directory does not exist.
    async fn copy_in(
        &self,
        request: &CopyRequest,
        archive: ByteStream,
    ) -> Result<(), RuntimeError> {
        let _ = (request, archive);
        Err(RuntimeError::Unsupported {
            message: format!("the {} runtime cannot copy files", self.kind()),
        })
    }

    /// Whether the workspace directory holds unsaved work (a git work tree with
    /// uncommitted or untracked files). A directory that is not a git work tree is
    /// clean. MUST return an error when the directory cannot be checked (missing,
    /// unreadable).
    async fn dirty_check(&self, workspace: &WorkspaceRef) -> Result<DirtyReport, RuntimeError>;

    /// Follows the runtime's own event stream (a container died, was removed) for
    /// resources of `engine_id`, calling [`EventWake::wake`] for each event and once after every
    /// (re)connection, until `stop` is cancelled; the engine runs a reconcile pass per
    /// wake-up (bursts coalesce). Optional: a runtime without an event stream returns
    /// at once (the default), and the periodic reconcile is the only trigger. MUST
    /// return promptly once `stop` is cancelled, and MUST NOT fail: reconnect instead.
    async fn watch_events(&self, engine_id: &EngineId, stop: &CancellationToken, wake: &EventWake) {
        let _ = (engine_id, stop, wake);
    }

    /// Whether [`ProcessRuntime::deliver_token`] works: only such a runtime can keep warm
    /// pools of started workspaces (a claim hands the running process its token).
    fn delivers_tokens(&self) -> bool {
        false
    }

    /// Hands a running workspace (launched with [`LaunchRequest::token_by_file`]) its
    /// token: writes it, replacing any earlier one, to the file its process was told
    /// of in `BERTH_TOKEN_FILE`, readable by the workspace's user only, so the token
    /// reaches no other workspace. The write is atomic: a reader sees no token or the
    /// whole token.
    async fn deliver_token(
        &self,
        workspace: &WorkspaceRef,
        token: &crate::ids::WorkspaceToken,
    ) -> Result<(), RuntimeError> {
        let _ = (workspace, token);
        Err(RuntimeError::Unsupported {
            message: format!(
                "the {} runtime cannot hand a running workspace a token",
                self.kind()
            ),
        })
    }
}
