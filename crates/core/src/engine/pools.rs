//! Warm pools: members of a template kept created (and started) ahead of demand. A
//! create whose runtime and spec equal a pool's template claims a ready member instead
//! of creating one: the member takes the create's name in one commit with a token hash
//! minted then, and the runtime hands that token to the running process. Members are
//! ordinary rows (`pool` set) that survive restarts and that the reconciler treats like
//! any workspace; the pool pass refills and drains them through their gates.
//!
//! A claim holds the member's exec and intake locks and needs its slot idle, so no op
//! runs on it meanwhile; the pass's requests are for unclaimed members only (checked
//! under the intake lock), so a drain never deletes a workspace a create just claimed.

use std::collections::BTreeMap;

use crate::ids::{WorkspaceName, WorkspaceToken};
use crate::merge::OpKind;
use crate::model::{Actor, Cause, CreateWorkspace, NewEvent, Pool, Workspace};
use crate::state::State;

use super::{Engine, EngineError};

/// A pool and its unclaimed members.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    /// The pool.
    pub pool: Pool,
    /// Its unclaimed members (this engine's, with a shared store), by creation.
    pub members: Vec<Workspace>,
}

impl PoolStatus {
    /// Members a create can claim now (running, or stopped in a pool that does not
    /// start its members).
    pub fn ready(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.state == ready_state(&self.pool))
            .count()
    }
}

/// What one pool pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolsReport {
    /// Members created.
    pub created: usize,
    /// Members whose start was requested (new ones, and stopped or failed ones of a
    /// started pool).
    pub started: usize,
    /// Members whose delete was requested: surplus, of another template, or of a pool
    /// that no longer exists.
    pub drained: usize,
    /// Requests that failed (logged; the next pass tries again).
    pub errors: usize,
}

fn ready_state(pool: &Pool) -> State {
    if pool.start {
        State::Running
    } else {
        State::Stopped
    }
}

impl Engine {
    /// Creates or replaces a warm pool; the pool pass then creates its members (a
    /// changed template drains the old members and makes new ones).
    ///
    /// # Errors
    /// `Validation` naming the field (`name`, `size`, `dir`, `git`, `start`, or the
    /// template's own, as a create would), `ShuttingDown`, store errors.
    pub async fn set_pool(&self, pool: Pool) -> Result<Pool, EngineError> {
        self.validate_pool(&pool)?;
        self.inner.store.put_pool(&pool).await?;
        {
            let mut pools = self.inner.pools.write();
            pools.retain(|p| p.name != pool.name);
            pools.push(pool.clone());
        }
        self.inner.pools_wake.notify_one();
        Ok(pool)
    }

    /// Removes a pool; the pool pass deletes its unclaimed members.
    ///
    /// # Errors
    /// `NotFound` for an unknown pool, `ShuttingDown`, store errors.
    pub async fn remove_pool(&self, name: &WorkspaceName) -> Result<(), EngineError> {
        self.refuse_if_stopping()?;
        if !self.inner.store.delete_pool(name).await? {
            return Err(EngineError::NotFound {
                what: format!("pool {name}"),
            });
        }
        self.inner.pools.write().retain(|p| &p.name != name);
        self.inner.pools_wake.notify_one();
        Ok(())
    }

    /// Every pool with its unclaimed members, by name; members of a removed pool that
    /// are still being drained are not shown.
    ///
    /// # Errors
    /// Store errors.
    pub async fn pools(&self) -> Result<Vec<PoolStatus>, EngineError> {
        let pools = self.inner.store.pools().await?;
        let mut members: BTreeMap<WorkspaceName, Vec<Workspace>> = BTreeMap::new();
        for m in self.inner.store.pool_members(None).await? {
            if let Some(pool) = m.pool.clone()
                && self.owns(&m.id)
            {
                members.entry(pool).or_default().push(m);
            }
        }
        Ok(pools
            .into_iter()
            .map(|pool| PoolStatus {
                members: members.remove(&pool.name).unwrap_or_default(),
                pool,
            })
            .collect())
    }

    /// One pool by name.
    ///
    /// # Errors
    /// `NotFound`, store errors.
    pub async fn pool(&self, name: &WorkspaceName) -> Result<PoolStatus, EngineError> {
        self.pools()
            .await?
            .into_iter()
            .find(|p| &p.pool.name == name)
            .ok_or_else(|| EngineError::NotFound {
                what: format!("pool {name}"),
            })
    }

    /// The pool `name` as this engine last read it (a create from a pool takes its
    /// template; another daemon's change shows here after its next pool pass).
    pub fn pool_template(&self, name: &WorkspaceName) -> Option<Pool> {
        self.inner
            .pools
            .read()
            .iter()
            .find(|p| &p.name == name)
            .cloned()
    }

    fn validate_pool(&self, pool: &Pool) -> Result<(), EngineError> {
        let invalid = |field: &str, message: String| EngineError::Validation {
            field: field.into(),
            message,
        };
        if pool.name.as_str().len() > Pool::MAX_NAME {
            return Err(invalid(
                "name",
                format!(
                    "a pool name has at most {} characters (its members are named <pool>-<8 hex digits>)",
                    Pool::MAX_NAME
                ),
            ));
        }
        if pool.size > Pool::MAX_SIZE {
            return Err(invalid(
                "size",
                format!("a pool keeps at most {} members", Pool::MAX_SIZE),
            ));
        }
        let others: u64 = self
            .inner
            .pools
            .read()
            .iter()
            .filter(|p| p.name != pool.name)
            .map(|p| u64::from(p.size))
            .sum();
        let capacity = self.inner.config.pool_capacity;
        if others + u64::from(pool.size) > u64::from(capacity) {
            return Err(invalid(
                "size",
                format!(
                    "the pools of this daemon keep at most {capacity} members in all and the others ask for {others}; \
                     shrink one, or raise the daemon's pool capacity (--pool-capacity)"
                ),
            ));
        }
        if pool.spec.dir.is_some() {
            return Err(invalid(
                "dir",
                "pool members cannot share a directory: each gets its own".into(),
            ));
        }
        if pool.spec.git.is_some() {
            return Err(invalid(
                "git",
                "pool members cannot share a worktree: leave git out".into(),
            ));
        }
        self.validate_create(&CreateWorkspace {
            name: pool.name.clone(),
            runtime: pool.runtime.clone(),
            spec: pool.spec.clone(),
            actor: Actor::Api,
        })?;
        let delivers = self
            .inner
            .runtimes
            .get(&pool.runtime)
            .is_some_and(|rt| rt.delivers_tokens());
        if pool.start && !delivers {
            return Err(invalid(
                "start",
                format!(
                    "the {} runtime cannot hand a running workspace its token when it is claimed; \
                     a pool of it keeps its members created only (start: false)",
                    pool.runtime
                ),
            ));
        }
        Ok(())
    }

    /// Claims a ready member of a pool whose template is `request`'s runtime and spec:
    /// it takes `request.name`, leaves the pool, and (when running) gets a fresh token
    /// through its runtime. `None` when no pool matches or no member is ready.
    pub(crate) async fn claim(
        &self,
        request: &CreateWorkspace,
        start: bool,
    ) -> Result<Option<Workspace>, EngineError> {
        let pool = {
            let pools = self.inner.pools.read();
            pools
                .iter()
                .find(|p| {
                    p.runtime == request.runtime
                        && p.spec == request.spec
                        // A running member is no answer to a create that asks for none.
                        && (start || !p.start)
                })
                .cloned()
        };
        let Some(pool) = pool else {
            return Ok(None);
        };
        let Some(rt) = self.inner.runtimes.get(&pool.runtime).cloned() else {
            return Ok(None);
        };
        let wanted = ready_state(&pool);
        for member in self.inner.store.pool_members(Some(&pool.name)).await? {
            if member.state != wanted || !self.owns(&member.id) {
                continue;
            }
            let gate = self.inner.gates.get(&member.id);
            // A member with an op or a reconcile step running is not ready.
            let Ok(_exec) = gate.exec.try_lock() else {
                continue;
            };
            let _intake = gate.intake.lock().await;
            if !gate.read().slot.is_idle() {
                continue;
            }
            let Some(mut ws) = self.current(&gate, &member.id).await? else {
                continue;
            };
            if ws.pool.as_ref() != Some(&pool.name)
                || ws.state != wanted
                || ws.spec != pool.spec
                || ws.runtime != pool.runtime
            {
                continue;
            }
            let now = self.inner.clock.now();
            let mut next = ws.clone();
            next.name = request.name.clone();
            next.pool = None;
            next.updated_at = now;
            let token = pool.start.then(WorkspaceToken::mint);
            let event = NewEvent {
                at: now,
                workspace_id: ws.id.clone(),
                op_id: None,
                actor: request.actor,
                from: Some(ws.state),
                to: Some(ws.state),
                cause: Cause::Claimed,
                message: format!("claimed from pool {} as {}", pool.name, request.name),
            };
            match self
                .write(&gate, &mut ws, next, event, token.as_ref(), Vec::new())
                .await
            {
                Ok(()) => {}
                // Changed under us (the reconciler saw it exit): try the next one.
                Err(EngineError::Store(crate::ports::StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
            self.inner.pools_wake.notify_one();
            if let Some(token) = token
                && let Err(e) = rt.deliver_token(&self.workspace_ref(&ws), &token).await
            {
                // The process never got its token: a restart gives the next incarnation
                // one through its environment, as any start does.
                tracing::warn!(workspace = %ws.id, error = %e, "could not hand a claimed workspace its token; restarting it");
                drop(_intake);
                drop(_exec);
                let _ = self
                    .request(&ws.id, OpKind::Restart, Actor::Engine, false)
                    .await;
            }
            return Ok(Some(ws));
        }
        Ok(None)
    }

    /// One pool pass: reads the pools, then for each keeps exactly `size` unclaimed
    /// members of its template (creating, starting, and deleting surplus and outdated
    /// members), and deletes the members of removed pools. Runs in the
    /// background after each claim, each pool change and each reconcile period; call
    /// it directly when the engine has no background loops.
    ///
    /// # Errors
    /// Store errors reading the pools or their members.
    pub async fn pools_once(&self) -> Result<PoolsReport, EngineError> {
        let _one = self.inner.pools_pass.lock().await;
        let pools = self.inner.store.pools().await?;
        *self.inner.pools.write() = pools.clone();
        let mut report = PoolsReport::default();
        let mut live: BTreeMap<WorkspaceName, Vec<Workspace>> = BTreeMap::new();
        for m in self.inner.store.pool_members(None).await? {
            let Some(name) = m.pool.clone() else { continue };
            if !self.owns(&m.id) || m.state == State::Deleting {
                continue;
            }
            let current = pools
                .iter()
                .find(|p| p.name == name && p.runtime == m.runtime && p.spec == m.spec);
            if current.is_none() {
                self.pool_request(&m, &name, OpKind::Delete, &mut report)
                    .await;
                report.drained += 1;
            } else {
                live.entry(name).or_default().push(m);
            }
        }
        for pool in &pools {
            let members = live.remove(&pool.name).unwrap_or_default();
            let size = pool.size as usize;
            if members.len() > size {
                // Drain the least ready first, then the newest.
                let mut order: Vec<&Workspace> = members.iter().rev().collect();
                order.sort_by_key(|m| m.state == ready_state(pool));
                for m in order.into_iter().take(members.len() - size) {
                    self.pool_request(m, &pool.name, OpKind::Delete, &mut report)
                        .await;
                    report.drained += 1;
                }
                continue;
            }
            // A member that stopped or failed is started again (once per pass, so a
            // template that cannot start retries each period instead of churning
            // through new members).
            if pool.start {
                for m in members
                    .iter()
                    .filter(|m| matches!(m.state, State::Stopped | State::Failed))
                {
                    if self.pending(&m.id).is_idle() {
                        self.pool_request(m, &pool.name, OpKind::Start, &mut report)
                            .await;
                        report.started += 1;
                    }
                }
            }
            for _ in members.len()..size {
                if self.is_shutting_down() {
                    return Ok(report);
                }
                let request = CreateWorkspace {
                    name: WorkspaceName::pool_member(&pool.name),
                    runtime: pool.runtime.clone(),
                    spec: pool.spec.clone(),
                    actor: Actor::Policy,
                };
                match self.create_stopped(request, Some(pool.name.clone())).await {
                    Ok(m) => {
                        report.created += 1;
                        if pool.start {
                            self.pool_request(&m, &pool.name, OpKind::Start, &mut report)
                                .await;
                            report.started += 1;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pool = %pool.name, error = %e, "could not create a pool member");
                        report.errors += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Requests `kind` for `member` if it is still an unclaimed member of `pool`; the
    /// op runs in the background.
    async fn pool_request(
        &self,
        member: &Workspace,
        pool: &WorkspaceName,
        kind: OpKind,
        report: &mut PoolsReport,
    ) {
        // A member has no user data: its delete skips the dirty check.
        let force = kind == OpKind::Delete;
        if let Err(e) = self
            .submit(&member.id, kind, Actor::Policy, force, Some(pool))
            .await
            && !matches!(e, EngineError::NotFound { .. })
        {
            tracing::warn!(workspace = %member.id, pool = %pool, error = %e, "pool request failed");
            report.errors += 1;
        }
    }
}

impl Engine {
    /// The pool loop (with background loops only): a pass at once, then after each
    /// wake-up (a claim, a pool change) and each reconcile period.
    pub(crate) fn spawn_pool_loop(&self) {
        let Some(period) = self.inner.config.reconcile_period else {
            return;
        };
        let (engine, token) = (self.clone(), self.inner.loops_token.clone());
        self.spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    pass = engine.pools_once() => {
                        if let Err(e) = pass {
                            tracing::warn!(error = %e, "pool pass failed");
                        }
                    }
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                    () = engine.inner.pools_wake.notified() => {}
                }
            }
        });
    }
}
