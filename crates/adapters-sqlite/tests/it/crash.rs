//! Crash durability: a child process runs a random engine workload (four concurrent
//! workers, so writes share group-committed transactions) against the store,
//! printing each op it saw acknowledged; the parent SIGKILLs it at a random moment,
//! 50 rounds on the same file. After each: integrity check, every acknowledged op
//! present with its final status, every history whole (no half-written transition).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_core::ids::{OpId, RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::merge::OpKind;
use berth_core::model::{Actor, CreateWorkspace};
use berth_core::ports::Store;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};

const CHILD_DB: &str = "BERTH_CRASH_CHILD_DB";
const CHILD_SEED: &str = "BERTH_CRASH_CHILD_SEED";

/// One line on stdout, flushed before the caller goes on.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let seed: u64 = std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash durability seed {seed} (set BERTH_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    let mut total_acks = 0;
    for round in 0..50u64 {
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "crash::child_process_for_crash_durability",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DB, &db)
            .env(CHILD_SEED, (seed ^ round).to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = rng.random_range(1..40usize);
        let mut acks: BTreeMap<OpId, String> = BTreeMap::new();
        let mut created: Vec<WorkspaceId> = Vec::new();
        let reading = async {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut parts = line.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("ACK"), Some(id), Some(status)) => {
                        acks.insert(OpId::parse(id).unwrap(), status.to_owned());
                    }
                    (Some("CREATED"), Some(id), _) => created.push(WorkspaceId::parse(id).unwrap()),
                    _ => {}
                }
                if acks.len() >= kill_after {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), reading)
            .await
            .expect("the child makes progress");
        // A random extra moment, so the kill lands inside or between transactions.
        let extra = rng.random_range(0..2_000u64);
        tokio::time::sleep(Duration::from_micros(extra)).await;
        child.start_kill().unwrap(); // SIGKILL
        let status = child.wait().await.unwrap();
        assert!(
            !status.success(),
            "round {round}: the child was killed, not finished"
        );

        let store = crate::open(&db).await;
        store
            .integrity_check()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for (id, status) in &acks {
            let op = store
                .op(id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged op {id} is missing"));
            assert_eq!(
                &serde_json::to_string(&op.status).unwrap(),
                status,
                "round {round}: op {id} changed after its acknowledgement: {op:?}"
            );
        }
        for id in &created {
            let known = store.workspace(id).await.unwrap().is_some()
                || !store.events(0, Some(id), 1).await.unwrap().is_empty();
            assert!(
                known,
                "round {round}: acknowledged workspace {id} is missing"
            );
        }
        crate::assert_histories_whole(&store).await;
        store.close().await;
        total_acks += acks.len();
    }
    assert!(
        total_acks >= 50,
        "the children acknowledged too little to mean anything: {total_acks}"
    );
}

/// Not a test: the child process of `acknowledged_writes_survive_sigkill_at_random_moments`.
#[test]
#[ignore = "helper process, started by the crash durability test"]
fn child_process_for_crash_durability() {
    let (Some(db), Some(seed)) = (std::env::var_os(CHILD_DB), std::env::var(CHILD_SEED).ok())
    else {
        return;
    };
    let db = PathBuf::from(db);
    let seed: u64 = seed.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = crate::open(&db).await;
        let engine = crate::engine(store.clone()).await;
        let ids: Vec<WorkspaceId> = store
            .list_workspaces(&berth_core::ports::WorkspaceQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|w| w.id)
            .collect();
        // Four concurrent workers, each on its own workspaces: the store's group
        // committer puts their writes in shared transactions.
        const WORKERS: usize = 4;
        let tasks = tokio_util::task::TaskTracker::new();
        for worker in 0..WORKERS {
            let engine = engine.clone();
            let mut ids: Vec<WorkspaceId> =
                ids.iter().skip(worker).step_by(WORKERS).cloned().collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (worker as u64 + 1) << 32);
            tasks.spawn(async move {
                for i in 0..10_000u32 {
                    if ids.len() < 2 || rng.random_range(0..10) == 0 {
                        let name = WorkspaceName::parse(
                            &format!("c{seed:x}-{worker}-{i}")
                                .chars()
                                .take(60)
                                .collect::<String>(),
                        )
                        .unwrap();
                        let ws = engine
                            .create(CreateWorkspace {
                                name,
                                runtime: RuntimeKind::parse("fake").unwrap(),
                                spec: Default::default(),
                                actor: Actor::Api,
                            })
                            .await
                            .unwrap();
                        say(&format!("CREATED {}", ws.id));
                        ids.push(ws.id);
                        continue;
                    }
                    let ws = ids[rng.random_range(0..ids.len())].clone();
                    let kind = [OpKind::Start, OpKind::Stop, OpKind::Restart, OpKind::Delete]
                        [rng.random_range(0..4)];
                    let Ok(ticket) = engine.request(&ws, kind, Actor::Api, true).await else {
                        ids.retain(|w| w != &ws);
                        continue;
                    };
                    let op = ticket.wait().await.unwrap();
                    // Printed (one line, flushed) before the workload goes on: acknowledged.
                    say(&format!(
                        "ACK {} {}",
                        op.id,
                        serde_json::to_string(&op.status).unwrap()
                    ));
                    if kind == OpKind::Delete {
                        ids.retain(|w| w != &ws);
                    }
                }
            });
        }
        tasks.close();
        tasks.wait().await;
    });
}
