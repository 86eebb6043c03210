//! The route handlers of `../shared/design/api.md`, each documented for the OpenAPI
//! document. Handlers parse and authorise, call the engine, and shape the answer;
//! lifecycle decisions stay in the engine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::engine::EngineError;
use berth_core::ids::{OpId, RuntimeKind, SessionName, WorkspaceName};
use berth_core::merge::OpKind;
use berth_core::model::{
    Actor, CreateWorkspace, Event, GitSource, Limits, OpStatus, Operation, Workspace, WorkspaceSpec,
};
use berth_core::state::State as WsState;
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, Principal};
use crate::dto::{
    CreateRequest, CreateResponse, DeleteQuery, EventPage, EventView, EventsQuery, Health,
    ListQuery, OpQuery, OperationList, OperationView, OpsQuery, OutputQuery, OutputView,
    SessionList, SessionRequest, SessionView, WaitQuery, WaitResponse, WorkspaceList,
    WorkspaceView,
};
use crate::error::{ApiError, ErrorBody, JsonBody, QueryParams};

type ApiResult<T> = Result<T, ApiError>;

async fn view(state: &AppState, ws: &Workspace) -> WorkspaceView {
    WorkspaceView::new(ws, state.engine.pending(&ws.id).await)
}

fn parse_timeout(value: Option<&str>, default: Duration, max: Duration) -> ApiResult<Duration> {
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

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: 200 once boot recovery finished and the store is open.
#[utoipa::path(get, path = "/readyz", tag = "health", security(("bearer" = [])),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::SeqCst) && !state.engine.is_shutting_down() {
        return Json(Health {
            status: "ok".into(),
        })
        .into_response();
    }
    let status = if state.engine.is_shutting_down() {
        "shutting_down"
    } else {
        "starting"
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: status.into(),
        }),
    )
        .into_response()
}

/// The `/readyz` answer while the daemon is still starting.
pub(crate) fn not_ready_health() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: "starting".into(),
        }),
    )
        .into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.engine).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", security(("bearer" = [])),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

fn request_hash(body: &CreateRequest) -> String {
    // serde_json writes struct fields in declaration order and maps sorted: canonical.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCreate {
    workspace_id: String,
    op_id: Option<String>,
}

/// Creates a workspace (and starts it unless `start` is false).
#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", security(("bearer" = [])),
    request_body = CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the first result")),
    responses((status = 201, body = CreateResponse), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_workspace(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateRequest>,
) -> ApiResult<Response> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?;
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::invalid(
                    "Idempotency-Key must be 1 to 255 characters",
                ));
            }
            Some(k.to_owned())
        }
    };
    let Some(key) = key else {
        return create_now(&state, &body, None).await.map(created);
    };
    let hash = request_hash(&body);
    let stripe = Sha256::digest(key.as_bytes())[0] as usize % state.idempotency.len();
    let _one_at_a_time = state.idempotency[stripe].lock().await;
    let store = state.engine.store();
    if let Some((stored_hash, result)) = store
        .idempotency_key(&key)
        .await
        .map_err(EngineError::from)?
    {
        if stored_hash != hash {
            return Err(ApiError::new(
                "idempotency_conflict",
                format!("Idempotency-Key {key:?} was used with another request body"),
            ));
        }
        let stored: StoredCreate =
            serde_json::from_str(&result).map_err(|e| ApiError::internal(&e))?;
        let ws = state.engine.resolve(&stored.workspace_id).await?;
        let op = match stored.op_id {
            Some(id) => Some(OperationView::from(
                &state
                    .engine
                    .op(&OpId::parse(&id).map_err(EngineError::from)?)
                    .await?,
            )),
            None => None,
        };
        return Ok(created(CreateResponse {
            workspace: view(&state, &ws).await,
            operation: op,
        }));
    }
    let response = create_now(&state, &body, Some((&key, &hash))).await?;
    Ok(created(response))
}

fn created(response: CreateResponse) -> Response {
    (StatusCode::CREATED, Json(response)).into_response()
}

/// Creates (and starts). With an idempotency key, the key is claimed in the same step
/// as the start is requested: right after the create, with the start op's id when the
/// start was accepted, so a retry finds the workspace instead of `name_taken`.
async fn create_now(
    state: &AppState,
    body: &CreateRequest,
    key: Option<(&str, &str)>,
) -> ApiResult<CreateResponse> {
    let name = WorkspaceName::parse(&body.name).map_err(EngineError::from)?;
    let runtime =
        RuntimeKind::parse(body.runtime.as_deref().unwrap_or("tmux")).map_err(EngineError::from)?;
    let spec = WorkspaceSpec {
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
    };
    let ws = state
        .engine
        .create(CreateWorkspace {
            name,
            runtime,
            spec,
            actor: Actor::Api,
        })
        .await?;
    let started = if body.start.unwrap_or(true) {
        Some(state.engine.start(&ws.id, Actor::Api).await)
    } else {
        None
    };
    if let Some((key, hash)) = key {
        let stored = StoredCreate {
            workspace_id: ws.id.to_string(),
            op_id: match &started {
                Some(Ok(ticket)) => Some(ticket.op_id().to_string()),
                _ => None,
            },
        };
        let text = serde_json::to_string(&stored).map_err(|e| ApiError::internal(&e))?;
        state
            .engine
            .store()
            .claim_idempotency_key(key, hash, &text)
            .await
            .map_err(EngineError::from)?;
    }
    let operation = match started {
        Some(ticket) => Some(OperationView::from(
            &state.engine.op(ticket?.op_id()).await?,
        )),
        None => None,
    };
    let ws = state.engine.workspace(&ws.id).await.unwrap_or(ws);
    Ok(CreateResponse {
        workspace: view(state, &ws).await,
        operation,
    })
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
    if let Some(s) = &q.state
        && !WsState::ALL.iter().any(|known| known.as_str() == s)
    {
        return Err(ApiError::invalid(format!("unknown state {s:?}")));
    }
    let mut after = match &q.cursor {
        None => None,
        Some(c) => Some(
            berth_core::ids::WorkspaceId::parse(c)
                .map_err(|_| ApiError::invalid(format!("cursor {c:?} is not valid")))?,
        ),
    };
    let mut items = Vec::new();
    let mut next_cursor = None;
    'pages: loop {
        let page = state
            .engine
            .store()
            .list_workspaces(after.as_ref(), limit)
            .await
            .map_err(EngineError::from)?;
        for ws in &page.items {
            let keep = q.state.as_deref().is_none_or(|s| ws.state.as_str() == s)
                && q.runtime
                    .as_deref()
                    .is_none_or(|r| ws.runtime.as_str() == r);
            if keep {
                items.push(view(&state, ws).await);
                if items.len() == limit {
                    next_cursor = Some(ws.id.to_string());
                    break 'pages;
                }
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(Json(WorkspaceList { items, next_cursor }))
}

/// One workspace (by id or name).
#[utoipa::path(get, path = "/v1/workspaces/{id}", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody)))]
pub async fn get_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    let ws = state.engine.resolve(&id).await?;
    Ok(Json(view(&state, &ws).await))
}

/// `{workspace, operation}` with 200 (settled) or 202 (not yet).
fn op_answer(status: StatusCode, workspace: Option<WorkspaceView>, op: &Operation) -> Response {
    let body = crate::dto::OpResponse {
        workspace,
        operation: OperationView::from(op),
    };
    (status, Json(body)).into_response()
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
    let ws = state.engine.resolve(id).await?;
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
        let pending = state.engine.pending(&ws.id).await;
        let op = [pending.in_flight.clone(), pending.queued.clone()]
            .into_iter()
            .flatten()
            .find(|o| o.id == op_id);
        if let Some(op) = op {
            let workspace = Some(WorkspaceView::new(&ws, pending));
            return Ok(op_answer(StatusCode::ACCEPTED, workspace, &op));
        }
    }
    let current = match state.engine.workspace(&ws.id).await {
        Ok(ws) => Some(view(state, &ws).await),
        Err(EngineError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    match settled {
        Some(op) => {
            if kind == OpKind::Delete
                && op.status == OpStatus::Failed
                && let Some(err) = &op.error
                && matches!(err.code.as_str(), "workspace_dirty" | "dirty_check_failed")
            {
                return Err(ApiError::new(&err.code, err.message.clone())
                    .with_details(serde_json::to_value(&err.details).unwrap_or_default()));
            }
            Ok(op_answer(StatusCode::OK, current, &op))
        }
        None => {
            let op = state.engine.op(&op_id).await?;
            Ok(op_answer(StatusCode::ACCEPTED, current, &op))
        }
    }
}

/// Starts a workspace (a no-op on a running one).
#[utoipa::path(post, path = "/v1/workspaces/{id}/start", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), OpQuery),
    responses((status = 200, body = crate::dto::OpResponse), (status = 202, body = crate::dto::OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
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
    responses((status = 200, body = crate::dto::OpResponse), (status = 202, body = crate::dto::OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
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
    responses((status = 200, body = crate::dto::OpResponse), (status = 202, body = crate::dto::OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
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
    responses((status = 200, body = crate::dto::OpResponse), (status = 202, body = crate::dto::OpResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
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

enum Target {
    State(String),
    Op(OpId),
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
        (Some(s), None) if matches!(s.as_str(), "running" | "stopped" | "failed" | "settled") => {
            Target::State(s.clone())
        }
        (Some(s), None) => {
            return Err(ApiError::invalid(format!(
                "state {s:?}: wait for running, stopped, failed or settled"
            )));
        }
        (None, Some(op)) => Target::Op(
            OpId::parse(op).map_err(|_| ApiError::invalid(format!("op {op:?} is not an op id")))?,
        ),
        _ => return Err(ApiError::invalid("give exactly one of state= or op=")),
    };
    let ws = state.engine.resolve(&id).await?;
    if let Target::Op(op) = &target {
        let found = state.engine.op(op).await?;
        if found.workspace_id != ws.id {
            return Err(ApiError::new(
                "not_found",
                format!("operation {op} is not an operation of workspace {id}"),
            ));
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = state.hub.changes();
    loop {
        changes.borrow_and_update();
        if let Some(answer) = evaluate(&state, &ws.id, &target).await? {
            return Ok(Json(answer).into_response());
        }
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return Err(ApiError::from(EngineError::ShuttingDown));
                }
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = tokio::time::sleep_until(deadline) => {
                let now = state.engine.workspace(&ws.id).await.ok();
                return Err(ApiError::new("wait_timeout", "nothing settled before the timeout")
                    .with_details(serde_json::json!({
                        "state": now.map(|w| w.state.as_str()),
                    })));
            }
            () = state.closing.cancelled() => return Err(ApiError::from(EngineError::ShuttingDown)),
        }
    }
}

async fn evaluate(
    state: &AppState,
    id: &berth_core::ids::WorkspaceId,
    target: &Target,
) -> ApiResult<Option<WaitResponse>> {
    let ws = match state.engine.workspace(id).await {
        Ok(ws) => Some(ws),
        Err(EngineError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let pending = state.engine.pending(id).await;
    let idle = pending.in_flight.is_none() && pending.queued.is_none();
    let settled_state = ws
        .as_ref()
        .map_or("deleted".to_owned(), |w| w.state.as_str().to_owned());
    let settled = ws.as_ref().is_none_or(|w| !w.state.is_transitional()) && idle;
    let cause = ws
        .as_ref()
        .and_then(|w| w.last_error.as_ref())
        .filter(|_| ws.as_ref().is_some_and(|w| w.state == WsState::Failed))
        .map(|e| e.code.code().to_owned());
    let (reached, op): (bool, Option<Operation>) = match target {
        Target::Op(op_id) => {
            let op = state.engine.op(op_id).await?;
            if !op.status.is_terminal() {
                return Ok(None);
            }
            (op.status == OpStatus::Succeeded, Some(op))
        }
        Target::State(s) => {
            let reached = if s == "settled" {
                settled
            } else {
                ws.as_ref().is_some_and(|w| w.state.as_str() == s)
            };
            if !reached && !settled {
                return Ok(None);
            }
            let last = state
                .engine
                .store()
                .list_ops(id, 1)
                .await
                .map_err(EngineError::from)?;
            (reached, last.into_iter().next())
        }
    };
    let workspace = match &ws {
        Some(w) => Some(view(state, w).await),
        None => None,
    };
    Ok(Some(WaitResponse {
        workspace,
        reached,
        settled_state,
        cause,
        operation: op.as_ref().map(OperationView::from),
    }))
}

/// One op.
#[utoipa::path(get, path = "/v1/operations/{op}", tag = "operations", security(("bearer" = [])),
    params(("op" = String, Path, description = "Operation id")),
    responses((status = 200, body = OperationView), (status = 404, body = ErrorBody)))]
pub async fn get_operation(
    State(state): State<AppState>,
    Path(op): Path<String>,
) -> ApiResult<Json<OperationView>> {
    let id = OpId::parse(&op)
        .map_err(|_| ApiError::new("not_found", format!("operation {op:?} not found")))?;
    Ok(Json(OperationView::from(&state.engine.op(&id).await?)))
}

/// A workspace's ops, newest first.
#[utoipa::path(get, path = "/v1/workspaces/{id}/operations", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), OpsQuery),
    responses((status = 200, body = OperationList), (status = 404, body = ErrorBody)))]
pub async fn list_operations(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<OpsQuery>,
) -> ApiResult<Json<OperationList>> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let ws = state.engine.resolve(&id).await?;
    let ops = state
        .engine
        .store()
        .list_ops(&ws.id, limit)
        .await
        .map_err(EngineError::from)?;
    Ok(Json(OperationList {
        items: ops.iter().map(OperationView::from).collect(),
    }))
}

/// Lifecycle events: a Server-Sent Events stream (replay, then live), or a JSON page
/// with `format=json`.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq")),
    responses((status = 200, description = "text/event-stream, or an EventPage with format=json", body = EventPage),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Response> {
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event seq"))?,
        ),
    };
    let since = last_id.or(q.since).unwrap_or(0);
    let workspace = match &q.workspace {
        None => None,
        Some(w) => Some(state.engine.resolve(w).await?.id),
    };
    match q.format.as_deref() {
        Some("json") => {
            let limit = q.limit.unwrap_or(100);
            if limit == 0 || limit > 1000 {
                return Err(ApiError::invalid("limit must be 1 to 1000"));
            }
            let page = state
                .engine
                .events(since, workspace.as_ref(), limit)
                .await?;
            let next_since = page.last().map_or(since, |e| e.seq);
            Ok(Json(EventPage {
                items: page.iter().map(EventView::from).collect(),
                next_since,
            })
            .into_response())
        }
        None | Some("sse") => {
            // Subscribe before the replay reads the store: nothing falls in between.
            let feed = Feed {
                engine: state.engine.clone(),
                live: state.hub.subscribe(),
                cursor: since,
                workspace,
                backlog: VecDeque::new(),
                replaying: true,
                closing: state.closing.clone(),
            };
            Ok(Sse::new(feed.stream())
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response())
        }
        Some(other) => Err(ApiError::invalid(format!(
            "format {other:?}: use json or sse"
        ))),
    }
}

struct Feed {
    engine: berth_core::Engine,
    live: broadcast::Receiver<Arc<Event>>,
    cursor: u64,
    workspace: Option<berth_core::ids::WorkspaceId>,
    backlog: VecDeque<Event>,
    /// Reading the store (at first, and after lagging behind the live feed).
    replaying: bool,
    closing: CancellationToken,
}

impl Feed {
    fn stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures_util::stream::unfold(self, |mut feed| async move {
            let event = feed.next().await?;
            Some((Ok(event), feed))
        })
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                self.cursor = e.seq;
                let data = serde_json::to_string(&EventView::from(&e)).ok()?;
                return Some(SseEvent::default().id(e.seq.to_string()).data(data));
            }
            if self.replaying {
                let page = tokio::select! {
                    r = self.engine.events(self.cursor, self.workspace.as_ref(), 500) => r.ok()?,
                    () = self.closing.cancelled() => return None,
                };
                self.replaying = page.len() == 500;
                self.backlog.extend(page);
                continue;
            }
            tokio::select! {
                () = self.closing.cancelled() => return None,
                r = self.live.recv() => match r {
                    Ok(e) => {
                        let wanted = self.workspace.as_ref().is_none_or(|w| *w == e.event.workspace_id);
                        if e.seq > self.cursor && wanted {
                            self.backlog.push_back((*e).clone());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.replaying = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

fn session_name(name: &str) -> ApiResult<SessionName> {
    SessionName::parse(name).map_err(|e| ApiError::from(EngineError::from(e)))
}

/// Launches a named session (returns the running one when the name is taken).
#[utoipa::path(post, path = "/v1/workspaces/{id}/sessions", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name")), request_body = SessionRequest,
    responses((status = 200, body = SessionView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn launch_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SessionRequest>,
) -> ApiResult<Json<SessionView>> {
    let name = session_name(&body.name)?;
    let ws = state.engine.resolve(&id).await?;
    let session = state
        .engine
        .launch_session(&ws.id, name, body.command, body.env.unwrap_or_default())
        .await?;
    Ok(Json(SessionView::from(&session)))
}

/// A workspace's sessions.
#[utoipa::path(get, path = "/v1/workspaces/{id}/sessions", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = SessionList), (status = 404, body = ErrorBody)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionList>> {
    let ws = state.engine.resolve(&id).await?;
    let sessions = state.engine.sessions(&ws.id).await?;
    Ok(Json(SessionList {
        items: sessions.iter().map(SessionView::from).collect(),
    }))
}

/// Stops and forgets one session.
#[utoipa::path(delete, path = "/v1/workspaces/{id}/sessions/{name}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), ("name" = String, Path, description = "Session name")),
    responses((status = 204, description = "Stopped"), (status = 404, body = ErrorBody)))]
pub async fn stop_session(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ws = state.engine.resolve(&id).await?;
    let name = SessionName::parse(&name)
        .map_err(|_| ApiError::new("not_found", format!("session {name:?} not found")))?;
    state.engine.stop_session(&ws.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn lines(q: &OutputQuery) -> ApiResult<usize> {
    let n = q.lines.unwrap_or(200);
    if n == 0 || n > 10_000 {
        return Err(ApiError::invalid("lines must be 1 to 10000"));
    }
    Ok(n)
}

/// Recent output of a session.
#[utoipa::path(get, path = "/v1/workspaces/{id}/sessions/{name}/output", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), ("name" = String, Path, description = "Session name"), OutputQuery),
    responses((status = 200, body = OutputView), (status = 404, body = ErrorBody)))]
pub async fn session_output(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    QueryParams(q): QueryParams<OutputQuery>,
) -> ApiResult<Json<OutputView>> {
    let n = lines(&q)?;
    let ws = state.engine.resolve(&id).await?;
    let name = SessionName::parse(&name)
        .map_err(|_| ApiError::new("not_found", format!("session {name:?} not found")))?;
    let lines = state.engine.output(&ws.id, Some(&name), n).await?;
    Ok(Json(OutputView { lines }))
}

/// Recent output of the main process.
#[utoipa::path(get, path = "/v1/workspaces/{id}/output", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), OutputQuery),
    responses((status = 200, body = OutputView), (status = 404, body = ErrorBody)))]
pub async fn main_output(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<OutputQuery>,
) -> ApiResult<Json<OutputView>> {
    let n = lines(&q)?;
    let ws = state.engine.resolve(&id).await?;
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
        Principal::Workspace(ws) => Ok(Json(view(&state, &ws).await)),
        Principal::Admin => Err(ApiError::new(
            "not_found",
            "the admin token belongs to no workspace; use a workspace token",
        )),
    }
}
