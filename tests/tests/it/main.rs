//! Black-box tests of the `berth` binary: the real daemon on port 0, a temp data dir,
//! the real tmux runtime, HTTP.

mod api;
mod lifecycle;
mod quickstart;
mod shutdown;
