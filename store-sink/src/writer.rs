//! The writer: takes the messages the subscription forwards, writes every visit they carry, flushes
//! and syncs once per batch, and only then acks them, in the order they arrived, and hands the edges'
//! receipts on. While writing fails nothing is acked; the batch is retried with backoff. File I/O runs
//! on the blocking pool (see [`common::blocking`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use common::blocking::on_blocking_pool;
use rumqttc::Publish;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::acks::Acks;
use crate::configuration::StorageSettings;
use crate::health::SinkHealth;
use crate::inbox;
use crate::receipts::Receipts;
use crate::storage::{Outcome, Storage};

/// At most this many messages share one flush; the broker keeps up to 1000 in flight to the sink.
const MAX_BATCH_MESSAGES: usize = 1000;
/// A batch stops growing once its messages carry this many bytes, so what one flush formats stays
/// bounded whatever the messages hold (the inbox bounds what waits behind it).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// A small batch this soon after the last flush means a steady trickle: the writer then waits `LINGER`
/// for more to share the flush. Fewer, larger batches cut the sink's CPU per visit under load
/// (bench/RESULTS.md); a lone visit under light load, or a backlog, is written at once.
const BUSY_WITHIN: Duration = Duration::from_millis(2);
const LINGER: Duration = Duration::from_millis(1);
const LINGER_BELOW: usize = 50;

pub struct Writer {
    /// `None` only while a flush runs on the blocking pool.
    storage: Option<Storage>,
    settings: StorageSettings,
    acks: Acks,
    health: Arc<SinkHealth>,
    receipts: Receipts,
}

impl Writer {
    pub fn new(
        storage: Storage,
        settings: StorageSettings,
        acks: Acks,
        health: Arc<SinkHealth>,
        receipts: Receipts,
    ) -> Self {
        Self {
            storage: Some(storage),
            settings,
            acks,
            health,
            receipts,
        }
    }

    /// Runs until `stop`: then what was already received is written and acked, and it returns.
    pub async fn run(
        mut self,
        mut messages: inbox::Receiver,
        reopen: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let mut last_flush: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                message = messages.recv() => message,
                // Between batches everything is flushed and synced: no visit is split across files.
                _ = reopen.notified() => {
                    self.reopen().await;
                    continue;
                }
                // Closing lets `recv` hand out what is already queued, then end the loop.
                _ = stop.cancelled(), if !messages.is_closed() => {
                    messages.close();
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            take_waiting(&mut messages, &mut batch);
            if batch.len() < LINGER_BELOW && last_flush.is_some_and(|at| at.elapsed() < BUSY_WITHIN)
            {
                tokio::time::sleep(LINGER).await;
                take_waiting(&mut messages, &mut batch);
            }
            let stored = self.store(&batch, &stop).await;
            last_flush = Some(Instant::now());
            if !stored {
                tracing::warn!(
                    messages = batch.len(),
                    "stopping with a batch not written; it stays unacked for redelivery"
                );
                break;
            }
            for message in &batch {
                self.acks.ack(message);
                messages.release(message);
            }
        }
    }

    async fn reopen(&mut self) {
        let settings = self.settings.clone();
        match self
            .on_storage(move |storage| storage.reopen(&settings))
            .await
        {
            Ok(()) => {
                tracing::info!(path = %self.settings.path.display(), "reopened the visits log")
            }
            Err(err) => tracing::error!(
                "could not reopen the visits log, writing on to the old file: {err}"
            ),
        }
    }

    /// Writes the batch, retrying failed flushes with backoff; `false` if shutdown came first.
    async fn store(&mut self, batch: &[Publish], stop: &CancellationToken) -> bool {
        let storage = self
            .storage
            .as_mut()
            .expect("storage is back after each flush");
        let mut outcome = Outcome::default();
        for message in batch {
            outcome += storage.add_message(&message.topic, &message.payload);
        }
        if outcome.duplicates > 0 {
            tracing::info!(
                duplicates = outcome.duplicates,
                "skipped visits already in the log"
            );
        }
        let bytes = storage.pending_bytes();
        let mut retry_delays = common::backoff::retry_delays();
        loop {
            let started = Instant::now();
            let flushed = self.flush().await;
            self.health
                .writable
                .store(flushed.is_ok(), Ordering::Relaxed);
            match flushed {
                Ok(()) => {
                    metrics::histogram!("tracker_sink_flush_seconds").record(started.elapsed());
                    if let Some(storage) = &mut self.storage {
                        self.receipts.confirm(storage.take_receipts());
                    }
                    record_stored(
                        &outcome,
                        bytes,
                        self.storage.as_mut().and_then(Storage::take_newest_visit),
                    );
                    tracing::debug!(messages = batch.len(), ?outcome, "batch stored");
                    return true;
                }
                Err(err) => {
                    metrics::counter!("tracker_sink_write_retries_total").increment(1);
                    let delay = retry_delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::error!(retry_in = ?delay, "writing visits failed, nothing acked: {err}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return false,
                    }
                }
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.on_storage(Storage::flush).await
    }

    /// Runs `work` on the storage on the blocking pool.
    async fn on_storage<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Storage) -> T + Send + 'static,
    ) -> T {
        let storage = self
            .storage
            .take()
            .expect("storage is back after each call");
        let (storage, out) = on_blocking_pool(storage, work).await;
        self.storage = Some(storage);
        out
    }
}

/// Moves the messages already waiting into `batch`, up to its size limits.
fn take_waiting(messages: &mut inbox::Receiver, batch: &mut Vec<Publish>) {
    let mut bytes: usize = batch.iter().map(|message| message.payload.len()).sum();
    while batch.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
        match messages.try_recv() {
            Some(message) => {
                bytes += message.payload.len();
                batch.push(message);
            }
            None => break,
        }
    }
}

fn record_stored(outcome: &Outcome, bytes: usize, newest_visit: Option<DateTime<Utc>>) {
    metrics::counter!("tracker_sink_visits_written_total").increment(outcome.written as u64);
    metrics::counter!("tracker_sink_duplicates_dropped_total").increment(outcome.duplicates as u64);
    metrics::counter!("tracker_sink_events_rejected_total").increment(outcome.rejected as u64);
    metrics::counter!("tracker_sink_dead_letter_messages_total")
        .increment(outcome.dead_letters as u64);
    metrics::counter!("tracker_sink_dead_letter_bytes_total")
        .increment(outcome.dead_letter_bytes as u64);
    metrics::counter!("tracker_sink_bytes_written_total").increment(bytes as u64);
    if let Some(newest) = newest_visit {
        let lag = (Utc::now() - newest).to_std().unwrap_or_default();
        metrics::gauge!("tracker_sink_lag_seconds").set(lag.as_secs_f64());
    }
}
