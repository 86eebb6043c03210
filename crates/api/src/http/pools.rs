//! Warm pools: list, read, set (create or resize) and remove. The daemon's token only;
//! a workspace's token is refused (403) like on every route outside its own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use berth_core::ids::WorkspaceName;
use berth_core::model::Pool;

use super::dto::{CreateRequest, PoolList, PoolRequest, PoolView};
use super::error::{ApiError, ErrorBody, JsonBody};
use super::state::AppState;
use super::workspaces::{runtime_of, spec_of};

type ApiResult<T> = Result<T, ApiError>;

fn pool_name(name: &str) -> ApiResult<WorkspaceName> {
    WorkspaceName::parse(name).map_err(|e| ApiError::validation("name", e.to_string()))
}

/// The pool a request describes.
pub(crate) fn pool_of(name: WorkspaceName, body: &PoolRequest) -> ApiResult<Pool> {
    let template = CreateRequest {
        name: name.to_string(),
        runtime: body.runtime.clone(),
        command: body.command.clone(),
        env: body.env.clone(),
        dir: None,
        git: None,
        image: body.image.clone(),
        limits: body.limits.clone(),
        sandbox: body.sandbox.clone(),
        network: body.network,
        run_as_root: body.run_as_root,
        read_only_root: body.read_only_root,
        start: None,
        pool: None,
    };
    Ok(Pool {
        name,
        runtime: runtime_of(body.runtime.as_deref())?,
        spec: spec_of(&template)?,
        size: body.size,
        start: body.start.unwrap_or(true),
    })
}

/// Every warm pool with its unclaimed members.
#[utoipa::path(get, path = "/v1/pools", tag = "pools", security(("bearer" = [])),
    responses((status = 200, body = PoolList)))]
pub async fn list_pools(State(state): State<AppState>) -> ApiResult<Json<PoolList>> {
    let pools = state.engine.pools().await?;
    Ok(Json(PoolList {
        items: pools.iter().map(PoolView::from).collect(),
    }))
}

/// One warm pool.
#[utoipa::path(get, path = "/v1/pools/{name}", tag = "pools", security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn get_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PoolView>> {
    let pool = state.engine.pool(&pool_name(&name)?).await?;
    Ok(Json(PoolView::from(&pool)))
}

/// Creates or replaces a warm pool. Members are made (and drained) in the background;
/// a changed template replaces the unclaimed members.
#[utoipa::path(put, path = "/v1/pools/{name}", tag = "pools", security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name (at most 54 characters)")),
    request_body = PoolRequest,
    responses((status = 200, body = PoolView), (status = 422, body = ErrorBody)))]
pub async fn put_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PoolRequest>,
) -> ApiResult<Json<PoolView>> {
    let pool = pool_of(pool_name(&name)?, &body)?;
    let name = pool.name.clone();
    state.engine.set_pool(pool).await?;
    let pool = state.engine.pool(&name).await?;
    Ok(Json(PoolView::from(&pool)))
}

/// Removes a warm pool; its unclaimed members are deleted in the background (claimed
/// workspaces are not touched).
#[utoipa::path(delete, path = "/v1/pools/{name}", tag = "pools", security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn delete_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.engine.remove_pool(&pool_name(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
