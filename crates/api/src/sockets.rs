//! Per-workspace API sockets: `<data dir>/run/<workspace id>/api.sock`, each served by
//! the daemon's router with the workspace as its owner, so it accepts that workspace's
//! token only (the admin token is 401 there, another workspace's token 403). The
//! runtimes open a workspace's socket when they launch it (a container gets the
//! directory bind-mounted at `/run/berth`) and close it on cleanup; the daemon opens
//! every existing workspace's socket again at start.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::{Extension, Router};
use berth_core::ids::WorkspaceId;
use berth_core::ports::{API_SOCKET, WorkspaceSockets};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::SocketOwner;
use crate::server::{ServerLimits, serve};

/// The daemon's per-workspace sockets.
#[derive(Debug)]
pub struct Sockets {
    root: PathBuf,
    app: Router,
    limits: ServerLimits,
    stop: CancellationToken,
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
    served: Mutex<HashMap<WorkspaceId, CancellationToken>>,
}

impl Sockets {
    /// Sockets under `root` (`<data dir>/run`), served by `app` on `tracker` until
    /// `stop`. Must be made inside the daemon's tokio runtime.
    ///
    /// # Errors
    /// No tokio runtime is running.
    pub fn new(
        root: PathBuf,
        app: Router,
        limits: ServerLimits,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        Ok(Self {
            root,
            app,
            limits,
            stop,
            tracker,
            runtime,
            served: Mutex::new(HashMap::new()),
        })
    }

    fn bind(&self, workspace: &WorkspaceId) -> std::io::Result<(PathBuf, CancellationToken)> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let dir = self.root.join(workspace.as_str());
        // Traversable by a container's user (it sees only this directory, mounted).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
        let path = dir.join(API_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        // Any user may connect (a container's user is not the daemon's); every request
        // still needs this workspace's token.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        listener.set_nonblocking(true)?;
        let _entered = self.runtime.enter();
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let stop = self.stop.child_token();
        let app = self
            .app
            .clone()
            .layer(Extension(SocketOwner(workspace.clone())));
        self.tracker
            .spawn(serve(listener, app, self.limits, stop.clone()));
        Ok((dir, stop))
    }
}

impl WorkspaceSockets for Sockets {
    fn open(&self, workspace: &WorkspaceId) -> Result<PathBuf, String> {
        let mut served = self.served.lock();
        let dir = self.root.join(workspace.as_str());
        if served.contains_key(workspace) && dir.join(API_SOCKET).exists() {
            return Ok(dir);
        }
        if let Some(old) = served.remove(workspace) {
            old.cancel();
        }
        let (dir, stop) = self.bind(workspace).map_err(|e| {
            format!(
                "cannot serve the API socket {}: {e}",
                dir.join(API_SOCKET).display()
            )
        })?;
        served.insert(workspace.clone(), stop);
        Ok(dir)
    }

    fn close(&self, workspace: &WorkspaceId) {
        if let Some(stop) = self.served.lock().remove(workspace) {
            stop.cancel();
        }
        let _ = std::fs::remove_dir_all(self.root.join(workspace.as_str()));
    }
}
