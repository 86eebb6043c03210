//! The interpreter: [`Engine::run_effects`] carries out the runtime effects of a
//! committed transition, in the order [`crate::state::transition`] listed them, through
//! [`Engine::execute`], the one place each [`Effect`] variant is performed. The first
//! effect that fails ends the list. Every runtime call is bounded by the caller's
//! deadline (a stop or delete spends one stop ceiling in total, a launch the start
//! ceiling) and ends early when shutdown passes its drain deadline.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::code::ErrorCode;
use crate::ids::{Incarnation, WorkspaceToken};
use crate::model::{OpError, Operation, Workspace};
use crate::ports::{ProcessRuntime, Report, RuntimeError, SessionRef, Step};
use crate::state::Effect;

use super::gate::{Gate, SessionsClosed};
use super::{Engine, runtime_code, secs};

/// The context effects run in.
#[derive(Debug)]
pub(crate) struct Exec<'a> {
    pub(crate) gate: &'a Gate,
    /// The op the effects belong to (for step reports).
    pub(crate) op: Option<&'a Operation>,
    /// Runtime calls end by this instant.
    pub(crate) deadline: Instant,
    /// Preemption of a launch (a newer stop or delete).
    pub(crate) cancel: Option<&'a CancellationToken>,
    /// The token the transition's commit minted, for `Launch`.
    pub(crate) token: Option<&'a WorkspaceToken>,
    /// Why session launches are refused while the effects run.
    pub(crate) closing: SessionsClosed,
}

impl<'a> Exec<'a> {
    /// Stop-side effects: no launch to cancel, no token.
    pub(crate) fn stopping(
        gate: &'a Gate,
        op: Option<&'a Operation>,
        deadline: Instant,
        closing: SessionsClosed,
    ) -> Self {
        Self {
            gate,
            op,
            deadline,
            cancel: None,
            token: None,
            closing,
        }
    }
}

/// What a successful effect produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ran,
    /// The main process runs; the directory `prepare` returned.
    Launched(Option<String>),
}

/// Why an effect failed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The runtime refused or failed; one line per resource.
    Runtime {
        code: ErrorCode,
        resources: Vec<String>,
    },
    /// The deadline passed.
    TimedOut { resources: Vec<String> },
    /// A newer request preempted the launch.
    Cancelled,
    /// Shutdown passed its drain deadline.
    Interrupted,
}

/// An effect that failed, and how.
#[derive(Debug, Clone)]
pub(crate) struct EffectError {
    pub(crate) effect: Effect,
    pub(crate) failure: Failure,
}

impl EffectError {
    /// The op error for a failed effect of `what` ("stop of w", "delete of w").
    pub(crate) fn to_op_error(&self, what: &str) -> OpError {
        match &self.failure {
            Failure::Runtime { code, resources } => {
                OpError::new(*code, format!("{what} failed: {}", resources.join("; ")))
                    .with_detail("resources", resources.clone())
            }
            Failure::TimedOut { resources } => {
                let code = if self.effect == Effect::Launch {
                    ErrorCode::StartTimeout
                } else {
                    ErrorCode::RuntimeTimeout
                };
                OpError::new(code, format!("{what} timed out: {}", resources.join("; ")))
                    .with_detail("resources", resources.clone())
            }
            Failure::Cancelled => OpError::new(
                ErrorCode::Superseded,
                format!("{what} was cancelled by a newer request"),
            ),
            Failure::Interrupted => OpError::new(
                ErrorCode::Interrupted,
                format!("{what} was interrupted by shutdown"),
            ),
        }
    }

    pub(crate) fn message(&self) -> String {
        match &self.failure {
            Failure::Runtime { resources, .. } | Failure::TimedOut { resources } => {
                resources.join("; ")
            }
            Failure::Cancelled => "cancelled by a newer request".into(),
            Failure::Interrupted => "interrupted by shutdown".into(),
        }
    }
}

impl Engine {
    pub(crate) fn runtime_for(&self, ws: &Workspace) -> Option<Arc<dyn ProcessRuntime>> {
        self.inner.runtimes.get(&ws.runtime).cloned()
    }

    pub(crate) fn step(&self, ws: &Workspace, op: Option<&Operation>, step: Step) {
        self.inner.reporter.report(Report::Step {
            at: self.inner.clock.now(),
            workspace_id: ws.id.clone(),
            op_id: op.map(|o| o.id.clone()),
            step,
        });
    }

    /// Carries out `effects` in order; the first failure ends the list. Record effects
    /// were carried out by the commit and are skipped here.
    ///
    /// # Errors
    /// The first effect that failed.
    pub(crate) async fn run_effects(
        &self,
        ws: &Workspace,
        effects: &[Effect],
        x: &Exec<'_>,
    ) -> Result<Outcome, EffectError> {
        let mut outcome = Outcome::Ran;
        for effect in effects.iter().filter(|e| !e.is_record()) {
            match self.execute(ws, *effect, x).await {
                Ok(Outcome::Ran) => {}
                Ok(launched) => outcome = launched,
                Err(failure) => {
                    return Err(EffectError {
                        effect: *effect,
                        failure,
                    });
                }
            }
        }
        Ok(outcome)
    }

    /// Performs one effect. The only place runtime side effects of a transition happen.
    async fn execute(
        &self,
        ws: &Workspace,
        effect: Effect,
        x: &Exec<'_>,
    ) -> Result<Outcome, Failure> {
        let runtime = self.runtime_for(ws);
        let work = async {
            match effect {
                // Carried out by the transition's commit (see `commit_transition`).
                Effect::MintIncarnation => Ok(Outcome::Ran),
                Effect::Launch => {
                    let (Some(rt), Some(token)) = (&runtime, x.token) else {
                        return Err(Failure::Runtime {
                            code: ErrorCode::RuntimeUnavailable,
                            resources: vec![format!(
                                "runtime {} of {}: not configured on this engine",
                                ws.runtime, ws.id
                            )],
                        });
                    };
                    let launched = self.launch_main(rt.as_ref(), ws, token).await;
                    match launched {
                        Ok(dir) => {
                            self.step(ws, x.op, Step::MainLaunched);
                            Ok(Outcome::Launched(dir))
                        }
                        Err(e) => Err(Failure::Runtime {
                            code: runtime_code(&e),
                            resources: vec![format!("launch of {}: {e}", ws.id)],
                        }),
                    }
                }
                Effect::StopSessions => self
                    .stop_sessions(x.gate, ws, x.op, x.closing)
                    .await
                    .map(|()| Outcome::Ran),
                Effect::StopMain | Effect::RemoveExited | Effect::RemovePartial => {
                    let Some(rt) = &runtime else {
                        return Ok(Outcome::Ran);
                    };
                    // Incarnation 0 never launched anything.
                    if ws.incarnation == Incarnation(0) {
                        return Ok(Outcome::Ran);
                    }
                    let grace = self.inner.config.stop_grace;
                    let called = if effect == Effect::StopMain {
                        self.on_main(rt.as_ref(), ws, true, grace).await
                    } else {
                        // Only what this incarnation's launch left; an older incarnation's
                        // resource is not a partial of this one.
                        rt.remove(&self.resource(ws)).await
                    };
                    match called {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(RuntimeError::Conflict {
                            reason: crate::ports::ConflictReason::IncarnationMismatch,
                            ..
                        }) if effect != Effect::StopMain => {}
                        Err(e) => {
                            return Err(Failure::Runtime {
                                code: runtime_code(&e),
                                resources: vec![format!("{} of {}: {e}", verb(effect), ws.id)],
                            });
                        }
                    }
                    self.step(
                        ws,
                        x.op,
                        if effect == Effect::StopMain {
                            Step::MainStopped
                        } else {
                            Step::PartialRemoved
                        },
                    );
                    Ok(Outcome::Ran)
                }
                Effect::RemoveResources => {
                    let Some(rt) = &runtime else {
                        return Ok(Outcome::Ran);
                    };
                    if ws.incarnation > Incarnation(0) {
                        match self
                            .on_main(rt.as_ref(), ws, false, self.inner.config.stop_grace)
                            .await
                        {
                            Ok(()) => {}
                            Err(e) if e.is_not_found() => {}
                            Err(e) => {
                                return Err(Failure::Runtime {
                                    code: runtime_code(&e),
                                    resources: vec![format!("main resource of {}: {e}", ws.id)],
                                });
                            }
                        }
                    }
                    match rt.cleanup(&self.workspace_ref(ws)).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => {
                            return Err(Failure::Runtime {
                                code: runtime_code(&e),
                                resources: vec![format!("data of {}: {e}", ws.id)],
                            });
                        }
                    }
                    self.step(ws, x.op, Step::ResourcesRemoved);
                    Ok(Outcome::Ran)
                }
            }
        };
        let preempted = async {
            match x.cancel {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let work = tokio::time::timeout_at(x.deadline, work);
        tokio::pin!(work);
        tokio::select! {
            biased;
            () = self.inner.ops_token.cancelled() => Err(Failure::Interrupted),
            () = preempted => {
                // The runtime may already be carrying the call out (a container create
                // that dockerd finishes whether or not anyone still waits): let it end
                // within half of the preemptor's remaining budget, so what it creates
                // exists, and is removed by the cleanup, before the preemptor goes on.
                // Dropping it instead leaves a resource made after the cleanup looked.
                let budget = x
                    .gate
                    .read()
                    .slot
                    .in_flight
                    .as_ref()
                    .and_then(|p| p.deadline)
                    .unwrap_or(x.deadline);
                let now = Instant::now();
                let until = now + budget.saturating_duration_since(now) / 2;
                tokio::select! {
                    biased;
                    () = self.inner.ops_token.cancelled() => Err(Failure::Interrupted),
                    _ = tokio::time::timeout_at(until, &mut work) => Err(Failure::Cancelled),
                }
            }
            r = &mut work => match r {
                Ok(r) => r,
                Err(_) => Err(Failure::TimedOut {
                    resources: vec![format!(
                        "{} of {} still running at its deadline",
                        verb(effect),
                        ws.id
                    )],
                }),
            },
        }
    }

    /// Closes the session gate (waiting for launches in progress), then stops every
    /// session of the workspace at once and forgets the rows of those stopped. Every
    /// session is attempted.
    ///
    /// # Errors
    /// What failed, one line per session.
    pub(crate) async fn stop_sessions(
        &self,
        gate: &Gate,
        ws: &Workspace,
        op: Option<&Operation>,
        closing: SessionsClosed,
    ) -> Result<(), Failure> {
        gate.close_sessions(closing).await;
        if gate.read().no_sessions {
            return Ok(());
        }
        let rows = match self.inner.store.sessions(&ws.id).await {
            Ok(rows) => rows,
            Err(e) => {
                return Err(Failure::Runtime {
                    code: ErrorCode::Internal,
                    resources: vec![format!("sessions of {}: {e}", ws.id)],
                });
            }
        };
        let runtime = self.runtime_for(ws);
        let grace = self.inner.config.stop_grace;
        let stops = rows.iter().map(|row| {
            let runtime = runtime.clone();
            async move {
                if let Some(rt) = runtime {
                    let target = SessionRef {
                        engine_id: self.inner.engine_id.clone(),
                        workspace_id: ws.id.clone(),
                        name: row.name.clone(),
                        generation: Some(row.generation),
                    };
                    match rt.stop_session(&target, grace).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(format!("session {} of {}: {e}", row.name, ws.id)),
                    }
                }
                if let Err(e) = self
                    .inner
                    .store
                    .delete_session(&ws.id, &row.name, row.generation)
                    .await
                {
                    return Err(format!("session row {} of {}: {e}", row.name, ws.id));
                }
                self.step(ws, op, Step::SessionStopped(row.name.clone()));
                Ok(())
            }
        });
        let failures: Vec<String> = futures_util::future::join_all(stops)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failures.is_empty() {
            gate.update(|st| st.no_sessions = true);
            Ok(())
        } else {
            Err(Failure::Runtime {
                code: ErrorCode::RuntimeError,
                resources: failures,
            })
        }
    }

    /// Stops (or removes) the workspace's main resource. The call is fenced by the
    /// current incarnation; when the runtime holds an OLDER incarnation of ours instead
    /// (a stopped container kept while the next launch never created anything), the
    /// call applies to that one under its own incarnation. A newer one is never touched.
    pub(crate) async fn on_main(
        &self,
        rt: &dyn ProcessRuntime,
        ws: &Workspace,
        stop: bool,
        grace: std::time::Duration,
    ) -> Result<(), RuntimeError> {
        let call = |target: crate::ports::ResourceRef| async move {
            if stop {
                rt.stop(&target, grace).await
            } else {
                rt.remove(&target).await
            }
        };
        match call(self.resource(ws)).await {
            Err(RuntimeError::Conflict {
                reason: crate::ports::ConflictReason::IncarnationMismatch,
                ..
            }) => {}
            other => return other,
        }
        match rt.inspect(&self.inner.engine_id, &ws.id).await? {
            None => Ok(()),
            Some(found) if found.incarnation < ws.incarnation => {
                call(self.resource_at(ws, found.incarnation)).await
            }
            Some(found) => Err(RuntimeError::Conflict {
                resource: ws.id.to_string(),
                reason: crate::ports::ConflictReason::IncarnationMismatch,
                message: format!(
                    "holds incarnation {}, newer than the record's {}",
                    found.incarnation, ws.incarnation
                ),
            }),
        }
    }

    pub(crate) fn workspace_ref(&self, ws: &Workspace) -> crate::ports::WorkspaceRef {
        crate::ports::WorkspaceRef {
            engine_id: self.inner.engine_id.clone(),
            workspace_id: ws.id.clone(),
            spec: ws.spec.clone(),
        }
    }

    /// The deadline of a stop or delete that begins now: one stop ceiling.
    pub(crate) fn stop_deadline(&self) -> Instant {
        Instant::now() + self.inner.config.stop_ceiling
    }

    /// A sentence for a deadline in messages.
    pub(crate) fn ceiling_text(&self) -> String {
        secs(self.inner.config.stop_ceiling)
    }
}

fn verb(effect: Effect) -> &'static str {
    match effect {
        Effect::MintIncarnation => "mint",
        Effect::Launch => "launch",
        Effect::StopMain => "stop",
        Effect::RemoveExited | Effect::RemovePartial => "removal",
        Effect::StopSessions => "session stop",
        Effect::RemoveResources => "resource removal",
    }
}
