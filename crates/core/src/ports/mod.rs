//! The ports: what the engine needs from the outside world, named by capability.
//!
//! Each is an `#[async_trait]` trait used as `Arc<dyn Port>`, because runtimes are
//! chosen at run time and other teams embed the engine. Every method states its
//! contract as MUST clauses; `berth_core::testkit` holds one conformance suite per
//! port that every adapter and every fake runs.

mod clock;
mod io;
mod reporter;
mod runtime;
mod store;

pub use clock::{Clock, SystemClock};
pub use io::{
    ByteStream, CopyRequest, ExecInput, ExecIo, ExecOutput, ExecRequest, LogLine, LogQuery,
    LogStream, TermSize, captured,
};
pub use reporter::{Report, Reporter, ReporterStats, Step};
pub use runtime::{
    API_SOCKET, CaptureTarget, ConflictReason, DirtyReport, EventWake, LaunchRequest,
    OwnedResource, ProcessRuntime, ProcessStatus, ResourceKind, ResourceRef, RuntimeError,
    SessionLaunch, SessionRef, SpecRefusal, WorkspaceRef, WorkspaceSockets,
};
pub use store::{
    Commit, Fence, NewSession, Ownership, OwnsAll, Store, StoreError, WorkspacePage, WorkspaceQuery,
};

#[cfg(feature = "testkit")]
pub use reporter::MockReporter;
#[cfg(feature = "testkit")]
pub use runtime::MockProcessRuntime;
#[cfg(feature = "testkit")]
pub use store::MockStore;
