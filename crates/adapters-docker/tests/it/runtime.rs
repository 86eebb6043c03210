//! Docker-specific behaviour: conflicts, hardening, process trees, an unreachable
//! daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::ids::{Generation, Incarnation, SessionName, WorkspaceId, WorkspaceName};
use berth_core::model::{Limits, WorkspaceSpec};
use berth_core::ports::{
    ConflictReason, LaunchRequest, ProcessRuntime, ProcessStatus, ResourceRef, RuntimeError,
    SessionLaunch, SessionRef, WorkspaceRef,
};
use berth_docker::{DockerConfig, DockerRuntime};
use serde_json::Value;

use crate::{Fixture, docker};

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn resource(fx: &Fixture, ws: &WorkspaceId, incarnation: u64) -> ResourceRef {
    ResourceRef {
        engine_id: fx.engine.clone(),
        workspace_id: ws.clone(),
        incarnation: Incarnation(incarnation),
    }
}

async fn launch(
    fx: &Fixture,
    rt: &DockerRuntime,
    ws: &WorkspaceId,
    incarnation: u64,
    spec: WorkspaceSpec,
) -> Result<(), RuntimeError> {
    let wref = WorkspaceRef {
        engine_id: fx.engine.clone(),
        workspace_id: ws.clone(),
        spec: spec.clone(),
    };
    let dir = rt.prepare(&wref).await?;
    rt.launch(&LaunchRequest {
        resource: resource(fx, ws, incarnation),
        name: WorkspaceName::parse("test").expect("name"),
        spec,
        dir,
        env: BTreeMap::new(),
        token_by_file: false,
    })
    .await
}

fn inspect(name: &str) -> Value {
    let text = docker(&["inspect", name]);
    let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    list[0].clone()
}

fn name(fx: &Fixture, ws: &WorkspaceId) -> String {
    format!("berth-{}-{ws}", fx.engine)
}

/// A container `docker rm -f`-ed when the guard drops (for containers without our
/// labels, which the fixture's cleanup does not find).
pub struct Foreign(pub String);

impl Drop for Foreign {
    fn drop(&mut self) {
        docker(&["rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_container_of_ours_is_replaced_and_a_foreign_one_is_refused_untouched() {
    let Some(fx) = Fixture::new("conflicts").await else {
        return;
    };
    let spec = WorkspaceSpec {
        command: sh("exec sleep 3600"),
        ..Default::default()
    };
    // Ours, incarnation 1, left behind (created, never started).
    let ws = WorkspaceId::generate();
    let stale_name = name(&fx, &ws);
    let labels = [
        format!("{}.engine={}", fx.prefix, fx.engine),
        format!("{}.workspace={ws}", fx.prefix),
        format!("{}.incarnation=1", fx.prefix),
    ];
    let stale_id = docker(&[
        "create",
        "--name",
        &stale_name,
        "--label",
        &labels[0],
        "--label",
        &labels[1],
        "--label",
        &labels[2],
        &fx.image,
        "sleep",
        "3600",
    ]);
    assert!(
        !stale_id.trim().is_empty(),
        "the stale container was created"
    );
    launch(&fx, &fx.rt, &ws, 2, spec.clone())
        .await
        .expect("a stale container of ours is replaced");
    let now = inspect(&stale_name);
    assert_ne!(now["Id"].as_str(), Some(stale_id.trim()), "it was replaced");
    assert_eq!(
        now["Config"]["Labels"][format!("{}.incarnation", fx.prefix)].as_str(),
        Some("2")
    );
    assert_eq!(now["State"]["Running"], Value::Bool(true));
    assert_eq!(fx.containers().len(), 1, "one container for the workspace");

    // A live container of ours with an older incarnation is not killed by a launch.
    match launch(&fx, &fx.rt, &ws, 3, spec.clone()).await {
        Err(RuntimeError::Conflict {
            reason: ConflictReason::NameInUse,
            ..
        }) => {}
        other => panic!("a live older incarnation is a NameInUse conflict, got {other:?}"),
    }

    // Not ours: the name is held by a container without our labels.
    let other_ws = WorkspaceId::generate();
    let foreign_name = name(&fx, &other_ws);
    let foreign_id = docker(&[
        "create",
        "--name",
        &foreign_name,
        &fx.image,
        "sleep",
        "3600",
    ]);
    let _guard = Foreign(foreign_name.clone());
    match launch(&fx, &fx.rt, &other_ws, 1, spec.clone()).await {
        Err(RuntimeError::Conflict {
            reason: ConflictReason::Foreign,
            resource,
            message,
        }) => assert!(
            resource.contains(&foreign_name) || message.contains(&foreign_name),
            "the error names the container: {resource}: {message}"
        ),
        other => panic!("a foreign container holding the name is name_taken, got {other:?}"),
    }
    let after = inspect(&foreign_name);
    assert_eq!(after["Id"].as_str(), Some(foreign_id.trim()), "untouched");
    assert_eq!(
        after["State"]["Status"].as_str(),
        Some("created"),
        "not started"
    );
    // Nor is it stopped, removed or listed as ours.
    let r = resource(&fx, &other_ws, 1);
    fx.rt.stop(&r, Duration::from_secs(1)).await.expect("stop");
    fx.rt.remove(&r).await.expect("remove");
    assert_eq!(
        inspect(&foreign_name)["Id"].as_str(),
        Some(foreign_id.trim())
    );
    assert!(
        fx.rt
            .list_owned(&fx.engine)
            .await
            .expect("list")
            .iter()
            .all(|o| o.workspace_id != other_ws)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_without_privileges_and_with_limits() {
    let Some(fx) = Fixture::new("hardening").await else {
        return;
    };
    let ws = WorkspaceId::generate();
    let spec = WorkspaceSpec {
        command: sh("exec sleep 3600"),
        limits: Some(Limits {
            memory_bytes: Some(256 * 1024 * 1024),
            millicpus: None,
            // More than the configured 1024: capped, never loosened by a spec.
            pids: Some(1_000_000),
        }),
        ..Default::default()
    };
    launch(&fx, &fx.rt, &ws, 1, spec).await.expect("launch");
    let c = inspect(&name(&fx, &ws));
    let host = &c["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]), "{host}");
    assert!(
        host["CapAdd"].as_array().is_none_or(Vec::is_empty),
        "no capability added: {}",
        host["CapAdd"]
    );
    assert!(
        host["SecurityOpt"]
            .as_array()
            .is_some_and(|o| o.iter().any(|v| v
                .as_str()
                .is_some_and(|s| s.starts_with("no-new-privileges")))),
        "no-new-privileges: {}",
        host["SecurityOpt"]
    );
    assert_eq!(host["Privileged"], Value::Bool(false));
    assert_eq!(host["Init"], Value::Bool(true), "an init process is PID 1");
    assert_eq!(
        host["PidsLimit"].as_i64(),
        Some(1024),
        "the spec cannot loosen pids"
    );
    assert_eq!(
        host["Memory"].as_i64(),
        Some(256 * 1024 * 1024),
        "the spec tightens memory"
    );
    assert_eq!(host["NanoCpus"].as_i64(), Some(2_000_000_000));
    let mounts = c["Mounts"].as_array().cloned().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .all(|m| !m["Source"].as_str().unwrap_or("").contains("docker.sock")),
        "the Docker socket is never mounted: {mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["Destination"] == "/workspace" && m["Type"] == "volume"),
        "the workspace volume is at /workspace: {mounts:?}"
    );
    // A directory that holds the Docker socket is refused before anything is created.
    let sock_dir = WorkspaceId::generate();
    let refused = launch(
        &fx,
        &fx.rt,
        &sock_dir,
        1,
        WorkspaceSpec {
            command: sh("exec sleep 3600"),
            dir: Some("/var/run".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(&refused, Err(RuntimeError::Other { message, .. }) if message.contains("Docker socket")),
        "{refused:?}"
    );
    assert!(
        fx.rt
            .inspect(&fx.engine, &sock_dir)
            .await
            .expect("inspect")
            .is_none()
    );
}

/// `network: false` gives the container no interface but loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_without_network_has_only_loopback() {
    let Some(fx) = Fixture::new("no-network").await else {
        return;
    };
    let offline = WorkspaceId::generate();
    let online = WorkspaceId::generate();
    for (ws, network) in [(&offline, Some(false)), (&online, None)] {
        let spec = WorkspaceSpec {
            command: sh("exec sleep 3600"),
            network,
            ..Default::default()
        };
        launch(&fx, &fx.rt, ws, 1, spec).await.expect("launch");
    }
    let interfaces = |ws: &WorkspaceId| -> Vec<String> {
        docker(&["exec", &name(&fx, ws), "cat", "/proc/net/dev"])
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|i| i.trim().to_owned()))
            .collect()
    };
    assert_eq!(
        inspect(&name(&fx, &offline))["HostConfig"]["NetworkMode"],
        "none"
    );
    assert_eq!(interfaces(&offline), vec!["lo".to_owned()]);
    assert!(
        interfaces(&online).len() > 1,
        "the default keeps the network: {:?}",
        interfaces(&online)
    );
}

/// How many processes in `container` run a command line starting with `prefix`.
fn processes(container: &str, prefix: &str) -> usize {
    docker(&["exec", container, "ps", "-o", "args"])
        .lines()
        .filter(|l| l.trim().starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_process_trees_that_ignore_sigterm() {
    let Some(fx) = Fixture::new("process_trees").await else {
        return;
    };
    let ws = WorkspaceId::generate();
    let container = name(&fx, &ws);
    let stubborn = "trap '' TERM; sleep 1001 & sleep 1002 & wait; wait";
    launch(
        &fx,
        &fx.rt,
        &ws,
        1,
        WorkspaceSpec {
            command: sh(stubborn),
            ..Default::default()
        },
    )
    .await
    .expect("launch");
    // A session whose tree ignores SIGTERM too.
    let session = SessionName::parse("tree").expect("name");
    fx.rt
        .launch_session(&SessionLaunch {
            resource: resource(&fx, &ws, 1),
            name: session.clone(),
            generation: Generation(1),
            command: sh("trap '' TERM; sleep 2001 & sleep 2002 & wait; wait"),
            env: BTreeMap::new(),
            dir: Some("/workspace".into()),
            spec: WorkspaceSpec::default(),
        })
        .await
        .expect("launch_session");
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes(&container, "sleep 200") < 2 {
        assert!(
            Instant::now() < deadline,
            "the session's children never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processes(&container, "sleep 100"), 2, "the main tree runs");
    // A paused container still has its processes but refuses execs: its sessions
    // cannot be listed, and the listing says so instead of reporting the main process
    // exited and no sessions (which would make the reconciler stop and forget them).
    docker(&["pause", &container]);
    let paused = fx.rt.list_owned(&fx.engine).await;
    docker(&["unpause", &container]);
    assert!(
        paused.is_err(),
        "a paused container's sessions were listed as none: {paused:?}"
    );
    fx.rt
        .stop_session(
            &SessionRef {
                engine_id: fx.engine.clone(),
                workspace_id: ws.clone(),
                name: session,
                generation: Some(Generation(1)),
            },
            Duration::from_secs(1),
        )
        .await
        .expect("stop_session");
    assert_eq!(
        processes(&container, "sleep 200"),
        0,
        "the session's whole tree is gone"
    );
    assert_eq!(
        processes(&container, "sleep 100"),
        2,
        "the main tree is untouched"
    );

    let grace = Duration::from_secs(2);
    let began = Instant::now();
    fx.rt
        .stop(&resource(&fx, &ws, 1), grace)
        .await
        .expect("stop");
    let took = began.elapsed();
    let found = fx
        .rt
        .inspect(&fx.engine, &ws)
        .await
        .expect("inspect")
        .expect("still there");
    assert_ne!(found.status, ProcessStatus::Running, "stopped");
    assert!(
        took >= grace,
        "SIGTERM was ignored, so the grace ran out ({took:?})"
    );
    assert!(
        took < grace + Duration::from_secs(10),
        "stopped within grace + margin ({took:?})"
    );
}

/// A Unix socket that forwards to the real Docker socket while it is up.
pub struct Proxy {
    path: PathBuf,
    tasks: tokio::task::JoinSet<()>,
}

impl Proxy {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("docker.sock"),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    pub fn up(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).expect("bind the proxy");
        self.tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut upstream) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
    }

    /// Down: the listener and every forwarded connection end; the socket is gone.
    pub fn down(&mut self) {
        self.tasks.abort_all();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_daemon_is_unavailable_and_the_runtime_recovers_when_it_is_back() {
    let Some(fx) = Fixture::new("unavailable").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proxy = Proxy::new(dir.path());
    proxy.up();
    let rt = Arc::new(DockerRuntime::new(DockerConfig {
        host: Some(format!("unix://{}", proxy.path.display())),
        ..fx.rt.config().clone()
    }));
    let ws = WorkspaceId::generate();
    let spec = WorkspaceSpec {
        command: sh("exec sleep 3600"),
        ..Default::default()
    };
    launch(&fx, &rt, &ws, 1, spec.clone())
        .await
        .expect("launch through the proxy");
    proxy.down();
    fn unavailable<T>(r: &Result<T, RuntimeError>) -> bool {
        matches!(r, Err(RuntimeError::Unavailable { .. }))
    }
    let listed = rt.list_owned(&fx.engine).await;
    assert!(
        unavailable(&listed),
        "a failed listing is an error, never empty: {listed:?}"
    );
    let inspected = rt.inspect(&fx.engine, &ws).await;
    assert!(unavailable(&inspected), "{inspected:?}");
    let stopped = rt
        .stop(&resource(&fx, &ws, 1), Duration::from_secs(1))
        .await;
    assert!(unavailable(&stopped), "{stopped:?}");
    let other = WorkspaceId::generate();
    let launched = launch(&fx, &rt, &other, 1, spec.clone()).await;
    assert!(unavailable(&launched), "{launched:?}");
    // Nothing happened to the workspace meanwhile.
    assert_eq!(
        fx.rt
            .inspect(&fx.engine, &ws)
            .await
            .expect("direct")
            .map(|r| r.status),
        Some(ProcessStatus::Running)
    );
    proxy.up();
    let back = rt
        .inspect(&fx.engine, &ws)
        .await
        .expect("recovered without a restart");
    assert_eq!(back.map(|r| r.status), Some(ProcessStatus::Running));
    assert!(
        rt.list_owned(&fx.engine)
            .await
            .expect("list")
            .iter()
            .any(|r| r.workspace_id == ws)
    );
    proxy.down();
}

/// Issue 12, item 4: a container runs as an unprivileged user unless its spec asks for
/// root. The daemon here runs as root, so that user is the dedicated one; its volume is
/// given to it (on this host, or through the helper container), so `/workspace` is
/// writable; `run_as_root` is root; a read-only root keeps `/tmp` writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_unprivileged_unless_asked_and_own_their_volume() {
    let Some(fx) = Fixture::new("users").await else {
        return;
    };
    let Some(by_helper) = Fixture::with_config(
        "users-helper",
        DockerConfig {
            label_prefix: format!("{}x", fx.prefix),
            chown_volumes_locally: false,
            ..DockerConfig::default()
        },
    )
    .await
    else {
        return;
    };
    let root_daemon = nix_is_root();
    let expected = if root_daemon {
        "65532".to_owned()
    } else {
        docker_free_id()
    };
    for (fx, what) in [(&fx, "local chown"), (&by_helper, "helper container")] {
        let ws = WorkspaceId::generate();
        let spec = WorkspaceSpec {
            command: sh("exec sleep 3600"),
            ..Default::default()
        };
        launch(fx, &fx.rt, &ws, 1, spec).await.expect("launch");
        let c = name(fx, &ws);
        assert_eq!(docker(&["exec", &c, "id", "-u"]).trim(), expected, "{what}");
        assert_eq!(
            docker(&["exec", &c, "sh", "-c", "touch /workspace/mine && echo ok"]).trim(),
            "ok",
            "{what}: /workspace is the workspace user's"
        );
        let helpers = docker(&[
            "ps",
            "-aq",
            "--filter",
            "name=-owner",
            "--filter",
            &format!("label={}.helper", fx.prefix),
        ]);
        assert_eq!(helpers.trim(), "", "{what}: no helper container is left");
    }
    let root = WorkspaceId::generate();
    let spec = WorkspaceSpec {
        command: sh("exec sleep 3600"),
        run_as_root: true,
        read_only_root: true,
        ..Default::default()
    };
    launch(&fx, &fx.rt, &root, 1, spec).await.expect("launch");
    let c = name(&fx, &root);
    assert_eq!(docker(&["exec", &c, "id", "-u"]).trim(), "0");
    assert_eq!(
        docker(&[
            "exec",
            &c,
            "sh",
            "-c",
            "touch /etc/x 2>/dev/null || echo refused; touch /tmp/x && echo tmp"
        ])
        .trim(),
        "refused\ntmp",
        "a read-only root, a writable /tmp"
    );
}

/// Issue 12, item 4: a root daemon's container given a root-owned `dir` cannot leave a
/// root-owned (or setuid-root) file in it: it is not root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_cannot_plant_a_setuid_root_file_in_its_dir() {
    let Some(fx) = Fixture::new("setuid").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // Writable by anyone, so the attempt is not stopped by the mode alone.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let ws = WorkspaceId::generate();
    let spec = WorkspaceSpec {
        command: sh(
            "cp /bin/busybox /workspace/shell; chmod 4755 /workspace/shell; chown 0:0 /workspace/shell; touch /workspace/done; exec sleep 3600",
        ),
        dir: Some(dir.path().display().to_string()),
        ..Default::default()
    };
    launch(&fx, &fx.rt, &ws, 1, spec).await.expect("launch");
    let shell = dir.path().join("shell");
    let done = dir.path().join("done");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done.exists() {
        assert!(
            Instant::now() < deadline,
            "the container never got through its attempt"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let meta = std::fs::metadata(&shell).expect("metadata");
    use std::os::unix::fs::MetadataExt as _;
    assert!(
        !(meta.uid() == 0 && meta.mode() & 0o4000 != 0),
        "a setuid-root file was planted: uid {} mode {:o}",
        meta.uid(),
        meta.mode()
    );
    assert_ne!(meta.uid(), 0, "the container wrote as root");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn docker_free_id() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default()
}
