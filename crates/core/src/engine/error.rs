//! The engine's error type, with the stable [`ErrorCode`] each variant maps to.

use crate::code::ErrorCode;
use crate::ids::IdError;
use crate::model::OpError;
use crate::ports::{ConflictReason, RuntimeError, StoreError};
use crate::state::{State, TransitionError};

/// Why an engine call failed. [`EngineError::code`] gives the stable API code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The workspace, op or session does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// A field of the request is invalid, or the runtime cannot honour it.
    #[error("{field}: {message}")]
    Validation {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// A live workspace already has this name.
    #[error("workspace name {name} is taken")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The request does not apply to the workspace's state.
    #[error("cannot {request} workspace {workspace}: it is {from}")]
    InvalidTransition {
        /// The workspace.
        workspace: String,
        /// Its state.
        from: State,
        /// The refused request.
        request: String,
    },
    /// A delete is pending, or a failed delete left the workspace `deleting`.
    #[error("workspace {workspace} is being deleted")]
    WorkspaceDeleting {
        /// The workspace.
        workspace: String,
    },
    /// A stop is pending.
    #[error("workspace {workspace} is stopping")]
    WorkspaceStopping {
        /// The workspace.
        workspace: String,
    },
    /// A running session has the name, with another command.
    #[error("session {session} of workspace {workspace} runs another command; stop it first")]
    SessionExists {
        /// The workspace.
        workspace: String,
        /// The session.
        session: String,
    },
    /// The idempotency key was used with another request.
    #[error("idempotency key {key:?} was used with another request body")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// `wait` reached its timeout before anything settled.
    #[error("nothing settled before the timeout; workspace {workspace} is {state}")]
    WaitTimeout {
        /// The workspace.
        workspace: String,
        /// Its state at the timeout.
        state: State,
    },
    /// The request needs the workspace's process running (exec, attach).
    #[error("workspace {workspace} is not running: it is {state}")]
    NotRunning {
        /// The workspace.
        workspace: String,
        /// Its state.
        state: State,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The workspace's runtime is not configured or not reachable.
    #[error("runtime {runtime} is unavailable: {message}")]
    RuntimeUnavailable {
        /// The runtime.
        runtime: String,
        /// Why.
        message: String,
    },
    /// A runtime call failed.
    #[error(transparent)]
    Runtime(RuntimeError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// An engine invariant broke (a task ended without a result, a driver panicked).
    /// Logged with detail.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// The stable code of `../shared/design/api.md`.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::NotFound { .. } => ErrorCode::NotFound,
            EngineError::Validation { .. } => ErrorCode::ValidationFailed,
            EngineError::NameTaken { .. } => ErrorCode::NameTaken,
            EngineError::InvalidTransition { .. } => ErrorCode::InvalidTransition,
            EngineError::WorkspaceDeleting { .. } => ErrorCode::WorkspaceDeleting,
            EngineError::WorkspaceStopping { .. } => ErrorCode::WorkspaceStopping,
            EngineError::SessionExists { .. } => ErrorCode::SessionExists,
            EngineError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
            EngineError::WaitTimeout { .. } => ErrorCode::WaitTimeout,
            EngineError::NotRunning { .. } => ErrorCode::WorkspaceNotRunning,
            EngineError::ShuttingDown => ErrorCode::ShuttingDown,
            EngineError::RuntimeUnavailable { .. } => ErrorCode::RuntimeUnavailable,
            EngineError::Runtime(e) => runtime_code(e),
            EngineError::Store(StoreError::NameTaken { .. }) => ErrorCode::NameTaken,
            EngineError::Store(StoreError::Closed) => ErrorCode::ShuttingDown,
            EngineError::Store(StoreError::Unavailable { .. }) => ErrorCode::StoreUnavailable,
            EngineError::Store(_) | EngineError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The error as an op records it. An internal error's message says only that; its
    /// cause belongs in the log.
    pub fn to_op_error(&self) -> OpError {
        match self.code() {
            ErrorCode::Internal => {
                tracing::error!(error = %self, "an op failed with an internal error");
                OpError::new(
                    ErrorCode::Internal,
                    "internal error; the daemon's log has the cause",
                )
            }
            code => OpError::new(code, self.to_string()),
        }
    }
}

/// The stable code of a runtime error.
pub fn runtime_code(error: &RuntimeError) -> ErrorCode {
    match error {
        RuntimeError::Unavailable { .. } => ErrorCode::RuntimeUnavailable,
        RuntimeError::Timeout { .. } => ErrorCode::RuntimeTimeout,
        RuntimeError::Unsupported { .. } => ErrorCode::Unsupported,
        RuntimeError::BadInput { .. } => ErrorCode::ValidationFailed,
        RuntimeError::Conflict {
            reason: ConflictReason::Foreign,
            ..
        } => ErrorCode::NameTaken,
        _ => ErrorCode::RuntimeError,
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken { name } => EngineError::NameTaken { name },
            other => EngineError::Store(other),
        }
    }
}

impl From<RuntimeError> for EngineError {
    fn from(e: RuntimeError) -> Self {
        EngineError::Runtime(e)
    }
}

impl From<IdError> for EngineError {
    fn from(e: IdError) -> Self {
        match e {
            IdError::Invalid { field, .. } => EngineError::Validation {
                field: field.to_owned(),
                message: e.to_string(),
            },
        }
    }
}

pub(crate) fn invalid_transition(
    workspace: &str,
    e: &TransitionError,
    request: &str,
) -> EngineError {
    EngineError::InvalidTransition {
        workspace: workspace.to_owned(),
        from: e.from,
        request: request.to_owned(),
    }
}
