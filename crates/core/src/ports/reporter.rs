//! The reporter port: publishes events, lifecycle steps and errors to the outside
//! (live subscribers, logs, webhooks) without ever blocking a lifecycle op.

// mockall's generated mocks (feature `testkit`) use std's Mutex internally.
#![cfg_attr(feature = "testkit", allow(clippy::disallowed_types))]

use async_trait::async_trait;

use crate::ids::{OpId, SessionName, WorkspaceId};
use crate::model::{Event, Timestamp};

/// A step inside an op, reported so operators (and tests) can see the exact order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A delete's dirty preflight passed (or was skipped by force).
    PreflightPassed,
    /// A session was stopped.
    SessionStopped(SessionName),
    /// The main process was stopped.
    MainStopped,
    /// The main process was launched.
    MainLaunched,
    /// Partial resources of a cancelled or failed start were removed.
    PartialRemoved,
    /// Runtime resources (container, volume, worktree) were removed.
    ResourcesRemoved,
    /// The workspace rows were removed.
    RowsRemoved,
    /// An orphan resource was removed by the reconciler.
    OrphanRemoved,
}

/// One thing to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A stored lifecycle event.
    Event(Event),
    /// A step of an op.
    Step {
        /// When.
        at: Timestamp,
        /// Which workspace.
        workspace_id: WorkspaceId,
        /// Which op, if any.
        op_id: Option<OpId>,
        /// What happened.
        step: Step,
    },
    /// An op reached its final status (succeeded, failed, cancelled, superseded,
    /// interrupted): the record as its waiters receive it. Reported once per op.
    OpFinished(Box<crate::model::Operation>),
    /// A reconcile pass ended (background, boot or on demand).
    ReconcilePass {
        /// When.
        at: Timestamp,
        /// Runtimes whose listing failed in this pass.
        listing_failures: usize,
    },
    /// An error worth an operator's attention (the op carries it too).
    Error {
        /// When.
        at: Timestamp,
        /// Which workspace, if any.
        workspace_id: Option<WorkspaceId>,
        /// Stable code.
        code: String,
        /// A sentence naming the thing.
        message: String,
    },
}

/// Queue figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReporterStats {
    /// Entries waiting for delivery.
    pub queued: usize,
    /// Entries dropped because the queue was full.
    pub dropped: u64,
}

/// Publishes reports.
#[cfg_attr(feature = "testkit", mockall::automock)]
#[async_trait]
pub trait Reporter: Send + Sync + std::fmt::Debug {
    /// Queues a report. MUST NOT block or await anything slow: when the bounded queue
    /// is full the entry is dropped and counted. MUST accept entries before `start`
    /// and keep them for the first flush.
    fn report(&self, report: Report);

    /// Starts background delivery. MUST be idempotent.
    async fn start(&self);

    /// Delivers everything queued so far before returning. MUST be safe from many
    /// tasks at once and MUST deliver entries queued before `start`.
    async fn flush(&self);

    /// Flushes and stops delivery. MUST be idempotent and safe from many tasks; every
    /// caller returns once the first shutdown finished. Later reports are dropped.
    async fn shutdown(&self);

    /// Queue figures.
    fn stats(&self) -> ReporterStats;
}
