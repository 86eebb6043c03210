//! berth's daemon, HTTP API and CLI.
//!
//! - [`app::router`]: the axum router of `../shared/design/api.md`, to mount anywhere
//!   (other teams embed it); [`app::AppState`] holds the engine it drives.
//! - [`serve`]: `berth serve`, wiring the SQLite store and the tmux runtime (the only
//!   module that knows the concrete adapters).
//! - [`client`] and [`doctor`]: the CLI.

pub mod app;
pub mod client;
pub mod doctor;
pub mod dto;
pub mod error;
pub mod events;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod serve;

pub use app::{AppState, router};
