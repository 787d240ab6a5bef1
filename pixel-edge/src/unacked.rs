//! The publishes handed to rumqttc and not yet acknowledged, each paired with its packet id.
//!
//! rumqttc 0.25 tells a publish's packet id only by the `Outgoing::Publish(pkid)` event it reports
//! once the publish is written (its `publish` returns nothing: rumqtt#1007, #1049). So the pairing is
//! made structural rather than left to the order rumqttc reports sends in: at most one publish is
//! handed over and not yet reported sent, and the next event can only name that one. A packet-id
//! collision (the id is still waiting for its PUBACK) only delays that event until the PUBACK comes;
//! rumqttc reports the PUBACK first. Nothing else makes rumqttc report a publish sent: the edge
//! publishes through this client alone, and each connection has a fresh event loop with a clean
//! session, so nothing is replayed.

use std::collections::HashMap;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Unacked<T> {
    /// Handed to rumqttc (when, and what), its packet id not known yet.
    unsent: Option<(Instant, T)>,
    /// Sent with this packet id, waiting for its PUBACK.
    sent: HashMap<u16, (Instant, T)>,
}

impl<T> Default for Unacked<T> {
    fn default() -> Self {
        Self {
            unsent: None,
            sent: HashMap::new(),
        }
    }
}

impl<T> Unacked<T> {
    /// Whether another publish may be handed to rumqttc: only once the last one was reported sent.
    pub fn can_submit(&self) -> bool {
        self.unsent.is_none()
    }

    /// `item` was handed to rumqttc at `at`; call only when [`Self::can_submit`].
    pub fn submitted(&mut self, at: Instant, item: T) {
        debug_assert!(
            self.unsent.is_none(),
            "a second publish before the first was sent"
        );
        self.unsent = Some((at, item));
    }

    /// rumqttc reports a publish sent with `pkid`: the one handed over last.
    pub fn sent(&mut self, pkid: u16) {
        match self.unsent.take() {
            Some(unsent) => {
                let earlier = self.sent.insert(pkid, unsent);
                debug_assert!(
                    earlier.is_none(),
                    "rumqttc reused packet id {pkid} before its PUBACK"
                );
            }
            None => tracing::warn!(
                pkid,
                "rumqttc reported a publish sent that was not handed to it"
            ),
        }
    }

    /// The PUBACK for `pkid` came: what was sent with it, and when it was handed over.
    pub fn acked(&mut self, pkid: u16) -> Option<(Instant, T)> {
        self.sent.remove(&pkid)
    }

    /// Publishes handed over and not acknowledged.
    pub fn len(&self) -> usize {
        self.sent.len() + usize::from(self.unsent.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.unsent
            .iter()
            .chain(self.sent.values())
            .map(|(_, item)| item)
    }

    /// The connection is lost: everything not acknowledged, in the order it was handed over.
    pub fn take_all(&mut self) -> Vec<T> {
        let mut all: Vec<(Instant, T)> = self.sent.drain().map(|(_, sent)| sent).collect();
        all.extend(self.unsent.take());
        all.sort_by_key(|(at, _)| *at);
        all.into_iter().map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_publish_is_paired_with_the_packet_id_reported_next() {
        let start = Instant::now();
        let mut unacked = Unacked::default();
        unacked.submitted(start, "a");
        assert!(
            !unacked.can_submit(),
            "nothing more until `a` is reported sent"
        );
        unacked.sent(7);
        assert!(unacked.can_submit());
        unacked.submitted(start + Duration::from_millis(1), "b");
        unacked.sent(3);
        assert_eq!(unacked.acked(7), Some((start, "a")));
        assert_eq!(unacked.acked(7), None, "a PUBACK counts once");
        assert_eq!(unacked.acked(3).map(|(_, b)| b), Some("b"));
        assert!(unacked.is_empty());
    }

    /// rumqttc holds back a publish whose packet id still waits for its PUBACK (`AwaitAck`), and
    /// reports it sent right after that PUBACK: the id is then paired with the right batch each time.
    #[test]
    fn a_packet_id_collision_pairs_each_batch_with_its_own_puback() {
        let start = Instant::now();
        let mut unacked = Unacked::default();
        unacked.submitted(start, "a");
        unacked.sent(1);
        unacked.submitted(start, "b");
        assert_eq!(unacked.len(), 2);
        assert_eq!(unacked.acked(1).map(|(_, a)| a), Some("a"));
        unacked.sent(1);
        assert_eq!(unacked.acked(1).map(|(_, b)| b), Some("b"));
        assert!(unacked.is_empty());
    }

    #[test]
    fn a_send_that_was_not_handed_over_pairs_with_nothing() {
        let mut unacked: Unacked<&str> = Unacked::default();
        unacked.sent(1);
        assert!(unacked.is_empty() && unacked.acked(1).is_none());
    }

    #[test]
    fn a_lost_connection_gives_everything_back_oldest_first() {
        let start = Instant::now();
        let mut unacked = Unacked::default();
        for (i, (item, pkid)) in [("a", 5), ("b", 1), ("c", 3)].into_iter().enumerate() {
            unacked.submitted(start + Duration::from_millis(i as u64), item);
            unacked.sent(pkid);
        }
        unacked.submitted(start + Duration::from_millis(9), "d");
        assert_eq!(unacked.iter().count(), 4);
        assert_eq!(unacked.take_all(), ["a", "b", "c", "d"]);
        assert!(unacked.is_empty() && unacked.can_submit());
    }
}
