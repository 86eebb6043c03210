//! The conformance suite of the [`Store`] port. Every store adapter and the in-memory
//! store run it unchanged: `store_contract(|| async { Arc::new(MyStore::open(..)) }).await`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{TimeZone, Utc};

use crate::ids::{
    EngineId, Generation, Incarnation, OpId, RuntimeKind, SessionName, WorkspaceId, WorkspaceName,
    WorkspaceToken,
};
use crate::merge::OpKind;
use crate::model::{
    Actor, Cause, NewEvent, OpStatus, Operation, Pool, Timestamp, Workspace, WorkspaceSpec,
};
use crate::ports::{Commit, Fence, NewSession, Store, StoreError, WorkspaceQuery};
use crate::state::State;

fn t(secs: i64) -> Timestamp {
    Utc.timestamp_opt(1_767_225_600 + secs, 0)
        .single()
        .unwrap_or_default()
}

fn workspace(name: &str, at: i64) -> Workspace {
    Workspace {
        id: WorkspaceId::generate(),
        name: WorkspaceName::parse(name).expect("valid name"),
        runtime: RuntimeKind::parse("fake").expect("valid runtime"),
        state: State::Stopped,
        incarnation: Incarnation(0),
        spec: WorkspaceSpec {
            command: vec!["sh".into(), "-c".into(), "echo 'hi'; exit 0".into()],
            ..Default::default()
        },
        dir: None,
        created_at: t(at),
        updated_at: t(at),
        last_error: None,
        version: 1,
        pool: None,
    }
}

fn event(ws: &Workspace, from: Option<State>, to: Option<State>, cause: Cause) -> NewEvent {
    NewEvent {
        at: t(0),
        workspace_id: ws.id.clone(),
        op_id: None,
        actor: Actor::Api,
        from,
        to,
        cause,
        message: format!("{cause:?}"),
    }
}

fn op(ws: &Workspace, kind: OpKind, status: OpStatus) -> Operation {
    Operation {
        id: OpId::generate(),
        workspace_id: ws.id.clone(),
        kind,
        status,
        actor: Actor::Api,
        force: false,
        requested_at: t(1),
        started_at: None,
        start_phase_at: None,
        finished_at: None,
        joined: 0,
        result_state: None,
        incarnation: None,
        error: None,
        superseded_by: None,
    }
}

fn moved(ws: &Workspace, state: State) -> Workspace {
    let mut next = ws.clone();
    next.state = state;
    next.version += 1;
    next
}

/// Runs the whole store contract, each clause on a fresh store from `make`.
///
/// # Panics
/// When the store breaks a MUST clause of [`Store`].
pub async fn store_contract<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    engine_id_is_created_once(make().await).await;
    names_are_unique_and_a_refused_create_writes_nothing(make().await).await;
    commits_are_versioned_and_atomic(make().await).await;
    a_read_after_a_commit_sees_it(make().await).await;
    tokens_map_to_their_incarnation(make().await).await;
    listing_pages_cover_everything_once(make().await).await;
    ops_are_an_intent_log(make().await).await;
    events_follow_a_cursor(make().await).await;
    sessions_are_fenced_by_generation(make().await).await;
    delete_removes_rows_and_keeps_history(make().await).await;
    idempotency_keys_keep_the_first_result(make().await).await;
    hostile_content_round_trips(make().await).await;
    pools_and_their_members(make().await).await;
    close_refuses_later_calls(make().await).await;
}

async fn engine_id_is_created_once(s: Arc<dyn Store>) {
    let first = EngineId::generate();
    assert_eq!(
        s.init_engine_id(&first).await.expect("init"),
        first,
        "the first candidate MUST be stored"
    );
    assert_eq!(
        s.init_engine_id(&EngineId::generate()).await.expect("init"),
        first,
        "the stored id MUST win"
    );
}

async fn names_are_unique_and_a_refused_create_writes_nothing(s: Arc<dyn Store>) {
    let a = workspace("alpha", 0);
    let created = s
        .create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    assert_eq!(created.seq, 1, "the first event MUST have seq 1");
    assert_eq!(s.workspace(&a.id).await.expect("get"), Some(a.clone()));
    assert_eq!(
        s.workspace_by_name(&a.name).await.expect("by name"),
        Some(a.clone())
    );
    let dup = workspace("alpha", 1);
    match s
        .create_workspace(
            &dup,
            &event(&dup, None, Some(State::Stopped), Cause::Created),
        )
        .await
    {
        Err(StoreError::NameTaken { .. }) => {}
        other => panic!("a taken name MUST be NameTaken, got {other:?}"),
    }
    assert_eq!(
        s.workspace(&dup.id).await.expect("get"),
        None,
        "a refused create MUST write no row"
    );
    assert_eq!(
        s.last_event_seq().await.expect("seq"),
        1,
        "a refused create MUST write no event"
    );
    assert_eq!(
        s.workspace(&WorkspaceId::generate()).await.expect("get"),
        None
    );
}

/// Reads interleaved with commits: every read returns the row of the last commit that
/// returned (a store that keeps copies of rows, such as a cache, MUST drop them).
async fn a_read_after_a_commit_sees_it(s: Arc<dyn Store>) {
    let a = workspace("reread", 0);
    s.create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let mut current = a.clone();
    for (i, state) in [
        State::Starting,
        State::Running,
        State::Stopping,
        State::Stopped,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            s.workspace(&a.id).await.expect("get"),
            Some(current.clone()),
            "read {i} MUST see the last commit"
        );
        let next = moved(&current, state);
        s.commit(&Commit {
            workspace: next.clone(),
            expected_version: current.version,
            event: None,
            token: None,
            ops: Vec::new(),
            fence: Fence::default(),
        })
        .await
        .expect("commit");
        current = next;
    }
    assert_eq!(
        s.workspace(&a.id).await.expect("get"),
        Some(current.clone()),
        "the read after the last commit MUST see it"
    );
    // A refused (stale) commit changes nothing that a read sees.
    let refused = s
        .commit(&Commit {
            workspace: moved(&a, State::Failed),
            expected_version: a.version,
            event: None,
            token: None,
            ops: Vec::new(),
            fence: Fence::default(),
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(s.workspace(&a.id).await.expect("get"), Some(current));
}

async fn commits_are_versioned_and_atomic(s: Arc<dyn Store>) {
    let a = workspace("alpha", 0);
    s.create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let mut running_op = op(&a, OpKind::Start, OpStatus::Running);
    s.insert_op(&running_op).await.expect("insert op");
    running_op.status = OpStatus::Succeeded;
    let next = moved(&a, State::Starting);
    let commit = Commit {
        workspace: next.clone(),
        expected_version: 1,
        event: Some(event(
            &a,
            Some(State::Stopped),
            Some(State::Starting),
            Cause::Start,
        )),
        token: None,
        ops: vec![running_op.clone()],
        fence: Fence::default(),
    };
    let stored = s
        .commit(&commit)
        .await
        .expect("commit")
        .expect("the event MUST be returned");
    assert_eq!(stored.seq, 2);
    assert_eq!(s.workspace(&a.id).await.expect("get"), Some(next.clone()));
    assert_eq!(
        s.op(&running_op.id).await.expect("op"),
        Some(running_op.clone()),
        "ops in a commit MUST be written"
    );
    // Stale: expected version 1 again.
    let unseen = op(&a, OpKind::Stop, OpStatus::Running);
    let stale = Commit {
        workspace: moved(&a, State::Failed),
        expected_version: 1,
        event: Some(event(
            &a,
            Some(State::Stopped),
            Some(State::Failed),
            Cause::StartFailed,
        )),
        token: None,
        ops: vec![unseen.clone()],
        fence: Fence::default(),
    };
    match s.commit(&stale).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a stale commit MUST be a Conflict, got {other:?}"),
    }
    assert_eq!(
        s.workspace(&a.id).await.expect("get"),
        Some(next.clone()),
        "a stale commit MUST NOT change the row"
    );
    assert_eq!(
        s.last_event_seq().await.expect("seq"),
        2,
        "a stale commit MUST NOT append its event"
    );
    assert_eq!(
        s.op(&unseen.id).await.expect("op"),
        None,
        "a stale commit MUST NOT write its ops"
    );
    // An op the store has not seen is written by the commit that carries it (the
    // engine records an op that runs at once with its first commit).
    s.commit(&Commit {
        workspace: moved(&next, State::Running),
        expected_version: 2,
        event: None,
        token: None,
        ops: vec![unseen.clone()],
        fence: Fence::default(),
    })
    .await
    .expect("commit");
    assert_eq!(
        s.op(&unseen.id).await.expect("op"),
        Some(unseen),
        "an op first written by a commit MUST be stored"
    );
    let ghost = workspace("ghost", 0);
    match s
        .commit(&Commit {
            workspace: moved(&ghost, State::Starting),
            expected_version: 1,
            event: None,
            token: None,
            ops: vec![],
            fence: Fence::default(),
        })
        .await
    {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("a commit to an unknown workspace MUST be NotFound, got {other:?}"),
    }
}

async fn tokens_map_to_their_incarnation(s: Arc<dyn Store>) {
    let a = workspace("alpha", 0);
    s.create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let mut current = a.clone();
    let mut tokens = Vec::new();
    for n in 1..=2 {
        let token = WorkspaceToken::mint();
        let mut next = moved(&current, State::Starting);
        next.incarnation = Incarnation(n);
        s.commit(&Commit {
            workspace: next.clone(),
            expected_version: current.version,
            event: None,
            token: Some(token.hash()),
            ops: vec![],
            fence: Fence::default(),
        })
        .await
        .expect("commit");
        current = next;
        tokens.push(token);
    }
    assert_eq!(
        s.token_owner(&tokens[0].hash()).await.expect("owner"),
        Some((a.id.clone(), Incarnation(1)))
    );
    assert_eq!(
        s.token_owner(&tokens[1].hash()).await.expect("owner"),
        Some((a.id.clone(), Incarnation(2)))
    );
    assert_eq!(
        s.token_owner(&WorkspaceToken::mint().hash())
            .await
            .expect("owner"),
        None,
        "an unknown token MUST be None"
    );
}

async fn listing_pages_cover_everything_once(s: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let w = workspace(&format!("w{i}"), i);
        s.create_workspace(&w, &event(&w, None, Some(State::Stopped), Cause::Created))
            .await
            .expect("create");
        ids.push(w.id);
    }
    let page_through = |query: WorkspaceQuery| {
        let s = s.clone();
        async move {
            let mut seen = Vec::new();
            let mut query = query;
            loop {
                let page = s.list_workspaces(&query).await.expect("list");
                assert!(
                    page.items.len() <= query.limit,
                    "a page MUST respect the limit"
                );
                seen.extend(page.items.iter().map(|w| (w.id.clone(), w.state)));
                match page.next {
                    Some(n) => query.after = Some(n),
                    None => break,
                }
            }
            seen
        }
    };
    let all = page_through(WorkspaceQuery {
        limit: 2,
        ..WorkspaceQuery::default()
    })
    .await;
    assert_eq!(
        all.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids,
        "pages MUST list every workspace once, in creation order"
    );
    // Two of five move to `running`: a filtered listing returns exactly them, in full
    // pages, whatever the filter excludes in between.
    for id in [&ids[1], &ids[4]] {
        let mut w = s.workspace(id).await.expect("get").expect("exists");
        let before = w.version;
        w.state = State::Running;
        w.version += 1;
        s.commit(&Commit {
            workspace: w.clone(),
            expected_version: before,
            event: None,
            token: None,
            ops: vec![],
            fence: Fence::default(),
        })
        .await
        .expect("commit");
    }
    let running = page_through(WorkspaceQuery {
        limit: 1,
        state: Some(State::Running),
        ..WorkspaceQuery::default()
    })
    .await;
    assert_eq!(
        running,
        vec![
            (ids[1].clone(), State::Running),
            (ids[4].clone(), State::Running)
        ],
        "a state filter MUST be applied by the store, across pages"
    );
    let first = s
        .list_workspaces(&WorkspaceQuery {
            limit: 1,
            state: Some(State::Stopped),
            ..WorkspaceQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        first.items.len(),
        1,
        "a filtered page MUST be full when more match"
    );
    assert!(first.next.is_some());
    let other = RuntimeKind::parse("other").expect("valid runtime");
    let none = s
        .list_workspaces(&WorkspaceQuery {
            limit: 10,
            runtime: Some(other),
            ..WorkspaceQuery::default()
        })
        .await
        .expect("list");
    assert!(
        none.items.is_empty() && none.next.is_none(),
        "a runtime filter MUST apply"
    );
    let mut counts = s.count_by_state().await.expect("counts");
    counts.retain(|(_, n)| *n > 0);
    counts.sort();
    assert_eq!(
        counts,
        vec![(State::Stopped, 3), (State::Running, 2)],
        "counts by state MUST match the rows"
    );
    match s
        .list_workspaces(&WorkspaceQuery {
            after: Some(WorkspaceId::generate()),
            limit: 10,
            ..WorkspaceQuery::default()
        })
        .await
    {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("an unknown cursor MUST be NotFound, got {other:?}"),
    }
}

async fn ops_are_an_intent_log(s: Arc<dyn Store>) {
    let a = workspace("alpha", 0);
    s.create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let first = op(&a, OpKind::Start, OpStatus::Running);
    let second = op(&a, OpKind::Stop, OpStatus::Queued);
    s.insert_op(&first).await.expect("insert");
    s.insert_op(&second).await.expect("insert");
    match s.insert_op(&first).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a duplicate op id MUST be a Conflict, got {other:?}"),
    }
    let listed: Vec<_> = s
        .list_ops(&a.id, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(
        listed,
        vec![second.id.clone(), first.id.clone()],
        "ops MUST be listed newest first"
    );
    let mut done = first.clone();
    done.status = OpStatus::Succeeded;
    done.joined = 3;
    done.superseded_by = Some(second.id.clone());
    s.update_op(&done).await.expect("update");
    assert_eq!(s.op(&first.id).await.expect("op"), Some(done));
    let unfinished: Vec<_> = s
        .unfinished_ops()
        .await
        .expect("unfinished")
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(
        unfinished,
        vec![second.id.clone()],
        "only queued and running ops are unfinished"
    );
    match s.update_op(&op(&a, OpKind::Start, OpStatus::Running)).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("updating an unknown op MUST be NotFound, got {other:?}"),
    }
    assert_eq!(s.op(&OpId::generate()).await.expect("op"), None);
}

async fn events_follow_a_cursor(s: Arc<dyn Store>) {
    let a = workspace("alpha", 0);
    let b = workspace("beta", 1);
    s.create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    s.create_workspace(&b, &event(&b, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let mut cur = a.clone();
    for _ in 0..3 {
        let next = moved(&cur, State::Stopped);
        s.commit(&Commit {
            workspace: next.clone(),
            expected_version: cur.version,
            event: Some(event(
                &a,
                Some(State::Stopped),
                Some(State::Stopped),
                Cause::Stopped,
            )),
            token: None,
            ops: vec![],
            fence: Fence::default(),
        })
        .await
        .expect("commit");
        cur = next;
    }
    let all = s.events(0, None, 100).await.expect("events");
    let seqs: Vec<_> = all.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "seq MUST be monotonic without gaps"
    );
    let tail: Vec<_> = s
        .events(3, None, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(tail, vec![4, 5], "events MUST start after the cursor");
    let limited: Vec<_> = s
        .events(0, None, 2)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(limited, vec![1, 2]);
    let only_b = s.events(0, Some(&b.id), 100).await.expect("events");
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].event.workspace_id, b.id);
    assert_eq!(
        all[0].event,
        event(&a, None, Some(State::Stopped), Cause::Created),
        "an event MUST round-trip unchanged"
    );
}

async fn sessions_are_fenced_by_generation(s: Arc<dyn Store>) {
    let a = workspace("alpha", 0);
    s.create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let name = SessionName::parse("agent").expect("valid");
    let new = NewSession {
        workspace_id: a.id.clone(),
        name: name.clone(),
        command: vec!["sh".into()],
        env: BTreeMap::new(),
        created_at: t(2),
    };
    let first = s.insert_session(&new).await.expect("insert");
    match s.insert_session(&new).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a second session of one name MUST be a Conflict, got {other:?}"),
    }
    assert!(
        !s.delete_session(&a.id, &name, Generation(first.generation.0 + 100))
            .await
            .expect("delete"),
        "another generation MUST NOT be deleted"
    );
    assert_eq!(s.sessions(&a.id).await.expect("sessions").len(), 1);
    let b = workspace("beta", 1);
    s.create_workspace(&b, &event(&b, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let helper = s
        .insert_session(&NewSession {
            name: SessionName::parse("helper").expect("valid"),
            ..new.clone()
        })
        .await
        .expect("a second session");
    assert_eq!(
        s.workspaces_with_sessions().await.expect("with sessions"),
        vec![a.id.clone()],
        "exactly the workspaces with session rows, once each"
    );
    assert!(
        s.delete_session(&a.id, &helper.name, helper.generation)
            .await
            .expect("delete")
    );
    assert!(
        s.delete_session(&a.id, &name, first.generation)
            .await
            .expect("delete")
    );
    assert!(
        s.workspaces_with_sessions()
            .await
            .expect("with sessions")
            .is_empty()
    );
    let second = s.insert_session(&new).await.expect("re-create");
    assert!(
        second.generation > first.generation,
        "generations MUST grow"
    );
    assert!(
        !s.delete_session(&a.id, &name, first.generation)
            .await
            .expect("delete"),
        "the old generation MUST NOT delete the re-created row"
    );
    let mut exited = second.clone();
    exited.state = crate::model::SessionState::Exited;
    exited.exit_code = Some(3);
    s.update_session(&exited).await.expect("update session");
    assert_eq!(s.sessions(&a.id).await.expect("sessions"), vec![exited]);
    let ghost = NewSession {
        workspace_id: WorkspaceId::generate(),
        ..new
    };
    match s.insert_session(&ghost).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("a session of an unknown workspace MUST be NotFound, got {other:?}"),
    }
}

async fn delete_removes_rows_and_keeps_history(s: Arc<dyn Store>) {
    let a = workspace("alpha", 0);
    s.create_workspace(&a, &event(&a, None, Some(State::Stopped), Cause::Created))
        .await
        .expect("create");
    let token = WorkspaceToken::mint();
    let mut next = moved(&a, State::Deleting);
    next.incarnation = Incarnation(1);
    s.commit(&Commit {
        workspace: next.clone(),
        expected_version: 1,
        event: None,
        token: Some(token.hash()),
        ops: vec![],
        fence: Fence::default(),
    })
    .await
    .expect("commit");
    let name = SessionName::parse("agent").expect("valid");
    s.insert_session(&NewSession {
        workspace_id: a.id.clone(),
        name,
        command: vec![],
        env: BTreeMap::new(),
        created_at: t(1),
    })
    .await
    .expect("session");
    let mut del = op(&a, OpKind::Delete, OpStatus::Running);
    s.insert_op(&del).await.expect("op");
    del.status = OpStatus::Succeeded;
    let gone = event(&a, Some(State::Deleting), None, Cause::Deleted);
    match s
        .delete_workspace(
            &a.id,
            1,
            std::slice::from_ref(&del),
            &gone,
            Fence::default(),
        )
        .await
    {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a stale delete MUST be a Conflict, got {other:?}"),
    }
    assert!(
        s.workspace(&a.id).await.expect("get").is_some(),
        "a stale delete MUST keep the row"
    );
    let stored = s
        .delete_workspace(
            &a.id,
            2,
            std::slice::from_ref(&del),
            &gone,
            Fence::default(),
        )
        .await
        .expect("delete");
    assert_eq!(stored.event, gone);
    assert_eq!(s.workspace(&a.id).await.expect("get"), None);
    assert_eq!(s.workspace_by_name(&a.name).await.expect("by name"), None);
    assert!(
        s.sessions(&a.id).await.expect("sessions").is_empty(),
        "delete MUST remove sessions"
    );
    assert_eq!(
        s.token_owner(&token.hash()).await.expect("owner"),
        None,
        "delete MUST remove token hashes"
    );
    assert_eq!(
        s.op(&del.id).await.expect("op").map(|o| o.status),
        Some(OpStatus::Succeeded),
        "ops MUST be kept and written"
    );
    assert_eq!(
        s.events(0, Some(&a.id), 10).await.expect("events").len(),
        2,
        "events MUST be kept"
    );
    // The name is free again.
    let again = workspace("alpha", 5);
    s.create_workspace(
        &again,
        &event(&again, None, Some(State::Stopped), Cause::Created),
    )
    .await
    .expect("the name MUST be free after delete");
    match s
        .delete_workspace(&a.id, 2, &[], &gone, Fence::default())
        .await
    {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("deleting a gone workspace MUST be NotFound, got {other:?}"),
    }
}

async fn idempotency_keys_keep_the_first_result(s: Arc<dyn Store>) {
    assert_eq!(
        s.claim_idempotency_key("k1", "h1", "r1")
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        s.claim_idempotency_key("k1", "h2", "r2")
            .await
            .expect("claim"),
        Some(("h1".into(), "r1".into()))
    );
    assert_eq!(
        s.claim_idempotency_key("k2", "h2", "r2")
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        s.idempotency_key("k1").await.expect("lookup"),
        Some(("h1".into(), "r1".into())),
        "a lookup returns the first claim"
    );
    assert_eq!(s.idempotency_key("k3").await.expect("lookup"), None);
    assert_eq!(
        s.claim_idempotency_key("k3", "h3", "r3")
            .await
            .expect("claim"),
        None,
        "a lookup claims nothing"
    );
}

async fn hostile_content_round_trips(s: Arc<dyn Store>) {
    let mut a = workspace("hostile", 0);
    let big = "x'\"; DROP TABLE workspaces; --é\u{1F600}".repeat(100_000 / 40 + 1);
    a.spec.command = vec![
        "sh".into(),
        "-c".into(),
        "echo \"$(id)\"; echo ';' \\; `x`".into(),
        big.clone(),
    ];
    a.spec.env = BTreeMap::from([
        ("QUOTE".into(), "'\"\\".into()),
        ("BIG".into(), big.clone()),
        ("UNICODE".into(), "日本語 ñ".into()),
    ]);
    let mut ev = event(&a, None, Some(State::Stopped), Cause::Created);
    ev.message = big.clone();
    let stored = s.create_workspace(&a, &ev).await.expect("create");
    assert_eq!(
        s.workspace(&a.id).await.expect("get"),
        Some(a.clone()),
        "hostile spec MUST round-trip"
    );
    assert_eq!(
        s.events(0, None, 10).await.expect("events"),
        vec![stored],
        "hostile message MUST round-trip"
    );
}

async fn pools_and_their_members(s: Arc<dyn Store>) {
    let name = |n: &str| WorkspaceName::parse(n).expect("valid name");
    let pool = Pool {
        name: name("py"),
        runtime: RuntimeKind::parse("fake").expect("valid runtime"),
        spec: WorkspaceSpec {
            command: vec!["sleep".into(), "600".into()],
            ..Default::default()
        },
        size: 2,
        start: true,
    };
    assert!(s.pools().await.expect("pools").is_empty());
    s.put_pool(&pool).await.expect("put");
    let bigger = Pool {
        size: 3,
        ..pool.clone()
    };
    s.put_pool(&bigger).await.expect("put again");
    assert_eq!(
        s.pools().await.expect("pools"),
        vec![bigger.clone()],
        "a pool of the same name MUST be replaced"
    );
    // Members by creation, of one pool or of all; a claimed one is no member.
    let mut members = Vec::new();
    for (n, p) in [
        ("py-00000001", "py"),
        ("other", ""),
        ("go-00000001", "go"),
        ("py-00000002", "py"),
    ] {
        let mut ws = workspace(n, 0);
        ws.pool = (!p.is_empty()).then(|| name(p));
        s.create_workspace(&ws, &event(&ws, None, Some(State::Stopped), Cause::Created))
            .await
            .expect("create");
        members.push(ws);
    }
    let names = |list: Vec<Workspace>| {
        list.into_iter()
            .map(|w| w.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.pool_members(Some(&name("py"))).await.expect("members")),
        ["py-00000001", "py-00000002"]
    );
    assert_eq!(
        names(s.pool_members(None).await.expect("members")),
        ["py-00000001", "go-00000001", "py-00000002"]
    );
    // A claim: the member takes a new name and leaves the pool in one commit; a name
    // another workspace holds is `NameTaken` and changes nothing.
    let first = &members[0];
    let mut taken = first.clone();
    taken.name = name("other");
    taken.pool = None;
    taken.version = 2;
    let commit = |ws: Workspace| Commit {
        workspace: ws,
        expected_version: 1,
        event: None,
        token: None,
        ops: vec![],
        fence: Fence::default(),
    };
    assert!(
        matches!(
            s.commit(&commit(taken.clone())).await,
            Err(StoreError::NameTaken { .. })
        ),
        "renaming onto a held name MUST be NameTaken"
    );
    assert_eq!(
        s.workspace(&first.id).await.expect("get"),
        Some(first.clone())
    );
    let mut claimed = taken;
    claimed.name = name("mine");
    s.commit(&commit(claimed.clone())).await.expect("claim");
    assert_eq!(
        s.workspace(&first.id).await.expect("get"),
        Some(claimed.clone())
    );
    // The same commit again is one version stale: `Conflict` (the caller reloads and
    // retries), even with a name another workspace holds. The version is checked first.
    let mut stale = claimed.clone();
    stale.name = name("other");
    assert!(
        matches!(
            s.commit(&commit(stale)).await,
            Err(StoreError::Conflict { .. })
        ),
        "a stale commit MUST be Conflict, whatever its name"
    );
    assert_eq!(s.workspace(&first.id).await.expect("get"), Some(claimed));
    assert_eq!(
        names(s.pool_members(Some(&name("py"))).await.expect("members")),
        ["py-00000002"]
    );
    assert!(s.delete_pool(&name("py")).await.expect("delete"));
    assert!(!s.delete_pool(&name("py")).await.expect("delete again"));
    assert!(s.pools().await.expect("pools").is_empty());
}

async fn close_refuses_later_calls(s: Arc<dyn Store>) {
    s.close().await;
    s.close().await;
    match s.workspace(&WorkspaceId::generate()).await {
        Err(StoreError::Closed) => {}
        other => panic!("a closed store MUST refuse calls with Closed, got {other:?}"),
    }
}
