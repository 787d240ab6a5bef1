//! The single publisher: takes visits from the queue, packs what is waiting into NDJSON batches,
//! publishes them at QoS 1 to `{mqtt.topic}/{edge.id}` and keeps every batch until it is confirmed.
//!
//! With a spool, every batch is first appended to it (numbered and synced), and what is published is
//! read back from it. With receipts (`edge.receipts`, the default) a batch is confirmed by the sink's
//! retained receipt on `{mqtt.receipt_topic}/{edge.id}`, which the edge subscribes to on every
//! connection; after every reconnect the edge sends again, in order, all the sink has not confirmed,
//! since a broker that crashed may have lost what it acknowledged, and so it does when the receipt
//! stays short of the PUBACKs (a broker that acknowledged what it never delivered, see `receipt_wait`). Without receipts the broker's PUBACK
//! confirms a batch, and only what a lost connection left unacknowledged is sent again. Without a
//! spool, visits wait in the bounded in-memory queue while the broker is away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::blocking::on_blocking_pool;
use common::configuration::SettingsError;
use common::in_turn::InTurn;
use common::rate_limit::RateLimited;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, MAX_BATCH_BYTES};
use crate::configuration::Settings;
use crate::connection::{Connection, LinkEvent, LinkOptions};
use crate::flight_window::FlightWindow;
use crate::queue::{self, EncodedVisit};
use crate::receipt_wait::{Receipt, ReceiptWait, Resend};
use crate::spool::Spool;
use crate::unacked::Unacked;

/// After the broker refuses a batch (e.g. "no matching subscribers"), wait this long before trying again.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);
/// Batches held in memory because the spool failed (or there is none) stop the publisher taking more
/// visits at this size: new visits then wait in the queue, and past it are dropped and counted.
const MAX_OUTBOX_BYTES: usize = 16 * 1024 * 1024;
/// Under load (the last spooled batch held at least `LOADED_BATCH` visits: they come faster than
/// syncs end), the next batch is cut no sooner than `SYNC_EVERY` after the last one began, so that one
/// fdatasync carries hundreds of visits rather than dozens: syncing was the edge's largest cost per
/// visit after the HTTP exchange itself (bench/RESULTS.md). A lone visit, or a trickle, is spooled at once.
const SYNC_EVERY: Duration = Duration::from_millis(4);
const LOADED_BATCH: usize = 16;
/// How often the age of the oldest unconfirmed visit is brought up to date.
const METRICS_EVERY: Duration = Duration::from_secs(1);

pub struct Publisher {
    /// One per broker in `mqtt.hosts`: the current one is tried, the next after a failure.
    options: InTurn<LinkOptions>,
    topic: String,
    /// `Some` with `edge.receipts`: where the sink confirms this edge's visits.
    receipt_topic: Option<String>,
    queue: queue::Receiver,
    /// `None` without a spool, and while a spool call runs on the blocking pool.
    spool: Option<Spool>,
    /// Shared with `/readyz`: true between the CONNACK and the loss of the connection.
    broker_connected: Arc<AtomicBool>,
    /// Set once the queue is closed and empty: no visit will come any more.
    queue_done: bool,
    /// Under load, when the next batch may be cut from the queue (see [`SYNC_EVERY`]).
    next_cut: Instant,
    /// Batches waiting to be published, oldest first: those held in memory, and those to send again.
    outbox: VecDeque<Batch>,
    /// Payload bytes in `outbox`, bounded by [`MAX_OUTBOX_BYTES`].
    outbox_bytes: usize,
    /// Handed to rumqttc, waiting for their PUBACK.
    unacked: Unacked<Batch>,
    /// How many of those there may be.
    window: FlightWindow,
    connection: Option<Connection>,
    /// When to try connecting again while there is no connection.
    reconnect_at: Instant,
    retry_delays: Box<dyn Iterator<Item = Duration> + Send>,
    /// Set after a refused batch: publish nothing until then.
    paused_until: Option<Instant>,
    /// Spool appends that failed, logged at most once a second.
    spool_errors: RateLimited,
    /// What the receipts confirmed, and when to send again what they leave out.
    receipt_wait: ReceiptWait,
    delivered: u64,
    /// Delivering an orphaned spool (see `orphans`): it ends once everything is confirmed, and leaves
    /// the gauges to the edge's own publisher.
    adopted: bool,
}

impl Publisher {
    pub fn new(
        settings: &Settings,
        queue: queue::Receiver,
        spool: Option<Spool>,
        broker_connected: Arc<AtomicBool>,
    ) -> Result<Self, SettingsError> {
        let window = FlightWindow::new(settings.edge.max_in_flight_bytes);
        let transport = settings.mqtt.transport()?;
        let credentials = settings.mqtt.credentials()?;
        let options = settings
            .mqtt
            .brokers()?
            .into_iter()
            .map(|(host, port)| LinkOptions {
                protocol: settings.protocol(),
                client_id: settings.client_id(),
                host,
                port,
                keep_alive: settings.mqtt.keep_alive(),
                connect_timeout_secs: settings.mqtt.connect_timeout_secs.get(),
                // rumqttc sizes a table by this limit (u16::MAX by default: 14 MB); the window never needs more.
                max_in_flight: window.max_batches() as u16,
                transport: transport.clone(),
                credentials: credentials.clone(),
            });
        let options = InTurn::new(options.collect())
            .ok_or_else(|| SettingsError::invalid("mqtt.hosts", "names no broker"))?;
        Ok(Self {
            options,
            topic: settings.topic(),
            receipt_topic: settings.edge.receipts.then(|| settings.receipt_topic()),
            queue,
            spool,
            broker_connected,
            queue_done: false,
            next_cut: Instant::now(),
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            unacked: Unacked::default(),
            window,
            connection: None,
            reconnect_at: Instant::now(),
            retry_delays: Box::new(common::backoff::retry_delays()),
            paused_until: None,
            spool_errors: RateLimited::default(),
            receipt_wait: ReceiptWait::new(settings.receipt_timeout()),
            delivered: 0,
            adopted: false,
        })
    }

    /// A publisher for an orphaned spool, with `settings` naming the orphan's edge id: no visit comes
    /// but those in the spool, and [`run`](Self::run) ends once they are all confirmed.
    pub fn adopting(settings: &Settings, spool: Spool) -> Result<Self, SettingsError> {
        let (_, mut queue) = queue::channel(1, 0);
        queue.close();
        let connected = Arc::new(AtomicBool::new(false));
        Ok(Self {
            queue_done: true,
            adopted: true,
            ..Self::new(settings, queue, Some(spool), connected)?
        })
    }

    /// Publishes until `stop` is cancelled and everything held is confirmed (an adopted spool's
    /// publisher: until everything is confirmed), or `drain_timeout` after `stop` has passed; then
    /// logs what it could not deliver, and removes the spool if it holds nothing unconfirmed. Returns
    /// whether everything was delivered.
    pub async fn run(mut self, stop: CancellationToken, drain_timeout: Duration) -> bool {
        let mut drain_deadline: Option<Instant> = None;
        let mut metrics_tick = tokio::time::interval(METRICS_EVERY);
        loop {
            self.publish_next().await;
            if (drain_deadline.is_some() || self.adopted) && self.queue_done && self.holds_nothing()
            {
                break;
            }
            let can_take = !self.queue_done
                && self.outbox_bytes < MAX_OUTBOX_BYTES
                && match &self.spool {
                    Some(spool) => spool.has_room(),
                    None => self.can_submit(),
                };
            let paced = can_take && self.next_cut > Instant::now();
            tokio::select! {
                event = next_event(&mut self.connection) => self.on_event(event).await,
                _ = sleep_until(self.reconnect_at), if self.connection.is_none() => self.connect(),
                _ = sleep_until(self.paused_until.unwrap_or_else(Instant::now)), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
                _ = sleep_until(self.next_cut), if paced => {}
                visit = self.queue.recv(), if can_take && !paced => match visit {
                    Some(first) => {
                        let batch = self.fill_batch(first);
                        self.hold(batch).await;
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
                _ = metrics_tick.tick() => {
                    self.record_spool_metrics();
                    self.resend_if_unconfirmed().await;
                }
            }
        }
        self.finish().await
    }

    fn can_publish(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed) && self.paused_until.is_none()
    }

    fn set_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
        if self.adopted {
            return;
        }
        metrics::gauge!("tracker_edge_broker_connected").set(if connected { 1.0 } else { 0.0 });
    }

    /// Whether the next batch may be handed to rumqttc now.
    fn can_submit(&self) -> bool {
        // One publish at a time not yet reported sent, so that rumqttc's report pairs it with its packet id.
        self.can_publish() && self.unacked.can_submit() && self.window.has_room(self.unacked.len())
    }

    fn holds_nothing(&self) -> bool {
        self.outbox.is_empty()
            && self.unacked.is_empty()
            && !self.spool.as_ref().is_some_and(Spool::holds_unconfirmed)
    }

    /// Visits held in memory only: those a stop now would lose.
    fn visits_in_memory_only(&self) -> u64 {
        let batches = self
            .outbox
            .iter()
            .chain(self.unacked.iter())
            .filter(|b| !b.spooled);
        (batches.map(|b| b.visits).sum::<usize>() + self.queue.waiting()) as u64
    }

    /// Runs `work` on the spool on the blocking pool; `None` without a spool.
    async fn with_spool<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Spool) -> T + Send + 'static,
    ) -> Option<T> {
        let spool = self.spool.take()?;
        let (spool, out) = on_blocking_pool(spool, work).await;
        self.spool = Some(spool);
        Some(out)
    }

    /// A new batch waits in the spool when there is one, in memory otherwise (also when the spool
    /// fails: the visits are then not lost, only no longer safe from a restart).
    async fn hold(&mut self, batch: Batch) {
        let payload = batch.payload.clone();
        let started = Instant::now();
        match self.with_spool(move |spool| spool.append(&payload)).await {
            Some(Ok(())) => {
                if batch.visits >= LOADED_BATCH {
                    self.next_cut = started + SYNC_EVERY;
                }
                self.record_spool_metrics();
            }
            Some(Err(err)) => {
                metrics::counter!("tracker_edge_spool_errors_total", "operation" => "append")
                    .increment(1);
                // A full or failing disk fails every batch: one line a second, not one a batch.
                self.spool_errors.warn(|unlogged| {
                    tracing::error!(
                        visits = batch.visits,
                        similar_since_last_error = unlogged,
                        "could not spool a batch, holding it in memory: {err}"
                    )
                });
                self.push_outbox(batch);
            }
            None => self.push_outbox(batch),
        }
    }

    fn push_outbox(&mut self, batch: Batch) {
        let was_full = self.outbox_bytes >= MAX_OUTBOX_BYTES;
        self.outbox_bytes += batch.payload.len();
        self.outbox.push_back(batch);
        self.record_outbox();
        if !was_full && self.outbox_bytes >= MAX_OUTBOX_BYTES {
            tracing::warn!(
                outbox_bytes = self.outbox_bytes,
                "the in-memory outbox is full: new visits wait in the queue, and are dropped and counted once it is full too"
            );
        }
    }

    fn pop_outbox(&mut self) -> Option<Batch> {
        let batch = self.outbox.pop_front()?;
        self.outbox_bytes -= batch.payload.len();
        self.record_outbox();
        Some(batch)
    }

    /// Puts a batch that was handed out back at the front, to be published first.
    fn unpop_outbox(&mut self, batch: Batch) {
        self.outbox_bytes += batch.payload.len();
        self.outbox.push_front(batch);
        self.record_outbox();
    }

    fn record_outbox(&self) {
        if self.adopted {
            return;
        }
        metrics::gauge!("tracker_edge_outbox_bytes").set(self.outbox_bytes as f64);
    }

    fn record_spool_metrics(&self) {
        let Some(spool) = self.spool.as_ref().filter(|_| !self.adopted) else {
            return;
        };
        metrics::gauge!("tracker_edge_spool_bytes").set(spool.bytes() as f64);
        metrics::gauge!("tracker_edge_unconfirmed_visits").set(spool.unconfirmed_visits() as f64);
        let age = spool
            .oldest_unconfirmed()
            .and_then(|since| SystemTime::now().duration_since(since).ok());
        metrics::gauge!("tracker_edge_unconfirmed_oldest_seconds")
            .set(age.unwrap_or_default().as_secs_f64());
    }

    /// The next batch to publish: one waiting in memory, else the spool's next, else (without a
    /// spool) what the queue holds.
    async fn next_batch(&mut self) -> Option<Batch> {
        if let Some(batch) = self.pop_outbox() {
            return Some(batch);
        }
        match self.with_spool(Spool::next_batch).await {
            Some(read) => read.unwrap_or_else(|err| {
                metrics::counter!("tracker_edge_spool_errors_total", "operation" => "read")
                    .increment(1);
                tracing::error!("could not read the spool: {err}");
                None
            }),
            None => {
                let first = self.queue.try_recv().ok()?;
                Some(self.fill_batch(first))
            }
        }
    }

    /// Hands the next batch to rumqttc if it may go now: first those waiting, then new ones.
    async fn publish_next(&mut self) {
        if self.can_submit() {
            let Some(batch) = self.next_batch().await else {
                return;
            };
            let client = &self.connection.as_ref().expect("connected").client;
            match client.try_publish(&self.topic, batch.payload.clone()) {
                Ok(()) => {
                    metrics::counter!("tracker_edge_visits_published_total")
                        .increment(batch.visits as u64);
                    self.unacked.submitted(Instant::now(), batch);
                }
                Err(err) => {
                    // Not sent is not lost: the batch waits for the next try.
                    tracing::debug!("publish not accepted by the client: {err}");
                    self.unpop_outbox(batch);
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
            spooled: false,
            last_seq: None,
        }
    }

    fn connect(&mut self) {
        let options = self.options.current();
        tracing::debug!(broker = %options.address(), protocol = %options.protocol, "connecting to the broker");
        let capacity = 2 * self.window.max_batches() + 8;
        self.connection = Some(Connection::open(options, capacity));
    }

    async fn on_event(&mut self, event: Option<LinkEvent>) {
        match event {
            Some(LinkEvent::Connected) => {
                let options = self.options.current();
                tracing::info!(topic = %self.topic, broker = %options.address(), protocol = %options.protocol, "connected to the broker");
                self.set_connected(true);
                self.retry_delays = Box::new(common::backoff::retry_delays());
                self.subscribe_to_receipts();
            }
            // With receipts, a PUBACK only frees room in the window: what is kept or deleted follows
            // the sequence numbers the sink confirms, never this pairing.
            Some(LinkEvent::Sent(pkid)) => self.unacked.sent(pkid),
            Some(LinkEvent::PubAck { pkid, refused }) => {
                let Some((submitted_at, batch)) = self.unacked.acked(pkid) else {
                    return;
                };
                match refused {
                    None => self.on_delivered(submitted_at, batch).await,
                    Some(reason) => self.on_refused(reason, batch).await,
                }
            }
            Some(LinkEvent::Message { topic, payload }) => self.on_receipt(&topic, &payload).await,
            Some(LinkEvent::SubAck {
                refused: Some(codes),
            }) => {
                tracing::error!(topic = ?self.receipt_topic, %codes, "the broker refused the receipt subscription: visits stay in the spool until it is allowed (mosquitto/acl)");
            }
            Some(LinkEvent::SubAck { refused: None }) => {}
            Some(LinkEvent::Lost(why)) => self.connection_lost(&why),
            None => self.connection_lost("connection closed"),
        }
    }

    fn subscribe_to_receipts(&self) {
        let (Some(topic), Some(connection)) = (&self.receipt_topic, &self.connection) else {
            return;
        };
        if let Err(err) = connection.client.try_subscribe(topic) {
            // Not fatal: the next connection subscribes again; meanwhile visits stay spooled.
            tracing::error!("could not request the receipt subscription: {err}");
        }
    }

    async fn on_delivered(&mut self, submitted_at: Instant, batch: Batch) {
        self.window.acked(batch.payload.len());
        self.delivered += batch.visits as u64;
        metrics::counter!("tracker_edge_visits_acknowledged_total").increment(batch.visits as u64);
        metrics::histogram!("tracker_edge_publish_ack_seconds").record(submitted_at.elapsed());
        // Without receipts the PUBACK confirms; PUBACKs come in publishing order, so everything
        // spooled before this batch is acknowledged too. With them, it starts the wait for a receipt.
        match (&self.receipt_topic, batch.last_seq) {
            (None, Some(last_seq)) => self.confirm_through(last_seq).await,
            (Some(_), Some(last_seq)) => self.receipt_wait.acked(last_seq, Instant::now()),
            (_, None) => {}
        }
    }

    /// Assumption: any refusal is passing (no subscriber yet, quota); the visits are kept and retried.
    /// With receipts a spooled batch keeps its numbers (the sink's mark waits for them, and the
    /// numbers above are no reason to drop them); without, the PUBACKs of later batches release it
    /// from the spool, so it is appended again with new numbers.
    async fn on_refused(&mut self, reason: String, batch: Batch) {
        metrics::counter!("tracker_edge_puback_refused_total", "reason" => reason.clone())
            .increment(1);
        tracing::warn!(
            %reason,
            visits = batch.visits,
            "broker refused a batch; retrying in {REFUSED_PAUSE:?}"
        );
        self.paused_until = Some(Instant::now() + REFUSED_PAUSE);
        self.window.reset();
        if batch.spooled && self.receipt_topic.is_none() {
            let payload = batch.payload.clone();
            match self.with_spool(move |spool| spool.append(&payload)).await {
                Some(Ok(())) => return,
                Some(Err(err)) => {
                    metrics::counter!("tracker_edge_spool_errors_total", "operation" => "append")
                        .increment(1);
                    tracing::error!(
                        "could not spool a refused batch again, holding it in memory: {err}"
                    )
                }
                None => {}
            }
        }
        self.push_outbox(batch);
    }

    async fn on_receipt(&mut self, topic: &[u8], payload: &[u8]) {
        if self.receipt_topic.as_deref().map(str::as_bytes) != Some(topic) {
            return;
        }
        let Some(seq) = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        else {
            tracing::warn!(payload = ?String::from_utf8_lossy(payload), "ignored a receipt that is not a sequence number");
            return;
        };
        match self.receipt_wait.receipt(seq, Instant::now()) {
            Receipt::Advanced => self.confirm_through(seq).await,
            Receipt::Same => {}
            Receipt::WentBack { earlier } => tracing::warn!(
                earlier,
                now = seq,
                "the broker lost its state (this edge's receipt went back): sending again all the sink has not confirmed"
            ),
        }
    }

    /// Once the receipt has stopped short of the PUBACKs for too long (the broker acknowledged
    /// visits it did not deliver), sends again everything unconfirmed, or a probe while no receipt
    /// says the sink is there (see `receipt_wait`).
    async fn resend_if_unconfirmed(&mut self) {
        if self.receipt_topic.is_none() || self.connection.is_none() || self.spool.is_none() {
            return;
        }
        let Some(resend) = self.receipt_wait.resend_due(Instant::now()) else {
            return;
        };
        metrics::counter!("tracker_edge_unconfirmed_resends_total").increment(1);
        let confirmed = self.receipt_wait.confirmed();
        match resend {
            Resend::Everything => {
                let visits = self.spool.as_mut().map_or(0, Spool::rewind);
                tracing::warn!(
                    visits,
                    ?confirmed,
                    "the sink's receipt stops short of what the broker acknowledged (a broker queue overflowed, or no sink session yet): sending again every visit the sink has not confirmed"
                );
            }
            Resend::Probe => match self
                .with_spool(|spool| spool.oldest_unconfirmed_batch())
                .await
            {
                Some(Ok(Some(batch))) => {
                    tracing::info!(
                        visits = batch.visits,
                        ?confirmed,
                        "no receipt covers what the broker acknowledged (is the sink away?): sending the oldest unconfirmed batch again as a probe"
                    );
                    self.push_outbox(batch);
                }
                Some(Ok(None)) | None => {}
                Some(Err(err)) => {
                    metrics::counter!("tracker_edge_spool_errors_total", "operation" => "read")
                        .increment(1);
                    tracing::error!("could not read the spool: {err}");
                }
            },
        }
    }

    async fn confirm_through(&mut self, seq: u64) {
        if let Some(Err(err)) = self
            .with_spool(move |spool| spool.confirm_through(seq))
            .await
        {
            metrics::counter!("tracker_edge_spool_errors_total", "operation" => "cleanup")
                .increment(1);
            tracing::warn!("could not clean up the spool: {err}");
        }
        self.record_spool_metrics();
    }

    fn connection_lost(&mut self, why: &str) {
        metrics::counter!("tracker_edge_broker_reconnects_total").increment(1);
        let delay = self.retry_delays.next().unwrap_or(Duration::from_secs(5));
        let resend = self.unacked.len();
        let broker = self.options.current().address();
        let next = self.options.advance().address();
        tracing::warn!(batches_to_resend = resend, %broker, %next, retry_in = ?delay, "broker connection lost: {why}");
        let mut unacked = self.unacked.take_all();
        let rewind = self.receipt_topic.is_some() && self.spool.is_some();
        if rewind {
            // The spool sends again everything unconfirmed, in order; only memory batches stay here.
            unacked.retain(|batch| !batch.spooled);
            let in_memory: Vec<Batch> = self.outbox.drain(..).filter(|b| !b.spooled).collect();
            self.outbox_bytes = 0;
            in_memory
                .into_iter()
                .for_each(|batch| self.push_outbox(batch));
            let visits = self.spool.as_mut().map_or(0, Spool::rewind);
            if visits > 0 {
                tracing::info!(
                    visits,
                    "will send again every visit the sink has not confirmed (a broker that went away may have lost them)"
                );
            }
        }
        for batch in unacked.into_iter().rev() {
            self.unpop_outbox(batch);
        }
        self.connection = None;
        self.receipt_wait.connection_lost();
        self.window.reset();
        self.set_connected(false);
        self.reconnect_at = Instant::now() + delay;
    }

    async fn finish(mut self) -> bool {
        let lost = self.visits_in_memory_only();
        let delivered = self.delivered;
        let everything = self.holds_nothing() && lost == 0;
        if everything {
            tracing::info!(delivered, "publisher stopped, everything delivered");
        }
        if let Some(spool) = self.spool.as_ref().filter(|s| s.holds_unconfirmed()) {
            tracing::warn!(
                delivered,
                unconfirmed = spool.unconfirmed_visits(),
                spool_bytes = spool.bytes(),
                "publisher stopped; unconfirmed visits stay in the spool for the next start"
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
        let adopted = self.adopted;
        let closed = self
            .with_spool(move |spool| match adopted && !spool.holds_unconfirmed() {
                true => spool.remove().map(|()| true),
                false => spool.close(),
            })
            .await;
        match closed {
            Some(Ok(true)) => tracing::info!("the spool held nothing unconfirmed: emptied"),
            Some(Ok(false)) | None => {}
            Some(Err(err)) => {
                metrics::counter!("tracker_edge_spool_errors_total", "operation" => "cleanup")
                    .increment(1);
                tracing::warn!("could not close the spool: {err}");
            }
        }
        everything
    }
}

async fn next_event(connection: &mut Option<Connection>) -> Option<LinkEvent> {
    match connection {
        Some(connection) => connection.events.recv().await,
        None => std::future::pending().await,
    }
}
