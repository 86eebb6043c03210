//! The conformance suites against the reference fakes.

use std::sync::Arc;
use std::time::Duration;

use berth_core::model::WorkspaceSpec;
use berth_core::ports::Reporter;
use berth_core::ports::Store;
use berth_core::reporter::{QueueReporter, ReportSink};
use berth_core::testkit::{
    ContractProgram, Delivered, FakeRuntime, MemoryStore, RecordingReporter, RecordingSink,
    RuntimeHarness, TestClock, reporter_contract, runtime_contract, store_contract,
};

#[tokio::test(start_paused = true)]
async fn the_queue_reporter_passes_the_reporter_contract() {
    reporter_contract(|capacity| {
        let sink = Arc::new(RecordingSink::default());
        let reporter = Arc::new(QueueReporter::new(
            capacity,
            vec![sink.clone() as Arc<dyn ReportSink>],
        ));
        let delivered: Delivered = Arc::new(move || sink.delivered());
        (reporter as Arc<dyn Reporter>, delivered)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_recording_reporter_passes_the_reporter_contract() {
    reporter_contract(|_| {
        let reporter = Arc::new(RecordingReporter::default());
        let r = reporter.clone();
        let delivered: Delivered = Arc::new(move || r.reports());
        (reporter as Arc<dyn Reporter>, delivered)
    })
    .await;
}

#[tokio::test]
async fn memory_store_passes_the_store_contract() {
    store_contract(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
}

fn fake_command(p: ContractProgram) -> Vec<String> {
    match p {
        ContractProgram::Forever => vec!["sleep".into()],
        ContractProgram::Exit(code) => vec!["exit".into(), code.to_string()],
        ContractProgram::Print(text) => vec!["echo".into(), text],
    }
}

#[tokio::test(start_paused = true)]
async fn fake_runtime_passes_the_runtime_contract() {
    let harness = RuntimeHarness {
        runtime: Arc::new(FakeRuntime::new(Arc::new(TestClock::new()))),
        spec: Box::new(|p| WorkspaceSpec {
            command: fake_command(p),
            ..Default::default()
        }),
        session_command: Box::new(fake_command),
        settle: Duration::from_secs(5),
    };
    runtime_contract(&harness).await;
}
