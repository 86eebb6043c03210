//! The engine's error type, with the stable code each variant maps to.

use crate::ids::IdError;
use crate::ports::{ConflictReason, RuntimeError, StoreError};
use crate::state::{State, TransitionError};

/// Why an engine call failed. `code()` gives the stable API code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The workspace, op or session does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// A field of the request is invalid.
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
    /// A delete is in flight or queued.
    #[error("workspace {workspace} is being deleted")]
    WorkspaceDeleting {
        /// The workspace.
        workspace: String,
    },
    /// A stop is in flight.
    #[error("workspace {workspace} is stopping")]
    WorkspaceStopping {
        /// The workspace.
        workspace: String,
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
    /// An engine invariant broke (a task ended without a result). Logged with detail.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// The stable code of `../shared/design/api.md`.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::NotFound { .. } => "not_found",
            EngineError::Validation { .. } => "validation_failed",
            EngineError::NameTaken { .. } => "name_taken",
            EngineError::InvalidTransition { .. } => "invalid_transition",
            EngineError::WorkspaceDeleting { .. } => "workspace_deleting",
            EngineError::WorkspaceStopping { .. } => "workspace_stopping",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::RuntimeUnavailable { .. } => "runtime_unavailable",
            EngineError::Runtime(e) => runtime_code(e),
            EngineError::Store(StoreError::NameTaken { .. }) => "name_taken",
            EngineError::Store(_) | EngineError::Internal(_) => "internal",
        }
    }
}

/// The stable code of a runtime error.
pub fn runtime_code(error: &RuntimeError) -> &'static str {
    match error {
        RuntimeError::Unavailable { .. } => "runtime_unavailable",
        RuntimeError::Timeout { .. } => "runtime_timeout",
        RuntimeError::Conflict {
            reason: ConflictReason::Foreign,
            ..
        } => "name_taken",
        _ => "runtime_error",
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
    e: TransitionError,
    request: &str,
) -> EngineError {
    EngineError::InvalidTransition {
        workspace: workspace.to_owned(),
        from: e.from,
        request: request.to_owned(),
    }
}
