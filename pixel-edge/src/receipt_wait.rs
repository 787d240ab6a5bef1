//! When to send again what the broker acknowledged but the sink's receipt does not cover.
//!
//! A PUBACK does not mean the sink got the visits: the broker's queue for the sink may have
//! overflowed, or no sink session existed yet while another subscriber (an operator's
//! `mosquitto_sub`) matched. The sink's receipt then stops short of what the broker acknowledged
//! (it says only the contiguous part it has written). Once it has not covered the newest PUBACK for
//! `edge.receipt_timeout_secs` since that PUBACK or the receipt's last move, the edge sends again
//! everything unconfirmed. While receipts keep coming without covering it (the sink is there: a gap)
//! it tries again after the same time; while none come at all (the sink is away and the broker holds
//! its visits) it waits twice as long after each try, up to 32 times the timeout, so a long sink
//! outage does not fill the broker with copies.

use tokio::time::{Duration, Instant};

/// Waits grow by doubling this many times at most.
const MAX_DOUBLINGS: u32 = 5;

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
    /// A receipt came since then without covering it.
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
            self.heard = false;
            self.since = (!self.covered()).then_some(now);
        } else {
            self.heard = true;
        }
        told
    }

    /// True when it is time to send everything unconfirmed again; the wait then starts over.
    pub fn resend_due(&mut self, now: Instant) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        let wait = if self.heard {
            self.timeout
        } else {
            self.timeout * 2u32.pow(self.unheard_tries.min(MAX_DOUBLINGS))
        };
        if now.duration_since(since) < wait {
            return false;
        }
        if !self.heard {
            self.unheard_tries += 1;
        }
        self.heard = false;
        self.since = Some(now);
        true
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
        assert!(!wait.resend_due(start + TIMEOUT * 100));
        assert_eq!(wait.receipt(10, start), Receipt::Same);
        assert_eq!(wait.receipt(4, start), Receipt::WentBack { earlier: 10 });
        assert_eq!(wait.confirmed(), Some(10), "never lowered");
    }

    #[test]
    fn a_receipt_stuck_below_a_gap_brings_a_resend_after_the_timeout_each_time() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        wait.acked(20, start);
        // The sink wrote up to 12, and 15..20 above a gap.
        assert_eq!(wait.receipt(12, start + TIMEOUT / 2), Receipt::Advanced);
        assert!(!wait.resend_due(start + TIMEOUT));
        assert!(
            wait.resend_due(start + TIMEOUT * 3 / 2),
            "30 s since the receipt moved"
        );
        // The resend goes astray too; the sink is there and says 12 again.
        assert_eq!(wait.receipt(12, start + TIMEOUT * 2), Receipt::Same);
        assert!(!wait.resend_due(start + TIMEOUT * 2));
        assert!(
            wait.resend_due(start + TIMEOUT * 5 / 2),
            "the sink is there: no back-off"
        );
        assert_eq!(wait.receipt(20, start + TIMEOUT * 3), Receipt::Advanced);
        assert!(!wait.resend_due(start + TIMEOUT * 100));
    }

    #[test]
    fn without_any_receipt_the_wait_doubles_up_to_a_bound() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        wait.acked(5, start);
        let mut at = start;
        for doublings in [0, 1, 2, 3, 4, 5, 5, 5] {
            let wait_for = TIMEOUT * 2u32.pow(doublings);
            assert!(!wait.resend_due(at + wait_for - Duration::from_secs(1)));
            at += wait_for;
            assert!(wait.resend_due(at));
        }
        // Progress restarts the scale.
        wait.acked(9, at);
        assert_eq!(wait.receipt(5, at), Receipt::Advanced);
        assert!(wait.resend_due(at + TIMEOUT));
    }

    #[test]
    fn a_receipt_heard_before_the_wait_began_says_nothing_about_the_sink_now() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        assert_eq!(wait.receipt(3, start), Receipt::Advanced);
        // The retained receipt again, at a reconnect.
        assert_eq!(wait.receipt(3, start), Receipt::Same);
        wait.acked(5, start);
        assert!(wait.resend_due(start + TIMEOUT));
        assert!(
            !wait.resend_due(start + TIMEOUT * 2),
            "no receipt since: the wait doubles"
        );
        assert!(wait.resend_due(start + TIMEOUT * 3));
    }

    #[test]
    fn a_lost_connection_stops_the_wait_until_the_next_puback() {
        let start = Instant::now();
        let mut wait = ReceiptWait::new(TIMEOUT);
        wait.acked(5, start);
        wait.connection_lost();
        assert!(!wait.resend_due(start + TIMEOUT * 10));
        wait.acked(5, start + TIMEOUT * 10);
        assert!(wait.resend_due(start + TIMEOUT * 11));
    }
}
