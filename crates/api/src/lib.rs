//! berth's daemon, HTTP API and CLI: the crate that wires everything.
//!
//! - [`http`]: the HTTP API of `../shared/design/api.md` over any [`berth_core::Engine`]
//!   ([`http::router`], [`http::AppState`]). It names no adapter: another team can mount
//!   it over its own engine with `default-features = false`, without compiling SQLite,
//!   tmux or Docker.
//! - [`serve`] (feature `daemon`): the composition root. `berth serve` wires the SQLite
//!   store, the tmux and Docker runtimes, the engine and the router; the only module
//!   that names concrete adapters.
//! - [`cluster`] (feature `daemon`): several daemons on one PostgreSQL store: routing
//!   each workspace's requests to its owner, heartbeats, failover, fleet-wide events.
//! - [`server`] (feature `daemon`): the HTTP server `serve` runs the router on, with a
//!   connection limit and a header-read timeout.
//! - [`sockets`] (feature `daemon`): each workspace's API socket, served by the router
//!   with the workspace as its owner.
//! - [`cli`] (feature `daemon`): the `berth` commands that talk to a running daemon.

pub mod http;

#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod cluster;
#[cfg(feature = "daemon")]
pub mod serve;
#[cfg(feature = "daemon")]
pub mod server;
#[cfg(feature = "daemon")]
pub mod sockets;

pub use http::{AppState, router};
