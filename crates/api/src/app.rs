//! The router and its middleware: auth (admin token or a workspace token, compared
//! in constant time), request ids, tracing spans, a body limit, a request timeout,
//! a panic catcher and a JSON 404. Other teams mount [`router`] in their own server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use berth_core::Engine;
use berth_core::ids::WorkspaceToken;
use berth_core::model::Workspace;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::{ApiError, no_route};
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::routes;

/// The largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The admin token.
    admin_token: Arc<str>,
    /// Live events.
    pub hub: Arc<EventHub>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// True once boot recovery finished and the store is open.
    pub ready: Arc<AtomicBool>,
    /// Cancelled when the daemon begins to shut down: streams and waits end.
    pub closing: CancellationToken,
    /// Longest a request may take (waits are capped below it).
    pub request_timeout: Duration,
    /// Serialises requests that carry the same idempotency key.
    pub(crate) idempotency: Arc<[tokio::sync::Mutex<()>; 64]>,
}

impl AppState {
    /// State for a router over `engine`.
    pub fn new(
        engine: Engine,
        admin_token: &str,
        hub: Arc<EventHub>,
        metrics: Arc<Metrics>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            engine,
            admin_token: Arc::from(admin_token),
            hub,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            closing,
            request_timeout: Duration::from_secs(300),
            idempotency: Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(()))),
        }
    }

    /// The longest `wait`/`timeout` a request may ask for.
    pub fn max_wait(&self) -> Duration {
        self.request_timeout
            .saturating_sub(Duration::from_secs(5))
            .max(Duration::from_secs(1))
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The admin token.
    Admin,
    /// A workspace's current-incarnation token.
    Workspace(Box<Workspace>),
}

/// The full API router (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/v1/...`).
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .route(
            "/v1/workspaces",
            post(routes::create_workspace).get(routes::list_workspaces),
        )
        .route(
            "/v1/workspaces/{id}",
            get(routes::get_workspace).delete(routes::delete_workspace),
        )
        .route("/v1/workspaces/{id}/start", post(routes::start))
        .route("/v1/workspaces/{id}/stop", post(routes::stop))
        .route("/v1/workspaces/{id}/restart", post(routes::restart))
        .route("/v1/workspaces/{id}/wait", get(routes::wait))
        .route(
            "/v1/workspaces/{id}/operations",
            get(routes::list_operations),
        )
        .route("/v1/operations/{op}", get(routes::get_operation))
        .route("/v1/events", get(routes::events))
        .route(
            "/v1/workspaces/{id}/sessions",
            post(routes::launch_session).get(routes::list_sessions),
        )
        .route(
            "/v1/workspaces/{id}/sessions/{name}",
            delete(routes::stop_session),
        )
        .route(
            "/v1/workspaces/{id}/sessions/{name}/output",
            get(routes::session_output),
        )
        .route("/v1/workspaces/{id}/output", get(routes::main_output))
        .route("/v1/self", get(routes::whoami))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route("/healthz", get(routes::healthz))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            tracing::error!("a request handler panicked");
            ApiError::new("internal", "internal error; the daemon's log has the cause")
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

async fn method_not_allowed() -> ApiError {
    ApiError::invalid("method not allowed on this route")
}

async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    state.metrics.http_response(response.status().as_u16());
    response
}

async fn time_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new("request_timeout", "the request took too long").into_response(),
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(token) = bearer(&req).map(str::to_owned) else {
        return ApiError::new("unauthorized", "a bearer token is required").into_response();
    };
    // Compared as SHA-256 digests: equal lengths, so not even the length leaks.
    let presented = Sha256::digest(token.as_bytes());
    let admin = Sha256::digest(state.admin_token.as_bytes());
    if bool::from(presented.as_slice().ct_eq(admin.as_slice())) {
        req.extensions_mut().insert(Principal::Admin);
        return next.run(req).await;
    }
    let ws = match state
        .engine
        .verify_token(&WorkspaceToken::from_presented(&token))
        .await
    {
        Ok(Some(ws)) => ws,
        Ok(None) => {
            return ApiError::new("unauthorized", "the token is not valid").into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if !workspace_may(&ws, req.method(), req.uri().path()) {
        return ApiError::new(
            "forbidden",
            format!("a workspace token is valid for workspace {} only", ws.id),
        )
        .into_response();
    }
    req.extensions_mut()
        .insert(Principal::Workspace(Box::new(ws)));
    next.run(req).await
}

/// A workspace token may read itself: `/v1/self`, and GET on its own workspace's
/// routes (by id or name). Everything else needs the admin token.
fn workspace_may(ws: &Workspace, method: &axum::http::Method, path: &str) -> bool {
    if path == "/v1/self" {
        return true;
    }
    if method != axum::http::Method::GET {
        return false;
    }
    let Some(rest) = path.strip_prefix("/v1/workspaces/") else {
        return false;
    };
    let target = rest.split('/').next().unwrap_or("");
    target == ws.id.as_str() || target == ws.name.as_str()
}

/// The router a daemon serves while its engine is still being built (store opened,
/// boot recovery running): `/healthz` answers 200, every other route needs the admin
/// token and answers 503 (`/readyz` with `{"status":"starting"}`, the rest with the
/// code `not_ready`). A bearer token that is not the admin token cannot be checked yet
/// (workspace tokens live in the store), so it gets 503 too; no token is 401.
pub fn booting_router(admin_token: &str) -> Router {
    let admin: Arc<str> = Arc::from(admin_token);
    Router::new()
        .route("/healthz", get(routes::healthz))
        .fallback(move |req: Request| {
            let admin = Arc::clone(&admin);
            async move {
                let Some(token) = bearer(&req) else {
                    return ApiError::new("unauthorized", "a bearer token is required")
                        .into_response();
                };
                let is_admin = bool::from(
                    Sha256::digest(token.as_bytes())
                        .as_slice()
                        .ct_eq(Sha256::digest(admin.as_bytes()).as_slice()),
                );
                if is_admin && req.uri().path() == "/readyz" {
                    return routes::not_ready_health();
                }
                ApiError::new(
                    "not_ready",
                    "the daemon is starting: boot recovery is still running; retry shortly",
                )
                .into_response()
            }
        })
}

/// Marks the state ready (boot recovery done, store open).
pub fn set_ready(state: &AppState, ready: bool) {
    state.ready.store(ready, Ordering::SeqCst);
}
