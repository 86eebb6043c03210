//! Validation of a create request's spec, independent of the runtime (which checks
//! what it can honour through `ProcessRuntime::check_spec`).

use crate::model::CreateWorkspace;

use super::EngineError;

pub(crate) fn validate_spec(request: &CreateWorkspace) -> Result<(), EngineError> {
    let bad = |field: &str, message: &str| {
        Err(EngineError::Validation {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    let spec = &request.spec;
    if spec.command.first().is_some_and(String::is_empty) {
        return bad(
            "command",
            "the program (the first argument) must not be empty",
        );
    }
    if spec.command.iter().any(|a| a.contains('\0')) {
        return bad("command", "arguments must not contain NUL bytes");
    }
    for (k, v) in &spec.env {
        if !is_env_name(k) {
            return bad("env", "variable names must match [A-Za-z_][A-Za-z0-9_]*");
        }
        if k.starts_with("BERTH_") {
            return bad("env", "variables starting with BERTH_ are set by berth");
        }
        if v.contains('\0') {
            return bad("env", "values must not contain NUL bytes");
        }
    }
    if spec.dir.is_some() && spec.git.is_some() {
        return bad("dir", "give either dir or git, not both");
    }
    if let Some(dir) = &spec.dir
        && (!dir.starts_with('/') || dir.contains('\0') || dir.split('/').any(|c| c == ".."))
    {
        return bad("dir", "must be an absolute path without '..'");
    }
    if let Some(git) = &spec.git
        && (git.repo.is_empty()
            || git.reference.is_empty()
            || git.reference.starts_with('-')
            || git.repo.starts_with('-'))
    {
        return bad(
            "git",
            "repo and ref must be non-empty and not start with '-'",
        );
    }
    Ok(())
}

/// A POSIX environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
