//! berth-core's integration tests: the engine against the fakes, the conformance suites
//! against the reference fakes, and a model-based property test.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod contracts;
mod crash;
mod create;
mod delete;
mod faults;
mod interpreter;
mod lifecycle;
mod mocks;
mod model;
mod ownership;
mod pools;
mod reads;
mod reconcile;
mod sessions;
mod shutdown;
mod support;
