//! The API's error type and the one table that maps every error code to its HTTP
//! status (`../shared/design/api.md`, "Errors"). Handlers return `ApiError`; engine
//! errors convert through `EngineError::code()` and this table, nowhere else.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::engine::EngineError;
use berth_core::ports::RuntimeError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// The HTTP status of a stable error code: the single mapping table.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "invalid_request" => StatusCode::BAD_REQUEST,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "wait_timeout" => StatusCode::REQUEST_TIMEOUT,
        "invalid_transition"
        | "name_taken"
        | "workspace_dirty"
        | "dirty_check_failed"
        | "workspace_deleting"
        | "workspace_stopping"
        | "idempotency_conflict"
        | "superseded" => StatusCode::CONFLICT,
        "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "validation_failed" => StatusCode::UNPROCESSABLE_ENTITY,
        "runtime_error" => StatusCode::BAD_GATEWAY,
        "shutting_down" | "runtime_unavailable" | "request_timeout" | "not_ready" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "runtime_timeout" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// `{code, message, details}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code (see the table in api.md).
    pub code: String,
    /// A sentence naming the thing.
    pub message: String,
    /// Structured details (the field, the files, the current state).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The detail sent to the client.
    pub detail: ErrorDetail,
}

impl ApiError {
    /// An error with a code and message and no details.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            detail: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
                details: serde_json::Value::Object(Default::default()),
            },
        }
    }

    /// Adds details.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.detail.details = details;
        self
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_request", message)
    }

    /// 422 `validation_failed` naming the field.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::new("validation_failed", message).with_details(serde_json::json!({ "field": field }))
    }

    /// 500 `internal`; the cause is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new("internal", "internal error; the daemon's log has the cause")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        status_of(&self.detail.code)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = e.code();
        match &e {
            EngineError::Store(_) | EngineError::Internal(_) => ApiError::internal(&e),
            EngineError::Validation { field, message } => {
                ApiError::validation(field, format!("{field}: {message}"))
            }
            EngineError::InvalidTransition { from, .. } => ApiError::new(code, e.to_string())
                .with_details(serde_json::json!({ "state": from.as_str() })),
            EngineError::RuntimeUnavailable { runtime, .. } => ApiError::new(code, e.to_string())
                .with_details(serde_json::json!({ "runtime": runtime })),
            EngineError::Runtime(r) => {
                ApiError::new(code, e.to_string()).with_details(runtime_details(r))
            }
            _ => ApiError::new(code, e.to_string()),
        }
    }
}

fn runtime_details(e: &RuntimeError) -> serde_json::Value {
    match e {
        RuntimeError::NotFound { resource }
        | RuntimeError::Other { resource, .. }
        | RuntimeError::Conflict { resource, .. } => serde_json::json!({ "resource": resource }),
        RuntimeError::Timeout { operation, .. } => serde_json::json!({ "operation": operation }),
        _ => serde_json::json!({}),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = match self.detail.code.as_str() {
            "shutting_down" | "runtime_unavailable" => Some("5"),
            "not_ready" => Some("1"),
            _ => None,
        };
        let mut response = (status, Json(ErrorBody { error: self.detail })).into_response();
        if let Some(seconds) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

/// A JSON body whose rejections become our error shape: syntax errors and unknown
/// fields are 400 `invalid_request`, a missing field is 422 `validation_failed` naming
/// it, an oversized body is 413 `payload_too_large`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new("payload_too_large", "the request body is over 1 MiB");
    }
    let text = rejection.body_text();
    if let Some(field) = text
        .split("missing field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
    {
        return ApiError::validation(field, format!("the field {field} is required"));
    }
    ApiError::invalid(text)
}

/// Query parameters whose rejections are 400 `invalid_request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryParams<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(e) => Err(query_rejection(&e)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::invalid(rejection.body_text())
}

/// Details naming files (the dirty check's list).
pub fn files_details(details: &BTreeMap<String, Vec<String>>) -> serde_json::Value {
    serde_json::to_value(details).unwrap_or_default()
}

/// The 404 for routes that do not exist.
pub async fn no_route() -> ApiError {
    ApiError::new("not_found", "no such route")
}
