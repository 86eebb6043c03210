//! [`EventHub`]: live events for SSE subscribers.
//!
//! The engine reports events after their commit, so two workspaces' reports can reach
//! the reporter out of `seq` order, and a full reporter queue drops entries. The hub
//! therefore never forwards reports: a report only wakes its pump, which reads the
//! store after its cursor and broadcasts what it read, in `seq` order and gap-free.
//! Subscribers (the SSE route, `events.rs`) replay from the store first and then follow
//! the broadcast, skipping what they already sent; a subscriber that lags re-reads the
//! store. So every client sees each event exactly once, in order, whatever the
//! reporter did.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::Engine;
use berth_core::model::Event;
use berth_core::ports::Report;
use berth_core::reporter::ReportSink;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many events the pump reads per store call.
const PAGE: usize = 1000;

/// An event with its JSON (the SSE `data` line), rendered once by the pump for every
/// subscriber: with thousands of subscribers, rendering it per subscriber was most of
/// the fan-out's cost.
#[derive(Debug)]
pub struct LiveEvent {
    pub seq: u64,
    pub workspace_id: berth_core::ids::WorkspaceId,
    pub data: String,
}

impl LiveEvent {
    /// Renders `e`; `None` only if it cannot be serialised (never for a stored event).
    pub fn render(e: &Event) -> Option<Self> {
        Some(Self {
            seq: e.seq,
            workspace_id: e.event.workspace_id.clone(),
            data: serde_json::to_string(&super::dto::EventView::from(e)).ok()?,
        })
    }
}

/// Wakes the pump; installed as a reporter sink.
#[derive(Debug)]
pub struct EventHub {
    wake: Notify,
    live: broadcast::Sender<Arc<LiveEvent>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// A hub with no pump yet (see [`EventHub::run_pump`]).
    pub fn new() -> Self {
        Self {
            wake: Notify::new(),
            live: broadcast::channel(4096).0,
        }
    }

    /// Wakes the pump: new events may be in the store (another daemon of a shared
    /// store appended them).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A receiver of every event in `seq` order (after it subscribed).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
    }

    /// Starts the pump on `tracker`: it reads events after the store's current last
    /// `seq` whenever woken (and at least every second) until `stop` is cancelled or
    /// the store closes.
    pub fn run_pump(
        self: &Arc<Self>,
        engine: Engine,
        tracker: &TaskTracker,
        stop: CancellationToken,
        start_after: u64,
    ) {
        let hub = Arc::clone(self);
        tracker.spawn(async move {
            let mut cursor = start_after;
            loop {
                loop {
                    match engine.events(cursor, None, PAGE).await {
                        Ok(page) => {
                            let full = page.len() == PAGE;
                            for e in page {
                                cursor = e.seq;
                                let Some(live) = LiveEvent::render(&e) else {
                                    tracing::error!(seq = e.seq, "an event could not be rendered as JSON; subscribers skip it");
                                    continue;
                                };
                                // No subscriber is fine.
                                let _ = hub.live.send(Arc::new(live));
                            }
                            if !full {
                                break;
                            }
                        }
                        Err(e) => {
                            if stop.is_cancelled() || engine.is_shutting_down() {
                                tracing::debug!(error = %e, "event pump stops with the engine");
                                return;
                            }
                            // A transient store error: try again from the same cursor.
                            tracing::warn!(error = %e, "event pump could not read the store; retrying");
                            break;
                        }
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = hub.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

#[async_trait]
impl ReportSink for EventHub {
    async fn deliver(&self, batch: &[Report]) {
        if batch.iter().any(|r| matches!(r, Report::Event(_))) {
            self.wake.notify_one();
        }
    }
}
