//! A reporter and a sink that record everything, for assertions.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use crate::model::Event;
use crate::ports::{Report, Reporter, ReporterStats, Step};
use crate::reporter::ReportSink;

/// Records every report, and counts `start`, `flush` and `shutdown` calls.
#[derive(Debug, Default)]
pub struct RecordingReporter {
    reports: parking_lot::Mutex<Vec<Report>>,
    starts: AtomicUsize,
    flushes: AtomicUsize,
    shutdowns: AtomicUsize,
}

impl RecordingReporter {
    /// Everything reported, in order.
    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().clone()
    }

    /// The events reported, in order.
    pub fn events(&self) -> Vec<Event> {
        self.reports
            .lock()
            .iter()
            .filter_map(|r| {
                if let Report::Event(e) = r {
                    Some(e.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    /// The steps reported, in order.
    pub fn steps(&self) -> Vec<Step> {
        self.reports
            .lock()
            .iter()
            .filter_map(|r| {
                if let Report::Step { step, .. } = r {
                    Some(step.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    /// How many times `shutdown` was called.
    pub fn shutdowns(&self) -> usize {
        self.shutdowns.load(Ordering::SeqCst)
    }

    /// How many times `flush` was called.
    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Reporter for RecordingReporter {
    fn report(&self, report: Report) {
        // Later reports are dropped, as the port says.
        if self.shutdowns.load(Ordering::SeqCst) == 0 {
            self.reports.lock().push(report);
        }
    }

    async fn start(&self) {
        self.starts.fetch_add(1, Ordering::SeqCst);
    }

    async fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
    }

    async fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }

    fn stats(&self) -> ReporterStats {
        ReporterStats::default()
    }
}

/// A [`ReportSink`] that records deliveries.
#[derive(Debug, Default)]
pub struct RecordingSink {
    delivered: parking_lot::Mutex<Vec<Report>>,
}

impl RecordingSink {
    /// Everything delivered, in order.
    pub fn delivered(&self) -> Vec<Report> {
        self.delivered.lock().clone()
    }
}

#[async_trait]
impl ReportSink for RecordingSink {
    async fn deliver(&self, batch: &[Report]) {
        self.delivered.lock().extend_from_slice(batch);
    }
}
