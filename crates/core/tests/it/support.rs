//! The test rig: an engine on the in-memory store and the fake runtime, paused time.

use std::sync::Arc;
use std::time::Duration;

use berth_core::engine::EngineConfig;
use berth_core::ids::{RuntimeKind, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, Workspace, WorkspaceSpec};
use berth_core::testkit::{
    FakeRuntime, MemoryStore, RecordingReporter, TestClock, assert_no_engine_tasks,
};
use berth_core::{Engine, OpTicket};

pub struct Rig {
    pub engine: Engine,
    pub store: Arc<MemoryStore>,
    pub rt: Arc<FakeRuntime>,
    pub reporter: Arc<RecordingReporter>,
    pub clock: Arc<TestClock>,
    pub config: EngineConfig,
}

/// Settings for tests: no background reconciler (tests call `reconcile`), short grace.
pub fn config() -> EngineConfig {
    EngineConfig {
        reconcile_period: None,
        stop_grace: Duration::from_secs(2),
        stop_ceiling: Duration::from_secs(10),
        orphan_grace: Duration::from_secs(60),
        drain_deadline: Duration::from_secs(5),
        final_flush_timeout: Duration::from_secs(2),
        ..EngineConfig::default()
    }
}

impl Rig {
    pub async fn new() -> Self {
        Self::with(config()).await
    }

    pub async fn with(config: EngineConfig) -> Self {
        let clock = Arc::new(TestClock::new());
        let store = Arc::new(MemoryStore::new());
        let rt = Arc::new(FakeRuntime::new(clock.clone()));
        Self::on(store, rt, clock, config).await
    }

    /// An engine on existing ports (a daemon restart on the same data dir).
    pub async fn on(
        store: Arc<MemoryStore>,
        rt: Arc<FakeRuntime>,
        clock: Arc<TestClock>,
        config: EngineConfig,
    ) -> Self {
        let reporter = Arc::new(RecordingReporter::default());
        let engine = Engine::builder()
            .store(store.clone())
            .runtime(rt.clone())
            .reporter(reporter.clone())
            .clock(clock.clone())
            .config(config.clone())
            .build()
            .await
            .expect("engine builds");
        Self {
            engine,
            store,
            rt,
            reporter,
            clock,
            config,
        }
    }

    /// Shuts this engine down and builds a new one on the same store and runtime.
    pub async fn restart_engine(self) -> Self {
        assert_no_engine_tasks(&self.engine).await;
        self.store.reopen();
        Self::on(self.store, self.rt, self.clock, self.config).await
    }

    pub async fn create(&self, name: &str) -> Workspace {
        self.create_spec(
            name,
            WorkspaceSpec {
                command: vec!["agent".into()],
                ..Default::default()
            },
        )
        .await
    }

    pub async fn create_spec(&self, name: &str, spec: WorkspaceSpec) -> Workspace {
        self.engine
            .create(CreateWorkspace {
                name: WorkspaceName::parse(name).unwrap(),
                runtime: RuntimeKind::parse("fake").unwrap(),
                spec,
                actor: Actor::Api,
            })
            .await
            .expect("create")
    }

    /// A running workspace.
    pub async fn running(&self, name: &str) -> Workspace {
        let ws = self.create(name).await;
        let op = self
            .engine
            .start(&ws.id, Actor::Api)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(op.status, berth_core::model::OpStatus::Succeeded, "{op:?}");
        self.engine.workspace(&ws.id).await.unwrap()
    }

    /// Requests `kind` as the API and waits for the op to end.
    pub async fn op(
        &self,
        kind: berth_core::merge::OpKind,
        ws: &berth_core::ids::WorkspaceId,
    ) -> berth_core::model::Operation {
        self.engine
            .request(ws, kind, Actor::Api, false)
            .await
            .expect("request accepted")
            .wait()
            .await
            .expect("op ends")
    }

    /// Requests a delete as the API and waits for the op to end.
    pub async fn remove(
        &self,
        ws: &berth_core::ids::WorkspaceId,
        force: bool,
    ) -> berth_core::model::Operation {
        self.engine
            .delete(ws, force, Actor::Api)
            .await
            .expect("request accepted")
            .wait()
            .await
            .expect("op ends")
    }

    pub async fn state(&self, ws: &Workspace) -> berth_core::state::State {
        self.state_of(&ws.id).await
    }

    pub async fn state_of(&self, id: &berth_core::ids::WorkspaceId) -> berth_core::state::State {
        self.engine.workspace(id).await.unwrap().state
    }

    /// Every engine test ends here.
    pub async fn finish(self) {
        assert_no_engine_tasks(&self.engine).await;
    }
}

pub async fn wait_all(tickets: Vec<OpTicket>) -> Vec<berth_core::model::Operation> {
    let mut out = Vec::new();
    for t in tickets {
        out.push(t.wait().await.expect("op ends"));
    }
    out
}
