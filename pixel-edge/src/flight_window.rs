//! How many published batches may wait for their PUBACK at once. Two, as long as batches are not
//! full: while they wait, new visits gather into the next batch, so under load a message carries
//! dozens of visits (more batches in flight made messages smaller and cost the broker far more CPU
//! per visit, see bench/RESULTS.md), and an idle edge still sends each visit at once.
//!
//! Far from the broker two batches are not enough: each waits a round trip or more (far longer
//! over a lossy link), so batches fill up to their maximum and visits queue behind them. A
//! full batch coming back acknowledged says exactly that — the window, not batching, limits the edge
//! and the broker keeps up — so the window grows by one batch for each (doubling every round trip,
//! like TCP's slow start), up to `edge.max_in_flight_bytes`. Each batch acknowledged before it filled
//! up shrinks it by one again, so it settles where batches just fill (and stays at two on a short
//! link). A lost connection or a refused batch starts it over at two.

use crate::batch::MAX_BATCH_BYTES;

/// Batches in flight whatever else happens.
const MIN_BATCHES: usize = 2;
/// A batch at least this big counts as full: the edge had more to send than the batch could carry.
const FULL_BATCH_BYTES: usize = MAX_BATCH_BYTES / 2;

#[derive(Debug)]
pub struct FlightWindow {
    /// Batches that may be in flight now.
    limit: usize,
    /// `edge.max_in_flight_bytes` in batches.
    max: usize,
}

impl FlightWindow {
    /// A window of two batches that may grow to `max_bytes` worth of full batches.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            limit: MIN_BATCHES,
            max: (max_bytes / MAX_BATCH_BYTES).max(MIN_BATCHES),
        }
    }

    /// The most batches that can ever be in flight (rumqttc sizes its tables by it).
    pub fn max_batches(&self) -> usize {
        self.max
    }

    /// Whether another batch may go out while `in_flight` wait for their PUBACK.
    pub fn has_room(&self, in_flight: usize) -> bool {
        in_flight < self.limit
    }

    /// A batch of `bytes` was acknowledged.
    pub fn acked(&mut self, bytes: usize) {
        self.limit = match bytes >= FULL_BATCH_BYTES {
            true => (self.limit + 1).min(self.max),
            false => (self.limit - 1).max(MIN_BATCHES),
        };
    }

    /// The connection was lost or the broker refused a batch: start over.
    pub fn reset(&mut self) {
        self.limit = MIN_BATCHES;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: usize = MAX_BATCH_BYTES;
    const SMALL: usize = 4 * 1024;

    #[test]
    fn small_batches_keep_the_window_at_two() {
        let mut window = FlightWindow::new(8 * 1024 * 1024);
        for _ in 0..100 {
            window.acked(SMALL);
        }
        assert!(window.has_room(1));
        assert!(!window.has_room(2));
    }

    #[test]
    fn full_batches_grow_it_up_to_the_bound() {
        let mut window = FlightWindow::new(8 * 1024 * 1024);
        assert_eq!(window.max_batches(), 32);
        for _ in 0..10 {
            window.acked(FULL);
        }
        assert!(window.has_room(11) && !window.has_room(12));
        for _ in 0..100 {
            window.acked(FULL);
        }
        assert!(window.has_room(31) && !window.has_room(32));
    }

    #[test]
    fn it_settles_where_batches_just_fill_and_starts_over_after_a_loss() {
        let mut window = FlightWindow::new(8 * 1024 * 1024);
        for _ in 0..10 {
            window.acked(FULL);
        }
        for _ in 0..4 {
            window.acked(SMALL);
        }
        assert!(window.has_room(7) && !window.has_room(8));
        window.reset();
        assert!(window.has_room(1) && !window.has_room(2));
        for _ in 0..20 {
            window.acked(SMALL);
        }
        assert!(!window.has_room(2), "never below two");
    }

    #[test]
    fn a_bound_below_two_batches_still_allows_two() {
        let mut window = FlightWindow::new(0);
        window.acked(FULL);
        assert_eq!(window.max_batches(), 2);
        assert!(window.has_room(1) && !window.has_room(2));
    }
}
