//! Authentication: the admin token (compared in constant time as SHA-256 digests), or a
//! workspace token of the workspace's current incarnation, which may read only its own
//! workspace.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_core::ErrorCode;
use berth_core::ids::WorkspaceToken;
use berth_core::model::Workspace;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::{AppState, Principal, SocketOwner};

pub(crate) fn bearer(req: &Request) -> Option<&str> {
    let value = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `token` is the admin token: compared as SHA-256 digests, so equal lengths,
/// so not even the length leaks.
pub(crate) fn is_admin(token: &str, admin: &str) -> bool {
    let presented = Sha256::digest(token.as_bytes());
    let expected = Sha256::digest(admin.as_bytes());
    bool::from(presented.as_slice().ct_eq(expected.as_slice()))
}

pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(&req).map(str::to_owned) else {
        return ApiError::new(ErrorCode::Unauthorized, "a bearer token is required")
            .into_response();
    };
    let owner = req.extensions().get::<SocketOwner>().cloned();
    if is_admin(&token, &state.admin_token) {
        if owner.is_some() {
            // A workspace's socket is reachable from inside it: never the admin's door.
            return ApiError::new(
                ErrorCode::Unauthorized,
                "a workspace's API socket accepts that workspace's token only",
            )
            .into_response();
        }
        req.extensions_mut().insert(Principal::Admin);
        return next.run(req).await;
    }
    let ws = match state
        .engine
        .verify_token(&WorkspaceToken::from_presented(&token))
        .await
    {
        Ok(Some(ws)) => ws,
        Ok(None) => {
            return ApiError::new(ErrorCode::Unauthorized, "the token is not valid")
                .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if owner.is_some_and(|o| o.0 != ws.id) {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this API socket belongs to another workspace than {}",
                ws.id
            ),
        )
        .into_response();
    }
    if !workspace_may(&ws, req.method(), req.uri().path()) {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!("a workspace token is valid for workspace {} only", ws.id),
        )
        .into_response();
    }
    req.extensions_mut()
        .insert(Principal::Workspace(Box::new(ws)));
    next.run(req).await
}

/// A workspace token may read itself: `/v1/self`, GET on its own workspace's routes
/// (by id or name) but `attach`, and run commands in and copy files into itself
/// (`POST .../exec`, `PUT .../files`). Everything else needs the admin token.
fn workspace_may(ws: &Workspace, method: &axum::http::Method, path: &str) -> bool {
    if path == "/v1/self" {
        return true;
    }
    let Some(rest) = path.strip_prefix("/v1/workspaces/") else {
        return false;
    };
    let mut parts = rest.split('/');
    let target = parts.next().unwrap_or("");
    let sub: Vec<&str> = parts.collect();
    // Reads, and the two writes that reach no further than the workspace itself does:
    // running a command beside it and copying files into it. Never attach: a tmux
    // client takes commands (`prefix :`), and tmux runs them as the daemon's user,
    // outside the workspace's sandbox.
    let allowed = (*method == axum::http::Method::GET && sub != ["attach"])
        || (*method == axum::http::Method::POST && sub == ["exec"])
        || (*method == axum::http::Method::PUT && sub == ["files"]);
    if !allowed {
        return false;
    }
    // The route resolves an id before a name, so a name only counts when it cannot be
    // read as an id (names are refused that form at creation; this holds regardless).
    target == ws.id.as_str()
        || (target == ws.name.as_str() && berth_core::ids::WorkspaceId::parse(target).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::ids::{Incarnation, RuntimeKind, WorkspaceId, WorkspaceName};
    use berth_core::state::State;

    fn workspace(name: &str) -> Workspace {
        Workspace {
            id: WorkspaceId::generate(),
            // Deserialized, as a row stored before names of the id form were refused.
            name: serde_json::from_value::<WorkspaceName>(serde_json::json!(name))
                .expect("a stored name"),
            runtime: RuntimeKind::parse("tmux").expect("tmux"),
            state: State::Running,
            incarnation: Incarnation(1),
            spec: Default::default(),
            dir: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            last_error: None,
            version: 1,
            pool: None,
        }
    }

    #[test]
    fn a_name_shaped_like_another_workspaces_id_never_reads_it() {
        let victim = WorkspaceId::generate();
        let impostor = workspace(victim.as_str());
        let get = axum::http::Method::GET;
        assert!(!workspace_may(
            &impostor,
            &get,
            &format!("/v1/workspaces/{victim}")
        ));
        assert!(!workspace_may(
            &impostor,
            &get,
            &format!("/v1/workspaces/{victim}/output")
        ));
        assert!(workspace_may(
            &impostor,
            &get,
            &format!("/v1/workspaces/{}", impostor.id)
        ));
        let plain = workspace("plain");
        assert!(workspace_may(&plain, &get, "/v1/workspaces/plain/sessions"));
        assert!(!workspace_may(
            &plain,
            &axum::http::Method::POST,
            "/v1/workspaces/plain/stop"
        ));
    }
}
