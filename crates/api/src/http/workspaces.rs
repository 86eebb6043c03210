//! Workspaces: create (with idempotency keys), list, get, the op routes, `wait`, the
//! main process's output and `/v1/self`. Handlers parse and authorise, call the engine,
//! and shape the answer; lifecycle decisions stay in the engine.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::ErrorCode;
use berth_core::engine::{IdempotencyKey, ListQuery as EngineListQuery, Snapshot, WaitTarget};
use berth_core::ids::{OpId, RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::merge::OpKind;
use berth_core::model::{
    Actor, CreateWorkspace, GitSource, Limits, OpStatus, Operation, Sandbox, WorkspaceSpec,
};
use berth_core::state::State as WsState;
use sha2::{Digest, Sha256};

use super::dto::{
    CreateRequest, CreateResponse, DeleteQuery, ListQuery, OpQuery, OpResponse, OperationView,
    OutputQuery, OutputView, WaitQuery, WaitResponse, WorkspaceList, WorkspaceView,
};
use super::error::{ApiError, ErrorBody, JsonBody, QueryParams};
use super::state::{AppState, Principal};

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn parse_timeout(
    value: Option<&str>,
    default: Duration,
    max: Duration,
) -> ApiResult<Duration> {
    let Some(text) = value else {
        return Ok(default.min(max));
    };
    let d = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| ApiError::invalid(format!("timeout {text:?} is not a duration: {e}")))?,
    };
    Ok(d.min(max))
}

/// The runtime a request names (tmux by default).
pub(crate) fn runtime_of(name: Option<&str>) -> ApiResult<RuntimeKind> {
    RuntimeKind::parse(name.unwrap_or("tmux"))
        .map_err(|e| ApiError::validation("runtime", e.to_string()))
}

/// The spec a create body describes.
pub(crate) fn spec_of(body: &CreateRequest) -> ApiResult<WorkspaceSpec> {
    Ok(WorkspaceSpec {
        command: body.command.clone().unwrap_or_default(),
        env: body.env.clone().unwrap_or_default(),
        dir: body.dir.clone(),
        git: body.git.as_ref().map(|g| GitSource {
            repo: g.repo.clone(),
            reference: g.reference.clone(),
        }),
        image: body.image.clone(),
        limits: body.limits.as_ref().map(|l| Limits {
            memory_bytes: l.memory_bytes,
            millicpus: l.millicpus,
            pids: l.pids,
        }),
        sandbox: body
            .sandbox
            .as_deref()
            .map(|s| {
                Sandbox::parse(s).ok_or_else(|| {
                    ApiError::validation("sandbox", "sandbox is none, landlock or auto")
                })
            })
            .transpose()?,
        network: body.network,
        run_as_root: body.run_as_root.unwrap_or(false),
        read_only_root: body.read_only_root.unwrap_or(false),
    })
}

/// A create from a named pool: the pool's template, with none of its fields given.
fn from_pool(
    state: &AppState,
    body: &CreateRequest,
    pool: &str,
) -> ApiResult<(RuntimeKind, WorkspaceSpec)> {
    let given = [
        ("runtime", body.runtime.is_some()),
        ("command", body.command.is_some()),
        ("env", body.env.is_some()),
        ("dir", body.dir.is_some()),
        ("git", body.git.is_some()),
        ("image", body.image.is_some()),
        ("limits", body.limits.is_some()),
        ("sandbox", body.sandbox.is_some()),
        ("network", body.network.is_some()),
        ("run_as_root", body.run_as_root.is_some()),
        ("read_only_root", body.read_only_root.is_some()),
    ];
    if let Some((field, _)) = given.iter().find(|(_, set)| *set) {
        return Err(ApiError::validation(
            field,
            format!(
                "{field} comes from the pool {pool}'s template: leave it out, or leave out pool"
            ),
        ));
    }
    let template = WorkspaceName::parse(pool)
        .ok()
        .and_then(|name| state.engine.pool_template(&name))
        .ok_or_else(|| ApiError::validation("pool", format!("there is no pool named {pool:?}")))?;
    Ok((template.runtime, template.spec))
}

fn request_hash(body: &CreateRequest) -> String {
    // serde_json writes struct fields in declaration order and maps sorted: canonical.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?;
    if k.is_empty() || k.len() > 255 {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 255 characters",
        ));
    }
    Ok(Some(k.to_owned()))
}

/// Creates a workspace (and starts it unless `start` is false).
#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", security(("bearer" = [])),
    request_body = CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Same key and body: the first result")),
    responses((status = 201, body = CreateResponse,
            headers(("Idempotent-Replayed" = String, description = "`true` when the answer replays an earlier request with the same key"))),
        (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_workspace(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateRequest>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?.map(|key| IdempotencyKey {
        key,
        request_hash: request_hash(&body),
    });
    let name = WorkspaceName::parse(&body.name)
        .map_err(|e| ApiError::validation("name", e.to_string()))?;
    let (runtime, spec) = match &body.pool {
        Some(pool) => from_pool(&state, &body, pool)?,
        None => (runtime_of(body.runtime.as_deref())?, spec_of(&body)?),
    };
    let request = CreateWorkspace {
        name,
        runtime,
        spec,
        actor: Actor::Api,
    };
    let created = state
        .engine
        .create_workspace(request, body.start.unwrap_or(true), key)
        .await?;
    let response = CreateResponse {
        workspace: WorkspaceView::from(&created.workspace),
        operation: created.operation.as_ref().map(OperationView::from),
    };
    let mut answer = (StatusCode::CREATED, Json(response)).into_response();
    if created.replayed {
        answer.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(answer)
}

/// Lists workspaces by creation.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces", security(("bearer" = [])),
    params(ListQuery), responses((status = 200, body = WorkspaceList), (status = 400, body = ErrorBody)))]
pub async fn list_workspaces(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<WorkspaceList>> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let state_filter = match &q.state {
        None => None,
        Some(s) => Some(
            WsState::ALL
                .into_iter()
                .find(|known| known.as_str() == s)
                .ok_or_else(|| ApiError::invalid(format!("unknown state {s:?}")))?,
        ),
    };
    let runtime = match &q.runtime {
        None => None,
        Some(r) => Some(
            RuntimeKind::parse(r)
                .map_err(|_| ApiError::invalid(format!("unknown runtime {r:?}")))?,
        ),
    };
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(
            WorkspaceId::parse(c)
                .map_err(|_| ApiError::invalid(format!("cursor {c:?} is not valid")))?,
        ),
    };
    let page = state
        .engine
        .list(EngineListQuery {
            state: state_filter,
            runtime,
            after,
            limit,
        })
        .await
        .map_err(|e| match e.code() {
            ErrorCode::ValidationFailed => ApiError::invalid(e.to_string()),
            _ => ApiError::from(e),
        })?;
    Ok(Json(WorkspaceList {
        items: page.items.iter().map(WorkspaceView::from).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// One workspace (by id or name).
#[utoipa::path(get, path = "/v1/workspaces/{id}", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody)))]
pub async fn get_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    Ok(Json(WorkspaceView::from(&state.engine.resolve(&id).await?)))
}

/// `{workspace, operation}` (with `error` when the op ended badly) and a status.
fn op_answer(status: StatusCode, snapshot: Option<&Snapshot>, op: &Operation) -> Response {
    let body = OpResponse {
        workspace: snapshot.map(WorkspaceView::from),
        operation: OperationView::from(op),
        error: None,
    };
    (status, Json(body)).into_response()
}

/// An op that ended failed, superseded or cancelled answers with its error's status,
/// still carrying the workspace and the op.
fn op_failed(snapshot: Option<&Snapshot>, op: &Operation) -> Response {
    let code = op.error.as_ref().map_or(ErrorCode::Internal, |e| e.code);
    let error = match &op.error {
        Some(e) => ApiError::from_op(e),
        None => ApiError::new(code, format!("the op ended {}", op.status.as_str())),
    };
    let body = OpResponse {
        workspace: snapshot.map(WorkspaceView::from),
        operation: OperationView::from(op),
        error: Some(error.detail.clone()),
    };
    let mut response = (error.status(), Json(body)).into_response();
    error.headers(&mut response);
    response
}

async fn run_op(
    state: &AppState,
    id: &str,
    kind: OpKind,
    force: bool,
    wait: Option<bool>,
    timeout: Option<&str>,
) -> ApiResult<Response> {
    let timeout = parse_timeout(timeout, Duration::from_secs(60), state.max_wait())?;
    let ws = state.engine.resolve(id).await?.workspace;
    let ticket = state
        .engine
        .request(&ws.id, kind, Actor::Api, force)
        .await?;
    let op_id = ticket.op_id().clone();
    let settled = if wait.unwrap_or(true) {
        let finished = ticket.clone();
        tokio::select! {
            // A driver cancelled by shutdown ends without a record: not settled.
            r = ticket.wait() => r.ok(),
            () = tokio::time::sleep(timeout) => None,
            () = state.closing.cancelled() => None,
        }
        .or_else(|| finished.finished())
    } else {
        // "202 at once", whatever the op did meanwhile.
        None
    };
    if settled.is_none() && state.closing.is_cancelled() {
        // The store may be closing under us: answer from memory.
        let pending = state.engine.pending(&ws.id);
        let op = [pending.in_flight.clone(), pending.queued.clone()]
            .into_iter()
            .flatten()
            .find(|o| o.id == op_id);
        if let Some(op) = op {
            let snapshot = Snapshot {
                workspace: ws,
                pending,
            };
            return Ok(op_answer(StatusCode::ACCEPTED, Some(&snapshot), &op));
        }
    }
    let current = match state.engine.snapshot(&ws.id).await {
        Ok(s) => Some(s),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    match settled {
        Some(op) if op.status == OpStatus::Succeeded => {
            Ok(op_answer(StatusCode::OK, current.as_ref(), &op))
        }
        Some(op) => Ok(op_failed(current.as_ref(), &op)),
        None => {
            let op = state.engine.op(&op_id).await?;
            Ok(op_answer(StatusCode::ACCEPTED, current.as_ref(), &op))
        }
    }
}

/// Starts a workspace (a no-op on a running one).
#[utoipa::path(post, path = "/v1/workspaces/{id}/start", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), OpQuery),
    responses((status = 200, body = OpResponse), (status = 202, body = OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"),
        (status = 502, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)")))]
pub async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<OpQuery>,
) -> ApiResult<Response> {
    run_op(
        &state,
        &id,
        OpKind::Start,
        false,
        q.wait,
        q.timeout.as_deref(),
    )
    .await
}

/// Stops a workspace (a no-op on a stopped one).
#[utoipa::path(post, path = "/v1/workspaces/{id}/stop", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), OpQuery),
    responses((status = 200, body = OpResponse), (status = 202, body = OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"),
        (status = 502, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"), (status = 504, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)")))]
pub async fn stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<OpQuery>,
) -> ApiResult<Response> {
    run_op(
        &state,
        &id,
        OpKind::Stop,
        false,
        q.wait,
        q.timeout.as_deref(),
    )
    .await
}

/// Restarts a workspace (a new incarnation and token).
#[utoipa::path(post, path = "/v1/workspaces/{id}/restart", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), OpQuery),
    responses((status = 200, body = OpResponse), (status = 202, body = OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"),
        (status = 502, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"), (status = 504, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)")))]
pub async fn restart(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<OpQuery>,
) -> ApiResult<Response> {
    run_op(
        &state,
        &id,
        OpKind::Restart,
        false,
        q.wait,
        q.timeout.as_deref(),
    )
    .await
}

/// Deletes a workspace; refused with 409 `workspace_dirty` when its directory has
/// uncommitted work, unless `force`.
#[utoipa::path(delete, path = "/v1/workspaces/{id}", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), DeleteQuery),
    responses((status = 200, body = OpResponse), (status = 202, body = OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"),
        (status = 502, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)"), (status = 504, body = ErrorBody, description = "The error; when an op ran, the answer also carries `workspace` and `operation` (an OpResponse)")))]
pub async fn delete_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<DeleteQuery>,
) -> ApiResult<Response> {
    run_op(
        &state,
        &id,
        OpKind::Delete,
        q.force.unwrap_or(false),
        q.wait,
        q.timeout.as_deref(),
    )
    .await
}

/// Waits until the workspace reaches a state (or an op ends), or settles elsewhere.
#[utoipa::path(get, path = "/v1/workspaces/{id}/wait", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), WaitQuery),
    responses((status = 200, body = WaitResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody)))]
pub async fn wait(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<WaitQuery>,
) -> ApiResult<Response> {
    let timeout = parse_timeout(
        q.timeout.as_deref(),
        Duration::from_secs(30),
        state.max_wait(),
    )?;
    let target = match (&q.state, &q.op) {
        (Some(s), None) => match s.as_str() {
            "running" => WaitTarget::State(WsState::Running),
            "stopped" => WaitTarget::State(WsState::Stopped),
            "failed" => WaitTarget::State(WsState::Failed),
            "settled" => WaitTarget::Settled,
            _ => {
                return Err(ApiError::invalid(format!(
                    "state {s:?}: wait for running, stopped, failed or settled"
                )));
            }
        },
        (None, Some(op)) => WaitTarget::Op(
            OpId::parse(op).map_err(|_| ApiError::invalid(format!("op {op:?} is not an op id")))?,
        ),
        _ => return Err(ApiError::invalid("give exactly one of state= or op=")),
    };
    let ws = state.engine.resolve(&id).await?.workspace;
    let outcome = tokio::select! {
        r = state.engine.wait(&ws.id, target, timeout) => r?,
        () = state.closing.cancelled() => {
            return Err(ApiError::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
        }
    };
    Ok(Json(WaitResponse {
        workspace: outcome.workspace.as_ref().map(WorkspaceView::from),
        reached: outcome.reached,
        settled_state: outcome
            .settled_state
            .map_or("deleted", WsState::as_str)
            .to_owned(),
        cause: outcome.cause.map(|c| c.code().to_owned()),
        operation: outcome.operation.as_ref().map(OperationView::from),
    })
    .into_response())
}

/// Recent output of the main process (empty when it does not run).
#[utoipa::path(get, path = "/v1/workspaces/{id}/output", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), OutputQuery),
    responses((status = 200, body = OutputView), (status = 404, body = ErrorBody)))]
pub async fn main_output(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<OutputQuery>,
) -> ApiResult<Json<OutputView>> {
    let n = super::sessions::lines(&q)?;
    let ws = state.engine.resolve(&id).await?.workspace;
    let lines = state.engine.output(&ws.id, None, n).await?;
    Ok(Json(OutputView { lines }))
}

/// The workspace a workspace token belongs to.
#[utoipa::path(get, path = "/v1/self", tag = "workspaces", security(("bearer" = [])),
    responses((status = 200, body = WorkspaceView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn whoami(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<WorkspaceView>> {
    match principal {
        Principal::Workspace(ws) => Ok(Json(WorkspaceView::from(
            &state.engine.snapshot(&ws.id).await?,
        ))),
        Principal::Admin => Err(ApiError::not_found(
            "the admin token belongs to no workspace; use a workspace token",
        )),
    }
}
