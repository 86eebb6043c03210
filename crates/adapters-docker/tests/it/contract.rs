//! The runtime contract of berth-core, unchanged, on real Docker.

use std::time::Duration;

use berth_core::model::WorkspaceSpec;
use berth_core::testkit::{ContractProgram, RuntimeHarness, runtime_contract};

use crate::Fixture;

fn command(p: ContractProgram) -> Vec<String> {
    p.posix_sh()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_passes_the_runtime_contract() {
    let Some(fx) = Fixture::new("docker_runtime_passes_the_runtime_contract").await else {
        return;
    };
    let image = fx.image.clone();
    let harness = RuntimeHarness {
        runtime: fx.rt.clone(),
        spec: Box::new(move |p| WorkspaceSpec {
            command: command(p),
            image: Some(image.clone()),
            ..Default::default()
        }),
        session_command: Box::new(command),
        settle: Duration::from_secs(20),
    };
    runtime_contract(&harness).await;
    assert!(
        fx.containers().is_empty(),
        "the contract left containers: {:?}",
        fx.containers()
    );
}
