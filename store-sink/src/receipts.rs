//! Receipts: after each durable flush the sink tells every edge that had events in it up to which
//! sequence number its visits are in the log, so the edge can delete them from its spool. Published
//! retained at QoS 1 on `{mqtt.receipt_topic}/{edge.id}`, so an edge reads its receipt on every connect,
//! also after a restart of its own.
//!
//! Receipts travel on a connection of their own (client id `{client id}-receipts`, clean session), so
//! a slow or refusing broker can hold up receipts only, never the writer's acks. The writer only
//! records the newest number per edge in a map; one task publishes what the map holds at most every
//! [`COALESCE`], the newest number per edge (older ones are superseded), and another polls the event loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::configuration::SettingsError;
use common::in_turn::InTurn;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::subscription;

/// One receipt per edge per this interval at most.
const COALESCE: Duration = Duration::from_millis(100);
/// Room in the receipt connection's request channel; a full channel only delays receipts.
const REQUEST_CAPACITY: usize = 256;

/// The writer's side: cheap to clone, never waits.
#[derive(Clone)]
pub struct Receipts {
    /// What to publish next: per edge topic, the newest number.
    pending: Arc<Mutex<HashMap<String, u64>>>,
    /// Every edge's newest number, published again after a reconnect (a clean session forgets
    /// what it had not sent).
    newest: Arc<Mutex<HashMap<String, u64>>>,
    wake: Arc<Notify>,
}

impl Receipts {
    /// Records that `topic`'s events up to `seq` are durably written.
    pub fn confirm(&self, durable: Vec<(String, u64)>) {
        if durable.is_empty() {
            return;
        }
        let mut newest = self.newest.lock().expect("not poisoned");
        for (topic, seq) in &durable {
            let highest = newest.entry(topic.clone()).or_default();
            *highest = (*highest).max(*seq);
        }
        drop(newest);
        self.queue(durable);
    }

    fn queue(&self, receipts: impl IntoIterator<Item = (String, u64)>) {
        let mut pending = self.pending.lock().expect("not poisoned");
        for (topic, seq) in receipts {
            let highest = pending.entry(topic).or_default();
            *highest = (*highest).max(seq);
        }
        drop(pending);
        self.wake.notify_one();
    }

    fn queue_all_again(&self) {
        let newest = self.newest.lock().expect("not poisoned").clone();
        self.queue(newest);
    }
}

/// The receipt connection and its publisher, as one task to spawn; at `stop` (once the writer is
/// done) what is pending goes out, then the connection closes and the task ends.
pub fn start(
    settings: &Settings,
    stop: CancellationToken,
) -> Result<(Receipts, impl Future<Output = ()> + Send + 'static), SettingsError> {
    let brokers = subscription::mqtt_options(settings, |options| {
        options.set_client_id(format!("{}-receipts", settings.client_id()));
        options.set_clean_session(true);
        options.set_manual_acks(false);
    })?;
    let (client, mut eventloop) = AsyncClient::new(brokers.current().clone(), REQUEST_CAPACITY);
    eventloop
        .network_options
        .set_connection_timeout(settings.mqtt.connect_timeout_secs.get());
    let receipts = Receipts {
        pending: Arc::default(),
        newest: Arc::default(),
        wake: Arc::default(),
    };
    let publisher = Publisher {
        client: client.clone(),
        visits_topic: settings.mqtt.topic.clone(),
        receipt_topic: settings.mqtt.receipt_topic.clone(),
        receipts: receipts.clone(),
    };
    let driver = drive(eventloop, brokers, receipts.clone(), stop.clone());
    let task = async move {
        // Both in this one task: the event loop is polled without pause while receipts go out.
        tokio::join!(driver, async move {
            publisher.run(stop).await;
            let _ = client.try_disconnect();
        });
    };
    Ok((receipts, task))
}

struct Publisher {
    client: AsyncClient,
    /// `mqtt.topic`: an edge's visits arrive on `{visits_topic}/{edge.id}`.
    visits_topic: String,
    receipt_topic: String,
    receipts: Receipts,
}

impl Publisher {
    async fn run(self, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                _ = self.receipts.wake.notified() => false,
                _ = stop.cancelled() => true,
            };
            let batch = std::mem::take(&mut *self.receipts.pending.lock().expect("not poisoned"));
            for (topic, seq) in batch {
                self.publish(topic, seq);
            }
            if stopping {
                return;
            }
            tokio::time::sleep(COALESCE).await;
        }
    }

    fn publish(&self, topic: String, seq: u64) {
        let Some(edge) = topic.strip_prefix(&format!("{}/", self.visits_topic)) else {
            return;
        };
        let receipt_topic = format!("{}/{edge}", self.receipt_topic);
        match self
            .client
            .try_publish(&receipt_topic, QoS::AtLeastOnce, true, seq.to_string())
        {
            Ok(()) => metrics::counter!("tracker_sink_receipts_published_total").increment(1),
            Err(err) => {
                // Kept for the next round, unless a newer number arrived meanwhile.
                tracing::debug!(%receipt_topic, "receipt not accepted by the client, retrying: {err}");
                self.receipts.queue([(topic, seq)]);
            }
        }
    }
}

/// Polls the receipt connection's event loop, reconnecting with backoff (to the next of `brokers`),
/// until `stop` (or until its DISCONNECT went out).
async fn drive(
    mut eventloop: EventLoop,
    mut brokers: InTurn<MqttOptions>,
    receipts: Receipts,
    stop: CancellationToken,
) {
    let mut retry_delays = common::backoff::retry_delays();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                retry_delays = common::backoff::retry_delays();
                receipts.queue_all_again();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(err) => {
                let delay = retry_delays.next().unwrap_or(Duration::from_secs(5));
                let next = subscription::next_broker(&mut eventloop, &mut brokers);
                tracing::warn!(%next, retry_in = ?delay, "receipt connection lost: {err}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
