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

/// A subscriber such as an operator's `mosquitto_sub`: `user` reading `filter` at QoS 1 on a clean
/// session, from its SUBACK until dropped. While it matches, the broker acknowledges visits with
/// success even when no sink session exists to keep them.
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes `user` to `filter` on `broker` and returns once the broker granted it.
pub async fn watch(broker: &Broker, user: &str, filter: &str) -> Watcher {
    let mut options = MqttOptions::new(format!("test-{user}-watcher"), "127.0.0.1", broker.port());
    options.set_credentials(user, broker.password(user));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("requesting the subscription");
    loop {
        match eventloop.poll().await.expect("the watcher connects") {
            Event::Incoming(Packet::SubAck(ack)) => {
                assert!(
                    ack.return_codes
                        .iter()
                        .all(|code| matches!(code, rumqttc::SubscribeReasonCode::Success(_))),
                    "{user} may not read {filter}: {ack:?}"
                );
                break;
            }
            _ => continue,
        }
    }
    let task = tokio::spawn(async move {
        let _client = client;
        while eventloop.poll().await.is_ok() {}
    });
    Watcher { task }
}
