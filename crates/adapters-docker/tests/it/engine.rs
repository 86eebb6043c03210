//! The engine on real Docker: a restart race, external removal, the orphan sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::Engine;
use berth_core::engine::EngineConfig;
use berth_core::ids::{RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, OpStatus, Workspace, WorkspaceSpec};
use berth_core::ports::{ProcessRuntime, SystemClock};
use berth_core::state::{FailureReason, State};
use berth_core::testkit::{MemoryStore, RecordingReporter};
use berth_docker::DockerRuntime;
use tokio_util::sync::CancellationToken;

use crate::{Fixture, docker};

async fn engine(rt: Arc<DockerRuntime>, orphan_grace: Duration) -> Engine {
    Engine::builder()
        .store(Arc::new(MemoryStore::new()))
        .runtime(rt as Arc<dyn ProcessRuntime>)
        .reporter(Arc::new(RecordingReporter::default()))
        .clock(Arc::new(SystemClock))
        .config(EngineConfig {
            reconcile_period: None,
            orphan_grace,
            stop_grace: Duration::from_secs(2),
            ..EngineConfig::default()
        })
        .build()
        .await
        .expect("engine")
}

async fn running(engine: &Engine, fx: &Fixture, name: &str) -> Workspace {
    let ws = engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse(name).expect("name"),
            runtime: RuntimeKind::parse("docker").expect("kind"),
            spec: WorkspaceSpec {
                command: vec!["sh".into(), "-c".into(), "exec sleep 3600".into()],
                image: Some(fx.image.clone()),
                ..Default::default()
            },
            actor: Actor::Api,
        })
        .await
        .expect("create");
    let op = engine
        .start(&ws.id, Actor::Api)
        .await
        .expect("start")
        .wait()
        .await
        .expect("op");
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    engine.workspace(&ws.id).await.expect("row")
}

fn label(fx: &Fixture, key: &str, value: &str) -> String {
    format!("{}.{key}={value}", fx.prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_restarts_leave_one_container_with_the_latest_incarnation() {
    let Some(fx) = Fixture::new("restart_race").await else {
        return;
    };
    let engine = engine(fx.rt.clone(), Duration::from_secs(60)).await;
    let ws = running(&engine, &fx, "racer").await;
    let mut tickets = Vec::new();
    for _ in 0..10 {
        tickets.push(engine.restart(&ws.id, Actor::Api).await.expect("restart"));
    }
    for t in tickets {
        let op = t.wait().await.expect("op");
        assert!(
            op.error.is_none(),
            "no restart fails (no name conflict anywhere): {op:?}"
        );
    }
    let now = engine.workspace(&ws.id).await.expect("row");
    assert_eq!(now.state, State::Running);
    let containers = fx.containers();
    assert_eq!(containers.len(), 1, "exactly one container: {containers:?}");
    let incarnation = docker(&[
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{}.incarnation\"}}}}", fx.prefix),
        &containers[0],
    ]);
    assert_eq!(incarnation.trim(), now.incarnation.0.to_string());
    assert!(now.incarnation.0 > ws.incarnation.0, "the restarts ran");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_from_outside_fails_the_workspace_then_start_and_delete_work() {
    let Some(fx) = Fixture::new("external_removal").await else {
        return;
    };
    let engine = engine(fx.rt.clone(), Duration::from_secs(60)).await;
    let ws = running(&engine, &fx, "victim").await;
    // The events stream wakes a reconcile pass (as `berth serve` wires it).
    let cancel = CancellationToken::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let (rt, id, cancel, wake) = (
            fx.rt.clone(),
            engine.engine_id().clone(),
            cancel.clone(),
            wake.clone(),
        );
        tokio_util::task::TaskTracker::new().spawn(async move {
            rt.follow_events(&id, &cancel, || wake.notify_one()).await;
        })
    };
    let reconciler = {
        let (engine, cancel, wake) = (engine.clone(), cancel.clone(), wake.clone());
        tokio_util::task::TaskTracker::new().spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = wake.notified() => { engine.reconcile().await; }
                }
            }
        })
    };
    let containers = fx.containers();
    assert_eq!(containers.len(), 1);
    docker(&["rm", "-f", &containers[0]]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = engine.workspace(&ws.id).await.expect("row");
        if row.state == State::Failed {
            assert_eq!(
                row.last_error.map(|e| e.code),
                Some(FailureReason::RuntimeMissing),
                "failed{{runtime_missing}}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removal was not noticed: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    let _ = watcher.await;
    let _ = reconciler.await;
    let op = engine
        .start(&ws.id, Actor::Api)
        .await
        .expect("start")
        .wait()
        .await
        .expect("op");
    assert_eq!(
        op.status,
        OpStatus::Succeeded,
        "a later start works: {op:?}"
    );
    assert_eq!(fx.containers().len(), 1);
    let op = engine
        .delete(&ws.id, false, Actor::Api)
        .await
        .expect("delete")
        .wait()
        .await
        .expect("op");
    assert_eq!(op.status, OpStatus::Succeeded, "delete works: {op:?}");
    assert!(fx.containers().is_empty(), "delete removed the container");
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label={}.engine", fx.prefix),
    ]);
    assert!(
        volumes.trim().is_empty(),
        "delete removed the engine's volume: {volumes}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_removes_only_old_orphans_of_ours_and_nothing_when_listing_fails() {
    let Some(fx) = Fixture::new("orphan_sweep").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proxy = crate::runtime::Proxy::new(dir.path());
    proxy.up();
    let rt = Arc::new(DockerRuntime::new(berth_docker::DockerConfig {
        host: Some(format!("unix://{}", proxy.path().display())),
        ..fx.rt.config().clone()
    }));
    let engine = engine(rt, Duration::from_secs(600)).await;
    let me = engine.engine_id().to_string();
    let with_row = running(&engine, &fx, "kept").await;
    let old = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let young = chrono::Utc::now().to_rfc3339();
    let make = |engine_id: &str, created: &str| {
        let ws = WorkspaceId::generate();
        let name = format!("berth-{engine_id}-{ws}");
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &label(&fx, "engine", engine_id),
            "--label",
            &label(&fx, "workspace", ws.as_str()),
            "--label",
            &label(&fx, "incarnation", "1"),
            "--label",
            &label(&fx, "created", created),
            &fx.image,
            "sleep",
            "3600",
        ]);
        assert!(!id.trim().is_empty(), "created {name}");
        id.trim().to_owned()
    };
    let old_orphan = make(&me, &old);
    let young_orphan = make(&me, &young);
    let other_engine = make("en-0123456789abcdef", &old);
    let lookalike_name = format!("berth-{me}-ws-lookalike");
    let lookalike = docker(&[
        "run",
        "-d",
        "--name",
        &lookalike_name,
        &fx.image,
        "sleep",
        "3600",
    ]);
    let _guard = crate::runtime::Foreign(lookalike_name.clone());
    let exists = |id: &str| {
        !docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")])
            .trim()
            .is_empty()
    };

    // Listing fails: nothing is removed.
    proxy.down();
    let report = engine.reconcile().await;
    assert_eq!(report.listing_failures, 1, "{report:?}");
    assert_eq!(report.orphans_removed, 0);
    assert!(exists(&old_orphan), "a failed listing removed an orphan");
    assert_eq!(
        engine.workspace(&with_row.id).await.expect("row").state,
        State::Running
    );

    proxy.up();
    let report = engine.reconcile().await;
    assert_eq!(report.orphans_removed, 1, "{report:?}");
    assert!(!exists(&old_orphan), "the old orphan of ours is removed");
    assert!(exists(&young_orphan), "a young orphan is kept");
    assert!(
        exists(&other_engine),
        "another engine's container is never touched"
    );
    assert!(
        exists(lookalike.trim()),
        "an unlabelled look-alike is never touched"
    );
    assert_eq!(
        engine.workspace(&with_row.id).await.expect("row").state,
        State::Running,
        "the workspace with a row keeps its container"
    );
    assert_eq!(
        fx.rt
            .inspect(engine.engine_id(), &with_row.id)
            .await
            .expect("inspect")
            .map(|r| r.incarnation),
        Some(with_row.incarnation)
    );
    engine.shutdown().await;
    proxy.down();
}

/// Defect 11: a Docker workspace created with `start: false` could not be deleted
/// without force: its dirty check failed on a volume that does not exist yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_that_never_started_is_deleted_without_force() {
    let Some(fx) = Fixture::new("a_workspace_that_never_started_is_deleted_without_force").await
    else {
        return;
    };
    let engine = engine(fx.rt.clone(), Duration::from_secs(60)).await;
    let ws = engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse("never").expect("name"),
            runtime: RuntimeKind::parse("docker").expect("kind"),
            spec: WorkspaceSpec {
                image: Some(fx.image.clone()),
                ..Default::default()
            },
            actor: Actor::Api,
        })
        .await
        .expect("create");
    let op = engine
        .delete(&ws.id, false, Actor::Api)
        .await
        .expect("delete")
        .wait()
        .await
        .expect("op");
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert!(engine.workspace(&ws.id).await.is_err());
    engine.shutdown().await;
}

/// Ports say what they need: the Docker runtime refuses a git source (it does not check
/// one out) and a workspace with no image when the daemon has no default, naming the
/// field, before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_the_docker_runtime_cannot_honour_are_refused_at_create() {
    use berth_core::engine::EngineError;
    let Some(fx) = Fixture::new("fields_the_docker_runtime_cannot_honour").await else {
        return;
    };
    let no_default = Arc::new(DockerRuntime::new(berth_docker::DockerConfig {
        label_prefix: fx.prefix.clone(),
        ..berth_docker::DockerConfig::default()
    }));
    for (rt, spec, field) in [
        (
            fx.rt.clone(),
            WorkspaceSpec {
                git: Some(berth_core::model::GitSource {
                    repo: "/srv/repo".into(),
                    reference: "main".into(),
                }),
                ..Default::default()
            },
            "git",
        ),
        (no_default, WorkspaceSpec::default(), "image"),
    ] {
        let engine = engine(rt, Duration::from_secs(60)).await;
        match engine
            .create(CreateWorkspace {
                name: WorkspaceName::parse("refused").expect("name"),
                runtime: RuntimeKind::parse("docker").expect("kind"),
                spec,
                actor: Actor::Api,
            })
            .await
        {
            Err(EngineError::Validation { field: f, message }) => {
                assert_eq!(f, field, "{message}")
            }
            other => panic!("{field}: {other:?}"),
        }
        engine.shutdown().await;
    }
    assert!(fx.containers().is_empty());
}

/// Issue 11, item 1: a workspace created with a volume and started, then deleted with
/// force at once, over and over. Every delete succeeds, and nothing is left: no
/// container, no volume (labelled or not). Before, the delete did not wait for the
/// container create already sent; dockerd then made the volume again, unlabelled,
/// and some deletes failed with "volume is in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_delete_right_after_a_start_leaves_no_container_and_no_volume() {
    let Some(fx) =
        Fixture::new("a_forced_delete_right_after_a_start_leaves_no_container_and_no_volume").await
    else {
        return;
    };
    let engine = engine(fx.rt.clone(), Duration::from_secs(60)).await;
    let by_name = format!("name=berth-{}", engine.engine_id());
    let leftovers = || {
        let volumes = docker(&["volume", "ls", "-q", "--filter", &by_name]);
        let containers = docker(&["ps", "-aq", "--filter", &by_name]);
        (volumes, containers)
    };
    let mut failures = Vec::new();
    for i in 0..12 {
        let ws = engine
            .create(CreateWorkspace {
                name: WorkspaceName::parse(&format!("race{i}")).expect("name"),
                runtime: RuntimeKind::parse("docker").expect("kind"),
                spec: WorkspaceSpec {
                    command: vec!["sh".into(), "-c".into(), "exec sleep 3600".into()],
                    image: Some(fx.image.clone()),
                    ..Default::default()
                },
                actor: Actor::Api,
            })
            .await
            .expect("create");
        let _start = engine.start(&ws.id, Actor::Api).await.expect("start");
        // Let the create reach dockerd on some rounds, not on others.
        tokio::time::sleep(Duration::from_millis(5 * (i % 4))).await;
        let op = engine
            .delete(&ws.id, true, Actor::Api)
            .await
            .expect("delete")
            .wait()
            .await
            .expect("op");
        if op.status != OpStatus::Succeeded {
            failures.push(format!("{op:?}"));
        }
    }
    // Long enough for dockerd to finish anything it was still doing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (volumes, containers) = leftovers();
    for v in volumes.lines() {
        docker(&["volume", "rm", "-f", v]);
    }
    for c in containers.lines() {
        docker(&["rm", "-f", c]);
    }
    assert!(failures.is_empty(), "deletes failed: {failures:#?}");
    assert!(
        volumes.trim().is_empty() && containers.trim().is_empty(),
        "left behind: volumes {volumes:?}, containers {containers:?}"
    );
    engine.shutdown().await;
}
