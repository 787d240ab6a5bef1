//! What the sink's admin listener (`admin.listen`, see [`common::admin`]) reports: `/readyz` is 200 while
//! the broker confirmed the subscription and the log is writable.

use std::sync::atomic::{AtomicBool, Ordering};

use common::admin::Health;

/// What `/readyz` reports on, set by the subscription and the writer.
#[derive(Debug, Default)]
pub struct SinkHealth {
    /// The broker confirmed the subscription on the current connection.
    pub subscribed: AtomicBool,
    /// The last flush succeeded (true until one fails).
    pub writable: AtomicBool,
}

impl Health for SinkHealth {
    fn readiness(&self) -> Result<(), &'static str> {
        match (
            self.subscribed.load(Ordering::Relaxed),
            self.writable.load(Ordering::Relaxed),
        ) {
            (true, true) => Ok(()),
            (false, _) => Err("not subscribed"),
            (true, false) => Err("the log is not writable"),
        }
    }
}
