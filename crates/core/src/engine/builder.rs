//! Building an engine: its ports, settings and fence, and the shared state all
//! clones of an [`Engine`] hold.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ids::{EngineId, RuntimeKind};
use crate::ports::{
    Clock, Fence, Ownership, OwnsAll, ProcessRuntime, Reporter, Store, SystemClock,
};

use super::gate::Gates;
use super::recovery::RecoveryReport;
use super::shutdown::ShutdownReport;
use super::{Engine, EngineConfig, EngineError};

/// Builds an [`Engine`] from its ports and config.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    store: Option<Arc<dyn Store>>,
    reporter: Option<Arc<dyn Reporter>>,
    clock: Option<Arc<dyn Clock>>,
    runtimes: Vec<Arc<dyn ProcessRuntime>>,
    config: EngineConfig,
    fence: Fence,
    ownership: Option<Arc<dyn Ownership>>,
}

impl EngineBuilder {
    /// The store (required).
    #[must_use]
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds a runtime; its [`ProcessRuntime::kind`] names it.
    #[must_use]
    pub fn runtime(mut self, runtime: Arc<dyn ProcessRuntime>) -> Self {
        self.runtimes.push(runtime);
        self
    }

    /// The reporter (required).
    #[must_use]
    pub fn reporter(mut self, reporter: Arc<dyn Reporter>) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// The clock (default: the host's).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Settings (default: [`EngineConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The fence every row write carries (default: epoch 0, a single writer). A store
    /// shared by several engines refuses writes from an engine whose fence it outgrew.
    #[must_use]
    pub fn fence(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    /// Which workspaces this engine acts on by itself (default: all of them,
    /// [`OwnsAll`]). Engines sharing a store pass their lease holdings.
    #[must_use]
    pub fn ownership(mut self, ownership: Arc<dyn Ownership>) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// Opens the engine: loads (or creates) the engine id, starts the reporter, runs
    /// boot recovery, then starts the background reconciler and runtime watchers.
    ///
    /// # Errors
    /// A missing store or reporter, a store that fails, or a recovery that cannot read
    /// the store.
    pub async fn build(self) -> Result<Engine, EngineError> {
        let store = self
            .store
            .ok_or_else(|| EngineError::Internal("engine builder needs a store".into()))?;
        let reporter = self
            .reporter
            .ok_or_else(|| EngineError::Internal("engine builder needs a reporter".into()))?;
        let engine_id = store.init_engine_id(&EngineId::generate()).await?;
        let runtimes: HashMap<RuntimeKind, Arc<dyn ProcessRuntime>> =
            self.runtimes.into_iter().map(|r| (r.kind(), r)).collect();
        let health = super::health::HealthBoard::new(runtimes.keys().cloned());
        let inner = Arc::new(Inner {
            engine_id,
            store,
            reporter,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            runtimes,
            config: self.config,
            fence: self.fence,
            ownership: self.ownership.unwrap_or_else(|| Arc::new(OwnsAll)),
            gates: Gates::default(),
            tracker: TaskTracker::new(),
            stop_token: CancellationToken::new(),
            loops_token: CancellationToken::new(),
            ops_token: CancellationToken::new(),
            accepting: parking_lot::RwLock::new(true),
            shutdown_result: OnceCell::new(),
            recovery: parking_lot::Mutex::new(None),
            idempotency: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            health,
            pools: parking_lot::RwLock::new(Vec::new()),
            pools_wake: tokio::sync::Notify::new(),
            pools_pass: tokio::sync::Mutex::new(()),
        });
        inner.reporter.start().await;
        let engine = Engine { inner };
        *engine.inner.pools.write() = engine.inner.store.pools().await?;
        let report = engine.recover().await?;
        *engine.inner.recovery.lock() = Some(report);
        engine.spawn_background();
        Ok(engine)
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) engine_id: EngineId,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) reporter: Arc<dyn Reporter>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) runtimes: HashMap<RuntimeKind, Arc<dyn ProcessRuntime>>,
    pub(crate) config: EngineConfig,
    pub(crate) fence: Fence,
    pub(crate) ownership: Arc<dyn Ownership>,
    pub(crate) gates: Gates,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when shutdown begins: waits and event streams end on it.
    pub(crate) stop_token: CancellationToken,
    /// Cancelled when shutdown begins: background loops stop.
    pub(crate) loops_token: CancellationToken,
    /// Cancelled past the drain deadline: in-flight ops end `interrupted`.
    pub(crate) ops_token: CancellationToken,
    /// False once shutdown began; held (read) around every spawn so no task starts
    /// after the drain barrier.
    pub(crate) accepting: parking_lot::RwLock<bool>,
    pub(crate) shutdown_result: OnceCell<ShutdownReport>,
    pub(crate) recovery: parking_lot::Mutex<Option<RecoveryReport>>,
    /// Serialises creates that carry the same idempotency key (striped by its hash).
    pub(crate) idempotency: [tokio::sync::Mutex<()>; 64],
    /// Whether each runtime answers.
    pub(crate) health: super::health::HealthBoard,
    /// The warm pools as last read from the store (creates match against these).
    pub(crate) pools: parking_lot::RwLock<Vec<crate::model::Pool>>,
    /// Wakes the pool loop (a claim, a pool changed).
    pub(crate) pools_wake: tokio::sync::Notify,
    /// One pool pass at a time, so a refill never counts members another pass is
    /// creating.
    pub(crate) pools_pass: tokio::sync::Mutex<()>,
}
