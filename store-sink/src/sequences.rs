//! Which of one edge's sequence numbers are in the log: every number up to a contiguous **mark**,
//! and the ranges written above it. A broker can acknowledge a message and never deliver it (its
//! queue for the sink overflowed, or no sink session existed yet while an operator's subscriber
//! matched), then deliver later ones: those land above a gap. A receipt says the mark, never more, so
//! the edge keeps, and sends again, what fell into a gap.
//!
//! Memory grows with the gaps, not with the visits: ranges coalesce as they fill, and a range that
//! reaches the mark is absorbed into it. An edge's `seq_floor` (the lowest number it still holds, see
//! the wire format) raises the mark over numbers it will never send: a spool lost or started afresh,
//! numbers its receipts already covered.

use std::ops::RangeInclusive;

use rangemap::RangeInclusiveSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Every number up to this one is written (or given up by the edge); 0: none yet.
    mark: u64,
    /// Numbers written above `mark + 1`, as disjoint ranges.
    above: RangeInclusiveSet<u64>,
}

impl Written {
    /// Everything at or below it is in the log: what the edge's receipt says.
    pub fn mark(&self) -> u64 {
        self.mark
    }

    /// The ranges written above the mark, lowest first.
    pub fn above(&self) -> impl Iterator<Item = &RangeInclusive<u64>> {
        self.above.iter()
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.mark || self.above.contains(&seq)
    }

    pub fn insert(&mut self, seqs: RangeInclusive<u64>) {
        let (start, end) = (*seqs.start(), *seqs.end());
        if end <= self.mark || start > end {
            return;
        }
        if start <= self.mark + 1 && self.above.is_empty() {
            // The usual case, an edge's numbers in order: no range to keep.
            self.mark = end;
            return;
        }
        self.above.insert(start.max(self.mark + 1)..=end);
        self.settle();
    }

    /// Every number up to `mark` is written or will never come.
    pub fn raise_mark(&mut self, mark: u64) {
        if mark > self.mark {
            self.mark = mark;
            self.settle();
        }
    }

    /// Drops ranges the mark passed and absorbs one that reaches it.
    fn settle(&mut self) {
        while let Some(first) = self.above.first().cloned() {
            if *first.start() > self.mark.saturating_add(1) {
                return;
            }
            self.above.remove(first.clone());
            self.mark = self.mark.max(*first.end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(written: &Written) -> Vec<RangeInclusive<u64>> {
        written.above().cloned().collect()
    }

    #[test]
    fn the_mark_stops_at_a_gap_and_moves_once_it_fills() {
        let mut written = Written::default();
        written.raise_mark(100);
        for seq in [101, 102, 105, 106, 108] {
            written.insert(seq..=seq);
        }
        assert_eq!(written.mark(), 102);
        assert_eq!(ranges(&written), [105..=106, 108..=108]);
        assert!(written.contains(50) && written.contains(105) && !written.contains(103));
        written.insert(103..=104);
        assert_eq!(written.mark(), 106);
        written.insert(107..=107);
        assert_eq!((written.mark(), ranges(&written)), (108, vec![]));
    }

    #[test]
    fn a_floor_passes_numbers_that_will_never_come() {
        let mut written = Written::default();
        written.insert(50..=60);
        written.insert(70..=80);
        assert_eq!(written.mark(), 0, "1..49 may still come");
        written.raise_mark(49);
        assert_eq!(written.mark(), 60);
        written.raise_mark(65);
        assert_eq!(written.mark(), 65, "66..69 may still come");
        written.raise_mark(1_000);
        assert_eq!((written.mark(), ranges(&written)), (1_000, vec![]));
        written.insert(500..=900);
        written.raise_mark(10);
        assert_eq!(
            (written.mark(), ranges(&written)),
            (1_000, vec![]),
            "never lowered"
        );
    }
}
