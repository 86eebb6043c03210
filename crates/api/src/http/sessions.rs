//! Sessions: named extra processes of a running workspace.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use berth_core::ids::SessionName;

use super::dto::{OutputQuery, OutputView, SessionList, SessionRequest, SessionView};
use super::error::{ApiError, ErrorBody, JsonBody, QueryParams};
use super::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

fn session_name(name: &str) -> ApiResult<SessionName> {
    SessionName::parse(name).map_err(|e| ApiError::validation("name", e.to_string()))
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
    let ws = state.engine.resolve(&id).await?.workspace;
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
    let ws = state.engine.resolve(&id).await?.workspace;
    let sessions = state.engine.sessions(&ws.id).await?;
    Ok(Json(SessionList {
        items: sessions.iter().map(SessionView::from).collect(),
        next_cursor: None,
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
    let ws = state.engine.resolve(&id).await?.workspace;
    let name = SessionName::parse(&name)
        .map_err(|_| ApiError::not_found(format!("session {name:?} not found")))?;
    state.engine.stop_session(&ws.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) fn lines(q: &OutputQuery) -> ApiResult<usize> {
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
    let ws = state.engine.resolve(&id).await?.workspace;
    let name = SessionName::parse(&name)
        .map_err(|_| ApiError::not_found(format!("session {name:?} not found")))?;
    let lines = state.engine.output(&ws.id, Some(&name), n).await?;
    Ok(Json(OutputView { lines }))
}
