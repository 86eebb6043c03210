//! The `Launch` effect's work: prepare the directory and launch the main process of the
//! minted incarnation, treating "name in use" and "removal in progress" for our own
//! resource as transient (adopt this incarnation, remove an older one, wait and retry).
//! The interpreter bounds it by the start ceiling and cancels it on preemption.

use crate::ids::WorkspaceToken;
use crate::model::Workspace;
use crate::ports::{ConflictReason, LaunchRequest, ProcessRuntime, ProcessStatus, RuntimeError};

use super::Engine;

impl Engine {
    /// Launches `ws.incarnation` with `token`; returns the directory `prepare` gave.
    ///
    /// # Errors
    /// The runtime's error, or `Other` when a newer incarnation than the record's holds
    /// the name (never touched).
    pub(crate) async fn launch_main(
        &self,
        rt: &dyn ProcessRuntime,
        ws: &Workspace,
        token: &WorkspaceToken,
    ) -> Result<Option<String>, RuntimeError> {
        let dir = rt.prepare(&self.workspace_ref(ws)).await?;
        let mut env = ws.spec.env.clone();
        env.insert("BERTH_WORKSPACE_ID".into(), ws.id.to_string());
        // A warm pool member holds no token until a create claims it (the claim hands
        // it a fresh one through the runtime); the one this start minted goes nowhere.
        let token_by_file = ws.pool.is_some();
        if !token_by_file {
            env.insert(
                "BERTH_WORKSPACE_TOKEN".into(),
                token.expose_secret().to_owned(),
            );
        }
        env.insert("BERTH_API_URL".into(), self.inner.config.api_url.clone());
        let request = LaunchRequest {
            resource: self.resource(ws),
            name: ws.name.clone(),
            spec: ws.spec.clone(),
            dir: dir.clone().or_else(|| ws.dir.clone()),
            env,
            token_by_file,
        };
        loop {
            let reason = match rt.launch(&request).await {
                Ok(()) => return Ok(dir),
                Err(RuntimeError::Conflict {
                    reason: reason @ (ConflictReason::NameInUse | ConflictReason::RemovalInProgress),
                    ..
                }) => reason,
                Err(e) => return Err(e),
            };
            match rt.inspect(&self.inner.engine_id, &ws.id).await? {
                Some(found)
                    if found.incarnation == ws.incarnation
                        && found.status == ProcessStatus::Running =>
                {
                    return Ok(dir);
                }
                Some(found)
                    if found.incarnation <= ws.incarnation
                        && reason == ConflictReason::NameInUse =>
                {
                    match rt.remove(&self.resource_at(ws, found.incarnation)).await {
                        Ok(()) => continue,
                        Err(e) if e.is_not_found() => continue,
                        Err(RuntimeError::Conflict {
                            reason: ConflictReason::RemovalInProgress,
                            ..
                        }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(found) if found.incarnation > ws.incarnation => {
                    return Err(RuntimeError::Other {
                        resource: ws.id.to_string(),
                        message: format!(
                            "a newer incarnation {} exists than {}",
                            found.incarnation, ws.incarnation
                        ),
                    });
                }
                _ => {}
            }
            tokio::time::sleep(self.inner.config.conflict_backoff).await;
        }
    }
}
