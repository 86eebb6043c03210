//! The records the engine keeps: workspaces, operations, events and sessions.
//!
//! These are plain data shared by the engine, the store port and the API. They carry
//! no behaviour beyond small derived views.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;
use crate::ids::{
    Generation, Incarnation, OpId, RuntimeKind, SessionName, WorkspaceId, WorkspaceName,
};
use crate::merge::OpKind;
use crate::state::{FailureReason, State};

/// Wall-clock time, UTC.
pub type Timestamp = DateTime<Utc>;

/// A git source for a workspace directory: the runtime creates a worktree at `ref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Path or URL of the repository.
    pub repo: String,
    /// Branch, tag or commit to check out.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Resource limits a runtime applies (docker: cgroup limits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub millicpus: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

/// How a local workspace's processes are confined (a container is confined by its
/// runtime; see docs/security.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sandbox {
    /// None: the processes run as the daemon's user with its access.
    #[default]
    None,
    /// Landlock and namespaces: write only the workspace's directory and a private
    /// temp directory, read the system directories, nothing of berth's. A kernel
    /// that cannot enforce it fails the start.
    Landlock,
    /// `landlock` where the kernel can enforce it, `none` elsewhere.
    Auto,
}

impl Sandbox {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Sandbox::None => "none",
            Sandbox::Landlock => "landlock",
            Sandbox::Auto => "auto",
        }
    }

    /// From the API's name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Sandbox::None),
            "landlock" => Some(Sandbox::Landlock),
            "auto" => Some(Sandbox::Auto),
            _ => None,
        }
    }
}

/// What a workspace runs and where. Validated by the engine at create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// The main process's argv. Empty means the runtime's default shell.
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment for the main process and its sessions.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A directory the user brings (never deleted by berth).
    pub dir: Option<String>,
    /// A git worktree the runtime creates (and removes on delete).
    pub git: Option<GitSource>,
    /// Container image (docker).
    pub image: Option<String>,
    /// Resource limits.
    pub limits: Option<Limits>,
    /// How its processes are confined (tmux). `None`: the daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    /// `Some(false)` cuts the network (a tmux sandbox; a container's network mode
    /// `none`). `None`: the network is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    /// Run the container as root (docker). By default it runs as an unprivileged
    /// user (docs/security.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_root: bool,
    /// A read-only root filesystem (docker; `/tmp` stays writable, a tmpfs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
}

/// Why a workspace failed, as shown in `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// The stable reason.
    pub code: FailureReason,
    /// A sentence naming the thing.
    pub message: String,
    /// When it happened.
    pub at: Timestamp,
}

/// A workspace record as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// Stable id.
    pub id: WorkspaceId,
    /// Unique human name.
    pub name: WorkspaceName,
    /// The runtime that runs it.
    pub runtime: RuntimeKind,
    /// Current state.
    pub state: State,
    /// Incremented by every real start; 0 before the first.
    pub incarnation: Incarnation,
    /// What it runs.
    pub spec: WorkspaceSpec,
    /// The directory the runtime prepared (absolute), once known.
    pub dir: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Set when `state` is `failed`.
    pub last_error: Option<LastError>,
    /// Optimistic concurrency version, +1 on every write.
    pub version: u64,
    /// The warm pool this workspace waits in, until a create claims it (`None`: an
    /// ordinary workspace, or one already claimed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<WorkspaceName>,
}

/// Who asked for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The HTTP API.
    Api,
    /// The CLI.
    Cli,
    /// The reconciler.
    Reconciler,
    /// A policy (idle stop, token rotation, ...).
    Policy,
    /// The engine itself (recovery, shutdown).
    Engine,
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Waiting behind the op in flight.
    Queued,
    /// In flight.
    Running,
    /// Reached its goal.
    Succeeded,
    /// Ended with an error (see `error`).
    Failed,
    /// Preempted by a stop or delete (see `superseded_by`).
    Cancelled,
    /// Replaced in the queue by a newer request (see `superseded_by`).
    Superseded,
    /// The engine shut down (or crashed) while it ran; recovery finished the workspace.
    Interrupted,
}

impl OpStatus {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Queued => "queued",
            OpStatus::Running => "running",
            OpStatus::Succeeded => "succeeded",
            OpStatus::Failed => "failed",
            OpStatus::Cancelled => "cancelled",
            OpStatus::Superseded => "superseded",
            OpStatus::Interrupted => "interrupted",
        }
    }

    /// Whether the op has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, OpStatus::Queued | OpStatus::Running)
    }
}

/// An error recorded on an op: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpError {
    /// Stable code (the API's error codes).
    pub code: ErrorCode,
    /// A sentence naming the thing.
    pub message: String,
    /// Structured details (the dirty files, the resource name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, Vec<String>>,
}

impl OpError {
    /// An error with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail list (`files`, `resources`).
    #[must_use]
    pub fn with_detail(mut self, key: &str, values: Vec<String>) -> Self {
        self.details.insert(key.to_owned(), values);
        self
    }
}

/// One requested transition: the intent log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Stable id.
    pub id: OpId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// What was asked.
    pub kind: OpKind,
    /// Where it is.
    pub status: OpStatus,
    /// Who asked first.
    pub actor: Actor,
    /// For delete: skip the dirty preflight.
    pub force: bool,
    /// When it was requested.
    pub requested_at: Timestamp,
    /// When it began to run.
    pub started_at: Option<Timestamp>,
    /// When its start phase began (start and restart), the moment that decides which
    /// callers a cycle may serve.
    pub start_phase_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// How many later requests merged into it.
    pub joined: u32,
    /// The workspace's state when it ended.
    pub result_state: Option<State>,
    /// The incarnation it launched (start and restart that minted one).
    pub incarnation: Option<Incarnation>,
    /// Why it failed.
    pub error: Option<OpError>,
    /// The op that replaced or preempted it.
    pub superseded_by: Option<OpId>,
}

/// What an event records as its cause. Stable snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The workspace was created.
    Created,
    /// A start began.
    Start,
    /// The main process was launched.
    Launched,
    /// Recovery adopted a live resource of the current incarnation.
    Adopted,
    /// The start failed.
    StartFailed,
    /// The start hit the start ceiling.
    StartTimeout,
    /// The start was preempted by a stop or delete.
    StartCancelled,
    /// A stop began.
    Stop,
    /// The stop completed.
    Stopped,
    /// The stop failed.
    StopFailed,
    /// The main process exited by itself.
    Exited,
    /// The runtime had no resource for a running workspace.
    RuntimeMissing,
    /// A delete began removing things.
    Delete,
    /// The workspace is gone.
    Deleted,
    /// Boot recovery finished a transitional state.
    Recovered,
    /// The engine shut down while an op ran.
    Interrupted,
    /// A create claimed this warm pool member (it took the create's name and a token).
    Claimed,
}

/// An event before the store numbered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// When.
    pub at: Timestamp,
    /// Which workspace.
    pub workspace_id: WorkspaceId,
    /// The op that caused it, if any.
    pub op_id: Option<OpId>,
    /// Who.
    pub actor: Actor,
    /// State before (`None` for creation).
    pub from: Option<State>,
    /// State after (`None` once deleted).
    pub to: Option<State>,
    /// Why.
    pub cause: Cause,
    /// A sentence for people.
    pub message: String,
}

/// An event as stored: numbered by a monotonic `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic cursor, starting at 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Whether a session's process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Running.
    Running,
    /// Exited (see `exit_code`).
    Exited,
}

/// A session row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The workspace it runs in.
    pub workspace_id: WorkspaceId,
    /// Its name, unique within the workspace.
    pub name: SessionName,
    /// Its argv.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// The creation generation the store assigned.
    pub generation: Generation,
    /// Creation time.
    pub created_at: Timestamp,
    /// Running or exited.
    pub state: SessionState,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
}

/// A request to create a workspace, validated by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateWorkspace {
    /// Unique name.
    pub name: WorkspaceName,
    /// The runtime to use.
    pub runtime: RuntimeKind,
    /// What to run.
    pub spec: WorkspaceSpec,
    /// Who asks.
    pub actor: Actor,
}

/// A warm pool: `size` workspaces of one template kept created (and started, with
/// `start`) ahead of demand; a create whose runtime and spec equal the template claims
/// one instead of creating a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// The pool's name (a workspace name of at most [`Pool::MAX_NAME`] characters: its
    /// members are named `<pool>-<8 hex digits>` until claimed).
    pub name: WorkspaceName,
    /// The members' runtime.
    pub runtime: RuntimeKind,
    /// The members' spec (no `dir` or `git`: each member has its own directory).
    pub spec: WorkspaceSpec,
    /// How many unclaimed members to keep.
    pub size: u32,
    /// Keep the members running (a claim then hands out a running workspace).
    pub start: bool,
}

impl Pool {
    /// The longest pool name.
    pub const MAX_NAME: usize = 54;
    /// The most members one pool keeps.
    pub const MAX_SIZE: u32 = 256;
}
