//! The bounded in-memory queue between the HTTP handlers and the publisher, bounded both in visits
//! (`edge.queue_capacity`) and in bytes (`edge.queue_max_bytes`: a visit with long headers weighs
//! ~50 times a plain one). A handler never waits on it: past either bound the visit is dropped, counted
//! by reason, and logged at most once a second.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use common::rate_limit::RateLimited;
use metrics::Counter;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

/// One visit, already encoded as a JSON line of the wire format.
pub type EncodedVisit = Vec<u8>;

/// The handlers' end of the queue; cheap to clone.
#[derive(Clone)]
pub struct VisitQueue {
    tx: mpsc::Sender<EncodedVisit>,
    capacity: usize,
    max_bytes: usize,
    shared: Arc<Shared>,
    /// `tracker_edge_visits_queued_total`, registered once.
    queued: Counter,
}

/// The publisher's end: what it takes out is no longer counted against the byte bound.
pub struct Receiver {
    rx: mpsc::Receiver<EncodedVisit>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Bytes of the visits in the queue.
    bytes: AtomicUsize,
    dropped: AtomicU64,
    warnings: RateLimited,
}

/// Why a visit was dropped, as the `reason` label of `tracker_edge_visits_dropped_total`.
#[derive(Debug, Clone, Copy)]
enum Dropped {
    QueueFull,
    QueueBytes,
    ShuttingDown,
}

/// A queue holding at most `capacity` visits and `max_bytes` of them; the receiver goes to the publisher.
pub fn channel(capacity: usize, max_bytes: usize) -> (VisitQueue, Receiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::<Shared>::default();
    let queue = VisitQueue {
        tx,
        capacity,
        max_bytes,
        shared: shared.clone(),
        queued: metrics::counter!("tracker_edge_visits_queued_total"),
    };
    (queue, Receiver { rx, shared })
}

impl VisitQueue {
    /// Queues the visit, or drops and counts it when the queue is full (in visits or bytes) or closed.
    pub fn push(&self, visit: EncodedVisit) {
        let len = visit.len();
        if self.shared.bytes.fetch_add(len, Ordering::Relaxed) + len > self.max_bytes {
            self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
            return self.drop_visit(Dropped::QueueBytes);
        }
        match self.tx.try_send(visit) {
            Ok(()) => self.queued.increment(1),
            Err(err) => {
                self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
                self.drop_visit(match err {
                    TrySendError::Full(_) => Dropped::QueueFull,
                    TrySendError::Closed(_) => Dropped::ShuttingDown,
                });
            }
        }
    }

    fn drop_visit(&self, why: Dropped) {
        let reason = match why {
            Dropped::QueueFull => "queue_full",
            Dropped::QueueBytes => "queue_bytes",
            Dropped::ShuttingDown => "shutting_down",
        };
        metrics::counter!("tracker_edge_visits_dropped_total", "reason" => reason).increment(1);
        let total = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.warnings.warn(|_| {
            let why = match why {
                Dropped::QueueFull => "the queue holds edge.queue_capacity visits",
                Dropped::QueueBytes => "the queue holds edge.queue_max_bytes of visits",
                Dropped::ShuttingDown => "the edge is shutting down",
            };
            tracing::warn!(dropped_total = total, "visit dropped: {why}");
        });
    }

    /// Visits dropped since start-up.
    pub fn dropped_total(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Visits waiting in the queue.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Bytes of the visits waiting in the queue.
    pub fn bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0 && self.bytes() < self.max_bytes
    }
}

impl Receiver {
    pub async fn recv(&mut self) -> Option<EncodedVisit> {
        let visit = self.rx.recv().await?;
        Some(self.taken(visit))
    }

    pub fn try_recv(&mut self) -> Result<EncodedVisit, TryRecvError> {
        self.rx.try_recv().map(|visit| self.taken(visit))
    }

    /// Refuses new visits; those queued can still be taken.
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// Visits waiting.
    pub fn waiting(&self) -> usize {
        self.rx.len()
    }

    fn taken(&self, visit: EncodedVisit) -> EncodedVisit {
        self.shared.bytes.fetch_sub(visit.len(), Ordering::Relaxed);
        visit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (queue, mut rx) = channel(2, 1024);
        for n in 0..5u8 {
            queue.push(vec![n]);
        }
        assert_eq!(queue.dropped_total(), 3);
        assert_eq!(queue.depth(), 2);
        assert!(!queue.has_room());
        assert_eq!(rx.recv().await, Some(vec![0]));
        assert_eq!(rx.try_recv(), Ok(vec![1]));
        assert!(queue.has_room());
        rx.close();
        queue.push(vec![9]);
        assert_eq!(queue.dropped_total(), 4);
        assert_eq!(queue.bytes(), 0);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let (queue, mut rx) = channel(100, 10_000);
        for _ in 0..5 {
            queue.push(vec![b'x'; 4_000]);
        }
        assert_eq!((queue.depth(), queue.bytes()), (2, 8_000));
        assert_eq!(queue.dropped_total(), 3);
        queue.push(vec![b'x'; 2_000]);
        assert_eq!(queue.bytes(), 10_000, "exactly at the bound still fits");
        assert!(!queue.has_room());
        rx.recv().await.unwrap();
        assert_eq!(queue.bytes(), 6_000);
        assert!(queue.has_room());
    }
}
