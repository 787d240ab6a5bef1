//! The sink's broker session: one task polls the rumqttc event loop without pause, (re)subscribes
//! on every CONNACK, and forwards each received message to the writer. It never acks: the writer does,
//! once the message is on disk.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::configuration::SettingsError;

use crate::configuration::Settings;
use crate::health::SinkHealth;

/// Fits the largest message the broker lets through (`max_packet_size 1048576`) with room to spare.
/// A message the client cannot read would make it reconnect and be redelivered forever.
const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

/// Options for a persistent session: the broker keeps the subscription and queues visits while the
/// sink is away.
pub fn mqtt_options(settings: &Settings) -> Result<MqttOptions, SettingsError> {
    let mut options = MqttOptions::new(
        settings.client_id(),
        &settings.mqtt.host,
        settings.mqtt.port,
    );
    options.set_clean_session(false);
    options.set_manual_acks(true);
    options.set_keep_alive(settings.mqtt.keep_alive());
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    options.set_transport(settings.mqtt.transport()?);
    if let Some((user, password)) = settings.mqtt.credentials()? {
        options.set_credentials(user, password);
    }
    Ok(options)
}

/// Polls until the client's DISCONNECT went out, or until the connection is lost after `stop`.
/// Messages are forwarded while the writer listens; after that they stay unacked and the broker
/// delivers them again next session.
pub async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    to_writer: mpsc::UnboundedSender<Publish>,
    stop: CancellationToken,
    health: Arc<SinkHealth>,
) {
    let mut retry_delays = common::backoff::retry_delays();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = to_writer.send(publish);
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, %filter, "connected to the broker");
                retry_delays = common::backoff::retry_delays();
                metrics::gauge!("tracker_sink_broker_connected").set(1.0);
                if let Err(err) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    tracing::error!("could not request the subscription: {err}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack.return_codes.contains(&SubscribeReasonCode::Failure);
                health.subscribed.store(!refused, Ordering::Relaxed);
                if refused {
                    tracing::error!(%filter, "the broker refused the subscription");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(err) => {
                health.subscribed.store(false, Ordering::Relaxed);
                metrics::gauge!("tracker_sink_broker_connected").set(0.0);
                let delay = retry_delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(retry_in = ?delay, "broker connection lost: {err}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // Reconnecting only to say goodbye would take the session from a sink that replaced us.
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
