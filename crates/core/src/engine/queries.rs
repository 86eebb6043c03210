//! Reads: workspaces with their pending ops as one consistent moment, listings with
//! filters pushed down into the store, ops, events, counts. Reads never take a gate's
//! async locks, so a slow op or runtime call on one workspace never stalls them.

use crate::ids::{OpId, RuntimeKind, WorkspaceId, WorkspaceName, WorkspaceToken};
use crate::model::{Event, Operation, Workspace};
use crate::ports::WorkspaceQuery;
use crate::state::State;

use super::gate::PendingView;
use super::{Engine, EngineError};

/// A workspace and the ops pending on it, read at one moment: the row is the last one
/// committed, and the ops are those in flight and queued at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The workspace.
    pub workspace: Workspace,
    /// Its pending ops.
    pub pending: PendingView,
}

impl Snapshot {
    /// Settled: not transitional, and no op in flight or queued.
    pub fn is_settled(&self) -> bool {
        !self.workspace.state.is_transitional() && self.pending.is_idle()
    }
}

/// Which workspaces to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<State>,
    /// Only this runtime.
    pub runtime: Option<RuntimeKind>,
    /// The cursor: the last id of the previous page.
    pub after: Option<WorkspaceId>,
    /// Page size (1 to 1000).
    pub limit: usize,
}

/// A page of workspaces, by creation.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The workspaces with their pending ops.
    pub items: Vec<Snapshot>,
    /// The cursor of the next page; `None` at the end.
    pub next: Option<WorkspaceId>,
}

impl Engine {
    /// The workspace and its pending ops at one moment; `None` when it does not exist.
    pub(crate) async fn read_snapshot(
        &self,
        id: &WorkspaceId,
    ) -> Result<Option<Snapshot>, EngineError> {
        loop {
            let Some(gate) = self.inner.gates.existing(id) else {
                // First touch of an existing workspace: read it, then let its (new)
                // gate keep the row unless a write raced ahead of the read.
                let Some(row) = self.inner.store.workspace(id).await? else {
                    return Ok(None);
                };
                let gate = self.inner.gates.get(id);
                gate.update(|st| {
                    if st.row.is_none() && !st.gone && st.writing == 0 && st.writes == 0 {
                        st.row = Some(row);
                    }
                });
                continue;
            };
            let writes = {
                let st = gate.read();
                if st.gone {
                    return Ok(None);
                }
                if let Some(row) = &st.row {
                    return Ok(Some(Snapshot {
                        workspace: row.clone(),
                        pending: st.slot.pending(),
                    }));
                }
                st.writes
            };
            let fetched = self.inner.store.workspace(id).await?;
            let answer = gate.update(|st| {
                if st.gone {
                    return Some(None);
                }
                if let Some(row) = &st.row {
                    // A write finished meanwhile and left its row: the newest.
                    return Some(Some(Snapshot {
                        workspace: row.clone(),
                        pending: st.slot.pending(),
                    }));
                }
                if st.writing == 0 && st.writes == writes {
                    // No write raced the read: the gate may keep the row.
                    st.row.clone_from(&fetched);
                } else if fetched.is_none() {
                    // A write is deciding whether the workspace exists: read again.
                    return None;
                }
                // A write in progress (perhaps waiting for a lock held elsewhere) or
                // one that ended without a row: the committed row answers, uncached.
                // Reads never wait for a write.
                Some(fetched.map(|workspace| Snapshot {
                    workspace,
                    pending: st.slot.pending(),
                }))
            });
            if let Some(answer) = answer {
                if answer.is_none() {
                    // A gate whose workspace is not stored (never happens through the
                    // engine's own paths) must not linger.
                    self.inner.gates.remove(id);
                }
                return Ok(answer);
            }
            tokio::task::yield_now().await;
        }
    }

    /// A workspace by id or name: the id form first.
    pub(crate) async fn resolve_snapshot(&self, id_or_name: &str) -> Result<Snapshot, EngineError> {
        let not_found = || EngineError::NotFound {
            what: format!("workspace {id_or_name:?}"),
        };
        let id = if let Ok(id) = WorkspaceId::parse(id_or_name) {
            id
        } else if let Ok(name) = WorkspaceName::parse(id_or_name) {
            match self.inner.store.workspace_by_name(&name).await? {
                Some(ws) => ws.id,
                None => return Err(not_found()),
            }
        } else {
            return Err(not_found());
        };
        self.read_snapshot(&id).await?.ok_or_else(not_found)
    }

    /// A page of workspaces; the store applies the filters and the cursor.
    pub(crate) async fn list_page(&self, query: ListQuery) -> Result<Page, EngineError> {
        if query.limit == 0 || query.limit > 1000 {
            return Err(EngineError::Validation {
                field: "limit".into(),
                message: "limit must be 1 to 1000".into(),
            });
        }
        let page = self
            .inner
            .store
            .list_workspaces(&WorkspaceQuery {
                after: query.after,
                limit: query.limit,
                state: query.state,
                runtime: query.runtime,
            })
            .await
            .map_err(|e| match e {
                crate::ports::StoreError::NotFound { what } => EngineError::Validation {
                    field: "cursor".into(),
                    message: format!("{what} is not a cursor of this listing"),
                },
                other => other.into(),
            })?;
        let items = page
            .items
            .into_iter()
            .map(|row| {
                // The gate's row is the last committed one; pending ops come with it.
                match self.inner.gates.existing(&row.id) {
                    Some(gate) => {
                        let st = gate.read();
                        Snapshot {
                            workspace: st.row.clone().unwrap_or(row),
                            pending: st.slot.pending(),
                        }
                    }
                    None => Snapshot {
                        workspace: row,
                        pending: PendingView::default(),
                    },
                }
            })
            .collect();
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// The workspace a token belongs to, only while it is the token of the workspace's
    /// current incarnation and that incarnation's process may exist.
    pub(crate) async fn token_workspace(
        &self,
        token: &WorkspaceToken,
    ) -> Result<Option<Workspace>, EngineError> {
        let Some((id, incarnation)) = self.inner.store.token_owner(&token.hash()).await? else {
            return Ok(None);
        };
        let Some(snap) = self.read_snapshot(&id).await? else {
            return Ok(None);
        };
        let ws = snap.workspace;
        let live = matches!(ws.state, State::Starting | State::Running | State::Stopping);
        Ok((ws.incarnation == incarnation && live).then_some(ws))
    }

    pub(crate) async fn ops_page(
        &self,
        id: &WorkspaceId,
        limit: usize,
    ) -> Result<Vec<Operation>, EngineError> {
        Ok(self.inner.store.list_ops(id, limit).await?)
    }

    /// An op: while pending, as the gate holds it (its `joined` count is current), else
    /// as stored.
    pub(crate) async fn op_now(&self, id: &OpId) -> Result<Operation, EngineError> {
        let stored = self.op_record(id).await?;
        if !stored.status.is_terminal()
            && let Some(gate) = self.inner.gates.existing(&stored.workspace_id)
        {
            let pending = gate.read().slot.pending();
            if let Some(op) = [pending.in_flight, pending.queued]
                .into_iter()
                .flatten()
                .find(|o| &o.id == id)
            {
                return Ok(op);
            }
        }
        Ok(stored)
    }

    pub(crate) async fn events_page(
        &self,
        after: u64,
        workspace: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        Ok(self.inner.store.events(after, workspace, limit).await?)
    }

    pub(crate) async fn all_workspaces(&self) -> Result<Vec<Workspace>, EngineError> {
        let mut out = Vec::new();
        let mut after: Option<WorkspaceId> = None;
        loop {
            let page = self
                .inner
                .store
                .list_workspaces(&WorkspaceQuery {
                    after: after.clone(),
                    limit: 1000,
                    ..WorkspaceQuery::default()
                })
                .await?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Every workspace of `kind`, read page by page by a tracked reader task, ahead of
    /// the consumer by at most two pages. The last message is [`RowPage::End`] after every
    /// row was sent, or [`RowPage::Failed`]; a channel that closes without either (the
    /// engine is shutting down) means the rows were not all read.
    pub(crate) fn workspace_pages(
        &self,
        kind: RuntimeKind,
    ) -> tokio::sync::mpsc::Receiver<RowPage> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let engine = self.clone();
        self.spawn(async move {
            let mut after: Option<WorkspaceId> = None;
            loop {
                let page = engine
                    .inner
                    .store
                    .list_workspaces(&WorkspaceQuery {
                        after: after.take(),
                        limit: 1000,
                        runtime: Some(kind.clone()),
                        ..WorkspaceQuery::default()
                    })
                    .await;
                let (message, next) = match page {
                    Ok(page) => (RowPage::Rows(page.items), page.next),
                    Err(e) => (RowPage::Failed(e.into()), None),
                };
                let failed = matches!(message, RowPage::Failed(_));
                if tx.send(message).await.is_err() || failed {
                    return;
                }
                match next {
                    Some(next) => after = Some(next),
                    None => {
                        let _ = tx.send(RowPage::End).await;
                        return;
                    }
                }
            }
        });
        rx
    }
}

/// A message of [`Engine::workspace_pages`].
#[derive(Debug)]
pub(crate) enum RowPage {
    /// The next rows, in listing order.
    Rows(Vec<Workspace>),
    /// Every row was sent.
    End,
    /// A read failed: no more rows follow.
    Failed(EngineError),
}
