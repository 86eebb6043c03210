//! A scripted in-memory [`ProcessRuntime`]: per-call delays, failures, hangs, named
//! breakpoints and planned failures, with a journal of calls and the invariants a real
//! runtime keeps (one resource per workspace name, fencing by incarnation).
//!
//! Programs: `["exit", "N"]` exits at once with code N; `["echo", words...]` prints
//! the words as one line and keeps running; anything else runs until stopped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::ids::{EngineId, Incarnation, RuntimeKind, WorkspaceId};
use crate::model::{Timestamp, WorkspaceSpec};
use crate::ports::{
    CaptureTarget, Clock, ConflictReason, DirtyReport, LaunchRequest, OwnedResource,
    ProcessRuntime, ProcessStatus, ResourceKind, ResourceRef, RuntimeError, SessionLaunch,
    SessionRef, SpecRefusal, WorkspaceRef,
};

use super::breakpoints::Breakpoints;

/// The calls of the runtime port, for scripting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeCall {
    /// `prepare`
    Prepare,
    /// `launch`
    Launch,
    /// `stop`
    Stop,
    /// `remove`
    Remove,
    /// `cleanup`
    Cleanup,
    /// `inspect`
    Inspect,
    /// `list_owned`
    List,
    /// `launch_session`
    LaunchSession,
    /// `stop_session`
    StopSession,
    /// `capture`
    Capture,
    /// `dirty_check`
    DirtyCheck,
    /// `inspect_session`
    InspectSession,
    /// `deliver_token`
    DeliverToken,
}

impl FakeCall {
    /// The breakpoint name hit on entry to the call (`launch`, `stop`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FakeCall::Prepare => "prepare",
            FakeCall::Launch => "launch",
            FakeCall::Stop => "stop",
            FakeCall::Remove => "remove",
            FakeCall::Cleanup => "cleanup",
            FakeCall::Inspect => "inspect",
            FakeCall::List => "list",
            FakeCall::LaunchSession => "launch_session",
            FakeCall::StopSession => "stop_session",
            FakeCall::Capture => "capture",
            FakeCall::DirtyCheck => "dirty_check",
            FakeCall::InspectSession => "inspect_session",
            FakeCall::DeliverToken => "deliver_token",
        }
    }
}

/// A planned behaviour for the next call of a kind.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Fail with this error, doing nothing.
    Fail(RuntimeError),
    /// Never return.
    Hang,
    /// Do the work (create the resource), then fail with this error: "created, then the
    /// caller never heard of it".
    SucceedThenFail(RuntimeError),
    /// Do the work, then never return.
    SucceedThenHang,
    /// Panic (a bug in a runtime adapter), doing nothing.
    Panic,
    /// `launch` only: the call is handed to the runtime's own daemon, which carries it
    /// out after this delay whether or not the caller still waits (as dockerd finishes
    /// a container create whose HTTP client went away).
    Detached(Duration),
}

/// A process the fake runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeProcess {
    /// Owning engine.
    pub engine_id: EngineId,
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Incarnation label.
    pub incarnation: Incarnation,
    /// Main or session.
    pub kind: ResourceKind,
    /// Creation time.
    pub created_at: Timestamp,
    /// Running or exited.
    pub status: ProcessStatus,
    /// Output lines.
    pub output: Vec<String>,
    /// Environment it was given.
    pub env: BTreeMap<String, String>,
}

/// One successful main launch, for assertions.
#[derive(Debug, Clone)]
pub struct LaunchRecord {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Incarnation launched.
    pub incarnation: Incarnation,
    /// The environment given (holds the token).
    pub env: BTreeMap<String, String>,
    /// When (wall time of the fake's clock).
    pub at: Timestamp,
}

#[derive(Debug, Default)]
struct World {
    procs: Vec<FakeProcess>,
    /// Foreign resources holding a workspace's name (another tool's).
    foreign: Vec<WorkspaceId>,
    dirty: HashMap<WorkspaceId, Result<Vec<String>, String>>,
    launches: Vec<LaunchRecord>,
    /// Every call in order: (call, workspace).
    journal: Vec<(FakeCall, WorkspaceId)>,
    /// Tokens handed to running workspaces, in order: (workspace, incarnation, token).
    delivered: Vec<(WorkspaceId, Incarnation, String)>,
    unavailable: bool,
}

/// The fake runtime.
#[derive(Debug)]
pub struct FakeRuntime {
    kind: RuntimeKind,
    clock: Arc<dyn Clock>,
    world: Arc<parking_lot::Mutex<World>>,
    plans: parking_lot::Mutex<HashMap<FakeCall, VecDeque<Plan>>>,
    delays: parking_lot::Mutex<HashMap<FakeCall, Duration>>,
    breakpoints: Breakpoints,
    refused_fields: parking_lot::Mutex<Vec<&'static str>>,
}

impl FakeRuntime {
    /// A fake named `fake`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::named("fake", clock)
    }

    /// A fake with another runtime name.
    ///
    /// # Panics
    /// When `kind` is not a valid runtime name.
    pub fn named(kind: &str, clock: Arc<dyn Clock>) -> Self {
        #[allow(clippy::expect_used)]
        let kind = RuntimeKind::parse(kind).expect("a valid runtime name");
        Self {
            kind,
            clock,
            world: Arc::default(),
            plans: parking_lot::Mutex::default(),
            delays: parking_lot::Mutex::default(),
            breakpoints: Breakpoints::default(),
            refused_fields: parking_lot::Mutex::default(),
        }
    }

    /// The tokens [`ProcessRuntime::deliver_token`] handed out, in order:
    /// (workspace, the incarnation running then, the token).
    pub fn delivered(&self) -> Vec<(WorkspaceId, Incarnation, String)> {
        self.world.lock().delivered.clone()
    }

    /// Every call of `call` takes `delay` (tokio time, so paused tests stay exact).
    pub fn set_delay(&self, call: FakeCall, delay: Duration) {
        self.delays.lock().insert(call, delay);
    }

    /// The next call of `call` follows `plan`.
    pub fn plan(&self, call: FakeCall, plan: Plan) {
        self.plans.lock().entry(call).or_default().push_back(plan);
    }

    /// Drops every plan not yet used.
    pub fn clear_plans(&self) {
        self.plans.lock().clear();
    }

    /// The breakpoints: `launch`, `stop`, ... on entry (also `launch:<workspace id>`
    /// for one workspace); `launch.created` (and `launch.created:<workspace id>`) after
    /// a main resource was created and before `launch` returns.
    pub fn breakpoints(&self) -> &Breakpoints {
        &self.breakpoints
    }

    /// `check_spec` refuses a spec that sets `field` (`image`, `git`, `limits`, `dir`),
    /// as a runtime that cannot honour it does.
    pub fn refuse_field(&self, field: &'static str) {
        self.refused_fields.lock().push(field);
    }

    /// Makes every call fail with `Unavailable` (daemon down) or work again.
    pub fn set_unavailable(&self, down: bool) {
        self.world.lock().unavailable = down;
    }

    /// The dirty check of `ws` reports these files (or fails with this message).
    pub fn set_dirty(&self, ws: &WorkspaceId, files: Result<Vec<String>, String>) {
        self.world.lock().dirty.insert(ws.clone(), files);
    }

    /// Puts a foreign resource (no engine labels) on the name of `ws`.
    pub fn add_foreign(&self, ws: &WorkspaceId) {
        self.world.lock().foreign.push(ws.clone());
    }

    /// Whether a foreign resource holds the name of `ws`.
    pub fn has_foreign(&self, ws: &WorkspaceId) -> bool {
        self.world.lock().foreign.contains(ws)
    }

    /// Plants a resource directly (another engine's, or one left by a crash).
    pub fn plant(&self, process: FakeProcess) {
        self.world.lock().procs.push(process);
    }

    /// Marks the live main process of `ws` as exited with `code`.
    pub fn exit_main(&self, ws: &WorkspaceId, code: i64) {
        for p in self.world.lock().procs.iter_mut() {
            if &p.workspace_id == ws
                && p.kind == ResourceKind::Main
                && p.status == ProcessStatus::Running
            {
                p.status = ProcessStatus::Exited(Some(code));
            }
        }
    }

    /// Marks the live session `name` of `ws` as exited with `code`.
    pub fn exit_session(&self, ws: &WorkspaceId, name: &str, code: i64) {
        for p in self.world.lock().procs.iter_mut() {
            if &p.workspace_id == ws
                && matches!(&p.kind, ResourceKind::Session { name: n, .. } if n.as_str() == name)
                && p.status == ProcessStatus::Running
            {
                p.status = ProcessStatus::Exited(Some(code));
            }
        }
    }

    /// Removes every resource of `ws` behind the engine's back (`docker rm -f`).
    pub fn vanish(&self, ws: &WorkspaceId) {
        self.world.lock().procs.retain(|p| &p.workspace_id != ws);
    }

    /// All resources.
    pub fn processes(&self) -> Vec<FakeProcess> {
        self.world.lock().procs.clone()
    }

    /// Live (running) main resources of `ws`.
    pub fn live_mains(&self, ws: &WorkspaceId) -> Vec<FakeProcess> {
        self.world
            .lock()
            .procs
            .iter()
            .filter(|p| {
                &p.workspace_id == ws
                    && p.kind == ResourceKind::Main
                    && p.status == ProcessStatus::Running
            })
            .cloned()
            .collect()
    }

    /// Live sessions of `ws`.
    pub fn live_sessions(&self, ws: &WorkspaceId) -> Vec<FakeProcess> {
        self.world
            .lock()
            .procs
            .iter()
            .filter(|p| {
                &p.workspace_id == ws
                    && matches!(p.kind, ResourceKind::Session { .. })
                    && p.status == ProcessStatus::Running
            })
            .cloned()
            .collect()
    }

    /// Every successful main launch, in order.
    pub fn launches(&self) -> Vec<LaunchRecord> {
        self.world.lock().launches.clone()
    }

    /// Every call, in order, with its workspace.
    pub fn journal(&self) -> Vec<(FakeCall, WorkspaceId)> {
        self.world.lock().journal.clone()
    }

    /// Calls of one kind.
    pub fn calls(&self, call: FakeCall) -> usize {
        self.world
            .lock()
            .journal
            .iter()
            .filter(|(c, _)| *c == call)
            .count()
    }

    /// Runs the scripted prelude of a call: journal, breakpoint, delay, unavailability,
    /// and the planned behaviour (returned for the caller to apply after the work).
    async fn enter(&self, call: FakeCall, ws: &WorkspaceId) -> Result<Option<Plan>, RuntimeError> {
        self.world.lock().journal.push((call, ws.clone()));
        self.breakpoints.hit(call.name()).await;
        self.breakpoints.hit(&format!("{}:{ws}", call.name())).await;
        let delay = self.delays.lock().get(&call).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if self.world.lock().unavailable {
            return Err(RuntimeError::Unavailable {
                message: "fake runtime is down".into(),
            });
        }
        let plan = self
            .plans
            .lock()
            .get_mut(&call)
            .and_then(VecDeque::pop_front);
        match plan {
            Some(Plan::Fail(e)) => Err(e),
            Some(Plan::Hang) => std::future::pending().await,
            Some(Plan::Panic) => panic!("planned panic in fake runtime call {}", call.name()),
            other => Ok(other),
        }
    }

    /// Applies the after-work half of a plan.
    async fn leave<T>(&self, plan: Option<Plan>, value: T) -> Result<T, RuntimeError> {
        match plan {
            Some(Plan::SucceedThenFail(e)) => Err(e),
            Some(Plan::SucceedThenHang) => std::future::pending().await,
            _ => Ok(value),
        }
    }

    fn name_of(ws: &WorkspaceId) -> String {
        format!("fake/{ws}")
    }
}

fn program(command: &[String]) -> (ProcessStatus, Vec<String>) {
    match command.first().map(String::as_str) {
        Some("exit") => (
            ProcessStatus::Exited(Some(
                command.get(1).and_then(|c| c.parse().ok()).unwrap_or(0),
            )),
            vec![],
        ),
        Some("echo") => (ProcessStatus::Running, vec![command[1..].join(" ")]),
        _ => (ProcessStatus::Running, vec![]),
    }
}

/// The work of a main launch: adopt this incarnation's process, refuse a name in use,
/// or create the process.
fn create_main(
    world: &parking_lot::Mutex<World>,
    clock: &dyn Clock,
    request: &LaunchRequest,
) -> Result<(), RuntimeError> {
    let r = &request.resource;
    {
        let mut world = world.lock();
        if world.foreign.contains(&r.workspace_id) {
            return Err(RuntimeError::Conflict {
                resource: FakeRuntime::name_of(&r.workspace_id),
                reason: ConflictReason::Foreign,
                message: "name held by a resource that is not ours".into(),
            });
        }
        let existing = world
            .procs
            .iter()
            .find(|p| p.workspace_id == r.workspace_id && p.kind == ResourceKind::Main);
        match existing {
            Some(p)
                if p.incarnation == r.incarnation
                    && p.engine_id == r.engine_id
                    && p.status == ProcessStatus::Running =>
            {
                // Idempotent: adopt.
            }
            Some(_) => {
                return Err(RuntimeError::Conflict {
                    resource: FakeRuntime::name_of(&r.workspace_id),
                    reason: ConflictReason::NameInUse,
                    message: "name already in use".into(),
                });
            }
            None => {
                let (status, output) = program(&request.spec.command);
                world.procs.push(FakeProcess {
                    engine_id: r.engine_id.clone(),
                    workspace_id: r.workspace_id.clone(),
                    incarnation: r.incarnation,
                    kind: ResourceKind::Main,
                    created_at: clock.now(),
                    status,
                    output,
                    env: request.env.clone(),
                });
                let at = clock.now();
                world.launches.push(LaunchRecord {
                    workspace_id: r.workspace_id.clone(),
                    incarnation: r.incarnation,
                    env: request.env.clone(),
                    at,
                });
            }
        }
    }
    Ok(())
}

fn owned(p: &FakeProcess) -> OwnedResource {
    OwnedResource {
        workspace_id: p.workspace_id.clone(),
        incarnation: p.incarnation,
        kind: p.kind.clone(),
        created_at: p.created_at,
        status: p.status,
    }
}

#[async_trait]
impl ProcessRuntime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        self.kind.clone()
    }

    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRefusal> {
        for field in self.refused_fields.lock().iter() {
            let set = match *field {
                "image" => spec.image.is_some(),
                "git" => spec.git.is_some(),
                "limits" => spec.limits.is_some(),
                "dir" => spec.dir.is_some(),
                _ => false,
            };
            if set {
                return Err(SpecRefusal {
                    field,
                    message: format!("the {} runtime cannot honour {field}", self.kind),
                });
            }
        }
        Ok(())
    }

    async fn prepare(&self, workspace: &WorkspaceRef) -> Result<Option<String>, RuntimeError> {
        let plan = self
            .enter(FakeCall::Prepare, &workspace.workspace_id)
            .await?;
        let dir = workspace
            .spec
            .dir
            .clone()
            .or_else(|| Some(format!("/fake/{}", workspace.workspace_id)));
        self.leave(plan, dir).await
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<(), RuntimeError> {
        let r = &request.resource;
        let plan = self.enter(FakeCall::Launch, &r.workspace_id).await?;
        if let Some(Plan::Detached(after)) = plan {
            let (world, clock, request) = (
                Arc::clone(&self.world),
                Arc::clone(&self.clock),
                request.clone(),
            );
            let (tx, rx) = tokio::sync::oneshot::channel();
            // The runtime's own daemon, not an engine task: it outlives the caller.
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(create_main(&world, clock.as_ref(), &request));
            });
            return rx.await.unwrap_or_else(|_| {
                Err(RuntimeError::Unavailable {
                    message: "the fake runtime's daemon went away".into(),
                })
            });
        }
        create_main(&self.world, self.clock.as_ref(), request)?;
        self.breakpoints.hit("launch.created").await;
        self.breakpoints
            .hit(&format!("launch.created:{}", r.workspace_id))
            .await;
        self.leave(plan, ()).await
    }

    fn delivers_tokens(&self) -> bool {
        true
    }

    async fn deliver_token(
        &self,
        workspace: &WorkspaceRef,
        token: &crate::ids::WorkspaceToken,
    ) -> Result<(), RuntimeError> {
        let plan = self
            .enter(FakeCall::DeliverToken, &workspace.workspace_id)
            .await?;
        {
            let mut world = self.world.lock();
            let running = world.procs.iter().find(|p| {
                p.workspace_id == workspace.workspace_id
                    && p.engine_id == workspace.engine_id
                    && p.kind == ResourceKind::Main
                    && p.status == ProcessStatus::Running
            });
            let Some(incarnation) = running.map(|p| p.incarnation) else {
                return Err(RuntimeError::NotFound {
                    resource: Self::name_of(&workspace.workspace_id),
                });
            };
            world.delivered.push((
                workspace.workspace_id.clone(),
                incarnation,
                token.expose_secret().to_owned(),
            ));
        }
        self.leave(plan, ()).await
    }

    async fn stop(&self, resource: &ResourceRef, _grace: Duration) -> Result<(), RuntimeError> {
        let plan = self.enter(FakeCall::Stop, &resource.workspace_id).await?;
        {
            let mut world = self.world.lock();
            let found = world.procs.iter_mut().find(|p| {
                p.workspace_id == resource.workspace_id
                    && p.kind == ResourceKind::Main
                    && p.engine_id == resource.engine_id
            });
            match found {
                None => {}
                Some(p) if p.incarnation != resource.incarnation => {
                    return Err(RuntimeError::Conflict {
                        resource: Self::name_of(&resource.workspace_id),
                        reason: ConflictReason::IncarnationMismatch,
                        message: format!(
                            "carries incarnation {}, not {}",
                            p.incarnation, resource.incarnation
                        ),
                    });
                }
                Some(p) if p.status == ProcessStatus::Running => {
                    p.status = ProcessStatus::Exited(Some(143))
                }
                Some(_) => {}
            }
        }
        self.leave(plan, ()).await
    }

    async fn remove(&self, resource: &ResourceRef) -> Result<(), RuntimeError> {
        let plan = self.enter(FakeCall::Remove, &resource.workspace_id).await?;
        {
            let mut world = self.world.lock();
            let found = world.procs.iter().position(|p| {
                p.workspace_id == resource.workspace_id
                    && p.kind == ResourceKind::Main
                    && p.engine_id == resource.engine_id
            });
            if let Some(i) = found {
                if world.procs[i].incarnation != resource.incarnation {
                    return Err(RuntimeError::Conflict {
                        resource: Self::name_of(&resource.workspace_id),
                        reason: ConflictReason::IncarnationMismatch,
                        message: "another incarnation".into(),
                    });
                }
                world.procs.remove(i);
            }
        }
        self.leave(plan, ()).await
    }

    async fn cleanup(&self, workspace: &WorkspaceRef) -> Result<(), RuntimeError> {
        let plan = self
            .enter(FakeCall::Cleanup, &workspace.workspace_id)
            .await?;
        self.leave(plan, ()).await
    }

    async fn inspect(
        &self,
        engine_id: &EngineId,
        workspace_id: &WorkspaceId,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        let plan = self.enter(FakeCall::Inspect, workspace_id).await?;
        let found = self
            .world
            .lock()
            .procs
            .iter()
            .find(|p| {
                &p.workspace_id == workspace_id
                    && p.kind == ResourceKind::Main
                    && &p.engine_id == engine_id
            })
            .map(owned);
        self.leave(plan, found).await
    }

    async fn list_owned(&self, engine_id: &EngineId) -> Result<Vec<OwnedResource>, RuntimeError> {
        let any = WorkspaceId::parse("ws-0000000000000000").map_err(|e| RuntimeError::Other {
            resource: "fake".into(),
            message: e.to_string(),
        })?;
        let plan = self.enter(FakeCall::List, &any).await?;
        let list = self
            .world
            .lock()
            .procs
            .iter()
            .filter(|p| &p.engine_id == engine_id)
            .map(owned)
            .collect();
        self.leave(plan, list).await
    }

    async fn launch_session(&self, launch: &SessionLaunch) -> Result<(), RuntimeError> {
        let r = &launch.resource;
        let plan = self.enter(FakeCall::LaunchSession, &r.workspace_id).await?;
        {
            let mut world = self.world.lock();
            let main_runs = world.procs.iter().any(|p| {
                p.workspace_id == r.workspace_id
                    && p.kind == ResourceKind::Main
                    && p.incarnation == r.incarnation
                    && p.status == ProcessStatus::Running
            });
            if !main_runs {
                return Err(RuntimeError::NotFound {
                    resource: Self::name_of(&r.workspace_id),
                });
            }
            let same_name = |p: &FakeProcess| {
                p.workspace_id == r.workspace_id
                    && matches!(&p.kind, ResourceKind::Session { name, .. } if *name == launch.name)
            };
            // An exited session of another generation is replaced.
            world.procs.retain(|p| {
                !(same_name(p)
                    && p.status != ProcessStatus::Running
                    && !matches!(p.kind, ResourceKind::Session { generation, .. } if generation == launch.generation))
            });
            match world.procs.iter().find(|p| same_name(p)) {
                Some(p) if matches!(p.kind, ResourceKind::Session { generation, .. } if generation == launch.generation) =>
                    {}
                Some(_) => {
                    return Err(RuntimeError::Conflict {
                        resource: format!("{}/{}", Self::name_of(&r.workspace_id), launch.name),
                        reason: ConflictReason::NameInUse,
                        message: "session name in use".into(),
                    });
                }
                None => {
                    let (status, output) = program(&launch.command);
                    world.procs.push(FakeProcess {
                        engine_id: r.engine_id.clone(),
                        workspace_id: r.workspace_id.clone(),
                        incarnation: r.incarnation,
                        kind: ResourceKind::Session {
                            name: launch.name.clone(),
                            generation: launch.generation,
                        },
                        created_at: self.clock.now(),
                        status,
                        output,
                        env: launch.env.clone(),
                    });
                }
            }
        }
        self.leave(plan, ()).await
    }

    async fn inspect_session(
        &self,
        session: &SessionRef,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        let plan = self
            .enter(FakeCall::InspectSession, &session.workspace_id)
            .await?;
        let found = self
            .world
            .lock()
            .procs
            .iter()
            .find(|p| {
                p.workspace_id == session.workspace_id
                    && p.engine_id == session.engine_id
                    && matches!(&p.kind, ResourceKind::Session { name, .. } if *name == session.name)
            })
            .map(owned);
        self.leave(plan, found).await
    }

    async fn stop_session(
        &self,
        session: &SessionRef,
        _grace: Duration,
    ) -> Result<(), RuntimeError> {
        let plan = self
            .enter(FakeCall::StopSession, &session.workspace_id)
            .await?;
        self.world.lock().procs.retain(|p| {
            let hit = p.workspace_id == session.workspace_id
                && p.engine_id == session.engine_id
                && matches!(&p.kind, ResourceKind::Session { name, generation } if *name == session.name && session.generation.is_none_or(|g| g == *generation));
            !hit
        });
        self.leave(plan, ()).await
    }

    async fn capture(
        &self,
        target: &CaptureTarget,
        lines: usize,
    ) -> Result<Vec<String>, RuntimeError> {
        let ws = match target {
            CaptureTarget::Main(r) => &r.workspace_id,
            CaptureTarget::Session(s) => &s.workspace_id,
        };
        let plan = self.enter(FakeCall::Capture, ws).await?;
        let found = {
            let world = self.world.lock();
            world
                .procs
                .iter()
                .find(|p| match target {
                    CaptureTarget::Main(r) => p.workspace_id == r.workspace_id && p.kind == ResourceKind::Main && p.incarnation == r.incarnation,
                    CaptureTarget::Session(s) => p.workspace_id == s.workspace_id && matches!(&p.kind, ResourceKind::Session { name, .. } if *name == s.name),
                })
                .map(|p| {
                    let skip = p.output.len().saturating_sub(lines);
                    p.output[skip..].to_vec()
                })
        };
        let found = found.ok_or_else(|| RuntimeError::NotFound {
            resource: Self::name_of(ws),
        })?;
        self.leave(plan, found).await
    }

    async fn dirty_check(&self, workspace: &WorkspaceRef) -> Result<DirtyReport, RuntimeError> {
        let plan = self
            .enter(FakeCall::DirtyCheck, &workspace.workspace_id)
            .await?;
        let report = match self
            .world
            .lock()
            .dirty
            .get(&workspace.workspace_id)
            .cloned()
        {
            None => DirtyReport::Clean,
            Some(Ok(files)) if files.is_empty() => DirtyReport::Clean,
            Some(Ok(files)) => DirtyReport::Dirty(files),
            Some(Err(message)) => {
                return Err(RuntimeError::Other {
                    resource: format!("directory of {}", workspace.workspace_id),
                    message,
                });
            }
        };
        self.leave(plan, report).await
    }
}
