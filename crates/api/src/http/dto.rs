//! The shapes of the HTTP API (`../shared/design/api.md`, "Resources"). They are kept
//! apart from the core's records so a change inside the engine never changes the
//! contract by accident; each view converts from its record in one place.

use std::collections::BTreeMap;

use berth_core::engine::{PendingView, PoolStatus, Snapshot};
use berth_core::model::{Event, Operation, Session, Workspace, WorkspaceSpec};

use super::error::ErrorDetail;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `{repo, ref}`: a git worktree the runtime creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitView {
    /// The repository (a path or URL git understands).
    pub repo: String,
    /// The ref to check out.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Resource limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsView {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub millicpus: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

/// What a workspace runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SpecView {
    /// The main process's argv.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// A directory the user brings.
    pub dir: Option<String>,
    /// An image (Docker runtime).
    pub image: Option<String>,
    /// A git worktree source.
    pub git: Option<GitView>,
    /// Resource limits.
    pub limits: Option<LimitsView>,
    /// `none`, `landlock` or `auto` (tmux); absent: the daemon's default.
    pub sandbox: Option<String>,
    /// `false`: no network.
    pub network: Option<bool>,
    /// The container runs as root (docker).
    pub run_as_root: bool,
    /// The container's root filesystem is read-only (docker).
    pub read_only_root: bool,
}

/// Why a workspace failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastErrorView {
    /// `start_timeout`, `start_failed`, `runtime_missing`, ...
    pub code: String,
    /// A sentence.
    pub message: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The ops in flight and queued on a workspace.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PendingOps {
    /// The op running now.
    pub in_flight: Option<OperationView>,
    /// The op queued behind it.
    pub queued: Option<OperationView>,
}

/// A workspace.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceView {
    /// Opaque id.
    pub id: String,
    /// Unique name (DNS label).
    pub name: String,
    /// `tmux` or `docker`.
    pub runtime: String,
    /// `stopped`, `starting`, `running`, `stopping`, `failed`, `deleting`.
    pub state: String,
    /// Bumped by every start; tokens belong to one incarnation.
    pub incarnation: u64,
    /// What it runs.
    pub spec: SpecView,
    /// Its directory, when known.
    pub dir: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Why it failed, when it did.
    pub last_error: Option<LastErrorView>,
    /// Ops in flight and queued.
    pub pending: PendingOps,
    /// The warm pool it waits in, unclaimed (`null` for every other workspace).
    pub pool: Option<String>,
}

impl From<&WorkspaceSpec> for SpecView {
    fn from(spec: &WorkspaceSpec) -> Self {
        Self {
            command: spec.command.clone(),
            env: spec.env.clone(),
            dir: spec.dir.clone(),
            image: spec.image.clone(),
            git: spec.git.as_ref().map(|g| GitView {
                repo: g.repo.clone(),
                reference: g.reference.clone(),
            }),
            limits: spec.limits.as_ref().map(|l| LimitsView {
                memory_bytes: l.memory_bytes,
                millicpus: l.millicpus,
                pids: l.pids,
            }),
            sandbox: spec.sandbox.map(|s| s.as_str().to_owned()),
            network: spec.network,
            run_as_root: spec.run_as_root,
            read_only_root: spec.read_only_root,
        }
    }
}

impl From<&Snapshot> for WorkspaceView {
    fn from(s: &Snapshot) -> Self {
        Self::new(&s.workspace, &s.pending)
    }
}

impl WorkspaceView {
    /// The view of a record with its pending ops.
    pub fn new(ws: &Workspace, pending: &PendingView) -> Self {
        let spec = &ws.spec;
        Self {
            id: ws.id.to_string(),
            name: ws.name.to_string(),
            runtime: ws.runtime.to_string(),
            state: ws.state.as_str().to_owned(),
            incarnation: ws.incarnation.0,
            spec: SpecView::from(spec),
            dir: ws.dir.clone(),
            created_at: ws.created_at,
            updated_at: ws.updated_at,
            last_error: ws.last_error.as_ref().map(|e| LastErrorView {
                code: e.code.code().to_owned(),
                message: e.message.clone(),
                at: e.at,
            }),
            pending: PendingOps {
                in_flight: pending.in_flight.as_ref().map(OperationView::from),
                queued: pending.queued.as_ref().map(OperationView::from),
            },
            pool: ws.pool.as_ref().map(ToString::to_string),
        }
    }
}

/// An op's error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpErrorView {
    /// Stable code.
    pub code: String,
    /// A sentence.
    pub message: String,
    /// Details (the dirty check's files).
    pub details: BTreeMap<String, Vec<String>>,
}

/// An operation (an entry of the intent log).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationView {
    /// Opaque id.
    pub id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// `start`, `stop`, `restart`, `delete`.
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`, `superseded`, `interrupted`.
    pub status: String,
    /// Who asked: `api`, `cli`, `reconciler`, ...
    pub actor: String,
    /// Delete only: the dirty check was skipped.
    pub force: bool,
    /// Requested.
    pub requested_at: DateTime<Utc>,
    /// Began running.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Requests merged into it.
    pub joined: u32,
    /// The workspace's state when it ended.
    pub result_state: Option<String>,
    /// Why it failed.
    pub error: Option<OpErrorView>,
    /// The op that replaced it.
    pub superseded_by: Option<String>,
}

fn to_snake<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl From<&Operation> for OperationView {
    fn from(op: &Operation) -> Self {
        Self {
            id: op.id.to_string(),
            workspace_id: op.workspace_id.to_string(),
            kind: to_snake(&op.kind),
            status: to_snake(&op.status),
            actor: to_snake(&op.actor),
            force: op.force,
            requested_at: op.requested_at,
            started_at: op.started_at,
            finished_at: op.finished_at,
            joined: op.joined,
            result_state: op.result_state.map(|s| s.as_str().to_owned()),
            error: op.error.as_ref().map(|e| OpErrorView {
                code: e.code.as_str().to_owned(),
                message: e.message.clone(),
                details: e.details.clone(),
            }),
            superseded_by: op.superseded_by.as_ref().map(ToString::to_string),
        }
    }
}

/// A lifecycle event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Monotonic sequence number (the SSE id).
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// The workspace.
    pub workspace_id: String,
    /// The op that caused it.
    pub op_id: Option<String>,
    /// Who.
    pub actor: String,
    /// Previous state (none for `created`).
    pub from: Option<String>,
    /// New state (none once deleted).
    pub to: Option<String>,
    /// Why: `start`, `launched`, `runtime_missing`, ...
    pub cause: String,
    /// A sentence.
    pub message: String,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        let n = &e.event;
        Self {
            seq: e.seq,
            at: n.at,
            workspace_id: n.workspace_id.to_string(),
            op_id: n.op_id.as_ref().map(ToString::to_string),
            actor: to_snake(&n.actor),
            from: n.from.map(|s| s.as_str().to_owned()),
            to: n.to.map(|s| s.as_str().to_owned()),
            cause: to_snake(&n.cause),
            message: n.message.clone(),
        }
    }
}

/// A named extra process of a workspace.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionView {
    /// Name (unique within the workspace).
    pub name: String,
    /// argv.
    pub command: Vec<String>,
    /// `running` or `exited`.
    pub state: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        Self {
            name: s.name.to_string(),
            command: s.command.clone(),
            state: to_snake(&s.state),
            created_at: s.created_at,
            exit_code: s.exit_code,
        }
    }
}

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Unique name: 1-63 of `[a-z0-9-]`, starting with a letter, not ending with `-`.
    #[schema(pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// `tmux` (default) or `docker`.
    #[serde(default)]
    #[schema(pattern = "^(tmux|docker)$")]
    pub runtime: Option<String>,
    /// The main process's argv (default: the runtime's shell).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Extra environment.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// An absolute directory the user brings (never deleted by berth).
    #[serde(default)]
    pub dir: Option<String>,
    /// A git worktree to create.
    #[serde(default)]
    pub git: Option<GitView>,
    /// An image (Docker runtime).
    #[serde(default)]
    pub image: Option<String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Option<LimitsView>,
    /// How a tmux workspace's processes are confined: `none`, `landlock` (Landlock and
    /// namespaces; refused where the kernel cannot enforce it) or `auto`. Absent: the
    /// daemon's `--sandbox`. See docs/security.md.
    #[serde(default)]
    #[schema(pattern = "^(none|landlock|auto)$")]
    pub sandbox: Option<String>,
    /// `false` cuts the network (tmux: needs a sandbox; Docker: network mode `none`).
    #[serde(default)]
    pub network: Option<bool>,
    /// Docker: run the container as root. By default it runs as an unprivileged user
    /// (the daemon's own, or a dedicated one when the daemon runs as root).
    #[serde(default)]
    pub run_as_root: Option<bool>,
    /// Docker: a read-only root filesystem (`/tmp` stays writable).
    #[serde(default)]
    pub read_only_root: Option<bool>,
    /// Start it right away (default true).
    #[serde(default)]
    pub start: Option<bool>,
    /// Take the template of this warm pool (and one of its ready members when there
    /// is one); the template's fields (`runtime`, `command`, `env`, `dir`, `git`,
    /// `image`, `limits`, `sandbox`, `network`, `run_as_root`, `read_only_root`) are
    /// then left out. Without it, a create whose fields equal a pool's template claims
    /// a member too.
    #[serde(default)]
    #[schema(pattern = "^[a-z]([a-z0-9-]{0,52}[a-z0-9])?$")]
    pub pool: Option<String>,
}

/// `201` of create.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreateResponse {
    /// The workspace.
    pub workspace: WorkspaceView,
    /// Its start op, when `start` was true.
    pub operation: Option<OperationView>,
}

/// A workspace with the op a request ran. When the op ended failed, superseded or
/// cancelled, the response has the status of its error's code and `error` too.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpResponse {
    /// The error, when the op ended badly (the same as `operation.error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// The workspace (absent once deleted).
    pub workspace: Option<WorkspaceView>,
    /// The op.
    pub operation: OperationView,
}

/// A page of workspaces.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceList {
    /// The workspaces, by creation.
    pub items: Vec<WorkspaceView>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// A workspace's ops, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationList {
    /// The ops.
    pub items: Vec<OperationView>,
    /// Always null: the page is the newest `limit` ops (the list shape is the same as
    /// everywhere else).
    pub next_cursor: Option<String>,
}

/// A page of events.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventPage {
    /// The events, by `seq`.
    pub items: Vec<EventView>,
    /// Pass as `since` for the next page.
    pub next_since: u64,
}

/// The answer of `wait`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WaitResponse {
    /// The workspace now (absent once deleted).
    pub workspace: Option<WorkspaceView>,
    /// Whether the target was reached.
    pub reached: bool,
    /// The state it settled in (`deleted` once gone).
    pub settled_state: String,
    /// The failure reason when it settled `failed`.
    pub cause: Option<String>,
    /// The op waited for, or the last op.
    pub operation: Option<OperationView>,
}

/// `POST /v1/workspaces/{id}/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// Name (DNS label, unique within the workspace).
    #[schema(pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// argv.
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// Sessions of a workspace.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionList {
    /// The sessions.
    pub items: Vec<SessionView>,
    /// Always null: every session is on this page (the list shape is the same as
    /// everywhere else).
    pub next_cursor: Option<String>,
}

/// Recent output lines.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputView {
    /// The lines, oldest first.
    pub lines: Vec<String>,
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `starting` / `shutting_down` on /readyz.
    pub status: String,
    /// On a ready `/readyz`: whether each runtime answers. A `degraded` runtime delays
    /// or fails only its own workspaces' ops; the daemon stays ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtimes: Option<std::collections::BTreeMap<String, RuntimeHealthView>>,
}

impl Health {
    /// A status with no runtime detail.
    pub fn status(status: &str) -> Self {
        Self {
            status: status.to_owned(),
            runtimes: None,
        }
    }
}

/// One runtime's health.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuntimeHealthView {
    /// `up`, `degraded`, or `unknown` (not asked yet).
    pub state: String,
    /// Since when, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `?wait=&timeout=` of op routes.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OpQuery {
    /// Block until the op settles (default true).
    pub wait: Option<bool>,
    /// How long to block (default `60s`; `500ms`, `2m` also work).
    #[param(pattern = "^[0-9]{1,9}(ns|us|ms|s|m|h|d)?$")]
    pub timeout: Option<String>,
}

/// `DELETE` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Skip the dirty check.
    pub force: Option<bool>,
    /// Block until the op settles (default true).
    pub wait: Option<bool>,
    /// How long to block (default `60s`).
    #[param(pattern = "^[0-9]{1,9}(ns|us|ms|s|m|h|d)?$")]
    pub timeout: Option<String>,
}

/// List query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<String>,
    /// Only this runtime.
    pub runtime: Option<String>,
    /// Page size (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Wait query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// `running`, `stopped`, `failed` or `settled`.
    pub state: Option<String>,
    /// An op id: wait for that op to end.
    pub op: Option<String>,
    /// How long (default `30s`).
    #[param(pattern = "^[0-9]{1,9}(ns|us|ms|s|m|h|d)?$")]
    pub timeout: Option<String>,
}

/// Events query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this workspace (id).
    pub workspace: Option<String>,
    /// Events after this seq (`Last-Event-ID` wins when both are given).
    pub since: Option<u64>,
    /// `json` for a page instead of a stream.
    pub format: Option<String>,
    /// Page size for `format=json` (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Output query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// How many recent lines (default 200, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub lines: Option<usize>,
}

/// List-ops query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OpsQuery {
    /// How many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `PUT /v1/pools/{name}`: a warm pool's template and size.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    /// `tmux` (default) or `docker`. A pool of started members needs a runtime that
    /// can hand a running workspace its token (docker).
    #[serde(default)]
    #[schema(pattern = "^(tmux|docker)$")]
    pub runtime: Option<String>,
    /// The members' argv.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The members' environment.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// The image (Docker).
    #[serde(default)]
    pub image: Option<String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Option<LimitsView>,
    /// As in a create (tmux).
    #[serde(default)]
    #[schema(pattern = "^(none|landlock|auto)$")]
    pub sandbox: Option<String>,
    /// As in a create.
    #[serde(default)]
    pub network: Option<bool>,
    /// As in a create (Docker).
    #[serde(default)]
    pub run_as_root: Option<bool>,
    /// As in a create (Docker).
    #[serde(default)]
    pub read_only_root: Option<bool>,
    /// How many unclaimed members to keep, 0 to 256.
    #[schema(minimum = 0, maximum = 256)]
    pub size: u32,
    /// Keep the members running, so a claim hands out a running workspace (default
    /// true); `false` keeps them created only.
    #[serde(default)]
    pub start: Option<bool>,
}

/// A member of a warm pool, not yet claimed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolMemberView {
    /// Opaque id (kept when a create claims it).
    pub id: String,
    /// `<pool>-<8 hex digits>` until claimed.
    pub name: String,
    /// Its state (`running` members of a started pool are ready).
    pub state: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// A warm pool.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolView {
    /// Its name.
    pub name: String,
    /// The members' runtime.
    pub runtime: String,
    /// The template: a create with these fields (or with `pool`) claims a member.
    pub spec: SpecView,
    /// Unclaimed members kept.
    pub size: u32,
    /// Whether members are kept running.
    pub start: bool,
    /// Members a create can claim now.
    pub ready: usize,
    /// The unclaimed members (this daemon's, with several daemons), by creation.
    pub members: Vec<PoolMemberView>,
}

impl From<&PoolStatus> for PoolView {
    fn from(p: &PoolStatus) -> Self {
        Self {
            name: p.pool.name.to_string(),
            runtime: p.pool.runtime.to_string(),
            spec: SpecView::from(&p.pool.spec),
            size: p.pool.size,
            start: p.pool.start,
            ready: p.ready(),
            members: p
                .members
                .iter()
                .map(|m| PoolMemberView {
                    id: m.id.to_string(),
                    name: m.name.to_string(),
                    state: m.state.as_str().to_owned(),
                    created_at: m.created_at,
                })
                .collect(),
        }
    }
}

/// The warm pools, by name.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolList {
    /// The pools.
    pub items: Vec<PoolView>,
}
