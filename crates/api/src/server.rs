//! The daemon's HTTP server: HTTP/1.1 connections accepted under a limit, each with a
//! header-read timeout that also bounds an idle keep-alive connection, so a local
//! process cannot hold the daemon's connections open with half-sent headers or idle
//! sockets. Requests are answered by the router (which checks the bearer token before
//! it reads a body).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from the connection's
    /// start or from the end of the previous response (so it is also the idle
    /// timeout of a keep-alive connection).
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled; then stops accepting, lets
/// each connection finish its request in flight (idle ones close at once), and
/// returns when all have ended.
pub async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    limits: ServerLimits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        // A permit first: past the limit, new connections wait in the kernel's backlog
        // instead of costing the daemon memory and a task each.
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        // The listener retries failed accepts itself (out of descriptors, say).
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            (stream, _) = listener.accept() => stream,
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
