//! The bounded in-memory queue between the HTTP handlers and the publisher. A handler never waits on it:
//! when it is full the visit is dropped, counted, and logged at most once a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::Counter;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// One visit, already encoded as a JSON line of the wire format.
pub type EncodedVisit = Vec<u8>;

/// The handlers' end of the queue; cheap to clone.
#[derive(Clone)]
pub struct VisitQueue {
    tx: mpsc::Sender<EncodedVisit>,
    capacity: usize,
    dropped: Arc<DropCounter>,
    /// `tracker_edge_visits_queued_total`, registered once.
    queued: Counter,
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
    let queue = VisitQueue {
        tx,
        capacity,
        dropped: Arc::default(),
        queued: metrics::counter!("tracker_edge_visits_queued_total"),
    };
    (queue, rx)
}

impl VisitQueue {
    /// Queues the visit, or drops and counts it when the queue is full or closed.
    pub fn push(&self, visit: EncodedVisit) {
        match self.tx.try_send(visit) {
            Ok(()) => self.queued.increment(1),
            Err(err) => self.drop_visit(&err),
        }
    }

    fn drop_visit(&self, err: &TrySendError<EncodedVisit>) {
        metrics::counter!("tracker_edge_visits_dropped_total").increment(1);
        let total = self.dropped.total.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.dropped.last_warned.swap(now, Ordering::Relaxed) != now {
            let why = match err {
                TrySendError::Full(_) => "the queue is full",
                TrySendError::Closed(_) => "the edge is shutting down",
            };
            tracing::warn!(dropped_total = total, "visit dropped: {why}");
        }
    }

    /// Visits dropped since start-up.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.total.load(Ordering::Relaxed)
    }

    /// Visits waiting in the queue.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
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
        assert_eq!(queue.dropped_total(), 3);
        assert_eq!(queue.depth(), 2);
        assert!(!queue.has_room());
        assert_eq!(rx.recv().await, Some(vec![0]));
        assert_eq!(rx.recv().await, Some(vec![1]));
        assert!(queue.has_room());
        rx.close();
        queue.push(vec![9]);
        assert_eq!(queue.dropped_total(), 4);
    }
}
