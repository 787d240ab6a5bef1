//! When to send again what the broker acknowledged but the sink's receipt does not cover.
//!
//! A PUBACK does not mean the sink got the visits: the broker's queue for the sink may have
//! overflowed, or no sink session existed yet while another subscriber (an operator's
//! `mosquitto_sub`) matched. The sink's receipt then stops short of what the broker acknowledged
//! (it says only the contiguous part it has written). Once it has not covered the newest PUBACK for
//! `edge.receipt_timeout_secs` since that PUBACK or the receipt's last move, the edge tries again.
//! When the sink is known to be there (a receipt came since the wait began, or began it), it sends
//! again everything unconfirmed, and tries again after the same time. Otherwise (the sink may be away,
//! the broker holding its visits) it sends only a probe, the oldest unconfirmed batch, and waits twice
//! as long after each probe, up to 32 times the timeout: a long sink outage costs a batch per try,
//! not copies of the whole spool, and the probe's receipt, once the sink is back, brings the rest.

use tokio::time::{Duration, Instant};

/// Waits grow by doubling this many times at most.
const MAX_DOUBLINGS: u32 = 5;

/// What to send again.
#[derive(Debug, PartialEq, Eq)]
pub enum Resend {
    /// Everything unconfirmed: the sink is there and the receipt stopped short.
    Everything,
    /// The oldest unconfirmed batch alone: no receipt came, the sink may be away.
    Probe,
}

/// What a receipt told.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    /// It confirms more than before: everything up to it may be deleted.
    Advanced,
    /// Nothing new.
    Same,
    /// It went back from `earlier`: the broker lost its retained receipt (its state).
    WentBack { earlier: u64 },
}

pub struct ReceiptWait {
    timeout: Duration,
    /// The highest sequence number the broker acknowledged.
    acked: Option<u64>,
    /// The highest sequence number a receipt confirmed.
    confirmed: Option<u64>,
    /// Since when the receipt has not covered `acked`; `None` while it does (or nothing is acked).
    since: Option<Instant>,
    /// A receipt came since then (or began it) without covering it: the sink is there.
    heard: bool,
    /// Tries in a row while no receipt came.
    unheard_tries: u32,
}

impl ReceiptWait {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            acked: None,
            confirmed: None,
            since: None,
            heard: false,
            unheard_tries: 0,
        }
    }

    /// The highest sequence number a receipt confirmed.
    pub fn confirmed(&self) -> Option<u64> {
        self.confirmed
    }

    /// The broker acknowledged a batch whose last event has number `seq`.
    pub fn acked(&mut self, seq: u64, now: Instant) {
        self.acked = self.acked.max(Some(seq));
        if !self.covered() && self.since.is_none() {
            // A wait starts: only receipts from now on tell whether the sink is there.
            self.since = Some(now);
            self.heard = false;
        }
    }

    /// A receipt says every number up to `seq` is in the log.
    pub fn receipt(&mut self, seq: u64, now: Instant) -> Receipt {
        let told = match self.confirmed {
            Some(earlier) if seq < earlier => Receipt::WentBack { earlier },
            Some(earlier) if seq == earlier => Receipt::Same,
            _ => Receipt::Advanced,
        };
        if told == Receipt::Advanced {
            self.confirmed = Some(seq);
            self.unheard_tries = 0;
            self.heard = true;
            self.since = (!self.covered()).then_some(now);
        } else {
            self.heard = true;
        }
        told
    }

    /// What to send again, once it is time; the wait then starts over.
    pub fn resend_due(&mut self, now: Instant) -> Option<Resend> {
        let since = self.since?;
        let wait = if self.heard {
            self.timeout
        } else {
            self.timeout * 2u32.pow(self.unheard_tries.min(MAX_DOUBLINGS))
        };
        if now.duration_since(since) < wait {
            return None;
        }
        let resend = if self.heard {
            Resend::Everything
        } else {
            self.unheard_tries += 1;
            Resend::Probe
        };
        self.heard = false;
        self.since = Some(now);
        Some(resend)
    }

    /// The connection was lost: the next one sends everything unconfirmed anyway, and its PUBACKs
    /// start the wait again.
    pub fn connection_lost(&mut self) {
        self.since = None;
        self.heard = false;
    }

    fn covered(&self) -> bool {
        self.acked <= self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_receipt_that_covers_the_acked_numbers_ends_the_wait() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        wait.acked(10, start);
        assert_eq!(wait.receipt(10, start + TIMEOUT / 2), Receipt::Advanced);
        assert_eq!(wait.resend_due(start + TIMEOUT * 100), None);
        assert_eq!(wait.receipt(10, start), Receipt::Same);
        assert_eq!(wait.receipt(4, start), Receipt::WentBack { earlier: 10 });
        assert_eq!(wait.confirmed(), Some(10), "never lowered");
    }

    #[test]
    fn a_receipt_stuck_below_a_gap_brings_everything_again_after_the_timeout_each_time() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        wait.acked(20, start);
        // The sink wrote up to 12, and 15..20 above a gap.
        assert_eq!(wait.receipt(12, start + TIMEOUT / 2), Receipt::Advanced);
        assert_eq!(wait.resend_due(start + TIMEOUT), None);
        let due = wait.resend_due(start + TIMEOUT * 3 / 2);
        assert_eq!(
            due,
            Some(Resend::Everything),
            "30 s since the receipt moved"
        );
        // The resend goes astray too; the sink is there and says 12 again.
        assert_eq!(wait.receipt(12, start + TIMEOUT * 2), Receipt::Same);
        assert_eq!(wait.resend_due(start + TIMEOUT * 2), None);
        let due = wait.resend_due(start + TIMEOUT * 5 / 2);
        assert_eq!(
            due,
            Some(Resend::Everything),
            "the sink is there: no back-off"
        );
        assert_eq!(wait.receipt(20, start + TIMEOUT * 3), Receipt::Advanced);
        assert_eq!(wait.resend_due(start + TIMEOUT * 100), None);
    }

    #[test]
    fn without_any_receipt_probes_follow_at_doubling_intervals_up_to_a_bound() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        wait.acked(5, start);
        let mut at = start;
        for doublings in [0, 1, 2, 3, 4, 5, 5, 5] {
            let wait_for = TIMEOUT * 2u32.pow(doublings);
            assert_eq!(
                wait.resend_due(at + wait_for - Duration::from_secs(1)),
                None
            );
            at += wait_for;
            assert_eq!(wait.resend_due(at), Some(Resend::Probe));
        }
        // The probe reached a sink that is back: the rest follows after the timeout.
        wait.acked(9, at);
        assert_eq!(wait.receipt(5, at), Receipt::Advanced);
        assert_eq!(wait.resend_due(at + TIMEOUT), Some(Resend::Everything));
        let due = wait.resend_due(at + TIMEOUT * 2);
        assert_eq!(
            due,
            Some(Resend::Probe),
            "nothing heard since: a probe again"
        );
    }

    #[test]
    fn a_receipt_heard_before_the_wait_began_says_nothing_about_the_sink_now() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        assert_eq!(wait.receipt(3, start), Receipt::Advanced);
        // The retained receipt again, at a reconnect.
        assert_eq!(wait.receipt(3, start), Receipt::Same);
        wait.acked(5, start);
        assert_eq!(wait.resend_due(start + TIMEOUT), Some(Resend::Probe));
        let due = wait.resend_due(start + TIMEOUT * 2);
        assert_eq!(due, None, "no receipt since: the wait doubles");
        assert_eq!(wait.resend_due(start + TIMEOUT * 3), Some(Resend::Probe));
    }

    #[test]
    fn a_lost_connection_stops_the_wait_until_the_next_puback() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        wait.acked(5, start);
        wait.connection_lost();
        assert_eq!(wait.resend_due(start + TIMEOUT * 10), None);
        wait.acked(5, start + TIMEOUT * 10);
        assert_eq!(wait.resend_due(start + TIMEOUT * 11), Some(Resend::Probe));
    }
}
