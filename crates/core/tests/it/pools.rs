//! Warm pools: a pass keeps exactly `size` unclaimed members, a matching create claims
//! a running one with a token nobody else ever held, members survive an engine restart
//! and the reconciler, and a shrinking or removed pool deletes its surplus only.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_core::Engine;
use berth_core::ids::{RuntimeKind, WorkspaceId, WorkspaceName, WorkspaceToken};
use berth_core::model::{Actor, Cause, CreateWorkspace, OpStatus, Pool, Workspace, WorkspaceSpec};
use berth_core::ports::Store as _;
use berth_core::state::State;
use berth_core::testkit::{FakeCall, Plan};
use proptest::prelude::*;

use crate::support::Rig;

fn template() -> WorkspaceSpec {
    WorkspaceSpec {
        command: vec!["agent".into(), "--warm".into()],
        ..Default::default()
    }
}

fn pool(name: &str, size: u32, start: bool) -> Pool {
    Pool {
        name: WorkspaceName::parse(name).unwrap(),
        runtime: RuntimeKind::parse("fake").unwrap(),
        spec: template(),
        size,
        start,
    }
}

fn request(name: &str) -> CreateWorkspace {
    CreateWorkspace {
        name: WorkspaceName::parse(name).unwrap(),
        runtime: RuntimeKind::parse("fake").unwrap(),
        spec: template(),
        actor: Actor::Api,
    }
}

/// Runs pool passes until every op ended and a pass changes nothing.
async fn settle(rig: &Rig) {
    for _ in 0..20 {
        let report = rig.engine.pools_once().await.unwrap();
        wait_idle(rig).await;
        if report == Default::default() {
            return;
        }
    }
    panic!("the pools never settled");
}

/// Waits until no workspace (member or not, of a removed pool too) has an op pending.
async fn wait_idle(rig: &Rig) {
    berth_core::testkit::wait_until("every op to end", Duration::from_secs(60), || async {
        rig.store
            .all_workspaces()
            .iter()
            .all(|w| rig.engine.pending(&w.id).is_idle())
    })
    .await;
}

async fn wait_idle_one(engine: &Engine, id: &WorkspaceId) {
    berth_core::testkit::wait_until("the op to end", Duration::from_secs(60), || async {
        engine.pending(id).is_idle()
    })
    .await;
}

async fn members(engine: &Engine, name: &str) -> Vec<Workspace> {
    engine
        .pool(&WorkspaceName::parse(name).unwrap())
        .await
        .unwrap()
        .members
}

#[tokio::test(start_paused = true)]
async fn a_pool_fills_to_its_size_and_passes_never_add_beyond_it() {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("py", 3, true)).await.unwrap();
    // Passes while the first members are still starting count them.
    rig.rt.set_delay(FakeCall::Launch, Duration::from_secs(5));
    let first = rig.engine.pools_once().await.unwrap();
    assert_eq!((first.created, first.started), (3, 3), "{first:?}");
    for _ in 0..3 {
        let again = rig.engine.pools_once().await.unwrap();
        assert_eq!(
            again.created, 0,
            "a pass counts members being started: {again:?}"
        );
    }
    // Two passes at once never both fill: a second pool, writes that take a moment (so
    // the passes would interleave), and together they create its size, no more.
    rig.store.set_write_latency(Duration::from_millis(1));
    rig.engine.set_pool(pool("go", 2, true)).await.unwrap();
    let (a, b) = tokio::join!(rig.engine.pools_once(), rig.engine.pools_once());
    assert_eq!(a.unwrap().created + b.unwrap().created, 2);
    rig.store.set_write_latency(Duration::ZERO);
    settle(&rig).await;
    assert_eq!(members(&rig.engine, "go").await.len(), 2);
    let warm = members(&rig.engine, "py").await;
    assert_eq!(warm.len(), 3);
    assert!(warm.iter().all(|m| m.state == State::Running), "{warm:?}");
    assert!(
        warm.iter().all(|m| m.name.as_str().starts_with("py-")),
        "{warm:?}"
    );
    // A member's process holds no token: a claim hands it one.
    for launch in rig.rt.launches() {
        assert!(
            !launch.env.contains_key("BERTH_WORKSPACE_TOKEN"),
            "a member launched with a token: {:?}",
            launch.env.keys()
        );
    }
    assert_eq!(rig.store.all_workspaces().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_matching_create_claims_a_running_member_with_a_token_only_it_holds() {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("py", 2, true)).await.unwrap();
    settle(&rig).await;
    let before: HashSet<WorkspaceId> = members(&rig.engine, "py")
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    let launches = rig.rt.launches().len();

    let created = rig
        .engine
        .create_workspace(request("mine"), true, None)
        .await
        .unwrap();
    let ws = &created.workspace.workspace;
    assert!(before.contains(&ws.id), "a member was claimed");
    assert_eq!(ws.name.as_str(), "mine");
    assert_eq!((ws.state, ws.pool.clone()), (State::Running, None));
    let op = created
        .operation
        .expect("a create that starts answers its op");
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_eq!(
        rig.rt.launches().len(),
        launches,
        "a claim launches nothing"
    );
    // Its token came through the runtime, and it verifies for this workspace only.
    let delivered = rig.rt.delivered();
    assert_eq!(delivered.len(), 1);
    let (id, incarnation, token) = &delivered[0];
    assert_eq!((id, *incarnation), (&ws.id, ws.incarnation));
    let owner = rig
        .engine
        .verify_token(&WorkspaceToken::from_presented(token))
        .await
        .unwrap()
        .expect("the delivered token verifies");
    assert_eq!(owner.id, ws.id);
    // The event says so, and by name a read finds it.
    assert!(
        rig.reporter
            .events()
            .iter()
            .any(|e| e.event.workspace_id == ws.id
                && e.event.cause == Cause::Claimed
                && e.event.message.contains("py"))
    );
    assert_eq!(
        rig.engine.resolve("mine").await.unwrap().workspace.id,
        ws.id
    );
    // The pool refills behind it.
    settle(&rig).await;
    let now = members(&rig.engine, "py").await;
    assert_eq!(now.len(), 2);
    assert!(now.iter().all(|m| m.id != ws.id));

    // A create that asks for no start is no match for a started pool; nor is another spec.
    let cold = rig
        .engine
        .create_workspace(request("cold"), false, None)
        .await
        .unwrap();
    assert!(!now.iter().any(|m| m.id == cold.workspace.workspace.id));
    let mut other = request("other");
    other.spec.command.push("--other".into());
    let other = rig
        .engine
        .create_workspace(other, true, None)
        .await
        .unwrap();
    assert!(!now.iter().any(|m| m.id == other.workspace.workspace.id));
    // A held name is refused as a cold create would be, and no member is spent.
    let taken = rig
        .engine
        .create_workspace(request("mine"), true, None)
        .await;
    assert!(
        matches!(
            taken,
            Err(berth_core::engine::EngineError::NameTaken { .. })
        ),
        "{taken:?}"
    );
    assert_eq!(members(&rig.engine, "py").await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_claim_the_runtime_cannot_hand_a_token_restarts_the_workspace_with_one() {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("py", 1, true)).await.unwrap();
    settle(&rig).await;
    rig.rt.plan(
        FakeCall::DeliverToken,
        Plan::Fail(berth_core::ports::RuntimeError::Other {
            resource: "token".into(),
            message: "disk full".into(),
        }),
    );
    let created = rig
        .engine
        .create_workspace(request("mine"), true, None)
        .await
        .unwrap();
    let id = created.workspace.workspace.id.clone();
    berth_core::testkit::wait_until("the restart", Duration::from_secs(60), || async {
        rig.engine.workspace(&id).await.unwrap().incarnation.0 == 2
            && rig.engine.pending(&id).is_idle()
    })
    .await;
    let last = rig
        .rt
        .launches()
        .into_iter()
        .rfind(|l| l.workspace_id == id)
        .unwrap();
    let token = last
        .env
        .get("BERTH_WORKSPACE_TOKEN")
        .expect("a token by environment");
    let owner = rig
        .engine
        .verify_token(&WorkspaceToken::from_presented(token))
        .await
        .unwrap();
    assert_eq!(owner.map(|w| w.id), Some(id));
}

#[tokio::test(start_paused = true)]
async fn a_created_only_pool_hands_out_stopped_members_that_start_with_their_own_token() {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("cold", 1, false)).await.unwrap();
    settle(&rig).await;
    let member = members(&rig.engine, "cold").await.remove(0);
    assert_eq!(member.state, State::Stopped);
    let created = rig
        .engine
        .create_workspace(request("mine"), true, None)
        .await
        .unwrap();
    let ws = created.workspace.workspace;
    assert_eq!(ws.id, member.id);
    assert!(created.operation.is_some());
    wait_idle_one(&rig.engine, &ws.id).await;
    let launch = rig
        .rt
        .launches()
        .into_iter()
        .rfind(|l| l.workspace_id == ws.id)
        .unwrap();
    assert!(launch.env.contains_key("BERTH_WORKSPACE_TOKEN"));
    assert!(rig.rt.delivered().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_shrinking_pool_deletes_its_surplus_and_a_removed_pool_all_its_members() {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("py", 3, true)).await.unwrap();
    settle(&rig).await;
    let claimed = rig
        .engine
        .create_workspace(request("mine"), true, None)
        .await
        .unwrap()
        .workspace
        .workspace;
    settle(&rig).await;
    rig.engine.set_pool(pool("py", 1, true)).await.unwrap();
    let report = rig.engine.pools_once().await.unwrap();
    assert_eq!((report.drained, report.created), (2, 0), "{report:?}");
    settle(&rig).await;
    assert_eq!(members(&rig.engine, "py").await.len(), 1);
    // A new template replaces the old members.
    let mut changed = pool("py", 1, true);
    changed.spec.command.push("--v2".into());
    rig.engine.set_pool(changed.clone()).await.unwrap();
    settle(&rig).await;
    let now = members(&rig.engine, "py").await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].spec, changed.spec);
    rig.engine
        .remove_pool(&WorkspaceName::parse("py").unwrap())
        .await
        .unwrap();
    settle(&rig).await;
    // Only the claimed workspace is left, untouched.
    let left = rig.store.all_workspaces();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (left[0].id.clone(), left[0].state),
        (claimed.id, State::Running)
    );
    assert!(rig.engine.pools().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn members_survive_an_engine_restart_and_the_reconciler_leaves_them_alone() {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("py", 2, true)).await.unwrap();
    settle(&rig).await;
    let before = members(&rig.engine, "py").await;
    // Well past the orphan grace: the reconciler sees live members, not orphans.
    rig.clock.advance(Duration::from_secs(3600));
    let report = rig.engine.reconcile().await;
    assert_eq!(report.orphans_removed, 0, "{report:?}");
    rig.engine.shutdown().await;
    let rig = rig.restart_engine().await;
    let after = members(&rig.engine, "py").await;
    assert_eq!(
        after.iter().map(|m| (&m.id, m.state)).collect::<Vec<_>>(),
        before
            .iter()
            .map(|m| (&m.id, State::Running))
            .collect::<Vec<_>>()
    );
    rig.clock.advance(Duration::from_secs(3600));
    let report = rig.engine.reconcile().await;
    assert_eq!(report.orphans_removed, 0, "{report:?}");
    for m in &after {
        assert_eq!(rig.rt.live_mains(&m.id).len(), 1);
    }
    // Nothing to refill, and a claim works on the new engine.
    assert_eq!(rig.engine.pools_once().await.unwrap(), Default::default());
    let claimed = rig
        .engine
        .create_workspace(request("mine"), true, None)
        .await
        .unwrap();
    assert!(after.iter().any(|m| m.id == claimed.workspace.workspace.id));
}

#[tokio::test(start_paused = true)]
async fn a_pool_the_engine_cannot_honour_is_refused_and_nothing_is_stored() {
    let rig = Rig::new().await;
    let field = |p: Pool| {
        let engine = rig.engine.clone();
        async move {
            match engine.set_pool(p).await {
                Err(berth_core::engine::EngineError::Validation { field, .. }) => field,
                other => panic!("refused expected, got {other:?}"),
            }
        }
    };
    let mut with_dir = pool("py", 1, true);
    with_dir.spec.dir = Some("/src".into());
    assert_eq!(field(with_dir).await, "dir");
    assert_eq!(field(pool("py", Pool::MAX_SIZE + 1, true)).await, "size");
    assert_eq!(field(pool(&"p".repeat(55), 1, true)).await, "name");
    let mut bad_env = pool("py", 1, true);
    bad_env.spec.env.insert("1BAD".into(), "x".into());
    assert_eq!(field(bad_env).await, "env");
    assert!(rig.store.pools().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_member_that_cannot_start_is_retried_in_place_never_replaced_by_more() {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("py", 1, true)).await.unwrap();
    for _ in 0..3 {
        rig.rt.plan(
            FakeCall::Launch,
            Plan::Fail(berth_core::ports::RuntimeError::Other {
                resource: "image".into(),
                message: "no such image".into(),
            }),
        );
    }
    for _ in 0..3 {
        let report = rig.engine.pools_once().await.unwrap();
        wait_idle(&rig).await;
        assert_eq!(report.drained, 0, "{report:?}");
    }
    assert_eq!(rig.store.all_workspaces().len(), 1, "one member, retried");
    assert_eq!(members(&rig.engine, "py").await[0].state, State::Failed);
    // The fourth start works: the same member becomes ready.
    settle(&rig).await;
    let now = members(&rig.engine, "py").await;
    assert_eq!((now.len(), now[0].state), (1, State::Running));
    assert_eq!(rig.store.all_workspaces().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn pools_together_stay_within_the_engine_capacity() {
    let mut cfg = crate::support::config();
    cfg.pool_capacity = 4;
    let rig = Rig::with(cfg).await;
    rig.engine.set_pool(pool("a", 3, true)).await.unwrap();
    let refused = rig.engine.set_pool(pool("b", 2, true)).await;
    assert!(
        matches!(&refused, Err(berth_core::engine::EngineError::Validation { field, .. }) if field == "size"),
        "{refused:?}"
    );
    rig.engine.set_pool(pool("b", 1, true)).await.unwrap();
    // Resizing a pool counts its own old size out.
    rig.engine.set_pool(pool("a", 2, true)).await.unwrap();
    assert_eq!(rig.store.pools().await.unwrap().len(), 2);
}

#[derive(Debug, Clone)]
enum Step {
    Claim,
    Pass,
    Resize(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Claim),
        2 => Just(Step::Pass),
        1 => (0u32..4).prop_map(Step::Resize),
    ]
}

async fn claims_never_share_a_token(batches: Vec<Vec<Step>>) {
    let rig = Rig::new().await;
    rig.engine.set_pool(pool("py", 2, true)).await.unwrap();
    settle(&rig).await;
    // Every write takes a moment, so claims, refills and drains interleave.
    rig.store.set_write_latency(Duration::from_millis(1));
    let mut claimed: Vec<WorkspaceId> = Vec::new();
    let mut n = 0;
    for batch in batches {
        // Each batch runs concurrently: claims race each other and the pool's passes.
        let mut tasks = Vec::new();
        for s in batch {
            n += 1;
            let engine = rig.engine.clone();
            let name = format!("claim-{n}");
            tasks.push(async move {
                match s {
                    Step::Claim => Some(
                        engine
                            .create_workspace(request(&name), true, None)
                            .await
                            .unwrap()
                            .workspace
                            .workspace
                            .id,
                    ),
                    Step::Pass => {
                        engine.pools_once().await.unwrap();
                        None
                    }
                    Step::Resize(size) => {
                        engine.set_pool(pool("py", size, true)).await.unwrap();
                        engine.pools_once().await.unwrap();
                        None
                    }
                }
            });
        }
        claimed.extend(
            futures_util::future::join_all(tasks)
                .await
                .into_iter()
                .flatten(),
        );
        wait_idle(&rig).await;
    }
    settle(&rig).await;
    // Every token handed out is distinct, went to a workspace claimed then, and
    // verifies for that workspace only.
    let delivered = rig.rt.delivered();
    let distinct: HashSet<&String> = delivered.iter().map(|(_, _, t)| t).collect();
    assert_eq!(
        distinct.len(),
        delivered.len(),
        "a token was handed out twice"
    );
    let mut per_workspace: HashMap<&WorkspaceId, usize> = HashMap::new();
    for (id, _, token) in &delivered {
        *per_workspace.entry(id).or_default() += 1;
        assert!(
            claimed.contains(id),
            "a token went to a workspace nobody claimed"
        );
        let owner = rig
            .engine
            .verify_token(&WorkspaceToken::from_presented(token))
            .await
            .unwrap();
        assert_eq!(owner.map(|w| w.id).as_ref(), Some(id));
    }
    assert!(
        per_workspace.values().all(|n| *n == 1),
        "a workspace was claimed twice"
    );
    // Every claimed workspace still stands, running, under its own name; no drain hit it.
    let distinct_claims: HashSet<&WorkspaceId> = claimed.iter().collect();
    assert_eq!(
        distinct_claims.len(),
        claimed.len(),
        "one workspace answered two creates"
    );
    for id in &claimed {
        let ws = rig.engine.workspace(id).await.unwrap();
        assert_eq!((ws.state, ws.pool), (State::Running, None), "{id}");
    }
    // And the pool holds exactly its size.
    let size = rig.store.pools().await.unwrap()[0].size as usize;
    assert_eq!(members(&rig.engine, "py").await.len(), size);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: crate::model::cases().min(64),
        rng_seed: crate::model::seed(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_claim_never_hands_out_a_token_twice(
        batches in prop::collection::vec(prop::collection::vec(step(), 1..6), 1..5)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(claims_never_share_a_token(batches));
    }
}
