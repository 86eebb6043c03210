//! One event sequence for the fleet: while several daemons append concurrently, a
//! reader following a cursor sees every event exactly once, in order, with no gap,
//! even though transactions that took their numbers commit in any order.

use std::sync::Arc;
use std::time::Duration;

use berth_core::ports::Store;
use berth_core::state::State;

use crate::{create, join, moved, workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_never_skips_an_event_that_commits_late() {
    let Some((url, first)) = crate::fresh("a_reader_never_skips_an_event_that_commits_late").await
    else {
        return;
    };
    let mut daemons = vec![first];
    for _ in 0..2 {
        daemons.push(crate::open(&url).await);
    }
    for (i, d) in daemons.iter().enumerate() {
        join(d, &format!("daemon-{i}"), "h", Duration::from_secs(60)).await;
    }
    const PER_WRITER: usize = 40;
    let tracker = tokio_util::task::TaskTracker::new();
    let writers: Vec<_> = daemons
        .iter()
        .enumerate()
        .flat_map(|(i, d)| (0..4).map(move |w| (i, w, Arc::clone(d))))
        .map(|(i, w, d)| {
            tracker.spawn(async move {
                let mut ws = workspace(&format!("w-{i}-{w}"), "docker");
                create(&d, &ws).await;
                for n in 0..PER_WRITER {
                    let state = if n % 2 == 0 {
                        State::Starting
                    } else {
                        State::Stopped
                    };
                    let c = moved(&ws, state, d.fence());
                    d.commit(&c).await.unwrap();
                    ws = c.workspace;
                }
            })
        })
        .collect();
    let total = writers.len() * (PER_WRITER + 1);
    let reader = Arc::clone(&daemons[1]);
    let mut cursor = 0u64;
    let mut seen = 0usize;
    while seen < total {
        let page = reader.events(cursor, None, 7).await.unwrap();
        for e in &page {
            assert_eq!(
                e.seq,
                cursor + 1,
                "the reader saw seq {} after {cursor}",
                e.seq
            );
            cursor = e.seq;
            seen += 1;
        }
        if page.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(reader.last_event_seq().await.unwrap(), cursor);
}
