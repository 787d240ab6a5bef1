//! The messages received from the broker and not yet acked, bounded in bytes: the subscription waits
//! (and so stops reading the socket, which holds the broker back) while they weigh
//! [`MAX_UNACKED_BYTES`]; the writer gives their bytes back once they are written (their acks follow,
//! see [`crate::acks`]). The broker alone would
//! send up to `max_inflight_messages` (1000) messages of up to 1 MiB each before any ack.

use std::sync::Arc;

use rumqttc::Publish;
use tokio::sync::{mpsc, Semaphore};

/// Two of the writer's 16 MiB batches: one being written, the next one arriving.
pub const MAX_UNACKED_BYTES: usize = 32 * 1024 * 1024;

/// The subscription's end.
pub struct Sender {
    tx: mpsc::UnboundedSender<Publish>,
    budget: Arc<Semaphore>,
}

/// The writer's end.
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<Publish>,
    budget: Arc<Semaphore>,
}

pub fn channel() -> (Sender, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(MAX_UNACKED_BYTES));
    let sender = Sender {
        tx,
        budget: budget.clone(),
    };
    (sender, Receiver { rx, budget })
}

/// What a message takes of the budget: its payload, at most the whole budget (so one larger than
/// it still passes, alone).
fn weight(message: &Publish) -> u32 {
    u32::try_from(message.payload.len().clamp(1, MAX_UNACKED_BYTES)).unwrap_or(u32::MAX)
}

impl Sender {
    /// Hands `message` to the writer once the messages before it leave room; returns at once, the
    /// message dropped (unacked: the broker delivers it again), if the writer has stopped.
    pub async fn send(&self, message: Publish) {
        let weight = weight(&message);
        tokio::select! {
            permit = self.budget.acquire_many(weight) => {
                permit.expect("the budget is never closed").forget();
                let _ = self.tx.send(message);
            }
            _ = self.tx.closed() => {}
        }
    }
}

impl Receiver {
    pub async fn recv(&mut self) -> Option<Publish> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Publish> {
        self.rx.try_recv().ok()
    }

    pub fn close(&mut self) {
        self.rx.close()
    }

    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    /// Gives back `message`'s bytes: it is acked (or will never be), the broker may send more.
    pub fn release(&self, message: &Publish) {
        self.budget.add_permits(weight(message) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    fn message(bytes: usize) -> Publish {
        Publish::new("tracker/visits/e", QoS::AtLeastOnce, vec![b'x'; bytes])
    }

    #[tokio::test]
    async fn the_sender_waits_while_unacked_messages_fill_the_budget() {
        let (tx, mut rx) = channel();
        let half = MAX_UNACKED_BYTES / 2;
        tx.send(message(half)).await;
        tx.send(message(half)).await;
        let third = message(1);
        let mut waiting = Box::pin(tx.send(third));
        assert!(
            futures_poll_once(&mut waiting).await.is_none(),
            "the budget is spent"
        );
        let first = rx.recv().await.unwrap();
        rx.release(&first);
        waiting.await;
        assert_eq!(rx.recv().await.unwrap().payload.len(), half);
        assert_eq!(rx.recv().await.unwrap().payload.len(), 1);
    }

    #[tokio::test]
    async fn a_stopped_writer_does_not_hold_the_sender() {
        let (tx, mut rx) = channel();
        tx.send(message(MAX_UNACKED_BYTES)).await;
        rx.close();
        drop(rx);
        tx.send(message(1)).await;
    }

    /// Polls `future` once: `Some` if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(
        future: &mut F,
    ) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
