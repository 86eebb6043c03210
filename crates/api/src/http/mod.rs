//! The HTTP API of `../shared/design/api.md` over any [`berth_core::Engine`]: the router
//! and its middleware (auth, request ids, tracing spans, a body limit, a request
//! timeout, a panic catcher, a JSON 404), one module per resource, the DTOs, the error
//! shape, SSE, metrics and the OpenAPI document. Other teams mount [`router`] in their
//! own server; this module names no adapter (it builds without the `daemon` feature).
//!
//! Module dependencies point one way: this file wires the resource modules; resource
//! modules use `state`, `error`, `dto` and `events`; nothing imports this file back.

pub mod access;
mod auth;
pub mod dto;
pub mod error;
pub mod events;
pub mod health;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod operations;
pub mod placement;
pub mod pools;
pub mod sessions;
pub mod state;
pub mod workspaces;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use berth_core::ErrorCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use state::{AppState, Principal, SocketOwner};

use error::{ApiError, no_route};

/// The largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The full API router (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/v1/...`).
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route(
            "/v1/workspaces",
            post(workspaces::create_workspace).get(workspaces::list_workspaces),
        )
        .route(
            "/v1/workspaces/{id}",
            get(workspaces::get_workspace).delete(workspaces::delete_workspace),
        )
        .route("/v1/workspaces/{id}/start", post(workspaces::start))
        .route("/v1/workspaces/{id}/stop", post(workspaces::stop))
        .route("/v1/workspaces/{id}/restart", post(workspaces::restart))
        .route("/v1/workspaces/{id}/wait", get(workspaces::wait))
        .route(
            "/v1/workspaces/{id}/operations",
            get(operations::list_operations),
        )
        .route("/v1/operations/{op}", get(operations::get_operation))
        .route("/v1/events", get(events::events))
        .route(
            "/v1/workspaces/{id}/sessions",
            post(sessions::launch_session).get(sessions::list_sessions),
        )
        .route(
            "/v1/workspaces/{id}/sessions/{name}",
            delete(sessions::stop_session),
        )
        .route(
            "/v1/workspaces/{id}/sessions/{name}/output",
            get(sessions::session_output),
        )
        .route("/v1/workspaces/{id}/output", get(workspaces::main_output))
        .route("/v1/self", get(workspaces::whoami))
        .route("/v1/pools", get(pools::list_pools))
        .route(
            "/v1/pools/{name}",
            get(pools::get_pool)
                .put(pools::put_pool)
                .delete(pools::delete_pool),
        )
        .route(
            "/v1/workspaces/{id}/exec",
            post(access::exec_to_end).get(access::exec_stream),
        )
        .route("/v1/workspaces/{id}/attach", get(access::attach))
        .route("/v1/workspaces/{id}/logs", get(access::logs))
        .route(
            "/v1/workspaces/{id}/files",
            get(access::files_out).put(access::files_in),
        )
        // Inner to authentication: a request is authenticated here before it is
        // served or forwarded to the workspace's owner (which authenticates it again).
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            route_to_owner,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            tracing::error!("a request handler panicked");
            ApiError::new(
                ErrorCode::Internal,
                "internal error; the daemon's log has the cause",
            )
            .into_response()
        }))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<axum::body::Body>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            },
        ))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Routes a workspace's (or an op's) request through the installed [`placement::Placement`].
async fn route_to_owner(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(placement) = state.placement.clone() else {
        return next.run(req).await;
    };
    if let Some(op) = placement::op_segment(req.uri().path()).map(str::to_owned) {
        return match placement.route_op(&op, req).await {
            Ok(req) => next.run(req).await,
            Err(answer) => answer,
        };
    }
    let Some(workspace) = placement::workspace_segment(req.uri().path()).map(str::to_owned) else {
        return next.run(req).await;
    };
    match placement.route(&workspace, req).await {
        Ok(req) => next.run(req).await,
        Err(answer) => answer,
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method (see the Allow header)",
    )
}

async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    state.metrics.http_response(response.status().as_u16());
    response
}

async fn time_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            ApiError::new(ErrorCode::RequestTimeout, "the request took too long").into_response()
        }
    }
}

/// The router a daemon serves while its engine is still being built (store opened,
/// boot recovery running): `/healthz` answers 200, every other route needs the admin
/// token and answers 503 (`/readyz` with `{"status":"starting"}`, the rest with the
/// code `not_ready`). A bearer token that is not the admin token cannot be checked yet
/// (workspace tokens live in the store), so it gets 503 too; no token is 401.
pub fn booting_router(admin_token: &str) -> Router {
    let admin: Arc<str> = Arc::from(admin_token);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(move |req: Request| {
            let admin = Arc::clone(&admin);
            async move {
                let Some(token) = auth::bearer(&req) else {
                    return ApiError::new(ErrorCode::Unauthorized, "a bearer token is required")
                        .into_response();
                };
                if auth::is_admin(token, &admin) && req.uri().path() == "/readyz" {
                    return health::not_ready_health();
                }
                ApiError::new(
                    ErrorCode::NotReady,
                    "the daemon is starting: boot recovery is still running; retry shortly",
                )
                .into_response()
            }
        })
}
