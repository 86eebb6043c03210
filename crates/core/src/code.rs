//! [`ErrorCode`]: the one table of stable error codes, each with its HTTP status.
//!
//! Every error berth reports to a client (an API error, an op's `error`) carries one of
//! these codes. The API turns a code into its status through [`ErrorCode::http_status`]
//! and nowhere else, so a code cannot be misspelled and a new code cannot be left
//! without a status: the match below is exhaustive, and a test in the API crate fails
//! when a code is missing from `docs/api.md` or the OpenAPI document.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable error code (`../shared/design/api.md`, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: bad JSON, an unknown field, a bad query.
    InvalidRequest,
    /// 401: no token, or a token that does not verify.
    Unauthorized,
    /// 403: a workspace token used outside its workspace.
    Forbidden,
    /// 404: no such workspace, op, session or route.
    NotFound,
    /// 408: `wait` reached its timeout before anything settled.
    WaitTimeout,
    /// 409: the request does not apply to the workspace's state.
    InvalidTransition,
    /// 409: a live workspace (or a resource that is not ours) holds the name.
    NameTaken,
    /// 409: a running session has that name and another command.
    SessionExists,
    /// 409: the workspace holds unsaved work; delete with force to discard it.
    WorkspaceDirty,
    /// 409: the workspace could not be checked for unsaved work.
    DirtyCheckFailed,
    /// 409: a delete is pending, or a failed delete left the workspace `deleting`.
    WorkspaceDeleting,
    /// 409: a stop is pending.
    WorkspaceStopping,
    /// 409: the idempotency key was used with another request body.
    IdempotencyConflict,
    /// 409: the op was replaced (or its start phase cancelled) by a newer request.
    Superseded,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 422: a field is invalid or a runtime cannot honour it (details name it).
    ValidationFailed,
    /// 500: a bug; the cause is logged, never sent. A code this berth does not know
    /// (written by a newer one) reads as this.
    Internal,
    /// 502: the runtime failed (details name the resource).
    RuntimeError,
    /// 503: the engine is shutting down.
    ShuttingDown,
    /// 503: the runtime cannot be reached.
    RuntimeUnavailable,
    /// 503: the store cannot write now (a full disk, an I/O error, a lock held past
    /// its deadline); nothing was changed that could not be recorded.
    StoreUnavailable,
    /// 503: the daemon is still running boot recovery.
    NotReady,
    /// 503: the request ran past the daemon's request timeout.
    RequestTimeout,
    /// 503: the engine shut down while the op ran; recovery finished the workspace.
    Interrupted,
    /// 504: a runtime call did not answer in time.
    RuntimeTimeout,
    /// 504: the start was still running at the start ceiling.
    StartTimeout,
    /// The workspace's process does not run, and the request needs it (exec, attach).
    WorkspaceNotRunning,
    /// The workspace's runtime does not offer this (files of a runtime without them).
    Unsupported,
    /// The route exists, not with this method (the `Allow` header lists those it has).
    MethodNotAllowed,
}

impl ErrorCode {
    /// Every code, for tables, documents and exhaustive tests.
    pub const ALL: [ErrorCode; 29] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::WaitTimeout,
        ErrorCode::InvalidTransition,
        ErrorCode::NameTaken,
        ErrorCode::SessionExists,
        ErrorCode::WorkspaceDirty,
        ErrorCode::DirtyCheckFailed,
        ErrorCode::WorkspaceDeleting,
        ErrorCode::WorkspaceStopping,
        ErrorCode::IdempotencyConflict,
        ErrorCode::Superseded,
        ErrorCode::PayloadTooLarge,
        ErrorCode::ValidationFailed,
        ErrorCode::Internal,
        ErrorCode::RuntimeError,
        ErrorCode::ShuttingDown,
        ErrorCode::RuntimeUnavailable,
        ErrorCode::StoreUnavailable,
        ErrorCode::NotReady,
        ErrorCode::RequestTimeout,
        ErrorCode::Interrupted,
        ErrorCode::RuntimeTimeout,
        ErrorCode::StartTimeout,
        ErrorCode::WorkspaceNotRunning,
        ErrorCode::Unsupported,
        ErrorCode::MethodNotAllowed,
    ];

    /// The HTTP status of the code: the single mapping table.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::WaitTimeout => 408,
            ErrorCode::InvalidTransition
            | ErrorCode::NameTaken
            | ErrorCode::SessionExists
            | ErrorCode::WorkspaceDirty
            | ErrorCode::DirtyCheckFailed
            | ErrorCode::WorkspaceDeleting
            | ErrorCode::WorkspaceStopping
            | ErrorCode::IdempotencyConflict
            | ErrorCode::Superseded
            | ErrorCode::WorkspaceNotRunning => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ValidationFailed | ErrorCode::Unsupported => 422,
            ErrorCode::Internal => 500,
            ErrorCode::RuntimeError => 502,
            ErrorCode::ShuttingDown
            | ErrorCode::RuntimeUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::NotReady
            | ErrorCode::RequestTimeout
            | ErrorCode::Interrupted => 503,
            ErrorCode::RuntimeTimeout | ErrorCode::StartTimeout => 504,
        }
    }

    /// Whether a client should retry later (the API adds `Retry-After`).
    pub fn retry_after_secs(self) -> Option<u32> {
        match self {
            ErrorCode::NotReady => Some(1),
            ErrorCode::ShuttingDown
            | ErrorCode::RuntimeUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::Interrupted => Some(5),
            _ => None,
        }
    }

    /// The code as its stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::WaitTimeout => "wait_timeout",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::SessionExists => "session_exists",
            ErrorCode::WorkspaceDirty => "workspace_dirty",
            ErrorCode::DirtyCheckFailed => "dirty_check_failed",
            ErrorCode::WorkspaceDeleting => "workspace_deleting",
            ErrorCode::WorkspaceStopping => "workspace_stopping",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::Superseded => "superseded",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::RuntimeError => "runtime_error",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::RuntimeUnavailable => "runtime_unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::RuntimeTimeout => "runtime_timeout",
            ErrorCode::StartTimeout => "start_timeout",
            ErrorCode::WorkspaceNotRunning => "workspace_not_running",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .unwrap_or(ErrorCode::Internal))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serializes_as_its_name_and_round_trips() {
        let mut names = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert!(names.insert(code.as_str()), "{code} listed twice");
            assert!((400..600).contains(&code.http_status()));
        }
    }

    #[test]
    fn a_code_from_a_newer_berth_reads_as_internal() {
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"some_future_code\"").unwrap(),
            ErrorCode::Internal
        );
    }
}
