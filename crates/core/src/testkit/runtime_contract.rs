//! The conformance suite of the [`ProcessRuntime`] port. Every runtime adapter and the
//! fake run it unchanged: `runtime_contract(&harness).await`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::ids::{EngineId, Generation, Incarnation, SessionName, WorkspaceId, WorkspaceName};
use crate::model::WorkspaceSpec;
use crate::ports::{
    CaptureTarget, ConflictReason, DirtyReport, LaunchRequest, ProcessRuntime, ProcessStatus,
    ResourceKind, ResourceRef, RuntimeError, SessionLaunch, SessionRef, WorkspaceRef,
};

use super::wait_until;

/// What the contract needs a runtime to run, mapped to the runtime's own commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContractProgram {
    /// Runs until stopped.
    Forever,
    /// Exits at once with this code.
    Exit(i32),
    /// Prints this line, then runs until stopped.
    Print(String),
}

impl ContractProgram {
    /// The program as a POSIX `sh` argv, for runtimes that run real processes (tmux,
    /// containers with a shell). Printed text is passed as an argument, never quoted
    /// into the script.
    pub fn posix_sh(self) -> Vec<String> {
        let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        match self {
            ContractProgram::Forever => sh("exec sleep 3600"),
            ContractProgram::Exit(code) => sh(&format!("exit {code}")),
            ContractProgram::Print(text) => {
                let mut argv = sh("printf '%s\\n' \"$1\"; exec sleep 3600");
                argv.extend(["sh".to_owned(), text]);
                argv
            }
        }
    }
}

/// How to drive one runtime through the contract.
pub struct RuntimeHarness {
    /// The runtime under test.
    pub runtime: Arc<dyn ProcessRuntime>,
    /// A spec that runs the program (with whatever dir/image the runtime needs).
    pub spec: Box<dyn Fn(ContractProgram) -> WorkspaceSpec + Send + Sync>,
    /// The argv of a session running the program.
    pub session_command: Box<dyn Fn(ContractProgram) -> Vec<String> + Send + Sync>,
    /// How long processes may take to start, print or exit.
    pub settle: Duration,
}

impl std::fmt::Debug for RuntimeHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHarness")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

struct Ws {
    engine: EngineId,
    id: WorkspaceId,
    spec: WorkspaceSpec,
}

impl Ws {
    fn new(h: &RuntimeHarness, engine: &EngineId, program: ContractProgram) -> Self {
        Self {
            engine: engine.clone(),
            id: WorkspaceId::generate(),
            spec: (h.spec)(program),
        }
    }

    fn at(&self, incarnation: u64) -> ResourceRef {
        ResourceRef {
            engine_id: self.engine.clone(),
            workspace_id: self.id.clone(),
            incarnation: Incarnation(incarnation),
        }
    }

    fn wref(&self) -> WorkspaceRef {
        WorkspaceRef {
            engine_id: self.engine.clone(),
            workspace_id: self.id.clone(),
            spec: self.spec.clone(),
        }
    }

    async fn launch(&self, rt: &dyn ProcessRuntime, incarnation: u64) -> Result<(), RuntimeError> {
        let dir = rt.prepare(&self.wref()).await?;
        let mut env = self.spec.env.clone();
        env.insert("BERTH_WORKSPACE_ID".into(), self.id.to_string());
        let request = LaunchRequest {
            resource: self.at(incarnation),
            name: WorkspaceName::parse("contract").map_err(|e| RuntimeError::Other {
                resource: "name".into(),
                message: e.to_string(),
            })?,
            spec: self.spec.clone(),
            dir,
            env,
            token_by_file: false,
        };
        rt.launch(&request).await
    }

    async fn teardown(&self, rt: &dyn ProcessRuntime, incarnation: u64) {
        let _ = rt.stop(&self.at(incarnation), Duration::from_secs(1)).await;
        let _ = rt.remove(&self.at(incarnation)).await;
        let _ = rt.cleanup(&self.wref()).await;
    }
}

async fn mains(
    rt: &dyn ProcessRuntime,
    engine: &EngineId,
    ws: &WorkspaceId,
) -> Vec<(Incarnation, ProcessStatus)> {
    match rt.list_owned(engine).await {
        Ok(list) => list
            .into_iter()
            .filter(|r| &r.workspace_id == ws && r.kind == ResourceKind::Main)
            .map(|r| (r.incarnation, r.status))
            .collect(),
        Err(e) => panic!("list_owned failed: {e}"),
    }
}

/// Runs the whole runtime contract. Panics with the clause that failed.
///
/// # Panics
/// When the runtime breaks a MUST clause of [`ProcessRuntime`].
pub async fn runtime_contract(h: &RuntimeHarness) {
    let rt = h.runtime.as_ref();
    let engine = EngineId::generate();
    launch_is_idempotent_and_fenced(h, rt, &engine).await;
    exit_codes_are_kept(h, rt, &engine).await;
    output_is_captured(h, rt, &engine).await;
    sessions_are_one_per_name_and_fenced_by_generation(h, rt, &engine).await;
    an_exited_session_gives_its_name_to_a_new_generation(h, rt, &engine).await;
    listing_is_scoped_to_the_engine(h, rt, &engine).await;
}

async fn an_exited_session_gives_its_name_to_a_new_generation(
    h: &RuntimeHarness,
    rt: &dyn ProcessRuntime,
    engine: &EngineId,
) {
    let ws = Ws::new(h, engine, ContractProgram::Forever);
    ws.launch(rt, 1).await.expect("launch");
    let dir = rt.prepare(&ws.wref()).await.expect("prepare");
    let name = SessionName::parse("short").expect("valid");
    let launch = |generation: u64, program: ContractProgram| SessionLaunch {
        resource: ws.at(1),
        name: name.clone(),
        generation: Generation(generation),
        command: (h.session_command)(program),
        env: BTreeMap::new(),
        dir: dir.clone(),
        spec: ws.wref().spec,
    };
    let target = SessionRef {
        engine_id: engine.clone(),
        workspace_id: ws.id.clone(),
        name: name.clone(),
        generation: None,
    };
    assert_eq!(
        rt.inspect_session(&target).await.expect("inspect_session"),
        None,
        "inspect_session MUST be None when there is no session of that name"
    );
    rt.launch_session(&launch(1, ContractProgram::Forever))
        .await
        .expect("launch_session");
    let generation_of = |r: Option<crate::ports::OwnedResource>| {
        r.map(|r| match r.kind {
            ResourceKind::Session { generation, .. } => (generation.0, r.status),
            ResourceKind::Main => (0, r.status),
        })
    };
    assert_eq!(
        generation_of(rt.inspect_session(&target).await.expect("inspect_session")),
        Some((1, ProcessStatus::Running)),
        "inspect_session MUST show the running generation"
    );
    match rt
        .launch_session(&launch(2, ContractProgram::Forever))
        .await
    {
        Err(RuntimeError::Conflict {
            reason: ConflictReason::NameInUse,
            ..
        }) => {}
        other => panic!("a new generation over a running one MUST be NameInUse, got {other:?}"),
    }
    assert_eq!(
        generation_of(rt.inspect_session(&target).await.expect("inspect_session")),
        Some((1, ProcessStatus::Running)),
        "the running generation MUST be left alone"
    );
    rt.stop_session(
        &SessionRef {
            generation: Some(Generation(1)),
            ..target.clone()
        },
        Duration::from_secs(1),
    )
    .await
    .expect("stop_session");
    // A generation that exits by itself.
    rt.launch_session(&launch(3, ContractProgram::Exit(0)))
        .await
        .expect("launch_session");
    wait_until("the session to exit", h.settle, || async {
        matches!(
            generation_of(rt.inspect_session(&target).await.expect("inspect_session")),
            Some((3, ProcessStatus::Exited(_))) | None
        )
    })
    .await;
    rt.launch_session(&launch(4, ContractProgram::Forever))
        .await
        .expect("a new generation MUST replace one that exited");
    wait_until("the new generation to run", h.settle, || async {
        generation_of(rt.inspect_session(&target).await.expect("inspect_session"))
            == Some((4, ProcessStatus::Running))
    })
    .await;
    ws.teardown(rt, 1).await;
}

async fn launch_is_idempotent_and_fenced(
    h: &RuntimeHarness,
    rt: &dyn ProcessRuntime,
    engine: &EngineId,
) {
    let ws = Ws::new(h, engine, ContractProgram::Forever);
    ws.launch(rt, 1).await.expect("launch MUST succeed");
    let found = rt
        .inspect(engine, &ws.id)
        .await
        .expect("inspect MUST succeed")
        .expect("inspect MUST find the launched resource");
    assert_eq!(
        (found.incarnation, found.status),
        (Incarnation(1), ProcessStatus::Running),
        "inspect MUST report the incarnation, running"
    );
    ws.launch(rt, 1)
        .await
        .expect("a second launch of the same incarnation MUST adopt");
    assert_eq!(
        mains(rt, engine, &ws.id).await,
        vec![(Incarnation(1), ProcessStatus::Running)],
        "launch MUST NOT duplicate a resource"
    );
    match ws.launch(rt, 2).await {
        Err(RuntimeError::Conflict {
            reason: ConflictReason::NameInUse | ConflictReason::RemovalInProgress,
            ..
        }) => {}
        other => panic!(
            "launching incarnation 2 over a live 1 MUST be a NameInUse conflict, got {other:?}"
        ),
    }
    assert_eq!(
        mains(rt, engine, &ws.id).await.len(),
        1,
        "a refused launch MUST leave one resource"
    );
    match rt.stop(&ws.at(2), Duration::from_secs(1)).await {
        Err(RuntimeError::Conflict {
            reason: ConflictReason::IncarnationMismatch,
            ..
        }) => {}
        other => panic!(
            "stop of another incarnation MUST be refused as IncarnationMismatch, got {other:?}"
        ),
    }
    match rt.remove(&ws.at(2)).await {
        Err(RuntimeError::Conflict {
            reason: ConflictReason::IncarnationMismatch,
            ..
        }) => {}
        other => panic!(
            "remove of another incarnation MUST be refused as IncarnationMismatch, got {other:?}"
        ),
    }
    assert_eq!(
        mains(rt, engine, &ws.id).await,
        vec![(Incarnation(1), ProcessStatus::Running)],
        "a fenced stop MUST touch nothing"
    );
    rt.stop(&ws.at(1), Duration::from_secs(2))
        .await
        .expect("stop MUST succeed");
    let after = rt
        .inspect(engine, &ws.id)
        .await
        .expect("inspect after stop");
    assert!(
        after.is_none_or(|r| r.status != ProcessStatus::Running),
        "after stop the process MUST NOT run"
    );
    rt.remove(&ws.at(1)).await.expect("remove MUST succeed");
    assert!(
        rt.inspect(engine, &ws.id)
            .await
            .expect("inspect after remove")
            .is_none(),
        "after remove inspect MUST find nothing"
    );
    rt.stop(&ws.at(1), Duration::from_secs(1))
        .await
        .expect("stop of a gone resource MUST be Ok");
    rt.remove(&ws.at(1))
        .await
        .expect("remove of a gone resource MUST be Ok");
    ws.launch(rt, 2)
        .await
        .expect("after removal a new incarnation MUST launch");
    assert_eq!(
        mains(rt, engine, &ws.id).await,
        vec![(Incarnation(2), ProcessStatus::Running)]
    );
    ws.teardown(rt, 2).await;
    assert!(rt.inspect(engine, &ws.id).await.expect("inspect").is_none());
    rt.cleanup(&ws.wref())
        .await
        .expect("cleanup of nothing MUST be Ok");
}

async fn exit_codes_are_kept(h: &RuntimeHarness, rt: &dyn ProcessRuntime, engine: &EngineId) {
    for code in [0, 7] {
        let ws = Ws::new(h, engine, ContractProgram::Exit(code));
        ws.launch(rt, 1)
            .await
            .expect("launch of an exiting program MUST succeed");
        wait_until(&format!("exit code {code} to be reported"), h.settle, || async {
            matches!(rt.inspect(engine, &ws.id).await, Ok(Some(r)) if r.status == ProcessStatus::Exited(Some(i64::from(code))))
        })
        .await;
        ws.teardown(rt, 1).await;
    }
}

async fn output_is_captured(h: &RuntimeHarness, rt: &dyn ProcessRuntime, engine: &EngineId) {
    let text = "berth contract output ÿ \"quoted\" $(not run)".to_owned();
    let ws = Ws::new(h, engine, ContractProgram::Print(text.clone()));
    ws.launch(rt, 1).await.expect("launch MUST succeed");
    wait_until("main output to be captured", h.settle, || async {
        rt.capture(&CaptureTarget::Main(ws.at(1)), 50)
            .await
            .is_ok_and(|lines| lines.iter().any(|l| l.contains(&text)))
    })
    .await;
    ws.teardown(rt, 1).await;
    match rt.capture(&CaptureTarget::Main(ws.at(1)), 50).await {
        Err(RuntimeError::NotFound { .. }) => {}
        other => panic!("capture of a removed resource MUST be NotFound, got {other:?}"),
    }
}

async fn sessions_are_one_per_name_and_fenced_by_generation(
    h: &RuntimeHarness,
    rt: &dyn ProcessRuntime,
    engine: &EngineId,
) {
    let ws = Ws::new(h, engine, ContractProgram::Forever);
    let name = SessionName::parse("agent").expect("valid");
    let launch = |generation: u64, program: ContractProgram| SessionLaunch {
        resource: ws.at(1),
        name: name.clone(),
        generation: Generation(generation),
        command: (h.session_command)(program),
        env: BTreeMap::from([("BERTH_SESSION".to_owned(), "agent".to_owned())]),
        dir: None,
        spec: ws.wref().spec,
    };
    match rt
        .launch_session(&launch(1, ContractProgram::Forever))
        .await
    {
        Err(RuntimeError::NotFound { .. }) => {}
        other => {
            panic!("a session in a workspace that does not run MUST be NotFound, got {other:?}")
        }
    }
    ws.launch(rt, 1).await.expect("launch");
    let mut session = launch(1, ContractProgram::Print("hello from the session".into()));
    session.dir = rt.prepare(&ws.wref()).await.expect("prepare");
    rt.launch_session(&session)
        .await
        .expect("launch_session MUST succeed");
    rt.launch_session(&session)
        .await
        .expect("launch_session MUST be idempotent for the same generation");
    let sessions = || async {
        rt.list_owned(engine)
            .await
            .expect("list")
            .into_iter()
            .filter(|r| r.workspace_id == ws.id && matches!(r.kind, ResourceKind::Session { .. }))
            .collect::<Vec<_>>()
    };
    let listed = sessions().await;
    assert_eq!(listed.len(), 1, "one session per name: {listed:?}");
    assert_eq!(
        listed[0].kind,
        ResourceKind::Session {
            name: name.clone(),
            generation: Generation(1)
        },
        "the session MUST carry its generation"
    );
    let target = |generation| SessionRef {
        engine_id: engine.clone(),
        workspace_id: ws.id.clone(),
        name: name.clone(),
        generation,
    };
    wait_until("session output to be captured", h.settle, || async {
        rt.capture(&CaptureTarget::Session(target(Some(Generation(1)))), 20)
            .await
            .is_ok_and(|l| l.iter().any(|l| l.contains("hello from the session")))
    })
    .await;
    rt.stop_session(&target(Some(Generation(2))), Duration::from_secs(1))
        .await
        .expect("stop of another generation MUST be Ok");
    assert_eq!(
        sessions().await.len(),
        1,
        "stopping another generation MUST NOT touch the session"
    );
    rt.stop_session(&target(Some(Generation(1))), Duration::from_secs(2))
        .await
        .expect("stop_session MUST succeed");
    assert!(
        sessions()
            .await
            .iter()
            .all(|r| r.status != ProcessStatus::Running),
        "a stopped session MUST NOT run"
    );
    rt.stop_session(&target(None), Duration::from_secs(1))
        .await
        .expect("stop of a gone session MUST be Ok");
    ws.teardown(rt, 1).await;
}

async fn listing_is_scoped_to_the_engine(
    h: &RuntimeHarness,
    rt: &dyn ProcessRuntime,
    engine: &EngineId,
) {
    let ws = Ws::new(h, engine, ContractProgram::Forever);
    ws.launch(rt, 1).await.expect("launch");
    let other = EngineId::generate();
    let foreign = rt
        .list_owned(&other)
        .await
        .expect("list for another engine");
    assert!(
        foreign.iter().all(|r| r.workspace_id != ws.id),
        "list_owned MUST NOT list another engine's resources"
    );
    assert!(
        rt.inspect(&other, &ws.id).await.expect("inspect").is_none(),
        "inspect MUST only consider our engine's resources"
    );
    assert_eq!(
        rt.dirty_check(&ws.wref()).await.ok(),
        Some(DirtyReport::Clean),
        "a fresh workspace MUST be clean"
    );
    ws.teardown(rt, 1).await;
}
