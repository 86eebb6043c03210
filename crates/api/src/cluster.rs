//! Several daemons, one fleet (`berth serve --store postgres://…`): the [`Placement`]
//! that routes each workspace's requests to its owner, and the loops that keep this
//! daemon's leases (heartbeat), take over the workspaces of daemons that died
//! (failover), and wake the event pump on every daemon's appends (`LISTEN`).
//!
//! Routing a request for workspace W (see `docs/scale-out.md`):
//! - this daemon holds W's lease: it serves the request;
//! - another live daemon holds it: the request is forwarded to that daemon's URL with
//!   the caller's headers and body, and its answer streamed back; if that daemon does
//!   not answer, this one waits for the lease to expire (at most the lease time) and
//!   takes over;
//! - nobody live holds it: this daemon acquires the lease (one conditional write; of
//!   two daemons racing one wins, the other forwards to it), finishes what the last
//!   owner left (as boot recovery would), and serves the request.
//!
//! A forwarded request carries `x-berth-forwarded-by`; a daemon never forwards a
//! request that was forwarded to it more than [`MAX_HOPS`] times.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use berth_core::Engine;
use berth_core::ErrorCode;
use berth_core::ids::{WorkspaceId, WorkspaceName};
use berth_core::ports::Store as _;
use berth_postgres::{LeaseOwner, PgStore};
use futures_util::TryStreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::error::ApiError;
use crate::http::hub::EventHub;
use crate::http::placement::Placement;

/// Set on a forwarded request: the daemon that forwarded it.
pub const FORWARDED_BY: &str = "x-berth-forwarded-by";
/// Set on a forwarded request: the time (Unix milliseconds) after which the owner must
/// not begin serving it. A forward abandoned because its owner froze past its lease
/// must not run when that owner resumes.
pub const FORWARD_DEADLINE: &str = "x-berth-forward-deadline";
/// How many times a request may be forwarded.
pub const MAX_HOPS: usize = 2;
/// Bodies up to this size are kept so a forward can be retried on another daemon.
const REPLAYABLE: usize = crate::http::BODY_LIMIT;

/// This daemon's side of the fleet.
#[derive(Debug)]
pub struct Cluster {
    store: Arc<PgStore>,
    engine: Engine,
    client: reqwest::Client,
    daemon_id: String,
}

impl Cluster {
    /// The cluster over a joined `store` and the engine built on it.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(store: Arc<PgStore>, engine: Engine) -> anyhow::Result<Self> {
        let daemon_id = store
            .member()
            .map(|m| m.daemon_id.clone())
            .ok_or_else(|| anyhow::anyhow!("the store has not joined the fleet"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            store,
            engine,
            client,
            daemon_id,
        })
    }

    fn lease_ttl(&self) -> Duration {
        self.store.lease_ttl().unwrap_or(Duration::from_secs(10))
    }

    /// Takes `id` over if nobody live holds it; on success finishes what its last
    /// owner left. Returns whether this daemon owns it now.
    async fn take_over(&self, id: &WorkspaceId) -> Result<bool, ApiError> {
        if !self.store.acquire(id).await.map_err(store_error)? {
            return Ok(false);
        }
        tracing::info!(workspace = %id, "took the workspace over");
        self.engine.adopt(id).await.map_err(ApiError::from)?;
        Ok(true)
    }

    async fn resolve(&self, workspace: &str) -> Result<Option<WorkspaceId>, ApiError> {
        if let Ok(id) = WorkspaceId::parse(workspace) {
            return Ok(Some(id));
        }
        let Ok(name) = WorkspaceName::parse(workspace) else {
            return Ok(None);
        };
        Ok(self
            .store
            .workspace_by_name(&name)
            .await
            .map_err(store_error)?
            .map(|w| w.id))
    }

    /// Sends `req` to `url`; `Err` gives the request back when the daemon did not
    /// answer and the request can be tried again.
    async fn forward(
        &self,
        to: (&WorkspaceId, &str, &str),
        parts: &axum::http::request::Parts,
        body: Payload,
        hops: usize,
    ) -> Result<Response, (Payload, String)> {
        let (id, owner, url) = to;
        let target = format!(
            "{}{}",
            url.trim_end_matches('/'),
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name)
                && name.as_str() != FORWARDED_BY
                && name.as_str() != FORWARD_DEADLINE
            {
                headers.append(name.clone(), value.clone());
            }
        }
        let deadline = unix_ms()
            .saturating_add(u64::try_from((self.lease_ttl() / 2).as_millis()).unwrap_or(u64::MAX));
        headers.insert(
            HeaderName::from_static(FORWARD_DEADLINE),
            HeaderValue::from(deadline),
        );
        for _ in 0..=hops {
            if let Ok(v) = HeaderValue::from_str(&self.daemon_id) {
                headers.append(HeaderName::from_static(FORWARDED_BY), v);
            }
        }
        let (body, replay) = match body {
            Payload::Kept(bytes) => (reqwest::Body::from(bytes.clone()), Some(bytes)),
            Payload::Stream(body) => (
                reqwest::Body::wrap_stream(body.into_data_stream().map_err(std::io::Error::other)),
                None,
            ),
            Payload::Gone => {
                return Err((Payload::Gone, "the request body was already sent".into()));
            }
        };
        let send = self
            .client
            .request(parts.method.clone(), &target)
            .headers(headers)
            .body(body)
            .send();
        // An owner that froze never answers: give up once it lost its lease.
        let sent = tokio::select! {
            sent = send => sent,
            () = self.owner_gone(id, owner) => {
                let why = format!("{owner} lost the lease while the request was forwarded");
                return Err(match replay {
                    Some(bytes) => (Payload::Kept(bytes), why),
                    None => (Payload::Gone, why),
                });
            }
        };
        match sent {
            Ok(answer) => {
                let mut response = Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    if !is_hop_by_hop(name) {
                        response = response.header(name, value);
                    }
                }
                let stream = answer.bytes_stream().map_err(std::io::Error::other);
                Ok(response
                    .body(Body::from_stream(stream))
                    .unwrap_or_else(|e| {
                        ApiError::new(ErrorCode::Internal, format!("forwarded answer: {e}"))
                            .into_response()
                    }))
            }
            Err(e) => {
                let why = e.to_string();
                match replay {
                    Some(bytes) if e.is_connect() || e.is_request() => {
                        Err((Payload::Kept(bytes), why))
                    }
                    _ => Err((Payload::Gone, why)),
                }
            }
        }
    }
}

impl Cluster {
    /// Returns once `owner` no longer holds `id`'s lease live.
    async fn owner_gone(&self, id: &WorkspaceId, owner: &str) {
        let period = (self.lease_ttl() / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(period).await;
            match self.store.lease(id).await {
                Ok(Some(l)) => match l.owner {
                    LeaseOwner::Other { daemon_id, .. } if daemon_id == owner => {}
                    _ => return,
                },
                Ok(None) => return,
                // The store cannot tell: keep waiting for the owner.
                Err(_) => {}
            }
        }
    }
}

/// A forwarded request past its deadline (see [`FORWARD_DEADLINE`]).
fn forwarded_late(req: &Request) -> bool {
    req.headers()
        .get(FORWARD_DEADLINE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|deadline| unix_ms() > deadline)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request body on its way to the owner.
#[derive(Debug)]
enum Payload {
    /// Read into memory (small): can be sent again.
    Kept(Bytes),
    /// Streamed (large): sent once.
    Stream(Body),
    /// Already consumed by a failed attempt.
    Gone,
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn store_error(e: berth_core::ports::StoreError) -> ApiError {
    ApiError::from(berth_core::engine::EngineError::from(e))
}

fn unavailable(message: String) -> Response {
    ApiError::new(ErrorCode::StoreUnavailable, message).into_response()
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the answer itself (a forwarded response), returned as is"
)]
#[async_trait]
impl Placement for Cluster {
    async fn route_op(&self, op: &str, req: Request) -> Result<Request, Response> {
        match self.workspace_of_op(op).await {
            // The op's workspace is gone, or the op is unknown: served here (its
            // stored record, or a 404).
            Some(ws) if self.store.workspace(&ws).await.ok().flatten().is_some() => {
                self.route(ws.as_str(), req).await
            }
            _ => Ok(req),
        }
    }

    async fn route(&self, workspace: &str, req: Request) -> Result<Request, Response> {
        let id = match self.resolve(workspace).await {
            Ok(Some(id)) => id,
            // Not a workspace: served here (a 404 or a 400 like any other).
            Ok(None) => return Ok(req),
            Err(e) => return Err(e.into_response()),
        };
        // Held by this daemon as of its last heartbeat: served here, no lookup. (Had
        // it lost the lease while frozen, its writes are refused by the fence.)
        if self.store.holds(&id) && !forwarded_late(&req) {
            return Ok(req);
        }
        let hops = req.headers().get_all(FORWARDED_BY).iter().count();
        if forwarded_late(&req) {
            // The forwarding daemon gave up on this request long ago (this daemon was
            // frozen or cut off): it was, or will be, served elsewhere.
            // A client that sets the header itself gets a 4xx: it is its input.
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("{FORWARD_DEADLINE} is past: a forwarded request that arrived after its deadline is not served"),
            )
            .into_response());
        }
        let upgrade = req.headers().contains_key(axum::http::header::UPGRADE);
        let (parts, body) = req.into_parts();
        let length = parts.headers.get(axum::http::header::CONTENT_LENGTH);
        let chunked = parts
            .headers
            .contains_key(axum::http::header::TRANSFER_ENCODING);
        let small = length
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n <= REPLAYABLE)
            // No length and not chunked: no body.
            || (length.is_none() && !chunked)
            || matches!(
                parts.method,
                axum::http::Method::GET | axum::http::Method::DELETE | axum::http::Method::HEAD
            );
        let mut payload = if small && !upgrade {
            match axum::body::to_bytes(body, REPLAYABLE).await {
                Ok(bytes) => Payload::Kept(bytes),
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::PayloadTooLarge,
                        "the request body is larger than its Content-Length said",
                    )
                    .into_response());
                }
            }
        } else {
            Payload::Stream(body)
        };
        let rebuild = |parts: axum::http::request::Parts, payload: Payload| match payload {
            Payload::Kept(bytes) => Ok(Request::from_parts(parts, Body::from(bytes))),
            Payload::Stream(body) => Ok(Request::from_parts(parts, body)),
            Payload::Gone => Err(unavailable(
                "the workspace's owner stopped answering while it received this request; retry it"
                    .into(),
            )),
        };
        // A dead owner's lease is free within its lease time; then this daemon takes
        // over. Past that (plus a margin) the request gives up.
        let deadline = tokio::time::Instant::now() + self.lease_ttl() + Duration::from_secs(2);
        let mut last_failure = String::new();
        loop {
            let lease = match self.store.lease(&id).await {
                Ok(l) => l,
                Err(e) => return Err(store_error(e).into_response()),
            };
            match lease.map(|l| l.owner) {
                Some(LeaseOwner::Me) => return rebuild(parts, payload),
                // No lease row: the workspace is gone (served here: not found), or it
                // predates the fleet (taken).
                None | Some(LeaseOwner::Free { .. }) => match self.take_over(&id).await {
                    Ok(true) => return rebuild(parts, payload),
                    Ok(false) => {
                        if self.store.workspace(&id).await.ok().flatten().is_none() {
                            return rebuild(parts, payload);
                        }
                        // Another daemon won the race, or the lease belongs to another
                        // host: look again.
                        if let Ok(Some(l)) = self.store.lease(&id).await
                            && let LeaseOwner::Free { movable: false, .. } = l.owner
                        {
                            return Err(ApiError::new(
                                ErrorCode::RuntimeUnavailable,
                                "this workspace belongs to another host, whose daemon is down; start a daemon there to serve it",
                            )
                            .into_response());
                        }
                    }
                    Err(e) => return Err(e.into_response()),
                },
                Some(LeaseOwner::Other { url, daemon_id }) => {
                    if upgrade {
                        // A WebSocket (exec, attach) is not forwarded: a Docker
                        // workspace is reachable from here; a tmux one is not.
                        return rebuild(parts, payload);
                    }
                    if hops >= MAX_HOPS {
                        // The header is a client's input too: a 4xx, retryable without it.
                        return Err(ApiError::new(
                            ErrorCode::InvalidRequest,
                            format!("this request was already forwarded {hops} times ({FORWARDED_BY}) and its workspace's owner moved again; retry it"),
                        )
                        .into_response());
                    }
                    match self
                        .forward((&id, &daemon_id, &url), &parts, payload, hops)
                        .await
                    {
                        Ok(answer) => return Err(answer),
                        Err((back, why)) => {
                            tracing::warn!(workspace = %id, owner = %daemon_id, error = %why, "the owner did not answer; waiting for its lease");
                            last_failure = why;
                            payload = back;
                            if matches!(payload, Payload::Gone) {
                                return rebuild(parts, payload);
                            }
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "the daemon that owns this workspace does not answer and its lease has not expired yet; retry shortly ({last_failure})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Cluster {
    async fn workspace_of_op(&self, op: &str) -> Option<WorkspaceId> {
        let id = berth_core::ids::OpId::parse(op).ok()?;
        self.store
            .op(&id)
            .await
            .ok()
            .flatten()
            .map(|o| o.workspace_id)
    }

    /// Starts the heartbeat/failover loop and the event listener on `tracker`, until
    /// `stop`. `fenced` is cancelled if another process joined under this daemon's id
    /// (this one must then shut down).
    pub fn spawn_loops(
        self: &Arc<Self>,
        hub: Arc<EventHub>,
        tracker: &TaskTracker,
        stop: CancellationToken,
        fenced: CancellationToken,
    ) {
        let me = Arc::clone(self);
        let beat_stop = stop.clone();
        tracker.spawn(async move {
            let period = (me.lease_ttl() / 3).max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = beat_stop.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                match me.store.heartbeat().await {
                    Ok(beat) => {
                        if beat.was_expired {
                            tracing::warn!("this daemon's lease time ran out before it renewed it (frozen or cut off); other daemons may have taken its workspaces");
                        }
                        for id in &beat.lost {
                            tracing::warn!(workspace = %id, "another daemon took this workspace over");
                            me.engine.forget(id);
                        }
                    }
                    Err(berth_core::ports::StoreError::Fenced { what, .. }) => {
                        tracing::error!(%what, "this daemon was replaced; shutting down");
                        fenced.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed; retrying");
                        continue;
                    }
                }
                me.fail_over().await;
            }
        });
        let me = Arc::clone(self);
        tracker.spawn(async move {
            loop {
                let mut wakes = match me.store.event_wakes().await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for other daemons' events; retrying");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        woke = wakes.next() => match woke {
                            Ok(()) => hub.wake(),
                            Err(e) => {
                                tracing::warn!(error = %e, "event listener lost; reconnecting");
                                hub.wake();
                                break;
                            }
                        }
                    }
                }
            }
        });
    }

    /// Takes over every workspace whose owner died (and this host may hold).
    async fn fail_over(&self) {
        let orphaned = match self.store.unowned(256).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for workspaces to take over");
                return;
            }
        };
        for id in orphaned {
            if let Err(e) = self.take_over(&id).await {
                tracing::warn!(workspace = %id, error = %e.detail.message, "could not take the workspace over");
            }
        }
    }
}
