//! Shutdown of the engine and of the reporter (items 14, 15, 17).

use std::sync::Arc;
use std::time::Duration;

use berth_core::engine::EngineError;
use berth_core::model::{Actor, Cause, OpStatus};
use berth_core::ports::{Report, Reporter, Step};
use berth_core::reporter::{QueueReporter, ReportSink};
use berth_core::testkit::{FakeCall, Plan, RecordingSink, wait_until};
use tokio::time::Instant;

use crate::support::{Rig, config};

#[tokio::test(start_paused = true)]
async fn shutdown_from_sixteen_tasks_interrupts_late_ops_and_leaves_nothing_running() {
    let mut cfg = config();
    cfg.drain_deadline = Duration::from_secs(2);
    let rig = Rig::with(cfg.clone()).await;
    let quick = rig.running("quick").await;
    let hanging = rig.create("hanging").await;
    let slow = rig.running("slow").await;
    rig.rt.set_delay(FakeCall::Stop, Duration::from_secs(30));
    rig.rt.plan(FakeCall::Launch, Plan::Hang);
    let hang = rig.engine.start(&hanging.id, Actor::Api).await.unwrap();
    wait_until("the launch to hang", Duration::from_secs(1), || async {
        rig.rt.calls(FakeCall::Launch) == 3
    })
    .await;
    let stop = rig.engine.stop(&slow.id, Actor::Api).await.unwrap();
    let began = Instant::now();
    let engine = rig.engine.clone();
    let mut results = Vec::new();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let e = engine.clone();
            async move { e.shutdown().await }
        })
        .collect();
    for r in futures_all(calls).await {
        results.push(r);
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "every caller gets the first result"
    );
    let report = &results[0];
    assert!(!report.drained);
    assert_eq!(report.interrupted, 2);
    assert!(
        began.elapsed() <= cfg.drain_deadline + cfg.final_flush_timeout + Duration::from_secs(1),
        "took {:?}",
        began.elapsed()
    );
    assert_eq!(hang.wait().await.unwrap().status, OpStatus::Interrupted);
    assert_eq!(stop.wait().await.unwrap().status, OpStatus::Interrupted);
    // Final states and events were written after cancellation.
    let ops = rig.store.all_ops();
    assert_eq!(
        ops.iter()
            .filter(|o| o.status == OpStatus::Interrupted)
            .count(),
        2
    );
    assert!(ops.iter().all(|o| o.status.is_terminal()));
    let interrupted: Vec<_> = rig
        .store
        .all_events()
        .into_iter()
        .filter(|e| e.event.cause == Cause::Interrupted)
        .map(|e| e.event.workspace_id)
        .collect();
    assert_eq!(interrupted.len(), 2);
    assert!(interrupted.contains(&hanging.id) && interrupted.contains(&slow.id));
    assert_eq!(
        rig.reporter.shutdowns(),
        1,
        "the reporter is flushed exactly once"
    );
    assert_eq!(rig.engine.live_tasks(), 0, "no engine task alive");
    assert!(matches!(
        rig.engine.start(&quick.id, Actor::Api).await,
        Err(EngineError::ShuttingDown)
    ));
    assert!(
        matches!(rig.engine.shutdown().await, r if r == *report),
        "a later caller gets the first result too"
    );
    // Workspaces keep running: shutdown stopped nothing.
    assert_eq!(rig.rt.live_mains(&quick.id).len(), 1);
    assert_eq!(rig.rt.live_mains(&slow.id).len(), 1);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_ops_finish_within_the_drain_deadline() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt.set_delay(FakeCall::Stop, Duration::from_secs(1));
    let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
    let report = rig.engine.shutdown().await;
    assert!(report.drained && report.interrupted == 0, "{report:?}");
    assert_eq!(stop.wait().await.unwrap().status, OpStatus::Succeeded);
    assert!(rig.rt.live_mains(&ws.id).is_empty());
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn reporter_flushes_entries_queued_before_start_and_shuts_down_once() {
    let sink = Arc::new(RecordingSink::default());
    let reporter = Arc::new(QueueReporter::new(
        16,
        vec![sink.clone() as Arc<dyn ReportSink>],
    ));
    let step = |i: u64| Report::Error {
        at: chrono::DateTime::UNIX_EPOCH,
        workspace_id: None,
        code: format!("c{i}"),
        message: "m".into(),
    };
    for i in 0..3 {
        reporter.report(step(i));
    }
    let began = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let r = reporter.clone();
            async move { r.shutdown().await }
        })
        .collect();
    futures_all(calls).await;
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "shutdown returns promptly"
    );
    assert_eq!(
        sink.delivered(),
        (0..3).map(step).collect::<Vec<_>>(),
        "entries queued before start are flushed, in order"
    );
    assert_eq!(reporter.live_tasks(), 0);
    reporter.report(step(9));
    assert_eq!(
        reporter.stats().dropped,
        1,
        "reports after shutdown are dropped and counted"
    );
}

#[tokio::test(start_paused = true)]
async fn reporter_never_blocks_and_counts_drops_when_full() {
    let sink = Arc::new(RecordingSink::default());
    let reporter = QueueReporter::new(2, vec![sink.clone() as Arc<dyn ReportSink>]);
    let step = |i: u64| Report::Error {
        at: chrono::DateTime::UNIX_EPOCH,
        workspace_id: None,
        code: format!("c{i}"),
        message: "m".into(),
    };
    for i in 0..5 {
        reporter.report(step(i));
    }
    assert_eq!(reporter.stats().dropped, 3);
    reporter.start().await;
    reporter.flush().await;
    assert_eq!(sink.delivered(), vec![step(0), step(1)]);
    reporter.report(step(5));
    reporter.flush().await;
    assert_eq!(sink.delivered().len(), 3);
    reporter.shutdown().await;
    assert_eq!(reporter.live_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_engine_reports_events_and_steps_through_the_queue_reporter() {
    let sink = Arc::new(RecordingSink::default());
    let reporter = Arc::new(QueueReporter::new(
        1024,
        vec![sink.clone() as Arc<dyn ReportSink>],
    ));
    let clock = Arc::new(berth_core::testkit::TestClock::new());
    let engine = berth_core::Engine::builder()
        .store(Arc::new(berth_core::testkit::MemoryStore::new()))
        .runtime(Arc::new(berth_core::testkit::FakeRuntime::new(
            clock.clone(),
        )))
        .reporter(reporter.clone())
        .clock(clock)
        .config(config())
        .build()
        .await
        .unwrap();
    let ws = engine
        .create(berth_core::model::CreateWorkspace {
            name: berth_core::ids::WorkspaceName::parse("a").unwrap(),
            runtime: berth_core::ids::RuntimeKind::parse("fake").unwrap(),
            spec: Default::default(),
            actor: Actor::Api,
        })
        .await
        .unwrap();
    engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    berth_core::testkit::assert_no_engine_tasks(&engine).await;
    let delivered = sink.delivered();
    let events = delivered
        .iter()
        .filter(|r| matches!(r, Report::Event(_)))
        .count();
    assert_eq!(events, 3, "created, starting, running");
    assert!(delivered.iter().any(|r| matches!(
        r,
        Report::Step {
            step: Step::MainLaunched,
            ..
        }
    )));
    assert_eq!(
        reporter.live_tasks(),
        0,
        "engine shutdown shut the reporter down"
    );
}

pub async fn futures_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
