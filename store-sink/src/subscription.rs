//! The sink's broker session: one task polls the rumqttc event loop without pause, (re)subscribes
//! on every CONNACK, and forwards each received message to the writer. It never acks: the writer does,
//! once the message is on disk.
//!
//! A connection counts as working only once the broker granted the subscription: a refused SUBACK is
//! a failed connection (dropped, the next broker of `mqtt.hosts`, the backoff not reset), so a broker
//! that accepts CONNECT but refuses SUBSCRIBE is not asked again several times a second.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::in_turn::{address, InTurn};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use tokio_util::sync::CancellationToken;

use common::configuration::SettingsError;

use crate::configuration::Settings;
use crate::health::SinkHealth;
use crate::inbox;

/// Fits the largest message the broker lets through (`max_packet_size 1048576`) with room to spare.
/// A message the client cannot read would make it reconnect and be redelivered forever.
const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

/// Options for a persistent session, one per broker of `mqtt.hosts` (`customize` has the last word on
/// each): the broker keeps the subscription and queues visits while the sink is away.
pub fn mqtt_options(
    settings: &Settings,
    customize: impl Fn(&mut MqttOptions),
) -> Result<InTurn<MqttOptions>, SettingsError> {
    let transport = settings.mqtt.transport()?;
    let credentials = settings.mqtt.credentials()?;
    let options = settings.mqtt.brokers()?.into_iter().map(|(host, port)| {
        let mut options = MqttOptions::new(settings.client_id(), host, port);
        options.set_clean_session(false);
        options.set_manual_acks(true);
        options.set_keep_alive(settings.mqtt.keep_alive());
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options.set_transport(transport.clone());
        if let Some((user, password)) = &credentials {
            options.set_credentials(user, password);
        }
        customize(&mut options);
        options
    });
    InTurn::new(options.collect())
        .ok_or_else(|| SettingsError::invalid("mqtt.hosts", "names no broker"))
}

/// Moves `eventloop` to the next broker: its next connection attempt goes there.
pub fn next_broker(eventloop: &mut EventLoop, brokers: &mut InTurn<MqttOptions>) -> String {
    eventloop.mqtt_options = brokers.advance().clone();
    address(eventloop.mqtt_options.broker_address())
}

/// Why a connection is given up.
enum Failure {
    Refused,
    Lost(ConnectionError),
}

/// Polls until the client's DISCONNECT went out, or until the connection is lost after `stop`.
/// Messages are forwarded while the writer listens; after that they stay unacked and the broker
/// delivers them again next session.
pub async fn drive(
    mut eventloop: EventLoop,
    mut brokers: InTurn<MqttOptions>,
    client: AsyncClient,
    filter: String,
    to_writer: inbox::Sender,
    stop: CancellationToken,
    health: Arc<SinkHealth>,
) {
    let mut retry_delays = common::backoff::retry_delays();
    loop {
        let failure = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Waits (not reading the socket) while unacked messages fill the inbox.
                to_writer.send(publish).await;
                continue;
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let broker = address(eventloop.mqtt_options.broker_address());
                tracing::info!(session_present = ack.session_present, %filter, %broker, "connected to the broker");
                metrics::gauge!("tracker_sink_broker_connected").set(1.0);
                if let Err(err) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    tracing::error!("could not request the subscription: {err}");
                }
                continue;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if !ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    tracing::info!(%filter, "subscribed: the broker keeps visits for this session from now on");
                    health.subscribed.store(true, Ordering::Relaxed);
                    retry_delays = common::backoff::retry_delays();
                    continue;
                }
                // Dropped without DISCONNECT, as a lost connection: the session stays.
                eventloop.clean();
                Failure::Refused
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(err) => Failure::Lost(err),
        };
        health.subscribed.store(false, Ordering::Relaxed);
        metrics::gauge!("tracker_sink_broker_connected").set(0.0);
        let delay = retry_delays.next().unwrap_or(Duration::from_secs(5));
        let broker = address(eventloop.mqtt_options.broker_address());
        let next = next_broker(&mut eventloop, &mut brokers);
        match failure {
            Failure::Refused => {
                tracing::error!(%filter, %broker, %next, retry_in = ?delay, "the broker refused the subscription (check its ACL for this user)")
            }
            Failure::Lost(err) => {
                tracing::warn!(%broker, %next, retry_in = ?delay, "broker connection lost: {err}")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // Reconnecting only to say goodbye would take the session from a sink that replaced us.
            _ = stop.cancelled() => return,
        }
    }
}
