//! When one HTTP connection last did anything: the requests in progress on it and when the latest
//! ended, so that a connection idle for `http.idle_timeout_secs` (HTTP/1 keep-alive between
//! requests, or HTTP/2 with no stream open) can be closed. Two atomics a request: the timer only
//! wakes at deadlines and looks again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

/// One connection's requests in progress and its last activity.
pub struct Activity {
    opened: Instant,
    in_progress: AtomicUsize,
    /// Milliseconds after `opened` at which the latest request ended (0: none has yet).
    last_ended_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_progress: AtomicUsize::new(0),
            last_ended_ms: AtomicU64::new(0),
        }
    }

    /// Marks a request in progress until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress {
            activity: self.clone(),
        }
    }

    /// Resolves once no request has been in progress for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let mut deadline = self.last_active() + idle;
        loop {
            sleep_until(deadline).await;
            if self.in_progress.load(Ordering::Relaxed) > 0 {
                // Busy: look again an idle period later (the request may end at any moment).
                deadline = Instant::now() + idle;
                continue;
            }
            let due = self.last_active() + idle;
            if due <= Instant::now() {
                return;
            }
            deadline = due;
        }
    }

    fn last_active(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ended_ms.load(Ordering::Relaxed))
    }

    fn end(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ended_ms.fetch_max(ms, Ordering::Relaxed);
        self.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held while a request is in progress; its drop marks the connection active at that moment.
pub struct InProgress {
    activity: Arc<Activity>,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.activity.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    /// Whether `idle_for(IDLE)` resolves before time has moved on by `by` (paused time: no waiting).
    async fn idle_within(activity: &Activity, by: Duration) -> bool {
        tokio::select! {
            biased;
            _ = activity.idle_for(IDLE) => true,
            _ = tokio::time::sleep(by) => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_after_the_timeout() {
        let activity = Activity::new();
        assert!(!idle_within(&activity, IDLE - Duration::from_secs(1)).await);
        assert!(idle_within(&activity, Duration::from_secs(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_keeps_it_open_and_its_end_restarts_the_count() {
        let activity = Arc::new(Activity::new());
        let request = activity.begin();
        assert!(
            !idle_within(&activity, 3 * IDLE).await,
            "busy, however long"
        );
        drop(request);
        assert!(!idle_within(&activity, IDLE - Duration::from_secs(1)).await);
        assert!(idle_within(&activity, Duration::from_secs(2)).await);
    }
}
