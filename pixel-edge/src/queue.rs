//! The bounded in-memory queue between the HTTP handlers and the publisher. A handler never waits on it:
//! when it is full the visit is dropped, counted, and logged at most once a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// One visit, already encoded as a JSON line of the wire format.
pub type EncodedVisit = Vec<u8>;

/// The handlers' end of the queue; cheap to clone.
#[derive(Clone)]
pub struct VisitQueue {
    tx: mpsc::Sender<EncodedVisit>,
    dropped: Arc<DropCounter>,
}

#[derive(Default)]
struct DropCounter {
    total: AtomicU64,
    /// Unix second of the last warning, so a flood of drops logs one line a second.
    last_warned: AtomicU64,
}

/// A queue holding at most `capacity` visits; the receiver goes to the publisher.
pub fn channel(capacity: usize) -> (VisitQueue, mpsc::Receiver<EncodedVisit>) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        VisitQueue {
            tx,
            dropped: Arc::default(),
        },
        rx,
    )
}

impl VisitQueue {
    /// Queues the visit, or drops and counts it when the queue is full or closed.
    pub fn push(&self, visit: EncodedVisit) {
        if let Err(err) = self.tx.try_send(visit) {
            let total = self.dropped.total.fetch_add(1, Ordering::Relaxed) + 1;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if self.dropped.last_warned.swap(now, Ordering::Relaxed) != now {
                let why = match err {
                    mpsc::error::TrySendError::Full(_) => "the queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the edge is shutting down",
                };
                tracing::warn!(dropped_total = total, "visit dropped: {why}");
            }
        }
    }

    /// Visits dropped since start-up.
    pub fn dropped(&self) -> u64 {
        self.dropped.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (queue, mut rx) = channel(2);
        for n in 0..5u8 {
            queue.push(vec![n]);
        }
        assert_eq!(queue.dropped(), 3);
        assert_eq!(rx.recv().await, Some(vec![0]));
        assert_eq!(rx.recv().await, Some(vec![1]));
        rx.close();
        queue.push(vec![9]);
        assert_eq!(queue.dropped(), 4);
    }
}
