//! One MQTT connection attempt of the edge: a fresh rumqttc client and event loop, the loop polled
//! without pause by its own task that forwards every event the publisher acts on.
//!
//! The edge speaks MQTT 5 or 3.1.1 (`mqtt.protocol`), with rumqttc's `v5` or its 3.1.1 client. This
//! file is the only place that knows which: both clients are driven alike, and their events reduced to
//! the few the publisher needs ([`LinkEvent`]), so the publisher has one logic for both. What 3.1.1
//! lacks is reason codes: its PUBACK never reports a refusal, so `refused` is always `None` there.
//!
//! Why a fresh event loop per attempt: rumqttc, on reconnect to a clean session, silently clears both
//! its unacked publishes and the requests still in its channel. Starting over each time makes "what was
//! not acked on a connection is lost with it" exact, so the publisher alone decides what to send again.
//!
//! Why a watchdog on top of rumqttc's keep-alive: rumqttc sends a PINGREQ every keep-alive interval
//! and gives up when the previous one is unanswered, but its v5 event loop awaits each socket flush
//! without a timeout. On a silent partition with publishes in flight the send buffer fills, the
//! flush never returns, and the ping check never runs (until the kernel gives up on TCP, many minutes
//! later). The driver therefore drops a connection on which nothing has come from the broker for two
//! keep-alive intervals: a healthy broker answers each PINGREQ, so that silence means the link is dead.

use std::time::Duration;

use bytes::Bytes;
use common::mqtt_protocol::MqttProtocol;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5SubAckCode};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{v5, Outgoing, QoS, SubscribeReasonCode, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// The largest packet either way with 3.1.1, as the brokers' own limit (Mosquitto's
/// `max_packet_size`): room for a 256 KiB batch (rumqttc's 3.1.1 client refuses more than 10 KiB
/// unless told; its v5 client follows the broker's CONNACK).
const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// How to reach one broker.
#[derive(Clone)]
pub struct LinkOptions {
    pub protocol: MqttProtocol,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    pub connect_timeout_secs: u64,
    /// Publishes waiting for their PUBACK at most (rumqttc sizes a table by it).
    pub max_in_flight: u16,
    pub transport: Transport,
    pub credentials: Option<(String, String)>,
}

impl LinkOptions {
    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        common::in_turn::address((self.host.clone(), self.port))
    }

    fn v5(&self) -> v5::MqttOptions {
        let mut options = v5::MqttOptions::new(&self.client_id, &self.host, self.port);
        options.set_keep_alive(self.keep_alive);
        options.set_connection_timeout(self.connect_timeout_secs);
        // The edge keeps no broker session: it resends what was not confirmed itself (see above).
        options.set_clean_start(true);
        options.set_outgoing_inflight_upper_limit(self.max_in_flight);
        options.set_transport(self.transport.clone());
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        options
    }

    fn v311(&self) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(&self.client_id, &self.host, self.port);
        options.set_keep_alive(self.keep_alive);
        options.set_clean_session(true);
        options.set_inflight(self.max_in_flight);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options.set_transport(self.transport.clone());
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        options
    }
}

/// What the driver task reports; the stream ends after [`LinkEvent::Lost`] or after the DISCONNECT
/// went out.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK: the connection is up.
    Connected,
    /// A publish went out with this packet id (`unacked` pairs it with its batch).
    Sent(u16),
    /// PUBACK; `refused` names the reason an MQTT 5 broker gave for not taking the message.
    PubAck { pkid: u16, refused: Option<String> },
    /// A message from the broker (a receipt).
    Message { topic: Bytes, payload: Bytes },
    /// SUBACK; `refused` lists its codes when the broker refused the subscription.
    SubAck { refused: Option<String> },
    /// The connection failed or was lost.
    Lost(String),
}

/// The client half, for either protocol; every request is at QoS 1.
pub enum Client {
    V5(v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

type ClientError = Box<dyn std::error::Error + Send + Sync>;

impl Client {
    /// Queues a publish without waiting; an error means the client's channel is full or closed.
    pub fn try_publish(&self, topic: &str, payload: Bytes) -> Result<(), ClientError> {
        match self {
            Self::V5(client) => {
                Ok(client.try_publish(topic, V5QoS::AtLeastOnce, false, payload)?)
            }
            Self::V311(client) => {
                Ok(client.try_publish(topic, QoS::AtLeastOnce, false, Vec::from(payload))?)
            }
        }
    }

    pub fn try_subscribe(&self, topic: &str) -> Result<(), ClientError> {
        match self {
            Self::V5(client) => Ok(client.try_subscribe(topic, V5QoS::AtLeastOnce)?),
            Self::V311(client) => Ok(client.try_subscribe(topic, QoS::AtLeastOnce)?),
        }
    }

    fn try_disconnect(&self) -> bool {
        match self {
            Self::V5(client) => client.try_disconnect().is_ok(),
            Self::V311(client) => client.try_disconnect().is_ok(),
        }
    }
}

pub struct Connection {
    pub client: Client,
    pub events: mpsc::UnboundedReceiver<LinkEvent>,
    driver: JoinHandle<()>,
}

impl Connection {
    /// Starts connecting; the outcome arrives as the first event ([`LinkEvent::Connected`] or
    /// [`LinkEvent::Lost`]).
    pub fn open(options: &LinkOptions, request_capacity: usize) -> Self {
        // Assumption: the broker does not lower the keep-alive in its CONNACK (Mosquitto's
        // `max_keepalive` is unset in the shipped config); if it did, pings would only come more often.
        let silence_limit = 2 * options.keep_alive;
        let (client, eventloop) = match options.protocol {
            MqttProtocol::V5 => {
                let (client, eventloop) = v5::AsyncClient::new(options.v5(), request_capacity);
                (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
            }
            MqttProtocol::V311 => {
                let (client, mut eventloop) =
                    rumqttc::AsyncClient::new(options.v311(), request_capacity);
                eventloop
                    .network_options
                    .set_connection_timeout(options.connect_timeout_secs);
                (Client::V311(client), EventLoop::V311(Box::new(eventloop)))
            }
        };
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(eventloop, tx, silence_limit));
        Self {
            client,
            events,
            driver,
        }
    }

    /// Sends DISCONNECT and gives the driver up to `grace` to get it out; then drops the connection.
    pub async fn close(mut self, grace: Duration) {
        if self.client.try_disconnect() {
            let _ =
                tokio::time::timeout(grace, async { while self.events.recv().await.is_some() {} })
                    .await;
        }
        self.driver.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

enum EventLoop {
    V5(Box<v5::EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

/// One event of either loop, reduced to what the publisher and the watchdog need.
enum Polled {
    /// Something came from the broker (so the link is alive); `None` when the publisher has no use for it.
    Incoming(Option<LinkEvent>),
    Outgoing(Option<LinkEvent>),
    /// Our DISCONNECT went out: the connection is over.
    Disconnected,
    Failed(String),
}

impl EventLoop {
    async fn poll(&mut self) -> Polled {
        match self {
            Self::V5(eventloop) => from_v5(eventloop.poll().await),
            Self::V311(eventloop) => from_v311(eventloop.poll().await),
        }
    }
}

fn from_v5(event: Result<v5::Event, v5::ConnectionError>) -> Polled {
    use v5::{Event, Incoming};
    match event {
        Ok(Event::Incoming(incoming)) => Polled::Incoming(match incoming {
            Incoming::ConnAck(_) => Some(LinkEvent::Connected),
            Incoming::PubAck(ack) => Some(LinkEvent::PubAck {
                pkid: ack.pkid,
                refused: (ack.reason != PubAckReason::Success).then(|| format!("{:?}", ack.reason)),
            }),
            Incoming::Publish(publish) => Some(LinkEvent::Message {
                topic: publish.topic,
                payload: publish.payload,
            }),
            Incoming::SubAck(ack) => Some(LinkEvent::SubAck {
                refused: (ack
                    .return_codes
                    .iter()
                    .any(|code| !matches!(code, V5SubAckCode::Success(_))))
                .then(|| format!("{:?}", ack.return_codes)),
            }),
            _ => None,
        }),
        Ok(Event::Outgoing(outgoing)) => outgoing_event(outgoing),
        Err(err) => Polled::Failed(err.to_string()),
    }
}

fn from_v311(event: Result<rumqttc::Event, rumqttc::ConnectionError>) -> Polled {
    use rumqttc::{Event, Packet};
    match event {
        Ok(Event::Incoming(incoming)) => Polled::Incoming(match incoming {
            Packet::ConnAck(_) => Some(LinkEvent::Connected),
            Packet::PubAck(ack) => Some(LinkEvent::PubAck {
                pkid: ack.pkid,
                refused: None,
            }),
            Packet::Publish(publish) => Some(LinkEvent::Message {
                topic: Bytes::from(publish.topic.into_bytes()),
                payload: publish.payload,
            }),
            Packet::SubAck(ack) => Some(LinkEvent::SubAck {
                refused: ack
                    .return_codes
                    .contains(&SubscribeReasonCode::Failure)
                    .then(|| format!("{:?}", ack.return_codes)),
            }),
            _ => None,
        }),
        Ok(Event::Outgoing(outgoing)) => outgoing_event(outgoing),
        Err(err) => Polled::Failed(err.to_string()),
    }
}

/// Both loops report what went out alike.
fn outgoing_event(outgoing: Outgoing) -> Polled {
    match outgoing {
        Outgoing::Publish(pkid) => Polled::Outgoing(Some(LinkEvent::Sent(pkid))),
        Outgoing::Disconnect => Polled::Disconnected,
        _ => Polled::Outgoing(None),
    }
}

/// Forwards events until the connection ends, or until nothing has come from the broker for
/// `silence_limit` once connected (connecting itself is bounded by rumqttc's connection timeout).
async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<LinkEvent>,
    silence_limit: Duration,
) {
    let mut give_up_at: Option<Instant> = None;
    loop {
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            _ = sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                Polled::Failed(format!("nothing heard from the broker for {silence_limit:?}"))
            }
        };
        let event = match polled {
            Polled::Incoming(event) => {
                give_up_at = Some(Instant::now() + silence_limit);
                event
            }
            Polled::Outgoing(event) => event,
            Polled::Disconnected => return,
            Polled::Failed(why) => {
                let _ = tx.send(LinkEvent::Lost(why));
                return;
            }
        };
        if let Some(event) = event {
            if tx.send(event).is_err() {
                return;
            }
        }
    }
}
