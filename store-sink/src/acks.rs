//! The acks of written messages, handed to rumqttc in the order the messages came, on a task of
//! their own. Handing rumqttc an ack waits for room in its request channel, which only the
//! subscription's polling frees, and the subscription may itself be waiting for the writer to give
//! back inbox budget (see [`crate::inbox`]): a writer that waited here could hold both still. So the
//! writer gives the budget back once a batch is written and leaves its acks here without waiting.

use rumqttc::{AsyncClient, Publish};
use tokio::sync::mpsc;

/// The writer's end. What waits behind it is bounded by the broker, not here: one small entry per
/// message received and not yet acked, at most 65,535 (MQTT's packet ids).
pub struct Acks {
    tx: mpsc::UnboundedSender<Publish>,
}

/// The acker task's end.
pub struct Acker {
    rx: mpsc::UnboundedReceiver<Publish>,
    client: AsyncClient,
}

pub fn channel(client: AsyncClient) -> (Acks, Acker) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Acks { tx }, Acker { rx, client })
}

impl Acks {
    /// Queues the ack of `message`, which is on disk.
    pub fn ack(&self, message: &Publish) {
        // What rumqttc's ack reads: the packet id and the QoS, not the payload (freed with the batch).
        let mut ack = Publish::new(String::new(), message.qos, Vec::new());
        ack.pkid = message.pkid;
        // Fails only once the acker has ended, which ends the sink: the broker redelivers.
        let _ = self.tx.send(ack);
    }
}

impl Acker {
    /// Hands every queued ack to rumqttc, in order, until the writer's end is dropped and all are out.
    pub async fn run(mut self) {
        while let Some(ack) = self.rx.recv().await {
            if let Err(err) = self.client.ack(&ack).await {
                // The broker redelivers it next session.
                tracing::warn!("could not ack a written message: {err}");
            }
        }
    }
}
