//! Creating workspaces: validation, the stored row and its `created` event, and
//! idempotency keys (the same key and request give the first answer again, also when
//! two engines sharing a store race with one key).

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::code::ErrorCode;
use crate::ids::{OpId, WorkspaceId, WorkspaceName};
use crate::merge::OpKind;
use crate::model::{Cause, CreateWorkspace, NewEvent, Operation, Workspace};
use crate::ports::Report;
use crate::state::State;

use super::queries::Snapshot;
use super::{Engine, EngineError};

/// An idempotency key and the hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key (1 to 255 visible ASCII characters).
    pub key: String,
    /// A digest of the request body; the same key with another body is refused.
    pub request_hash: String,
}

/// What a create answered.
#[derive(Debug, Clone)]
pub struct Created {
    /// The workspace as it is now.
    pub workspace: Snapshot,
    /// The start op, when the create asked for a start.
    pub operation: Option<Operation>,
    /// The answer is a replay of an earlier request with the same key.
    pub replayed: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCreate {
    workspace_id: WorkspaceId,
    op_id: Option<OpId>,
    /// The workspace as the first answer gave it, replayed once it is deleted (records
    /// written before this field existed lack it).
    #[serde(default)]
    created: Option<Workspace>,
}

impl Engine {
    /// Validates and inserts a stopped workspace with its `created` event.
    pub(crate) async fn create_stopped(
        &self,
        request: CreateWorkspace,
        pool: Option<WorkspaceName>,
    ) -> Result<Workspace, EngineError> {
        self.validate_create(&request)?;
        self.insert_stopped(request, pool).await
    }

    /// Refuses a create the engine or its runtime cannot honour (nothing is written).
    pub(crate) fn validate_create(&self, request: &CreateWorkspace) -> Result<(), EngineError> {
        self.refuse_if_stopping()?;
        super::validate::validate_spec(request)?;
        let Some(rt) = self.inner.runtimes.get(&request.runtime) else {
            return Err(EngineError::Validation {
                field: "runtime".into(),
                message: format!(
                    "unknown runtime {}; this daemon runs: {}",
                    request.runtime,
                    self.runtime_kinds()
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        rt.check_spec(&request.spec)
            .map_err(|refusal| EngineError::Validation {
                field: refusal.field.to_owned(),
                message: refusal.message,
            })
    }

    async fn insert_stopped(
        &self,
        request: CreateWorkspace,
        pool: Option<WorkspaceName>,
    ) -> Result<Workspace, EngineError> {
        let now = self.inner.clock.now();
        let workspace = Workspace {
            id: WorkspaceId::generate(),
            name: request.name,
            runtime: request.runtime,
            state: State::Stopped,
            incarnation: Default::default(),
            dir: request.spec.dir.clone(),
            spec: request.spec,
            created_at: now,
            updated_at: now,
            last_error: None,
            version: 1,
            pool,
        };
        let event = NewEvent {
            at: now,
            workspace_id: workspace.id.clone(),
            op_id: None,
            actor: request.actor,
            from: None,
            to: Some(State::Stopped),
            cause: Cause::Created,
            message: format!("workspace {} created", workspace.name),
        };
        let stored = self
            .inner
            .store
            .create_workspace(&workspace, &event)
            .await?;
        let gate = self.inner.gates.get(&workspace.id);
        gate.update(|st| {
            st.row = Some(workspace.clone());
            st.no_sessions = true;
        });
        self.inner.reporter.report(Report::Event(stored));
        Ok(workspace)
    }

    /// Creates (and starts) a workspace; with a key, the same key and request give the
    /// first answer again (the same ids), and another request with that key is refused.
    pub(crate) async fn create_with_key(
        &self,
        request: CreateWorkspace,
        start: bool,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, EngineError> {
        let Some(key) = key else {
            return self.create_and_start(request, start, None).await;
        };
        let stripe = Sha256::digest(key.key.as_bytes())[0] as usize % self.inner.idempotency.len();
        let _one_at_a_time = self.inner.idempotency[stripe].lock().await;
        if let Some((hash, result)) = self.inner.store.idempotency_key(&key.key).await? {
            return self.replay(&key, &hash, &result).await;
        }
        match self.create_and_start(request, start, Some(&key)).await {
            // Another engine of a shared store is creating with this key (the same
            // name): its record appears right after its create; answer from it.
            Err(taken) if taken.code() == ErrorCode::NameTaken => {
                let deadline = Instant::now() + std::time::Duration::from_secs(5);
                loop {
                    if let Some((hash, result)) = self.inner.store.idempotency_key(&key.key).await?
                    {
                        return self.replay(&key, &hash, &result).await;
                    }
                    if Instant::now() >= deadline {
                        return Err(taken);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            other => other,
        }
    }

    /// The first answer of a create made with `key`, whose record is `(hash, result)`.
    async fn replay(
        &self,
        key: &IdempotencyKey,
        hash: &str,
        result: &str,
    ) -> Result<Created, EngineError> {
        if hash != key.request_hash {
            return Err(EngineError::IdempotencyConflict {
                key: key.key.clone(),
            });
        }
        let stored: StoredCreate = serde_json::from_str(result).map_err(|e| {
            EngineError::Internal(format!("idempotency record of {:?}: {e}", key.key))
        })?;
        // The workspace as it is now; once deleted, the first answer as recorded
        // (the same ids; a read of it then says `not_found`).
        let workspace = match self.read_snapshot(&stored.workspace_id).await? {
            Some(now) => now,
            None => match stored.created {
                Some(created) => Snapshot {
                    workspace: created,
                    pending: Default::default(),
                },
                None => {
                    return Err(EngineError::NotFound {
                        what: format!(
                            "workspace {} (created with this key, since deleted)",
                            stored.workspace_id
                        ),
                    });
                }
            },
        };
        let operation = match &stored.op_id {
            Some(id) => match self.op_record(id).await {
                Ok(op) => Some(op),
                // Deleted with its workspace.
                Err(EngineError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(Created {
            workspace,
            operation,
            replayed: true,
        })
    }

    /// Creates, requests the start, and claims the key right after (with the start op's
    /// id when the start was accepted), so a retry finds the workspace instead of
    /// `name_taken`.
    async fn create_and_start(
        &self,
        request: CreateWorkspace,
        start: bool,
        key: Option<&IdempotencyKey>,
    ) -> Result<Created, EngineError> {
        let actor = request.actor;
        self.validate_create(&request)?;
        let ws = match self.claim(&request, start).await? {
            Some(claimed) => claimed,
            None => self.insert_stopped(request, None).await?,
        };
        let ticket = if start {
            Some(self.request(&ws.id, OpKind::Start, actor, false).await)
        } else {
            None
        };
        if let Some(key) = key {
            let stored = StoredCreate {
                workspace_id: ws.id.clone(),
                op_id: match &ticket {
                    Some(Ok(t)) => Some(t.op_id().clone()),
                    _ => None,
                },
                created: Some(ws.clone()),
            };
            let text = serde_json::to_string(&stored)
                .map_err(|e| EngineError::Internal(format!("idempotency record: {e}")))?;
            self.inner
                .store
                .claim_idempotency_key(&key.key, &key.request_hash, &text)
                .await?;
        }
        let operation = match ticket {
            Some(t) => Some(self.op_record(t?.op_id()).await?),
            None => None,
        };
        let workspace = self.read_snapshot(&ws.id).await?.unwrap_or(Snapshot {
            workspace: ws,
            pending: Default::default(),
        });
        Ok(Created {
            workspace,
            operation,
            replayed: false,
        })
    }
}
