//! What the handlers share: the engine, the admin token, the event hub, the metrics,
//! readiness, and the daemon's closing token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_core::Engine;
use berth_core::model::Workspace;
use tokio_util::sync::CancellationToken;

use super::hub::EventHub;
use super::metrics::Metrics;

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The admin token.
    pub(crate) admin_token: Arc<str>,
    /// Live events.
    pub hub: Arc<EventHub>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// True once boot recovery finished and the store is open.
    pub ready: Arc<AtomicBool>,
    /// Cancelled when the daemon begins to shut down: streams and waits end.
    pub closing: CancellationToken,
    /// Longest a request may take (waits are capped below it).
    pub request_timeout: Duration,
    /// Routes workspace requests to their owner when daemons share a store (`None`:
    /// this daemon serves every workspace).
    pub placement: Option<Arc<dyn super::placement::Placement>>,
}

impl AppState {
    /// State for a router over `engine`.
    pub fn new(
        engine: Engine,
        admin_token: &str,
        hub: Arc<EventHub>,
        metrics: Arc<Metrics>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            engine,
            admin_token: Arc::from(admin_token),
            hub,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            closing,
            request_timeout: Duration::from_secs(300),
            placement: None,
        }
    }

    /// The longest `wait`/`timeout` a request may ask for.
    pub fn max_wait(&self) -> Duration {
        self.request_timeout
            .saturating_sub(Duration::from_secs(5))
            .max(Duration::from_secs(1))
    }

    /// Marks the state ready (boot recovery done, store open) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the daemon answers requests.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.engine.is_shutting_down()
    }
}

/// Set on requests that came through a workspace's own API socket: only that
/// workspace's token is accepted there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOwner(pub berth_core::ids::WorkspaceId);

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The admin token.
    Admin,
    /// A workspace's current-incarnation token.
    Workspace(Box<Workspace>),
}
