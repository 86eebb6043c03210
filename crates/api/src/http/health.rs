//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::dto::{Health, RuntimeHealthView};
use super::state::AppState;

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health::status("ok"))
}

/// Readiness: 200 once boot recovery finished and the store is open, with each
/// runtime's health (a degraded runtime does not make the daemon unready).
#[utoipa::path(get, path = "/readyz", tag = "health", security(("bearer" = [])),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        let runtimes = state
            .engine
            .runtime_health()
            .into_iter()
            .map(|h| {
                (
                    h.runtime.to_string(),
                    RuntimeHealthView {
                        state: h.state.as_str().to_owned(),
                        since: h.since.map(|t| t.to_rfc3339()),
                        detail: h.detail,
                    },
                )
            })
            .collect();
        return Json(Health {
            status: "ok".into(),
            runtimes: Some(runtimes),
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
        Json(Health::status(status)),
    )
        .into_response()
}

/// The `/readyz` answer while the daemon is still starting.
pub(crate) fn not_ready_health() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health::status("starting")),
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
