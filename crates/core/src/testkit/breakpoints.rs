//! Named breakpoints: a test holds one, code under test stops there, the test sees it
//! arrive, does what it wants, and releases it. Deterministic race windows, no sleeps.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug)]
struct Point {
    arrived: watch::Sender<u64>,
    released: watch::Sender<bool>,
    /// Only the first arrival waits; later ones pass.
    once: bool,
}

/// A held breakpoint.
#[derive(Debug, Clone)]
pub struct Breakpoint {
    point: Arc<Point>,
}

impl Breakpoint {
    /// Waits until at least `n` tasks reached the breakpoint (in total).
    pub async fn reached(&self, n: u64) {
        let mut rx = self.point.arrived.subscribe();
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    /// How many tasks reached it so far.
    pub fn arrivals(&self) -> u64 {
        *self.point.arrived.borrow()
    }

    /// Lets every waiting (and later) task through.
    pub fn release(&self) {
        self.point.released.send_replace(true);
    }
}

/// A set of named breakpoints.
#[derive(Debug, Default)]
pub struct Breakpoints {
    points: parking_lot::Mutex<HashMap<String, Arc<Point>>>,
}

impl Breakpoints {
    /// Holds breakpoint `name`: tasks that hit it wait until it is released.
    pub fn hold(&self, name: &str) -> Breakpoint {
        self.insert(name, false)
    }

    /// Holds breakpoint `name` for its first arrival only: later tasks pass through
    /// (a read held mid-way while other reads of the same thing go on).
    pub fn hold_once(&self, name: &str) -> Breakpoint {
        self.insert(name, true)
    }

    fn insert(&self, name: &str, once: bool) -> Breakpoint {
        let point = Arc::new(Point {
            arrived: watch::channel(0).0,
            released: watch::channel(false).0,
            once,
        });
        self.points.lock().insert(name.to_owned(), point.clone());
        Breakpoint { point }
    }

    /// Called by code under test at the named place.
    pub async fn hit(&self, name: &str) {
        let point = self.points.lock().get(name).cloned();
        let Some(point) = point else { return };
        if *point.released.borrow() || (point.once && *point.arrived.borrow() > 0) {
            return;
        }
        point.arrived.send_modify(|n| *n += 1);
        let mut rx = point.released.subscribe();
        let _ = rx.wait_for(|released| *released).await;
    }
}
