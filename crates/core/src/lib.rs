//! berth's pure lifecycle core.
//!
//! - [`code`]: the stable error codes, each with its HTTP status.
//! - [`ids`]: identifier newtypes parsed at the edge.
//! - [`state`]: the lifecycle state machine, a pure transition function.
//! - [`merge`]: the per-workspace merge table, a pure function.
//! - [`model`]: the records (workspaces, ops, events, sessions).
//! - [`ports`]: what the engine needs from outside (`ProcessRuntime`, `Store`,
//!   `Reporter`, `Clock`), each with a MUST contract.
//! - [`engine`]: the serial executor that enforces `lifecycle.md`.
//! - [`reporter`]: a bounded, never-blocking [`ports::Reporter`] with pluggable sinks.
//! - `testkit` (feature): fakes and the port conformance suites.
//!
//! No I/O lives here: no filesystem, no processes, no sockets. Adapters do that.
//!
//! # Example
//!
//! An engine on the testkit's fakes: create a workspace, start it, verify the token
//! its process received, and shut down.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use berth_core::ids::{RuntimeKind, WorkspaceName, WorkspaceToken};
//! use berth_core::model::{Actor, CreateWorkspace, OpStatus};
//! use berth_core::testkit::{FakeRuntime, MemoryStore, RecordingReporter, TestClock};
//! use berth_core::Engine;
//!
//! let clock = Arc::new(TestClock::new());
//! let runtime = Arc::new(FakeRuntime::new(clock.clone()));
//! let engine = Engine::builder()
//!     .store(Arc::new(MemoryStore::new()))
//!     .runtime(runtime.clone())
//!     .reporter(Arc::new(RecordingReporter::default()))
//!     .clock(clock)
//!     .build()
//!     .await?;
//! let ws = engine
//!     .create(CreateWorkspace {
//!         name: WorkspaceName::parse("api-7")?,
//!         runtime: RuntimeKind::parse("fake")?,
//!         spec: Default::default(),
//!         actor: Actor::Api,
//!     })
//!     .await?;
//! let op = engine.start(&ws.id, Actor::Api).await?.wait().await?;
//! assert_eq!(op.status, OpStatus::Succeeded);
//! let env = &runtime.launches()[0].env;
//! let token = WorkspaceToken::from_presented(&env["BERTH_WORKSPACE_TOKEN"]);
//! assert_eq!(engine.verify_token(&token).await?.map(|w| w.id), Some(ws.id));
//! engine.shutdown().await;
//! assert_eq!(engine.live_tasks(), 0);
//! # Ok(())
//! # }
//! ```

pub mod code;
pub mod engine;
pub mod ids;
pub mod merge;
pub mod model;
pub mod ports;
pub mod reporter;
pub mod state;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use code::ErrorCode;
pub use engine::{Engine, EngineBuilder, EngineConfig, EngineError, OpTicket, ShutdownReport};
