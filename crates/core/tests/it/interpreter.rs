//! One blueprint: the effects the runtime and the store observe are exactly the effects
//! `transition()` returned, in order. A property test drives random sequences of
//! concurrent requests and runtime faults through an engine whose store and runtime
//! journal every commit and every side-effecting call; each workspace's journal must
//! then read as a series of legal transitions, each followed by the runtime calls of
//! its effects, in the table's order, and nothing else (a failed effect may cut the
//! list short).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::Engine;
use berth_core::ids::{
    EngineId, Generation, Incarnation, OpId, RuntimeKind, SessionName, TokenHash, WorkspaceId,
    WorkspaceName,
};
use berth_core::merge::OpKind;
use berth_core::model::{
    Actor, Cause, CreateWorkspace, Event, NewEvent, Operation, Pool, Session, Workspace,
    WorkspaceSpec,
};
use berth_core::ports::{
    CaptureTarget, Commit, DirtyReport, EventWake, Fence, LaunchRequest, NewSession, OwnedResource,
    ProcessRuntime, ResourceRef, RuntimeError, SessionLaunch, SessionRef, SpecRefusal, Store,
    StoreError, WorkspacePage, WorkspaceQuery, WorkspaceRef,
};
use berth_core::state::{Effect, FailureReason, LifecycleEvent, Next, State, transition};
use berth_core::testkit::{FakeCall, FakeRuntime, MemoryStore, Plan, RecordingReporter, TestClock};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::support::config;

/// One thing the ports observed, for one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Commit {
        from: Option<State>,
        to: Option<State>,
        cause: Cause,
        minted: bool,
    },
    /// A side-effecting runtime call, with the incarnation it targets (main resources).
    Call(FakeCall, Option<u64>),
    /// A new op was persisted.
    Request(OpKind),
}

#[derive(Debug, Default)]
struct Journal(parking_lot::Mutex<Vec<(WorkspaceId, Seen)>>);

impl Journal {
    fn push(&self, ws: &WorkspaceId, seen: Seen) {
        self.0.lock().push((ws.clone(), seen));
    }

    fn of(&self, ws: &WorkspaceId) -> Vec<Seen> {
        self.0
            .lock()
            .iter()
            .filter(|(w, _)| w == ws)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

#[derive(Debug)]
struct JournalStore {
    inner: Arc<MemoryStore>,
    journal: Arc<Journal>,
}

#[async_trait]
impl Store for JournalStore {
    async fn init_engine_id(&self, candidate: &EngineId) -> Result<EngineId, StoreError> {
        self.inner.init_engine_id(candidate).await
    }
    async fn create_workspace(&self, w: &Workspace, e: &NewEvent) -> Result<Event, StoreError> {
        self.inner.create_workspace(w, e).await
    }
    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        self.inner.workspace(id).await
    }
    async fn workspace_by_name(&self, n: &WorkspaceName) -> Result<Option<Workspace>, StoreError> {
        self.inner.workspace_by_name(n).await
    }
    async fn list_workspaces(&self, q: &WorkspaceQuery) -> Result<WorkspacePage, StoreError> {
        self.inner.list_workspaces(q).await
    }
    async fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        self.inner.count_by_state().await
    }
    async fn commit(&self, commit: &Commit) -> Result<Option<Event>, StoreError> {
        let stored = self.inner.commit(commit).await?;
        if let Some(e) = &stored {
            self.journal.push(
                &commit.workspace.id,
                Seen::Commit {
                    from: e.event.from,
                    to: e.event.to,
                    cause: e.event.cause,
                    minted: commit.token.is_some(),
                },
            );
        }
        Ok(stored)
    }
    async fn delete_workspace(
        &self,
        id: &WorkspaceId,
        expected_version: u64,
        ops: &[Operation],
        event: &NewEvent,
        fence: Fence,
    ) -> Result<Event, StoreError> {
        let stored = self
            .inner
            .delete_workspace(id, expected_version, ops, event, fence)
            .await?;
        self.journal.push(
            id,
            Seen::Commit {
                from: event.from,
                to: None,
                cause: event.cause,
                minted: false,
            },
        );
        Ok(stored)
    }
    async fn insert_op(&self, op: &Operation) -> Result<(), StoreError> {
        self.inner.insert_op(op).await?;
        self.journal.push(&op.workspace_id, Seen::Request(op.kind));
        Ok(())
    }
    async fn update_op(&self, op: &Operation) -> Result<(), StoreError> {
        self.inner.update_op(op).await
    }
    async fn op(&self, id: &OpId) -> Result<Option<Operation>, StoreError> {
        self.inner.op(id).await
    }
    async fn list_ops(&self, w: &WorkspaceId, limit: usize) -> Result<Vec<Operation>, StoreError> {
        self.inner.list_ops(w, limit).await
    }
    async fn unfinished_ops(&self) -> Result<Vec<Operation>, StoreError> {
        self.inner.unfinished_ops().await
    }
    async fn events<'a>(
        &self,
        after: u64,
        w: Option<&'a WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events(after, w, limit).await
    }
    async fn last_event_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_event_seq().await
    }
    async fn insert_session(&self, s: &NewSession) -> Result<Session, StoreError> {
        self.inner.insert_session(s).await
    }
    async fn update_session(&self, s: &Session) -> Result<(), StoreError> {
        self.inner.update_session(s).await
    }
    async fn delete_session(
        &self,
        w: &WorkspaceId,
        n: &SessionName,
        g: Generation,
    ) -> Result<bool, StoreError> {
        self.inner.delete_session(w, n, g).await
    }
    async fn sessions(&self, w: &WorkspaceId) -> Result<Vec<Session>, StoreError> {
        self.inner.sessions(w).await
    }
    async fn workspaces_with_sessions(&self) -> Result<Vec<WorkspaceId>, StoreError> {
        self.inner.workspaces_with_sessions().await
    }
    async fn token_owner(
        &self,
        h: &TokenHash,
    ) -> Result<Option<(WorkspaceId, Incarnation)>, StoreError> {
        self.inner.token_owner(h).await
    }
    async fn claim_idempotency_key(
        &self,
        k: &str,
        h: &str,
        r: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.inner.claim_idempotency_key(k, h, r).await
    }
    async fn idempotency_key(&self, k: &str) -> Result<Option<(String, String)>, StoreError> {
        self.inner.idempotency_key(k).await
    }
    async fn pools(&self) -> Result<Vec<Pool>, StoreError> {
        self.inner.pools().await
    }
    async fn put_pool(&self, p: &Pool) -> Result<(), StoreError> {
        self.inner.put_pool(p).await
    }
    async fn delete_pool(&self, n: &WorkspaceName) -> Result<bool, StoreError> {
        self.inner.delete_pool(n).await
    }
    async fn pool_members<'a>(
        &self,
        n: Option<&'a WorkspaceName>,
    ) -> Result<Vec<Workspace>, StoreError> {
        self.inner.pool_members(n).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

#[derive(Debug)]
struct JournalRuntime {
    inner: Arc<FakeRuntime>,
    journal: Arc<Journal>,
}

#[async_trait]
impl ProcessRuntime for JournalRuntime {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind()
    }
    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRefusal> {
        self.inner.check_spec(spec)
    }
    async fn prepare(&self, w: &WorkspaceRef) -> Result<Option<String>, RuntimeError> {
        self.journal
            .push(&w.workspace_id, Seen::Call(FakeCall::Prepare, None));
        self.inner.prepare(w).await
    }
    async fn launch(&self, r: &LaunchRequest) -> Result<(), RuntimeError> {
        self.journal.push(
            &r.resource.workspace_id,
            Seen::Call(FakeCall::Launch, Some(r.resource.incarnation.0)),
        );
        self.inner.launch(r).await
    }
    async fn stop(&self, r: &ResourceRef, grace: Duration) -> Result<(), RuntimeError> {
        self.journal.push(
            &r.workspace_id,
            Seen::Call(FakeCall::Stop, Some(r.incarnation.0)),
        );
        self.inner.stop(r, grace).await
    }
    async fn remove(&self, r: &ResourceRef) -> Result<(), RuntimeError> {
        self.journal.push(
            &r.workspace_id,
            Seen::Call(FakeCall::Remove, Some(r.incarnation.0)),
        );
        self.inner.remove(r).await
    }
    async fn cleanup(&self, w: &WorkspaceRef) -> Result<(), RuntimeError> {
        self.journal
            .push(&w.workspace_id, Seen::Call(FakeCall::Cleanup, None));
        self.inner.cleanup(w).await
    }
    async fn inspect(
        &self,
        e: &EngineId,
        w: &WorkspaceId,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        self.inner.inspect(e, w).await
    }
    async fn list_owned(&self, e: &EngineId) -> Result<Vec<OwnedResource>, RuntimeError> {
        self.inner.list_owned(e).await
    }
    // A session launch is a request of its own, not an effect of a transition.
    async fn launch_session(&self, l: &SessionLaunch) -> Result<(), RuntimeError> {
        self.inner.launch_session(l).await
    }
    async fn inspect_session(&self, s: &SessionRef) -> Result<Option<OwnedResource>, RuntimeError> {
        self.inner.inspect_session(s).await
    }
    async fn stop_session(&self, s: &SessionRef, grace: Duration) -> Result<(), RuntimeError> {
        self.journal
            .push(&s.workspace_id, Seen::Call(FakeCall::StopSession, None));
        self.inner.stop_session(s, grace).await
    }
    async fn capture(&self, t: &CaptureTarget, lines: usize) -> Result<Vec<String>, RuntimeError> {
        self.inner.capture(t, lines).await
    }
    async fn dirty_check(&self, w: &WorkspaceRef) -> Result<DirtyReport, RuntimeError> {
        self.inner.dirty_check(w).await
    }
    async fn watch_events(&self, e: &EngineId, stop: &CancellationToken, wake: &EventWake) {
        self.inner.watch_events(e, stop, wake).await;
    }
}

/// The lifecycle event a committed event stands for.
fn event_of(from: State, to: Option<State>, cause: Cause) -> Option<LifecycleEvent> {
    use LifecycleEvent as Ev;
    Some(match cause {
        Cause::Start => Ev::Start,
        Cause::Launched | Cause::Adopted => Ev::Launched,
        Cause::StartFailed => Ev::StartFailed(FailureReason::StartFailed),
        Cause::StartTimeout => Ev::StartFailed(FailureReason::StartTimeout),
        Cause::StartCancelled => Ev::StartCancelled,
        Cause::Stop => Ev::Stop,
        Cause::Stopped => Ev::Stopped,
        Cause::StopFailed => Ev::StopFailed,
        Cause::Exited if to == Some(State::Stopped) => Ev::Exited(0),
        Cause::Exited => Ev::Exited(1),
        Cause::RuntimeMissing => Ev::Missing,
        Cause::Delete => Ev::Delete,
        Cause::Deleted => Ev::Deleted,
        Cause::Recovered if from == State::Starting => Ev::StartFailed(FailureReason::Interrupted),
        Cause::Recovered if from == State::Stopping => Ev::Stopped,
        Cause::Recovered => Ev::DeleteFailed,
        // Not moves of the state machine: a claim renames a member in place.
        Cause::Created | Cause::Interrupted | Cause::Claimed => return None,
    })
}

type Call = (FakeCall, Option<u64>);

/// Whether `calls` are what `effects` allow, in order, for the workspace's current
/// incarnation `n`: each effect explains a run of calls, and a failed effect may end
/// the list early (so the calls may stop anywhere, but never go off the pattern).
fn explained(effects: &[Effect], calls: &[Call], n: u64) -> bool {
    explain_from(effects, calls, n, 0) == calls.len()
}

fn explain_from(effects: &[Effect], calls: &[Call], n: u64, from: usize) -> usize {
    use FakeCall as C;
    let mut i = from;
    let mut take = |ok: &dyn Fn(&Call) -> bool, max: usize| {
        let mut taken = 0;
        while i < calls.len() && taken < max && ok(&calls[i]) {
            i += 1;
            taken += 1;
        }
        taken
    };
    let older = |c: &Call, call: FakeCall| c.0 == call && c.1.is_some_and(|k| k < n);
    let this = |c: &Call, call: FakeCall| c.0 == call && c.1 == Some(n);
    for effect in effects.iter().filter(|e| !e.is_record()) {
        match effect {
            Effect::MintIncarnation => {}
            // Prepare, launch this incarnation; a name held by an older one of ours is
            // removed and the launch retried.
            Effect::Launch => {
                take(&|c| c.0 == C::Prepare, 1);
                take(&|c| this(c, C::Launch) || older(c, C::Remove), usize::MAX);
            }
            Effect::StopSessions => {
                take(&|c| c.0 == C::StopSession, usize::MAX);
            }
            // This incarnation, then perhaps an older one it fell back to.
            Effect::StopMain if n > 0 => {
                take(&|c| this(c, C::Stop), 1);
                take(&|c| older(c, C::Stop), 1);
            }
            Effect::RemovePartial | Effect::RemoveExited if n > 0 => {
                take(&|c| this(c, C::Remove), 1);
            }
            Effect::RemoveResources => {
                if n > 0 {
                    take(&|c| this(c, C::Remove), 1);
                    take(&|c| older(c, C::Remove), 1);
                }
                take(&|c| c.0 == C::Cleanup, 1);
            }
            Effect::StopMain | Effect::RemovePartial | Effect::RemoveExited => {}
        }
    }
    i
}

/// Checks one workspace's journal against the table.
fn check_journal(seen: &[Seen]) -> Result<(), String> {
    let mut effects: Vec<Effect> = Vec::new();
    let mut calls: Vec<Call> = Vec::new();
    let mut incarnation = 0;
    let mut state: Option<State> = Some(State::Stopped);
    let flush = |effects: &[Effect], calls: &[Call], n: u64| {
        if explained(effects, calls, n) {
            Ok(())
        } else {
            Err(format!(
                "calls {calls:?} are not the effects {effects:?} of incarnation {n}"
            ))
        }
    };
    for s in seen {
        match s {
            Seen::Call(c, n) => calls.push((*c, *n)),
            Seen::Request(kind) => {
                // A retried delete of a `deleting` workspace re-enters it: the table's
                // self-loop, which commits nothing and runs its effects again.
                let event = match kind {
                    OpKind::Delete => LifecycleEvent::Delete,
                    _ => continue,
                };
                let Some(current) = state else { continue };
                if let Ok(t) = transition(current, event)
                    && t.next == Next::State(current)
                    && !t.commits(current)
                {
                    flush(&effects, &calls, incarnation)?;
                    calls.clear();
                    effects = t.effects;
                }
            }
            Seen::Commit {
                from,
                to,
                cause,
                minted,
            } => {
                flush(&effects, &calls, incarnation)?;
                calls.clear();
                let from = from.ok_or("a commit without a previous state")?;
                if Some(from) != state {
                    return Err(format!("a commit from {from} while the row was {state:?}"));
                }
                let Some(event) = event_of(from, *to, *cause) else {
                    // An interruption records the op, not a transition: nothing runs.
                    effects.clear();
                    continue;
                };
                let t = transition(from, event).map_err(|e| e.to_string())?;
                let next = match t.next {
                    Next::State(s) => Some(s),
                    Next::Gone => None,
                };
                if next != *to || !t.commits(from) {
                    return Err(format!(
                        "{from} + {event:?} committed {to:?}, the table says {t:?}"
                    ));
                }
                if *minted != t.effects.contains(&Effect::MintIncarnation) {
                    return Err(format!(
                        "{from} + {event:?}: minted {minted}, the table says {t:?}"
                    ));
                }
                if *minted {
                    incarnation += 1;
                }
                effects = t.effects;
                state = *to;
            }
        }
    }
    flush(&effects, &calls, incarnation)
}

#[derive(Debug, Clone)]
enum Step {
    Requests(Vec<(usize, OpKind, bool)>),
    Fault(FakeCall, bool),
    Exit(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let kind = prop_oneof![
        Just(OpKind::Start),
        Just(OpKind::Stop),
        Just(OpKind::Restart),
        Just(OpKind::Delete)
    ];
    let call = prop_oneof![
        Just(FakeCall::Launch),
        Just(FakeCall::Stop),
        Just(FakeCall::Remove),
        Just(FakeCall::Cleanup),
        Just(FakeCall::StopSession),
    ];
    prop_oneof![
        5 => prop::collection::vec((0..2usize, kind, any::<bool>()), 1..5).prop_map(Step::Requests),
        2 => (call, any::<bool>()).prop_map(|(c, hang)| Step::Fault(c, hang)),
        1 => (0..2usize).prop_map(Step::Exit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: crate::model::cases(),
        rng_seed: crate::model::seed(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_runtime_and_the_store_observe_exactly_the_effects_of_the_table(steps in prop::collection::vec(step(), 1..10)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(run(steps));
    }
}

async fn run(steps: Vec<Step>) {
    let clock = Arc::new(TestClock::new());
    let journal = Arc::new(Journal::default());
    let memory = Arc::new(MemoryStore::new());
    let fake = Arc::new(FakeRuntime::new(clock.clone()));
    let mut cfg = config();
    cfg.start_ceiling = Duration::from_secs(20);
    let engine = Engine::builder()
        .store(Arc::new(JournalStore {
            inner: memory.clone(),
            journal: journal.clone(),
        }))
        .runtime(Arc::new(JournalRuntime {
            inner: fake.clone(),
            journal: journal.clone(),
        }))
        .reporter(Arc::new(RecordingReporter::default()))
        .clock(clock)
        .config(cfg)
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let ws = engine
            .create(CreateWorkspace {
                name: WorkspaceName::parse(&format!("w{i}")).unwrap(),
                runtime: RuntimeKind::parse("fake").unwrap(),
                spec: WorkspaceSpec {
                    command: vec!["agent".into()],
                    ..Default::default()
                },
                actor: Actor::Api,
            })
            .await
            .unwrap();
        ids.push(ws.id);
    }
    for step in steps {
        match step {
            Step::Fault(call, hang) => fake.plan(
                call,
                if hang {
                    Plan::Hang
                } else {
                    Plan::Fail(RuntimeError::Other {
                        resource: "fake".into(),
                        message: "planned".into(),
                    })
                },
            ),
            Step::Exit(ws) => fake.exit_main(&ids[ws], 0),
            Step::Requests(requests) => {
                let mut tickets = Vec::new();
                for (ws, kind, force) in requests {
                    // Sessions give StopSessions something to do (launched only into a
                    // live process, so no failed launch has a cleanup of its own).
                    if kind == OpKind::Start && !fake.live_mains(&ids[ws]).is_empty() {
                        let _ = engine
                            .launch_session(
                                &ids[ws],
                                SessionName::parse("s").unwrap(),
                                vec!["agent".into()],
                                BTreeMap::new(),
                            )
                            .await;
                    }
                    if let Ok(t) = engine.request(&ids[ws], kind, Actor::Api, force).await {
                        tickets.push(t);
                    }
                }
                for t in tickets {
                    assert!(t.wait().await.unwrap().status.is_terminal());
                }
            }
        }
    }
    engine.shutdown().await;
    for id in &ids {
        let seen = journal.of(id);
        if let Err(e) = check_journal(&seen) {
            panic!("workspace {id}: {e}\njournal: {seen:#?}");
        }
    }
}

/// The checker itself: a run that does something the table did not list fails it.
#[test]
fn the_checker_refuses_what_the_table_did_not_list() {
    use FakeCall as C;
    let commit = |from, to, cause, minted| Seen::Commit {
        from: Some(from),
        to,
        cause,
        minted,
    };
    let start = commit(State::Stopped, Some(State::Starting), Cause::Start, true);
    let launched = commit(
        State::Starting,
        Some(State::Running),
        Cause::Launched,
        false,
    );
    let call = |c, n| Seen::Call(c, n);
    let ok = vec![
        start.clone(),
        call(C::Prepare, None),
        call(C::Launch, Some(1)),
        launched.clone(),
    ];
    assert_eq!(check_journal(&ok), Ok(()));
    // A partial removed before the commit that lists it.
    let early = vec![
        start.clone(),
        call(C::Prepare, None),
        call(C::Launch, Some(1)),
        call(C::Remove, Some(1)),
        commit(
            State::Starting,
            Some(State::Failed),
            Cause::StartFailed,
            false,
        ),
    ];
    assert!(check_journal(&early).is_err());
    let in_order = vec![
        start.clone(),
        call(C::Prepare, None),
        call(C::Launch, Some(1)),
        commit(
            State::Starting,
            Some(State::Failed),
            Cause::StartFailed,
            false,
        ),
        call(C::Remove, Some(1)),
    ];
    assert_eq!(check_journal(&in_order), Ok(()));
    // A stop in a delete of a stopped workspace, which lists none.
    let stop_in_delete = vec![
        start,
        call(C::Prepare, None),
        call(C::Launch, Some(1)),
        launched,
        commit(State::Running, Some(State::Stopping), Cause::Stop, false),
        call(C::Stop, Some(1)),
        commit(State::Stopping, Some(State::Stopped), Cause::Stopped, false),
        commit(State::Stopped, Some(State::Deleting), Cause::Delete, false),
        call(C::Stop, Some(1)),
        call(C::Remove, Some(1)),
        call(C::Cleanup, None),
    ];
    assert!(check_journal(&stop_in_delete).is_err());
    // A retried delete of a `deleting` workspace runs the re-entry's effects.
    let retried = vec![
        commit(State::Stopped, Some(State::Deleting), Cause::Delete, false),
        call(C::Cleanup, None),
        Seen::Request(OpKind::Delete),
        call(C::Cleanup, None),
        commit(State::Deleting, None, Cause::Deleted, false),
    ];
    assert_eq!(check_journal(&retried), Ok(()));
    // A mint the table did not list, and an illegal move.
    assert!(
        check_journal(&[commit(
            State::Stopped,
            Some(State::Stopping),
            Cause::Stop,
            false
        )])
        .is_err()
    );
    assert!(
        check_journal(&[commit(
            State::Stopped,
            Some(State::Running),
            Cause::Launched,
            false
        )])
        .is_err()
    );
}
