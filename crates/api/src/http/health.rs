//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::dto::Health;
use super::state::AppState;

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
    if state.is_ready() {
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
