//! [`QueueReporter`]: the standard [`Reporter`]. Entries go into a bounded queue that a
//! background task delivers to sinks (log, live subscribers, ...). Reporting never
//! blocks a lifecycle op: a full queue drops the entry and counts it.
//!
//! `flush` drains the queue itself under the delivery lock, so entries queued before
//! `start` (or after the worker stopped) are still delivered, in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::{Notify, OnceCell, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ports::{Report, Reporter, ReporterStats};

/// Where reports go.
#[async_trait]
pub trait ReportSink: Send + Sync + std::fmt::Debug {
    /// Delivers a batch, in order. A sink that fails logs and drops: it must not stall
    /// the pipeline.
    async fn deliver(&self, batch: &[Report]);
}

/// Logs every report through `tracing`.
#[derive(Debug, Default)]
pub struct TracingSink;

#[async_trait]
impl ReportSink for TracingSink {
    async fn deliver(&self, batch: &[Report]) {
        for report in batch {
            match report {
                Report::Event(e) => {
                    tracing::info!(seq = e.seq, workspace = %e.event.workspace_id, from = ?e.event.from, to = ?e.event.to, cause = ?e.event.cause, "{}", e.event.message)
                }
                Report::Step {
                    workspace_id, step, ..
                } => tracing::debug!(workspace = %workspace_id, ?step, "step"),
                Report::OpFinished(op) => {
                    tracing::debug!(op = %op.id, workspace = %op.workspace_id, kind = ?op.kind, status = ?op.status, "op finished")
                }
                Report::ReconcilePass {
                    listing_failures, ..
                } => tracing::trace!(listing_failures, "reconcile pass"),
                Report::Error {
                    workspace_id,
                    code,
                    message,
                    ..
                } => tracing::warn!(workspace = ?workspace_id, code, "{message}"),
            }
        }
    }
}

/// Fans reports out to live subscribers (SSE streams). Slow subscribers lag and are
/// told so by the broadcast channel; they never slow the pipeline.
#[derive(Debug)]
pub struct BroadcastSink {
    tx: broadcast::Sender<Report>,
}

impl BroadcastSink {
    /// A sink keeping `capacity` reports for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// A new live subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Report> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl ReportSink for BroadcastSink {
    async fn deliver(&self, batch: &[Report]) {
        for report in batch {
            // No subscribers is fine.
            let _ = self.tx.send(report.clone());
        }
    }
}

#[derive(Debug)]
struct Shared {
    queue: parking_lot::Mutex<VecDeque<Report>>,
    capacity: usize,
    dropped: AtomicU64,
    closed: AtomicBool,
    wake: Notify,
    delivery: tokio::sync::Mutex<()>,
    sinks: Vec<Arc<dyn ReportSink>>,
}

impl Shared {
    /// Delivers everything queued now, in order.
    async fn drain(&self) {
        let _turn = self.delivery.lock().await;
        loop {
            let batch: Vec<Report> = {
                let mut q = self.queue.lock();
                let n = q.len().min(256);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            for sink in &self.sinks {
                sink.deliver(&batch).await;
            }
        }
    }
}

/// The standard reporter: bounded queue, background delivery, idempotent shutdown.
#[derive(Debug)]
pub struct QueueReporter {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
    started: AtomicBool,
    shutdown_done: OnceCell<()>,
}

impl QueueReporter {
    /// A reporter holding at most `capacity` undelivered entries.
    pub fn new(capacity: usize, sinks: Vec<Arc<dyn ReportSink>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: parking_lot::Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                dropped: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                wake: Notify::new(),
                delivery: tokio::sync::Mutex::new(()),
                sinks,
            }),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            started: AtomicBool::new(false),
            shutdown_done: OnceCell::new(),
        }
    }

    /// Tasks of this reporter still alive (0 after shutdown).
    pub fn live_tasks(&self) -> usize {
        self.tracker.len()
    }
}

#[async_trait]
impl Reporter for QueueReporter {
    fn report(&self, report: Report) {
        if self.shared.closed.load(Ordering::SeqCst) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        {
            let mut q = self.shared.queue.lock();
            if q.len() >= self.shared.capacity {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push_back(report);
        }
        self.shared.wake.notify_one();
    }

    async fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) || self.shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let shared = self.shared.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = shared.wake.notified() => shared.drain().await,
                }
            }
        });
    }

    async fn flush(&self) {
        self.shared.drain().await;
    }

    async fn shutdown(&self) {
        self.shutdown_done
            .get_or_init(|| async {
                self.shared.closed.store(true, Ordering::SeqCst);
                self.stop.cancel();
                self.tracker.close();
                self.tracker.wait().await;
                self.shared.drain().await;
            })
            .await;
    }

    fn stats(&self) -> ReporterStats {
        ReporterStats {
            queued: self.shared.queue.lock().len(),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}
