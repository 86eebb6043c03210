//! Which daemon serves a workspace's requests. A daemon alone on its store serves them
//! all. Daemons sharing a store (see `docs/scale-out.md`) each own some workspaces;
//! every request under `/v1/workspaces/{id}/…` (and `/v1/operations/{op}`) passes
//! through the [`Placement`] the embedding installed (`route_to_owner` in `mod.rs`), which either lets this daemon serve it (it owns the
//! workspace, or just took over a lease nobody live held) or answers it by forwarding
//! it to the owner. The per-workspace gate therefore holds across daemons: every
//! request for a workspace meets the same gate, on its owner.

use async_trait::async_trait;
use axum::extract::Request;
use axum::response::Response;

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
pub(crate) fn op_segment(path: &str) -> Option<&str> {
    let seg = path.strip_prefix("/v1/operations/")?;
    (!seg.is_empty() && !seg.contains('/')).then_some(seg)
}

/// The `{id}` of a `/v1/workspaces/{id}[/…]` path.
pub(crate) fn workspace_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/workspaces/")?;
    let seg = rest.split('/').next()?;
    (!seg.is_empty()).then_some(seg)
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
