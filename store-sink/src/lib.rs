//! The store sink: one persistent MQTT session in, one append-only visits log out. A message is acked
//! only once every visit it carried is written (and, by default, synced). The subscription, the writer
//! and the admin listener are watched: if one ends before shutdown, `run` fails.

mod acks;
pub mod append_file;
pub mod configuration;
mod health;
mod inbox;
mod receipts;
mod sequences;
pub mod storage;
mod subscription;
mod writer;
mod written_ids;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::supervision::{TaskEnded, Watched};
use rumqttc::AsyncClient;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::health::SinkHealth;
use crate::storage::Storage;
use crate::writer::Writer;

/// Room in the client's request channel for a whole batch of acks.
const REQUEST_CAPACITY: usize = 1024;

/// Stores visits until `shutdown` resolves; then writes, syncs and acks what it has received,
/// disconnects (keeping the session), and returns. Health and metrics are served on `admin_listener`.
/// Each notification of `reopen` (SIGHUP) reopens the log files after the batch being written.
/// Fails, after logging why, as soon as one of its long-lived tasks ends unexpectedly.
pub async fn run(
    settings: Settings,
    admin_listener: TcpListener,
    reopen: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // First, so that no metric is recorded before the recorder exists.
    let metrics = common::metrics::handle();
    let storage_settings = settings.storage.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(&storage_settings))
        .await?
        .context("opening the visits log")?;
    let health = Arc::new(SinkHealth {
        subscribed: AtomicBool::new(false),
        writable: AtomicBool::new(true),
    });
    let brokers = subscription::mqtt_options(&settings, |_| {})?;
    let (client, mut eventloop) = AsyncClient::new(brokers.current().clone(), REQUEST_CAPACITY);
    // rumqttc's v4 client keeps this timeout (connect, and each flush) with the event loop, not the options.
    eventloop
        .network_options
        .set_connection_timeout(settings.mqtt.connect_timeout_secs.get());
    let (to_writer, messages) = inbox::channel();
    let stop = CancellationToken::new();
    let mut driver = Watched::spawn(
        "subscription",
        subscription::drive(
            eventloop,
            brokers,
            client.clone(),
            settings.topic_filter(),
            to_writer,
            stop.clone(),
            health.clone(),
        ),
    );
    let stop_receipts = CancellationToken::new();
    let (receipts, receipts_task) = receipts::start(&settings, stop_receipts.clone())?;
    // A receipt lost with the previous run (written and acked, then a crash) is published again.
    receipts.confirm(storage.all_receipts());
    let mut receipts_task = Watched::spawn("receipts", receipts_task);
    let (acks, acker) = acks::channel(client.clone());
    let mut acker = Watched::spawn("acker", acker.run());
    let writer = Writer::new(
        storage,
        settings.storage.clone(),
        acks,
        health.clone(),
        receipts,
    );
    let mut writer = Watched::spawn("writer", writer.run(messages, reopen, stop.clone()));
    let admin_addr = admin_listener.local_addr()?;
    let mut http = Watched::spawn(
        "admin listener",
        common::admin::serve(
            admin_listener,
            health,
            metrics,
            stop.clone().cancelled_owned(),
        ),
    );
    tracing::info!(
        path = %settings.storage.path.display(),
        rejected = %settings.storage.rejected_path().display(),
        fsync = settings.storage.fsync,
        brokers = %settings.mqtt.brokers()?.into_iter().map(common::in_turn::address).collect::<Vec<_>>().join(","),
        admin = %admin_addr,
        "store sink started"
    );

    tokio::select! {
        _ = shutdown => {}
        ended = driver.ended() => return Err(ended.into()),
        ended = writer.ended() => return Err(cause_behind(ended, &mut driver).await.into()),
        ended = acker.ended() => {
            // The acker also returns when the writer has ended: then the writer's end is the cause.
            return Err(match tokio::time::timeout(Duration::from_secs(1), writer.ended()).await {
                Ok(writer_ended) => cause_behind(writer_ended, &mut driver).await,
                Err(_) => ended,
            }
            .into());
        }
        ended = http.ended() => return Err(ended.into()),
        ended = receipts_task.ended() => return Err(ended.into()),
    }
    stop.cancel();
    writer.join().await?;
    // The writer's end of the acks is gone with it: the acker ends once every ack is queued.
    acker.join().await?;
    stop_receipts.cancel();
    // The acks are queued before the DISCONNECT, so they go out first.
    let _ = client.try_disconnect();
    match tokio::time::timeout(Duration::from_secs(2), driver.join()).await {
        Ok(joined) => joined?,
        Err(_) => {
            tracing::warn!("the broker connection did not close in time");
            driver.abort();
        }
    }
    http.join().await?;
    match tokio::time::timeout(Duration::from_secs(2), receipts_task.join()).await {
        Ok(joined) => joined?,
        Err(_) => {
            tracing::warn!("the receipt connection did not close in time");
            receipts_task.abort();
        }
    }
    tracing::info!("store sink stopped");
    Ok(())
}

/// Why the writer ended: it also returns when the subscription's channel closes, and a subscription
/// that died is then the cause to report, once its end is seen.
async fn cause_behind(writer_ended: TaskEnded, driver: &mut Watched) -> TaskEnded {
    match tokio::time::timeout(Duration::from_secs(1), driver.ended()).await {
        Ok(cause) => cause,
        Err(_) => writer_ended,
    }
}
