//! Reconciliation and boot recovery: making the store and the runtimes agree.
//!
//! The reconciler lists each runtime's resources carrying our engine id FIRST and reads
//! the store AFTER, so every listed resource's row (committed before its launch) is
//! seen. It acts on a workspace only when its gate is idle and its epoch did not move
//! while listing, so a stale listing never overrides an op that just finished. A failed
//! listing changes nothing for that runtime.

use std::collections::{HashMap, HashSet};

use crate::ids::{RuntimeKind, WorkspaceId};
use crate::model::{Actor, Cause, LastError, SessionState, Workspace};
use crate::ports::{OwnedResource, ProcessStatus, ResourceKind, ResourceRef, SessionRef, Step};
use crate::state::{FailureReason, LifecycleEvent, State};

use super::Engine;
use super::commit::Note;
use super::effects::Exec;
use super::gate::SessionsClosed;
use super::queries::RowPage;
use super::recovery::Mode;

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Running workspaces whose resource was gone: now `failed{runtime_missing}`.
    pub missing: usize,
    /// Running workspaces whose main process had exited: now `stopped` or `failed`.
    pub exited: usize,
    /// Orphan resources stopped and removed.
    pub orphans_removed: usize,
    /// Orphans younger than the grace period, left for a later pass.
    pub orphans_kept: usize,
    /// Session rows whose process was gone, forgotten.
    pub sessions_pruned: usize,
    /// Workspaces skipped because an op or a session change was under way.
    pub skipped_busy: usize,
    /// Runtimes whose listing failed (nothing was changed for them).
    pub listing_failures: usize,
    /// Idle workspaces found in a transitional state and finished.
    pub transitional_finished: usize,
}

impl ReconcileReport {
    /// Adds another part's counts to these.
    pub fn add(&mut self, other: &ReconcileReport) {
        self.missing += other.missing;
        self.exited += other.exited;
        self.orphans_removed += other.orphans_removed;
        self.orphans_kept += other.orphans_kept;
        self.sessions_pruned += other.sessions_pruned;
        self.skipped_busy += other.skipped_busy;
        self.listing_failures += other.listing_failures;
        self.transitional_finished += other.transitional_finished;
    }
}

impl Engine {
    /// One reconcile pass over every runtime, the runtimes concurrently: a runtime
    /// that is slow or does not answer delays only its own part.
    pub(crate) async fn reconcile_once(&self) -> ReconcileReport {
        let passes = self
            .inner
            .runtimes
            .keys()
            .map(|kind| self.reconcile_runtime_once(kind));
        let mut report = ReconcileReport::default();
        for part in futures_util::future::join_all(passes).await {
            report.add(&part);
        }
        report
    }

    /// One reconcile pass over one runtime. Reports a `ReconcilePass` when it ends.
    pub(crate) async fn reconcile_runtime_once(&self, kind: &RuntimeKind) -> ReconcileReport {
        let report = self.reconcile_runtime(kind).await;
        self.inner
            .reporter
            .report(crate::ports::Report::ReconcilePass {
                at: self.inner.clock.now(),
                listing_failures: report.listing_failures,
            });
        report
    }

    async fn reconcile_runtime(&self, kind: &RuntimeKind) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let Some(rt) = self.inner.runtimes.get(kind) else {
            return report;
        };
        let epochs = self.inner.gates.epochs();
        let bound = self.inner.config.runtime_call_timeout;
        let listed = match tokio::time::timeout(bound, rt.list_owned(&self.inner.engine_id)).await {
            Ok(Ok(list)) => Ok(list),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("listing did not answer within {bound:?}")),
        };
        let now = self.inner.clock.now();
        let list = match listed {
            Ok(list) => {
                self.inner.health.record(kind, now, Ok(()));
                list
            }
            Err(why) => {
                self.inner.health.record(kind, now, Err(why.clone()));
                report.listing_failures += 1;
                tracing::warn!(runtime = %kind, error = %why, "listing failed; reconcile changes nothing for this runtime");
                return report;
            }
        };
        // Which workspaces have session rows, read once after the epochs were taken: a
        // workspace acted on below has an epoch that did not move since, so no session
        // of it was launched or forgotten after this read. On an error each workspace's
        // rows are read instead.
        let with_sessions: Option<HashSet<WorkspaceId>> = self
            .inner
            .store
            .workspaces_with_sessions()
            .await
            .ok()
            .map(|ids| ids.into_iter().collect());
        let mut per_ws: HashMap<WorkspaceId, Vec<OwnedResource>> = HashMap::new();
        for r in list {
            per_ws.entry(r.workspace_id.clone()).or_default().push(r);
        }
        // The rows, read after the listing, page by page by a reader task while this
        // one acts on the pages already read (reading and acting overlap).
        let mut pages = self.workspace_pages(kind.clone());
        loop {
            let page = match pages.recv().await {
                Some(RowPage::Rows(rows)) => rows,
                Some(RowPage::End) => break,
                Some(RowPage::Failed(e)) => {
                    tracing::warn!(error = %e, "reconcile could not read the store");
                    return report;
                }
                None => {
                    tracing::warn!("reconcile's store reader stopped early");
                    return report;
                }
            };
            for ws in page {
                let resources = per_ws.remove(&ws.id).unwrap_or_default();
                if !self.inner.ownership.owns(&ws.id) {
                    // Another engine's workspace (a shared store): its owner reconciles it.
                    continue;
                }
                let before = epochs.get(&ws.id).copied().unwrap_or(0);
                let sessions = with_sessions.as_ref().map(|s| s.contains(&ws.id));
                self.reconcile_workspace(ws, resources, before, sessions, &mut report)
                    .await;
            }
        }
        // Every row was read: a resource left has no row of this runtime (or another
        // runtime's row), so it is an orphan.
        for r in per_ws.into_values().flatten() {
            self.remove_orphan(kind, &r, None, &mut report).await;
        }
        report
    }

    async fn reconcile_workspace(
        &self,
        listed: Workspace,
        resources: Vec<OwnedResource>,
        epoch_before: u64,
        has_session_rows: Option<bool>,
        report: &mut ReconcileReport,
    ) {
        let gate = self.inner.gates.get(&listed.id);
        let Ok(_exec) = gate.exec.try_lock() else {
            report.skipped_busy += 1;
            return;
        };
        let (idle, launching, cached) = {
            let st = gate.read();
            (st.slot.is_idle(), st.sessions.active > 0, st.row.clone())
        };
        if !idle || gate.epoch() != epoch_before || launching {
            report.skipped_busy += 1;
            return;
        }
        // The gate is idle and its epoch did not move since before the listing, so the
        // row it last committed (or, on a fresh gate, the row just listed) is current.
        let mut ws = cached.unwrap_or(listed);
        if ws.state.is_transitional() {
            // No op runs (the gate is idle), so nothing will finish it but us.
            self.finish_transitional(&gate, ws, Mode::Background).await;
            report.transitional_finished += 1;
            gate.bump();
            return;
        }
        let main = resources
            .iter()
            .find(|r| r.kind == ResourceKind::Main && r.incarnation == ws.incarnation);
        if ws.state == State::Running {
            let observed = match main.map(|r| r.status) {
                None => Some((
                    LifecycleEvent::Missing,
                    Cause::RuntimeMissing,
                    FailureReason::RuntimeMissing,
                    format!(
                        "runtime has no resource for running workspace {} (incarnation {})",
                        ws.name, ws.incarnation
                    ),
                )),
                Some(ProcessStatus::Exited(code)) => {
                    let code = code.unwrap_or(-1);
                    Some((
                        LifecycleEvent::Exited(code),
                        Cause::Exited,
                        FailureReason::Exited,
                        format!("main process of {} exited with code {code}", ws.name),
                    ))
                }
                Some(ProcessStatus::Running) => None,
            };
            if let Some((event, cause, reason, message)) = observed {
                let mut note = Note::new(cause, Actor::Reconciler, message.clone());
                note.last_error = Some(LastError {
                    code: reason,
                    message,
                    at: self.inner.clock.now(),
                });
                match self.commit_transition(&gate, &mut ws, event, note).await {
                    Ok(committed) => {
                        if matches!(event, LifecycleEvent::Missing) {
                            report.missing += 1
                        } else {
                            report.exited += 1
                        }
                        let x = Exec::stopping(
                            &gate,
                            None,
                            self.stop_deadline(),
                            SessionsClosed::Stopping,
                        );
                        if let Err(e) = self.run_effects(&ws, &committed.effects, &x).await {
                            tracing::warn!(workspace = %ws.id, error = %e.message(), "reconcile could not clean up after an exit");
                        }
                        gate.bump();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(workspace = %ws.id, error = %e, "reconcile could not record an exit")
                    }
                }
            }
        }
        // Orphans: another incarnation, or a live process the record says is not running.
        for r in &resources {
            let wanted = r.incarnation == ws.incarnation
                && match &r.kind {
                    ResourceKind::Main => {
                        ws.state == State::Running || r.status != ProcessStatus::Running
                    }
                    ResourceKind::Session { .. } => ws.state == State::Running,
                };
            if !wanted {
                self.remove_orphan(&ws.runtime, r, Some(&ws), report).await;
            }
        }
        // Session launches do not take the exec lock: re-check, after reading rows and
        // before acting on them, that none registered or finished since the listing.
        let settled = || gate.read().sessions.active == 0 && gate.epoch() == epoch_before;
        // Known to have no session rows (set below, cleared by any launch): skip the reads.
        let listed_sessions = resources
            .iter()
            .any(|r| matches!(r.kind, ResourceKind::Session { .. }));
        if gate.read().no_sessions && !listed_sessions {
            return;
        }
        // The pass's one read says this workspace has no session rows.
        if has_session_rows == Some(false) && !listed_sessions {
            if settled() {
                gate.update(|st| st.no_sessions = true);
            }
            return;
        }
        // One read of the session rows, acted on only if no launch moved meanwhile.
        let Ok(rows) = self.inner.store.sessions(&ws.id).await else {
            return;
        };
        if !settled() {
            return;
        }
        if rows.is_empty() && !listed_sessions {
            gate.update(|st| st.no_sessions = true);
            return;
        }
        // Session resources of this incarnation without a row are orphans.
        for r in &resources {
            if let ResourceKind::Session { name, generation } = &r.kind
                && r.incarnation == ws.incarnation
                && !rows
                    .iter()
                    .any(|row| &row.name == name && row.generation == *generation)
            {
                self.remove_orphan(&ws.runtime, r, Some(&ws), report).await;
            }
        }
        // Forget rows whose process is gone, only for the generation that exited.
        if ws.state != State::Running {
            return;
        }
        for row in rows {
            let live = resources.iter().find(|r| matches!(&r.kind, ResourceKind::Session { name, generation } if *name == row.name && *generation == row.generation));
            match live.map(|r| r.status) {
                Some(ProcessStatus::Running) | Some(ProcessStatus::Exited(_))
                    if row.state == SessionState::Exited => {}
                Some(ProcessStatus::Running) => {}
                Some(ProcessStatus::Exited(code)) => {
                    let mut exited = row.clone();
                    exited.state = SessionState::Exited;
                    exited.exit_code = code;
                    if self.inner.store.update_session(&exited).await.is_ok() {
                        report.sessions_pruned += 1;
                    }
                }
                None => {
                    if let Ok(true) = self
                        .inner
                        .store
                        .delete_session(&ws.id, &row.name, row.generation)
                        .await
                    {
                        report.sessions_pruned += 1;
                    }
                }
            }
        }
    }

    async fn remove_orphan(
        &self,
        kind: &crate::ids::RuntimeKind,
        r: &OwnedResource,
        ws: Option<&Workspace>,
        report: &mut ReconcileReport,
    ) {
        let Some(rt) = self.inner.runtimes.get(kind) else {
            return;
        };
        let age = self.inner.clock.now().signed_duration_since(r.created_at);
        let grace = chrono::Duration::from_std(self.inner.config.orphan_grace)
            .unwrap_or(chrono::Duration::MAX);
        if age < grace {
            report.orphans_kept += 1;
            return;
        }
        let bound = self.inner.config.stop_ceiling;
        let grace_stop = self.inner.config.stop_grace;
        let result = match &r.kind {
            ResourceKind::Main => {
                let target = ResourceRef {
                    engine_id: self.inner.engine_id.clone(),
                    workspace_id: r.workspace_id.clone(),
                    incarnation: r.incarnation,
                };
                tokio::time::timeout(bound, async {
                    rt.stop(&target, grace_stop).await?;
                    rt.remove(&target).await
                })
                .await
            }
            ResourceKind::Session { name, generation } => {
                let target = SessionRef {
                    engine_id: self.inner.engine_id.clone(),
                    workspace_id: r.workspace_id.clone(),
                    name: name.clone(),
                    generation: Some(*generation),
                };
                tokio::time::timeout(bound, rt.stop_session(&target, grace_stop)).await
            }
        };
        match result {
            Ok(Ok(())) => {
                report.orphans_removed += 1;
                if let Some(ws) = ws {
                    self.step(ws, None, Step::OrphanRemoved);
                }
            }
            Ok(Err(e)) if e.is_not_found() => report.orphans_removed += 1,
            Ok(Err(e)) => {
                tracing::warn!(workspace = %r.workspace_id, error = %e, "could not remove an orphan")
            }
            Err(_) => tracing::warn!(workspace = %r.workspace_id, "removing an orphan timed out"),
        }
    }
}

impl Engine {
    /// Starts the background loops: the periodic reconciler, and one watcher per
    /// runtime that has an event stream; a wake-up from either runs a pass (bursts
    /// coalesce into one).
    pub(crate) fn spawn_background(&self) {
        self.spawn_pool_loop();
        let mut wakes = HashMap::new();
        for (kind, rt) in &self.inner.runtimes {
            let wake = crate::ports::EventWake::new();
            wakes.insert(kind.clone(), wake.clone());
            let (rt, engine_id, token) = (
                rt.clone(),
                self.inner.engine_id.clone(),
                self.inner.loops_token.clone(),
            );
            self.spawn(async move {
                rt.watch_events(&engine_id, &token, &wake).await;
            });
        }
        // One loop per runtime, so a runtime that does not answer never holds back
        // another's pass; a runtime's events wake its own loop.
        let period = self.inner.config.reconcile_period;
        for (kind, wake) in wakes {
            let (engine, token) = (self.clone(), self.inner.loops_token.clone());
            self.spawn(async move {
                // The first pass at once: boot recovery left it to the loops.
                let mut first = period.is_some();
                loop {
                    let tick = async {
                        match period {
                            Some(p) => tokio::time::sleep(p).await,
                            None => std::future::pending().await,
                        }
                    };
                    if !std::mem::take(&mut first) {
                        tokio::select! {
                            () = token.cancelled() => return,
                            () = tick => {}
                            () = wake.woken() => {}
                        }
                    }
                    tokio::select! {
                        () = token.cancelled() => return,
                        _ = engine.reconcile_runtime_once(&kind) => {}
                    }
                }
            });
        }
    }
}
