//! The single publisher: takes visits from the queue, packs what is waiting into NDJSON batches,
//! publishes them at QoS 1 to `{mqtt.topic}/{edge.id}` and keeps every batch until the broker's PUBACK
//! for it. Whatever a lost connection leaves unacknowledged is sent again on the next one.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Event, Incoming, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::connection::{Connection, LinkEvent};
use crate::queue::EncodedVisit;

/// Batches published but not yet acknowledged. Kept below Mosquitto's default receive maximum (20),
/// and far below rumqttc's packet-id space, so packet ids never collide.
const WINDOW: usize = 16;
/// A batch stops growing here; the broker's limit (`max_packet_size`) is 1 MiB.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// After the broker refuses a batch (e.g. "no matching subscribers"), wait this long before trying again.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// Some visits, as one MQTT payload.
struct Batch {
    payload: Bytes,
    visits: usize,
}

pub struct Publisher {
    options: MqttOptions,
    topic: String,
    queue: mpsc::Receiver<EncodedVisit>,
    /// Set once the queue is closed and empty: no visit will come any more.
    queue_done: bool,
    /// Batches waiting to be published, oldest first: new ones and those to send again.
    outbox: VecDeque<Batch>,
    /// Handed to rumqttc, in order; each gets its packet id when rumqttc reports it sent.
    submitted: VecDeque<Batch>,
    /// Sent, waiting for their PUBACK.
    in_flight: HashMap<u16, Batch>,
    connection: Option<Connection>,
    /// True between the CONNACK and the loss of the connection.
    connected: bool,
    /// When to try connecting again while there is no connection.
    reconnect_at: Instant,
    retry_delays: Box<dyn Iterator<Item = Duration> + Send>,
    /// Set after a refused batch: publish nothing until then.
    paused_until: Option<Instant>,
    delivered: u64,
}

impl Publisher {
    pub fn new(settings: &Settings, queue: mpsc::Receiver<EncodedVisit>) -> Self {
        let mut options = MqttOptions::new(
            settings.client_id(),
            &settings.mqtt.host,
            settings.mqtt.port,
        );
        options.set_keep_alive(Duration::from_secs(15));
        // The edge keeps no broker session: it resends what was not acked itself (see `connection`).
        options.set_clean_start(true);
        if let Some((user, password)) = settings.mqtt.credentials() {
            options.set_credentials(user, password);
        }
        Self {
            options,
            topic: settings.topic(),
            queue,
            queue_done: false,
            outbox: VecDeque::new(),
            submitted: VecDeque::new(),
            in_flight: HashMap::new(),
            connection: None,
            connected: false,
            reconnect_at: Instant::now(),
            retry_delays: Box::new(common::backoff::retry_delays()),
            paused_until: None,
            delivered: 0,
        }
    }

    /// Publishes until `stop` is cancelled and everything held is delivered, or `drain_timeout` after
    /// `stop` has passed; then logs what it could not deliver.
    pub async fn run(mut self, stop: CancellationToken, drain_timeout: Duration) {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.publish_what_fits();
            if drain_deadline.is_some() && self.queue_done && self.holds_nothing() {
                break;
            }
            let can_take = self.can_publish() && self.window_has_room() && !self.queue_done;
            tokio::select! {
                event = next_event(&mut self.connection) => self.on_event(event),
                _ = sleep_until(self.reconnect_at), if self.connection.is_none() => self.connect(),
                _ = sleep_until(self.paused_until.unwrap_or_else(Instant::now)), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
                visit = self.queue.recv(), if can_take => match visit {
                    Some(first) => {
                        let batch = self.fill_batch(first);
                        self.outbox.push_back(batch);
                    }
                    None => self.queue_done = true,
                },
                _ = stop.cancelled(), if drain_deadline.is_none() => {
                    // Handlers that still run see a closed queue and count their visit as dropped.
                    self.queue.close();
                    drain_deadline = Some(Instant::now() + drain_timeout);
                    tracing::info!(held = self.held_visits(), "draining before shutdown");
                }
                _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => break,
            }
        }
        self.finish().await
    }

    fn can_publish(&self) -> bool {
        self.connected && self.paused_until.is_none()
    }

    fn window_has_room(&self) -> bool {
        self.submitted.len() + self.in_flight.len() < WINDOW
    }

    fn holds_nothing(&self) -> bool {
        self.outbox.is_empty() && self.submitted.is_empty() && self.in_flight.is_empty()
    }

    fn held_visits(&self) -> u64 {
        let batches = self
            .outbox
            .iter()
            .chain(&self.submitted)
            .chain(self.in_flight.values());
        (batches.map(|b| b.visits).sum::<usize>() + self.queue.len()) as u64
    }

    /// Hands batches to rumqttc while the window has room: first those waiting, then new ones.
    fn publish_what_fits(&mut self) {
        while self.can_publish() && self.window_has_room() {
            let batch = match self.outbox.pop_front() {
                Some(batch) => batch,
                None => match self.queue.try_recv() {
                    Ok(first) => self.fill_batch(first),
                    Err(_) => return,
                },
            };
            let client = &self.connection.as_ref().expect("connected").client;
            match client.try_publish(&self.topic, QoS::AtLeastOnce, false, batch.payload.clone()) {
                Ok(()) => self.submitted.push_back(batch),
                Err(err) => {
                    // Not sent is not lost: the batch waits for the next try.
                    tracing::debug!("publish not accepted by the client: {err}");
                    self.outbox.push_front(batch);
                    return;
                }
            }
        }
    }

    /// One visit, plus whatever else is already waiting, up to the batch size.
    fn fill_batch(&mut self, first: EncodedVisit) -> Batch {
        let mut payload = first;
        let mut visits = 1;
        while payload.len() < MAX_BATCH_BYTES {
            match self.queue.try_recv() {
                Ok(line) => {
                    payload.extend_from_slice(&line);
                    visits += 1;
                }
                Err(_) => break,
            }
        }
        Batch {
            payload: payload.into(),
            visits,
        }
    }

    fn connect(&mut self) {
        tracing::debug!(host = %self.options.broker_address().0, "connecting to the broker");
        self.connection = Some(Connection::open(self.options.clone(), 2 * WINDOW + 8));
    }

    fn on_event(&mut self, event: Option<LinkEvent>) {
        match event {
            Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                tracing::info!(topic = %self.topic, "connected to the broker");
                self.connected = true;
                self.retry_delays = Box::new(common::backoff::retry_delays());
            }
            Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                if let Some(batch) = self.submitted.pop_front() {
                    self.in_flight.insert(pkid, batch);
                }
            }
            Some(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                let Some(batch) = self.in_flight.remove(&ack.pkid) else {
                    return;
                };
                if ack.reason == PubAckReason::Success {
                    self.delivered += batch.visits as u64;
                } else {
                    // Assumption: any refusal is passing (no subscriber yet, quota); keep the visits and retry.
                    tracing::warn!(reason = ?ack.reason, visits = batch.visits, "broker refused a batch; retrying in {REFUSED_PAUSE:?}");
                    self.outbox.push_back(batch);
                    self.paused_until = Some(Instant::now() + REFUSED_PAUSE);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => self.connection_lost(&err.to_string()),
            None => self.connection_lost("connection closed"),
        }
    }

    fn connection_lost(&mut self, why: &str) {
        let delay = self.retry_delays.next().unwrap_or(Duration::from_secs(5));
        let resend = self.submitted.len() + self.in_flight.len();
        tracing::warn!(batches_to_resend = resend, retry_in = ?delay, "broker connection lost: {why}");
        let unacked: Vec<Batch> = self
            .submitted
            .drain(..)
            .chain(self.in_flight.drain().map(|(_, b)| b))
            .collect();
        for batch in unacked.into_iter().rev() {
            self.outbox.push_front(batch);
        }
        self.connection = None;
        self.connected = false;
        self.reconnect_at = Instant::now() + delay;
    }

    async fn finish(mut self) {
        let undelivered = self.held_visits();
        if undelivered == 0 {
            tracing::info!(
                delivered = self.delivered,
                "publisher stopped, everything delivered"
            );
        } else {
            tracing::error!(
                delivered = self.delivered,
                undelivered,
                "publisher stopped before delivering every visit"
            );
        }
        if let Some(connection) = self.connection.take() {
            connection.close(Duration::from_secs(2)).await;
        }
    }
}

async fn next_event(connection: &mut Option<Connection>) -> Option<LinkEvent> {
    match connection {
        Some(connection) => connection.events.recv().await,
        None => std::future::pending().await,
    }
}
