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
    listener: L,
    app: Router,
    limits: ServerLimits,
    stop: CancellationToken,
) {
    serve_with(listener, app, limits, stop, |io| async move { Ok(io) }).await;
}

/// [`serve`] over TLS: each connection's handshake runs in its own task, bounded by the
/// header-read timeout, so a slow handshake holds nobody else up.
pub async fn serve_tls<L: Listener>(
    listener: L,
    app: Router,
    limits: ServerLimits,
    stop: CancellationToken,
    tls: tokio_rustls::TlsAcceptor,
) {
    let bound = limits.header_read_timeout;
    serve_with(listener, app, limits, stop, move |io| {
        let tls = tls.clone();
        async move {
            match tokio::time::timeout(bound, tls.accept(io)).await {
                Ok(done) => done,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            }
        }
    })
    .await;
}

/// The TLS configuration of a certificate chain and its private key (PEM files).
///
/// # Errors
/// A file that cannot be read or holds no certificate or key, or a key that does not
/// fit the certificate.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("reading the certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the certificate and key do not fit together: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

async fn serve_with<L, W, F, Io>(
    mut listener: L,
    app: Router,
    limits: ServerLimits,
    stop: CancellationToken,
    wrap: W,
) where
    L: Listener,
    W: Fn(L::Io) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = std::io::Result<Io>> + Send,
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
        let wrap = wrap.clone();
        connections.spawn(async move {
            let _permit = permit;
            let stream = match wrap(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "connection refused before HTTP");
                    return;
                }
            };
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
