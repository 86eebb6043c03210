//! berth-postgres's integration tests, on a real PostgreSQL server
//! (`BERTH_TEST_POSTGRES_URL`; SKIPPED loudly without one, required in CI): the store
//! contract, fencing and lease takeover between daemons, and the event order seen by
//! a reader while several daemons write.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod cluster;
mod contract;
mod events;
mod group;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use berth_postgres::{Member, MemberOptions, PgOptions, PgStore, testing};

/// A store on a fresh database (`None`: SKIPPED).
pub async fn fresh(test: &str) -> Option<(String, Arc<PgStore>)> {
    let url = testing::scratch_database(test).await?;
    let store = open(&url).await;
    Some((url, store))
}

pub async fn open(url: &str) -> Arc<PgStore> {
    Arc::new(
        PgStore::connect(
            url,
            PgOptions {
                max_connections: 8,
                event_retention: None,
                ..PgOptions::default()
            },
        )
        .await
        .unwrap(),
    )
}

/// Joins `store` to the fleet as `id` on `host`, with a lease time of `ttl`.
pub async fn join(store: &PgStore, id: &str, host: &str, ttl: Duration) -> Member {
    store
        .join(MemberOptions {
            daemon_id: id.to_owned(),
            url: format!("http://{id}.invalid"),
            host: host.to_owned(),
            lease_ttl: ttl,
            pinned_runtimes: HashSet::from(["tmux".to_owned()]),
        })
        .await
        .unwrap()
}

use berth_core::ids::{Incarnation, RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::model::{Actor, Cause, NewEvent, Workspace, WorkspaceSpec};
use berth_core::ports::{Commit, Fence, Store};
use berth_core::state::State;

/// A stopped workspace row of `runtime`, version 1.
pub fn workspace(name: &str, runtime: &str) -> Workspace {
    let now = chrono::Utc::now();
    Workspace {
        id: WorkspaceId::generate(),
        name: WorkspaceName::parse(name).unwrap(),
        runtime: RuntimeKind::parse(runtime).unwrap(),
        state: State::Stopped,
        incarnation: Incarnation(0),
        spec: WorkspaceSpec {
            command: vec!["true".into()],
            ..Default::default()
        },
        dir: None,
        created_at: now,
        updated_at: now,
        last_error: None,
        version: 1,
        pool: None,
    }
}

pub fn event(ws: &Workspace, to: Option<State>, cause: Cause) -> NewEvent {
    NewEvent {
        at: chrono::Utc::now(),
        workspace_id: ws.id.clone(),
        op_id: None,
        actor: Actor::Api,
        from: Some(ws.state),
        to,
        cause,
        message: format!("{cause:?}"),
    }
}

/// Creates `ws` through `store`.
pub async fn create(store: &PgStore, ws: &Workspace) {
    store
        .create_workspace(ws, &event(ws, Some(State::Stopped), Cause::Created))
        .await
        .unwrap();
}

/// A commit moving `ws` to `state` (version + 1), with an event, under `fence`.
pub fn moved(ws: &Workspace, state: State, fence: Fence) -> Commit {
    let mut next = ws.clone();
    next.state = state;
    next.version += 1;
    Commit {
        event: Some(event(ws, Some(state), Cause::Start)),
        workspace: next,
        expected_version: ws.version,
        token: None,
        ops: Vec::new(),
        fence,
    }
}
