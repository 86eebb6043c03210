//! `GET /v1/events`: a Server-Sent Events stream (replay from the store, then live from
//! the [`EventHub`](super::hub::EventHub)), or a JSON page with `format=json`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::dto::{EventPage, EventView, EventsQuery};
use super::error::{ApiError, ErrorBody, QueryParams};
use super::hub::LiveEvent;
use super::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// Lifecycle events: a Server-Sent Events stream (replay, then live), or a JSON page
/// with `format=json`.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq")),
    responses((status = 200, description = "A stream of events (text/event-stream), or an EventPage with format=json",
            content((EventPage = "application/json"), (String = "text/event-stream"))),
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
    live: broadcast::Receiver<Arc<LiveEvent>>,
    cursor: u64,
    workspace: Option<berth_core::ids::WorkspaceId>,
    /// Rendered events to send, in `seq` order (live ones shared with every subscriber).
    backlog: VecDeque<Arc<LiveEvent>>,
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
                return Some(SseEvent::default().id(e.seq.to_string()).data(&e.data));
            }
            if self.replaying {
                let page = tokio::select! {
                    r = self.engine.events(self.cursor, self.workspace.as_ref(), 500) => r.ok()?,
                    () = self.closing.cancelled() => return None,
                };
                self.replaying = page.len() == 500;
                self.backlog
                    .extend(page.iter().filter_map(LiveEvent::render).map(Arc::new));
                continue;
            }
            tokio::select! {
                () = self.closing.cancelled() => return None,
                r = self.live.recv() => match r {
                    Ok(e) => {
                        let wanted = self.workspace.as_ref().is_none_or(|w| *w == e.workspace_id);
                        if e.seq > self.cursor && wanted {
                            self.backlog.push_back(e);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.replaying = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}
