//! A plain MQTT client for tests that act as a credential holder would: publishing whatever it likes,
//! however big, to the topics the broker's ACL lets its user write.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::Broker;

/// Publishes `payloads` to `topic` at QoS 1 as `user` of `broker`, and returns how many the broker
/// acknowledged before all were, or before it closed the connection (as it does on an oversized packet).
/// The payloads are made as they are sent, so a gigabyte of them never sits in memory.
pub async fn publish(
    broker: &Broker,
    user: &str,
    topic: &str,
    payloads: impl ExactSizeIterator<Item = Vec<u8>> + Send + 'static,
) -> usize {
    let mut options =
        MqttOptions::new(format!("test-{user}-publisher"), "127.0.0.1", broker.port());
    options.set_credentials(user, broker.password(user));
    // Far above any broker limit: the broker, not this client, is to judge the size.
    options.set_max_packet_size(64 << 20, 64 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let expected = payloads.len();
    let topic = topic.to_owned();
    let sending = tokio::spawn(async move {
        for payload in payloads {
            if client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    while acked < expected {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    sending.abort();
    acked
}
