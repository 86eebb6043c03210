//! `/metrics` in the Prometheus text format: ops by kind and status, op latency
//! histograms by kind, workspaces by state (counted from the store at scrape time, so
//! they never drift), reconcile passes, the reporter's queue depth and drops, and HTTP
//! requests by status class. Counters are fed by a reporter sink.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use berth_core::Engine;
use berth_core::ports::Report;
use berth_core::reporter::ReportSink;
use berth_core::state::State;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Counters {
    ops: BTreeMap<(String, String), u64>,
    latency: BTreeMap<String, Histogram>,
    transitions: BTreeMap<(String, String), u64>,
}

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: parking_lot::Mutex<Counters>,
    reconcile_passes: AtomicU64,
    reconcile_listing_failures: AtomicU64,
    http: [AtomicU64; 5],
}

fn name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_owned(),
    }
}

impl Metrics {
    /// Counts one HTTP response by status class (1xx..5xx).
    pub fn http_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.http[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition.
    pub async fn render(&self, engine: &Engine) -> String {
        let mut out = String::new();
        let c = {
            let g = self.counters.lock();
            (g.ops.clone(), g.latency.clone(), g.transitions.clone())
        };
        let _ = writeln!(
            out,
            "# HELP berth_ops_total Operations that ended, by kind and final status.\n# TYPE berth_ops_total counter"
        );
        for ((kind, status), n) in &c.0 {
            let _ = writeln!(
                out,
                "berth_ops_total{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_op_duration_seconds Time from request to end of an operation, by kind.\n# TYPE berth_op_duration_seconds histogram"
        );
        for (kind, h) in &c.1 {
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "berth_op_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "berth_op_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "berth_op_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "berth_op_duration_seconds_count{{kind=\"{kind}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_transitions_total State changes, by previous and new state.\n# TYPE berth_transitions_total counter"
        );
        for ((from, to), n) in &c.2 {
            let _ = writeln!(
                out,
                "berth_transitions_total{{from=\"{from}\",to=\"{to}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_workspaces Workspaces by state.\n# TYPE berth_workspaces gauge"
        );
        match engine.counts_by_state().await {
            Ok(by_state) => {
                for (state, n) in by_state {
                    let _ = writeln!(out, "berth_workspaces{{state=\"{state}\"}} {n}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count workspaces"),
        }
        let _ = writeln!(
            out,
            "# HELP berth_reconcile_passes_total Reconcile passes run.\n# TYPE berth_reconcile_passes_total counter\nberth_reconcile_passes_total {}",
            self.reconcile_passes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_reconcile_listing_failures_total Runtime listings that failed during reconcile.\n# TYPE berth_reconcile_listing_failures_total counter\nberth_reconcile_listing_failures_total {}",
            self.reconcile_listing_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_runtime_up Whether a runtime's last listing answered (1) or it is degraded (0).\n# TYPE berth_runtime_up gauge"
        );
        for h in engine.runtime_health() {
            let up = match h.state {
                berth_core::engine::RuntimeState::Up => 1,
                berth_core::engine::RuntimeState::Degraded => 0,
                _ => continue,
            };
            let _ = writeln!(out, "berth_runtime_up{{runtime=\"{}\"}} {up}", h.runtime);
        }
        let stats = engine.reporter_stats();
        let _ = writeln!(
            out,
            "# HELP berth_reporter_queue_depth Reports waiting for delivery.\n# TYPE berth_reporter_queue_depth gauge\nberth_reporter_queue_depth {}",
            stats.queued
        );
        let _ = writeln!(
            out,
            "# HELP berth_reporter_dropped_total Reports dropped because the queue was full.\n# TYPE berth_reporter_dropped_total counter\nberth_reporter_dropped_total {}",
            stats.dropped
        );
        let _ = writeln!(
            out,
            "# HELP berth_http_responses_total HTTP responses by status class.\n# TYPE berth_http_responses_total counter"
        );
        for (i, n) in self.http.iter().enumerate() {
            let _ = writeln!(
                out,
                "berth_http_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[async_trait]
impl ReportSink for Metrics {
    async fn deliver(&self, batch: &[Report]) {
        let mut c = self.counters.lock();
        for report in batch {
            match report {
                Report::OpFinished(op) => {
                    let kind = name(&op.kind);
                    *c.ops.entry((kind.clone(), name(&op.status))).or_default() += 1;
                    if let Some(end) = op.finished_at {
                        let secs = (end - op.requested_at).num_microseconds().unwrap_or(0);
                        #[allow(clippy::cast_precision_loss)]
                        let secs = secs.max(0) as f64 / 1e6;
                        c.latency.entry(kind).or_default().observe(secs);
                    }
                }
                Report::Event(e) => {
                    let from = e.event.from.map_or("none", State::as_str);
                    let to = e.event.to.map_or("none", State::as_str);
                    *c.transitions
                        .entry((from.to_owned(), to.to_owned()))
                        .or_default() += 1;
                }
                Report::ReconcilePass {
                    listing_failures, ..
                } => {
                    self.reconcile_passes.fetch_add(1, Ordering::Relaxed);
                    self.reconcile_listing_failures
                        .fetch_add(*listing_failures as u64, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}
