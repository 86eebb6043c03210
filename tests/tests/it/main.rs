//! Black-box tests of the `berth` binary: the real daemon on port 0, a temp data dir,
//! the real tmux runtime (and Docker, when a daemon answers), HTTP.

mod access;
mod api;
mod docker;
mod faults;
mod fleet;
mod lifecycle;
mod pools;
mod quickstart;
mod security;
mod shutdown;
mod up;
