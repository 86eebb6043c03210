//! The conformance suite of the [`Reporter`] port. Every reporter runs it unchanged:
//! `reporter_contract(|capacity| { let r = ...; (r, delivered) }).await`, where
//! `delivered` reads back what the reporter handed on, in order.

use std::sync::Arc;
use std::time::Duration;

use crate::ports::{Report, Reporter};

/// Reads back everything a reporter delivered, in order.
pub type Delivered = Arc<dyn Fn() -> Vec<Report> + Send + Sync>;

fn entry(i: u64) -> Report {
    Report::Error {
        at: chrono::DateTime::UNIX_EPOCH,
        workspace_id: None,
        code: format!("c{i}"),
        message: format!("entry {i}"),
    }
}

/// Runs every clause of the port against reporters made by `make(capacity)`. Call it
/// from a tokio test (paused time is fine).
///
/// # Panics
/// When a clause does not hold.
pub async fn reporter_contract<F>(make: F)
where
    F: Fn(usize) -> (Arc<dyn Reporter>, Delivered),
{
    kept_before_start_and_delivered_in_order(&make).await;
    never_blocks_and_accounts_for_every_entry(&make).await;
    flush_is_safe_from_many_tasks(&make).await;
    shutdown_is_idempotent_and_later_reports_are_dropped(&make).await;
}

async fn kept_before_start_and_delivered_in_order<F>(make: &F)
where
    F: Fn(usize) -> (Arc<dyn Reporter>, Delivered),
{
    let (r, delivered) = make(64);
    for i in 0..5 {
        r.report(entry(i));
    }
    r.start().await;
    r.start().await;
    r.flush().await;
    assert_eq!(
        delivered(),
        (0..5).map(entry).collect::<Vec<_>>(),
        "entries reported before start MUST be delivered by the first flush, in order"
    );
    assert_eq!(
        r.stats().queued,
        0,
        "nothing MUST stay queued after a flush"
    );
    r.shutdown().await;
}

async fn never_blocks_and_accounts_for_every_entry<F>(make: &F)
where
    F: Fn(usize) -> (Arc<dyn Reporter>, Delivered),
{
    let (r, delivered) = make(4);
    // Not started: nothing drains the queue. Reporting must still return at once.
    let began = tokio::time::Instant::now();
    for i in 0..100 {
        r.report(entry(i));
    }
    assert!(
        began.elapsed() < Duration::from_millis(1),
        "report MUST NOT wait"
    );
    r.start().await;
    r.flush().await;
    let got = delivered();
    let dropped = usize::try_from(r.stats().dropped).unwrap_or(usize::MAX);
    assert_eq!(
        got.len() + dropped,
        100,
        "every entry MUST be delivered or counted as dropped"
    );
    assert_eq!(
        got,
        (0..100).map(entry).take(got.len()).collect::<Vec<_>>(),
        "what a full queue keeps MUST be the oldest entries, in order"
    );
    r.shutdown().await;
}

async fn flush_is_safe_from_many_tasks<F>(make: &F)
where
    F: Fn(usize) -> (Arc<dyn Reporter>, Delivered),
{
    let (r, delivered) = make(1024);
    r.start().await;
    for i in 0..50 {
        r.report(entry(i));
    }
    let flushes: Vec<_> = (0..16)
        .map(|_| {
            let r = r.clone();
            async move { r.flush().await }
        })
        .collect();
    futures_util::future::join_all(flushes).await;
    assert_eq!(
        delivered(),
        (0..50).map(entry).collect::<Vec<_>>(),
        "concurrent flushes MUST deliver every entry exactly once, in order"
    );
    r.shutdown().await;
}

async fn shutdown_is_idempotent_and_later_reports_are_dropped<F>(make: &F)
where
    F: Fn(usize) -> (Arc<dyn Reporter>, Delivered),
{
    let (r, delivered) = make(64);
    for i in 0..3 {
        r.report(entry(i));
    }
    let shutdowns: Vec<_> = (0..8)
        .map(|_| {
            let r = r.clone();
            async move { r.shutdown().await }
        })
        .collect();
    futures_util::future::join_all(shutdowns).await;
    assert_eq!(
        delivered(),
        (0..3).map(entry).collect::<Vec<_>>(),
        "shutdown MUST flush what was queued, once, even without a start"
    );
    r.shutdown().await;
    r.report(entry(9));
    r.flush().await;
    assert_eq!(
        delivered().len(),
        3,
        "reports after shutdown MUST be dropped"
    );
    assert_eq!(r.stats().queued, 0);
}
