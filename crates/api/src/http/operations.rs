//! Operations: one op, and a workspace's ops, newest first.

use axum::Json;
use axum::extract::{Path, State};
use berth_core::ids::OpId;

use super::dto::{OperationList, OperationView, OpsQuery};
use super::error::{ApiError, ErrorBody, QueryParams};
use super::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// One op.
#[utoipa::path(get, path = "/v1/operations/{op}", tag = "operations", security(("bearer" = [])),
    params(("op" = String, Path, description = "Operation id")),
    responses((status = 200, body = OperationView), (status = 404, body = ErrorBody)))]
pub async fn get_operation(
    State(state): State<AppState>,
    Path(op): Path<String>,
) -> ApiResult<Json<OperationView>> {
    let id =
        OpId::parse(&op).map_err(|_| ApiError::not_found(format!("operation {op:?} not found")))?;
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
    let ws = state.engine.resolve(&id).await?.workspace;
    let ops = state.engine.ops(&ws.id, limit).await?;
    Ok(Json(OperationList {
        items: ops.iter().map(OperationView::from).collect(),
        next_cursor: None,
    }))
}
