//! The single publisher: takes visits from the queue, packs what is waiting into NDJSON batches,
//! publishes them at QoS 1 to `{mqtt.topic}/{edge.id}` and keeps every batch until the broker's PUBACK
//! for it. Whatever a lost connection leaves unacknowledged is sent again on the next one.
//!
//! Without a spool, visits wait in the bounded in-memory queue while the broker is away. With one,
//! every batch is first appended to the spool (and synced), and what is published is read back from it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::configuration::SettingsError;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Event, Incoming, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, MAX_BATCH_BYTES};
use crate::configuration::Settings;
use crate::connection::{Connection, LinkEvent};
use crate::queue::EncodedVisit;
use crate::spool::Spool;

/// Batches published but not yet acknowledged. Small on purpose: while two wait for their PUBACK, new
/// visits gather into the next batch, so under load a message carries dozens of visits (16 gave ~5
/// per message and tripled the broker's CPU per visit, see bench/RESULTS.md), while an idle edge still
/// sends each visit at once. Two 256 KiB batches per round trip leave room for ~10 MB/s at 50 ms.
const WINDOW: usize = 2;
/// After the broker refuses a batch (e.g. "no matching subscribers"), wait this long before trying again.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

pub struct Publisher {
    options: MqttOptions,
    topic: String,
    queue: mpsc::Receiver<EncodedVisit>,
    spool: Option<Spool>,
    /// Shared with `/readyz`: true between the CONNACK and the loss of the connection.
    broker_connected: Arc<AtomicBool>,
    /// Set once the queue is closed and empty: no visit will come any more.
    queue_done: bool,
    /// Batches waiting to be published, oldest first: new ones and those to send again.
    outbox: VecDeque<Batch>,
    /// Handed to rumqttc (when, and what), in order; each gets its packet id when rumqttc reports it sent.
    submitted: VecDeque<(Instant, Batch)>,
    /// Sent, waiting for their PUBACK.
    in_flight: HashMap<u16, (Instant, Batch)>,
    connection: Option<Connection>,
    /// When to try connecting again while there is no connection.
    reconnect_at: Instant,
    retry_delays: Box<dyn Iterator<Item = Duration> + Send>,
    /// Set after a refused batch: publish nothing until then.
    paused_until: Option<Instant>,
    delivered: u64,
}

impl Publisher {
    pub fn new(
        settings: &Settings,
        queue: mpsc::Receiver<EncodedVisit>,
        spool: Option<Spool>,
        broker_connected: Arc<AtomicBool>,
    ) -> Result<Self, SettingsError> {
        let mut options = MqttOptions::new(
            settings.client_id(),
            &settings.mqtt.host,
            settings.mqtt.port,
        );
        options.set_keep_alive(settings.mqtt.keep_alive());
        options.set_connection_timeout(settings.mqtt.connect_timeout_secs);
        // The edge keeps no broker session: it resends what was not acked itself (see `connection`).
        options.set_clean_start(true);
        // rumqttc sizes a table by this limit (u16::MAX by default: 14 MB); the window never needs more.
        options.set_outgoing_inflight_upper_limit(WINDOW as u16);
        options.set_transport(settings.mqtt.transport()?);
        if let Some((user, password)) = settings.mqtt.credentials()? {
            options.set_credentials(user, password);
        }
        Ok(Self {
            options,
            topic: settings.topic(),
            queue,
            spool,
            broker_connected,
            queue_done: false,
            outbox: VecDeque::new(),
            submitted: VecDeque::new(),
            in_flight: HashMap::new(),
            connection: None,
            reconnect_at: Instant::now(),
            retry_delays: Box::new(common::backoff::retry_delays()),
            paused_until: None,
            delivered: 0,
        })
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
            let can_take = !self.queue_done
                && match &self.spool {
                    Some(spool) => spool.has_room(),
                    None => self.can_publish() && self.window_has_room(),
                };
            tokio::select! {
                event = next_event(&mut self.connection) => self.on_event(event),
                _ = sleep_until(self.reconnect_at), if self.connection.is_none() => self.connect(),
                _ = sleep_until(self.paused_until.unwrap_or_else(Instant::now)), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
                visit = self.queue.recv(), if can_take => match visit {
                    Some(first) => {
                        let batch = self.fill_batch(first);
                        self.hold(batch);
                    }
                    None => self.queue_done = true,
                },
                _ = stop.cancelled(), if drain_deadline.is_none() => {
                    // Handlers that still run see a closed queue and count their visit as dropped.
                    self.queue.close();
                    drain_deadline = Some(Instant::now() + drain_timeout);
                    tracing::info!(in_memory = self.visits_in_memory_only(), "draining before shutdown");
                }
                _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => break,
            }
        }
        self.finish().await
    }

    fn can_publish(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed) && self.paused_until.is_none()
    }

    fn set_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
        metrics::gauge!("tracker_edge_broker_connected").set(if connected { 1.0 } else { 0.0 });
    }

    fn window_has_room(&self) -> bool {
        self.submitted.len() + self.in_flight.len() < WINDOW
    }

    fn holds_nothing(&self) -> bool {
        self.outbox.is_empty()
            && self.submitted.is_empty()
            && self.in_flight.is_empty()
            && !self.spool.as_ref().is_some_and(Spool::holds_visits)
    }

    /// Visits held in memory only: those a stop now would lose.
    fn visits_in_memory_only(&self) -> u64 {
        let batches = self
            .outbox
            .iter()
            .chain(self.submitted.iter().map(|(_, b)| b))
            .chain(self.in_flight.values().map(|(_, b)| b))
            .filter(|b| b.segment.is_none());
        (batches.map(|b| b.visits).sum::<usize>() + self.queue.len()) as u64
    }

    /// A new batch waits in the spool when there is one, in memory otherwise (also when the spool
    /// fails: the visits are then not lost, only no longer safe from a restart).
    fn hold(&mut self, batch: Batch) {
        if let Some(spool) = &mut self.spool {
            // The sync takes a while: let the runtime move other tasks off this thread meanwhile.
            match tokio::task::block_in_place(|| spool.append(&batch.payload)) {
                Ok(()) => {
                    metrics::gauge!("tracker_edge_spool_bytes").set(spool.bytes() as f64);
                    return;
                }
                Err(err) => tracing::error!(
                    visits = batch.visits,
                    "could not spool a batch, holding it in memory: {err}"
                ),
            }
        }
        self.outbox.push_back(batch);
    }

    /// The next batch to publish: one waiting to be sent (again), else the spool's next, else (without
    /// a spool) what the queue holds.
    fn next_batch(&mut self) -> Option<Batch> {
        if let Some(batch) = self.outbox.pop_front() {
            return Some(batch);
        }
        match &mut self.spool {
            Some(spool) => {
                tokio::task::block_in_place(|| spool.next_batch()).unwrap_or_else(|err| {
                    tracing::error!("could not read the spool: {err}");
                    None
                })
            }
            None => {
                let first = self.queue.try_recv().ok()?;
                Some(self.fill_batch(first))
            }
        }
    }

    /// Hands batches to rumqttc while the window has room: first those waiting, then new ones.
    fn publish_what_fits(&mut self) {
        while self.can_publish() && self.window_has_room() {
            let Some(batch) = self.next_batch() else {
                return;
            };
            let client = &self.connection.as_ref().expect("connected").client;
            match client.try_publish(&self.topic, QoS::AtLeastOnce, false, batch.payload.clone()) {
                Ok(()) => {
                    metrics::counter!("tracker_edge_visits_published_total")
                        .increment(batch.visits as u64);
                    self.submitted.push_back((Instant::now(), batch));
                }
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
            segment: None,
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
                self.set_connected(true);
                self.retry_delays = Box::new(common::backoff::retry_delays());
            }
            Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                if let Some(sent) = self.submitted.pop_front() {
                    self.in_flight.insert(pkid, sent);
                }
            }
            Some(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                let Some((submitted_at, batch)) = self.in_flight.remove(&ack.pkid) else {
                    return;
                };
                if ack.reason == PubAckReason::Success {
                    self.delivered += batch.visits as u64;
                    metrics::counter!("tracker_edge_visits_acknowledged_total")
                        .increment(batch.visits as u64);
                    metrics::histogram!("tracker_edge_publish_ack_seconds")
                        .record(submitted_at.elapsed());
                    if let (Some(spool), Some(segment)) = (&mut self.spool, batch.segment) {
                        if let Err(err) = spool.acked(segment) {
                            tracing::warn!("could not clean up the spool: {err}");
                        }
                        metrics::gauge!("tracker_edge_spool_bytes").set(spool.bytes() as f64);
                    }
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
            .chain(self.in_flight.drain().map(|(_, sent)| sent))
            .map(|(_, batch)| batch)
            .collect();
        for batch in unacked.into_iter().rev() {
            self.outbox.push_front(batch);
        }
        self.connection = None;
        self.set_connected(false);
        self.reconnect_at = Instant::now() + delay;
    }

    async fn finish(mut self) {
        let lost = self.visits_in_memory_only();
        let delivered = self.delivered;
        if self.holds_nothing() && lost == 0 {
            tracing::info!(delivered, "publisher stopped, everything delivered");
        }
        if let Some(spool) = self.spool.as_ref().filter(|s| s.holds_visits()) {
            tracing::warn!(
                delivered,
                spool_bytes = spool.bytes(),
                "publisher stopped; undelivered visits stay in the spool for the next start"
            );
        }
        if lost > 0 {
            tracing::error!(
                delivered,
                undelivered = lost,
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
