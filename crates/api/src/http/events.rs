//! Events: `GET /v1/events` (a Server-Sent Events stream, or a JSON page), and the
//! hub that feeds live subscribers.
//!
//! The engine reports events after their commit, so two workspaces' reports can reach
//! the reporter out of `seq` order, and a full reporter queue drops entries. The
//! [`EventHub`] therefore never forwards reports: a report only wakes its pump, which
//! reads the store after its cursor and broadcasts what it read, in `seq` order and
//! gap-free. Subscribers replay from the store first and then follow the broadcast,
//! skipping what they already sent; a subscriber that lags re-reads the store. So every
//! client sees each event exactly once, in order, whatever the reporter did.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::Engine;
use berth_core::model::Event;
use berth_core::ports::Report;
use berth_core::reporter::ReportSink;
use futures_util::Stream;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dto::{EventPage, EventView, EventsQuery};
use super::error::{ApiError, ErrorBody, QueryParams};
use super::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// How many events the pump reads per store call.
const PAGE: usize = 1000;

/// Wakes the pump; installed as a reporter sink.
#[derive(Debug)]
pub struct EventHub {
    wake: Notify,
    live: broadcast::Sender<Arc<Event>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// A hub with no pump yet (see [`EventHub::run_pump`]).
    pub fn new() -> Self {
        Self {
            wake: Notify::new(),
            live: broadcast::channel(4096).0,
        }
    }

    /// A receiver of every event in `seq` order (after it subscribed).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// Starts the pump on `tracker`: it reads events after the store's current last
    /// `seq` whenever woken (and at least every second) until `stop` is cancelled or
    /// the store closes.
    pub fn run_pump(
        self: &Arc<Self>,
        engine: Engine,
        tracker: &TaskTracker,
        stop: CancellationToken,
        start_after: u64,
    ) {
        let hub = Arc::clone(self);
        tracker.spawn(async move {
            let mut cursor = start_after;
            loop {
                loop {
                    match engine.events(cursor, None, PAGE).await {
                        Ok(page) => {
                            let full = page.len() == PAGE;
                            for e in page {
                                cursor = e.seq;
                                // No subscriber is fine.
                                let _ = hub.live.send(Arc::new(e));
                            }
                            if !full {
                                break;
                            }
                        }
                        Err(e) => {
                            if stop.is_cancelled() || engine.is_shutting_down() {
                                tracing::debug!(error = %e, "event pump stops with the engine");
                                return;
                            }
                            // A transient store error: try again from the same cursor.
                            tracing::warn!(error = %e, "event pump could not read the store; retrying");
                            break;
                        }
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = hub.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

#[async_trait]
impl ReportSink for EventHub {
    async fn deliver(&self, batch: &[Report]) {
        if batch.iter().any(|r| matches!(r, Report::Event(_))) {
            self.wake.notify_one();
        }
    }
}

/// Lifecycle events: a Server-Sent Events stream (replay, then live), or a JSON page
/// with `format=json`.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq")),
    responses((status = 200, description = "text/event-stream, or an EventPage with format=json", body = EventPage),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Response> {
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event seq"))?,
        ),
    };
    let since = last_id.or(q.since).unwrap_or(0);
    let workspace = match &q.workspace {
        None => None,
        Some(w) => Some(state.engine.resolve(w).await?.workspace.id),
    };
    match q.format.as_deref() {
        Some("json") => {
            let limit = q.limit.unwrap_or(100);
            if limit == 0 || limit > 1000 {
                return Err(ApiError::invalid("limit must be 1 to 1000"));
            }
            let page = state
                .engine
                .events(since, workspace.as_ref(), limit)
                .await?;
            let next_since = page.last().map_or(since, |e| e.seq);
            Ok(Json(EventPage {
                items: page.iter().map(EventView::from).collect(),
                next_since,
            })
            .into_response())
        }
        None | Some("sse") => {
            // Subscribe before the replay reads the store: nothing falls in between.
            let feed = Feed {
                engine: state.engine.clone(),
                live: state.hub.subscribe(),
                cursor: since,
                workspace,
                backlog: VecDeque::new(),
                replaying: true,
                closing: state.closing.clone(),
            };
            Ok(Sse::new(feed.stream())
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response())
        }
        Some(other) => Err(ApiError::invalid(format!(
            "format {other:?}: use json or sse"
        ))),
    }
}

struct Feed {
    engine: berth_core::Engine,
    live: broadcast::Receiver<Arc<Event>>,
    cursor: u64,
    workspace: Option<berth_core::ids::WorkspaceId>,
    backlog: VecDeque<Event>,
    /// Reading the store (at first, and after lagging behind the live feed).
    replaying: bool,
    closing: CancellationToken,
}

impl Feed {
    fn stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures_util::stream::unfold(self, |mut feed| async move {
            let event = feed.next().await?;
            Some((Ok(event), feed))
        })
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                self.cursor = e.seq;
                let data = serde_json::to_string(&EventView::from(&e)).ok()?;
                return Some(SseEvent::default().id(e.seq.to_string()).data(data));
            }
            if self.replaying {
                let page = tokio::select! {
                    r = self.engine.events(self.cursor, self.workspace.as_ref(), 500) => r.ok()?,
                    () = self.closing.cancelled() => return None,
                };
                self.replaying = page.len() == 500;
                self.backlog.extend(page);
                continue;
            }
            tokio::select! {
                () = self.closing.cancelled() => return None,
                r = self.live.recv() => match r {
                    Ok(e) => {
                        let wanted = self.workspace.as_ref().is_none_or(|w| *w == e.event.workspace_id);
                        if e.seq > self.cursor && wanted {
                            self.backlog.push_back((*e).clone());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.replaying = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}
