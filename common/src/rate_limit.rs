//! Warnings about a flood (dropped visits, junk messages) logged at most once a second, each saying
//! how many similar events went unlogged since the previous one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct RateLimited {
    /// Unix second of the last line logged.
    last_logged: AtomicU64,
    /// Events since then that were not logged.
    unlogged: AtomicU64,
}

impl RateLimited {
    /// Calls `log` with the number of events not logged since the last call, unless one was logged
    /// within this second already.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_logged.swap(now, Ordering::Relaxed) != now {
            log(self.unlogged.swap(0, Ordering::Relaxed));
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_once_and_counts_the_rest() {
        let limited = RateLimited::default();
        let mut logged = Vec::new();
        for _ in 0..1000 {
            limited.warn(|unlogged| logged.push(unlogged));
        }
        // A burst can straddle a second boundary: then it logs twice.
        assert!(matches!(logged.len(), 1 | 2), "{logged:?}");
        assert_eq!(logged[0], 0);
        assert_eq!(
            limited.unlogged.load(Ordering::Relaxed) + logged.iter().sum::<u64>(),
            1000 - logged.len() as u64
        );
    }
}
