//! The API's error type. Every error response is `{error: {code, message, details}}`,
//! and its status comes from the code through [`ErrorCode::http_status`], the one
//! code-to-status table (in `berth-core`); no handler picks a status for an error.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::ErrorCode;
use berth_core::engine::EngineError;
use berth_core::model::OpError;
use berth_core::ports::RuntimeError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// The HTTP status of a code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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
    /// A stable code (the table in `docs/api.md`).
    #[schema(schema_with = code_schema)]
    pub code: ErrorCode,
    /// A sentence naming the thing.
    pub message: String,
    /// Structured details (the field, the files, the current state).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// The schema of `code`: a string, one of every code.
fn code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
        .description(Some(
            "A stable error code; its HTTP status is fixed (docs/api.md).",
        ))
        .build()
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The detail sent to the client.
    pub detail: ErrorDetail,
}

impl ApiError {
    /// An error with a code and message and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            detail: ErrorDetail {
                code,
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
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 422 `validation_failed` naming the field.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
            .with_details(serde_json::json!({ "field": field }))
    }

    /// 500 `internal`; the cause is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; the daemon's log has the cause",
        )
    }

    /// The error an op recorded.
    pub fn from_op(e: &OpError) -> Self {
        Self::new(e.code, e.message.clone()).with_details(details_of(&e.details))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        status_of(self.detail.code)
    }

    /// The response headers the code asks for (`Retry-After`).
    pub(crate) fn headers(&self, response: &mut Response) {
        if let Some(seconds) = self.detail.code.retry_after_secs()
            && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = e.code();
        match &e {
            EngineError::Store(_) | EngineError::Internal(_) if code == ErrorCode::Internal => {
                ApiError::internal(&e)
            }
            EngineError::Validation { field, message } => {
                ApiError::validation(field, format!("{field}: {message}"))
            }
            EngineError::InvalidTransition { from, .. } => ApiError::new(code, e.to_string())
                .with_details(serde_json::json!({ "state": from.as_str() })),
            EngineError::WaitTimeout { state, .. } => ApiError::new(code, e.to_string())
                .with_details(serde_json::json!({ "state": state.as_str() })),
            EngineError::RuntimeUnavailable { runtime, .. } => ApiError::new(code, e.to_string())
                .with_details(serde_json::json!({ "runtime": runtime })),
            EngineError::SessionExists { session, .. } => ApiError::new(code, e.to_string())
                .with_details(serde_json::json!({ "session": session })),
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
        let this = self.clone();
        let mut response = (status, Json(ErrorBody { error: self.detail })).into_response();
        this.headers(&mut response);
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
        return ApiError::new(ErrorCode::PayloadTooLarge, "the request body is over 1 MiB");
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

/// An op's details (the dirty check's files, the resources) as JSON.
pub fn details_of(details: &BTreeMap<String, Vec<String>>) -> serde_json::Value {
    serde_json::to_value(details).unwrap_or_default()
}

/// The 404 for routes that do not exist.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}
