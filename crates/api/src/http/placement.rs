//! Which daemon serves a workspace's requests. A daemon alone on its store serves them
//! all. Daemons sharing a store (see `docs/scale-out.md`) each own some workspaces;
//! every request under `/v1/workspaces/{id}/…` passes through the [`Placement`] the
//! embedding installed, which either lets this daemon serve it (it owns the
//! workspace, or just took over a lease nobody live held) or answers it by forwarding
//! it to the owner. The per-workspace gate therefore holds across daemons: every
//! request for a workspace meets the same gate, on its owner.

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::state::AppState;

/// Routes a workspace's requests to the daemon that owns it.
#[async_trait]
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// Returns `req` when this daemon serves it, or the answer another daemon gave.
    /// `workspace` is the path's `{id}` (an id or a name).
    async fn route(&self, workspace: &str, req: Request) -> Result<Request, Response>;

    /// As [`Placement::route`], for `/v1/operations/{op}`: the op's workspace's owner
    /// holds its live record (joins, the queued op). Default: served here.
    async fn route_op(&self, _op: &str, req: Request) -> Result<Request, Response> {
        Ok(req)
    }
}

/// The `{op}` of a `/v1/operations/{op}` path.
fn op_segment(path: &str) -> Option<&str> {
    let seg = path.strip_prefix("/v1/operations/")?;
    (!seg.is_empty() && !seg.contains('/')).then_some(seg)
}

/// The `{id}` of a `/v1/workspaces/{id}[/…]` path.
fn workspace_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/workspaces/")?;
    let seg = rest.split('/').next()?;
    (!seg.is_empty()).then_some(seg)
}

pub(crate) async fn route_to_owner(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(placement) = state.placement.clone() else {
        return next.run(req).await;
    };
    if let Some(op) = op_segment(req.uri().path()).map(str::to_owned) {
        return match placement.route_op(&op, req).await {
            Ok(req) => next.run(req).await,
            Err(answer) => answer,
        };
    }
    let Some(workspace) = workspace_segment(req.uri().path()).map(str::to_owned) else {
        return next.run(req).await;
    };
    match placement.route(&workspace, req).await {
        Ok(req) => next.run(req).await,
        Err(answer) => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::{op_segment, workspace_segment};

    #[test]
    fn only_paths_under_one_workspace_are_placed() {
        assert_eq!(workspace_segment("/v1/workspaces/demo"), Some("demo"));
        assert_eq!(workspace_segment("/v1/workspaces/ws_1/start"), Some("ws_1"));
        assert_eq!(workspace_segment("/v1/workspaces"), None);
        assert_eq!(workspace_segment("/v1/workspaces/"), None);
        assert_eq!(workspace_segment("/v1/events"), None);
        assert_eq!(workspace_segment("/v1/self"), None);
        assert_eq!(op_segment("/v1/operations/op-1"), Some("op-1"));
        assert_eq!(op_segment("/v1/operations/"), None);
    }
}
