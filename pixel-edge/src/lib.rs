//! The pixel edge: serves `GET /track` with a transparent GIF at once and hands each visit to a
//! bounded queue; one publisher task delivers the queue to the broker.

mod batch;
pub mod configuration;
mod connection;
mod publisher;
pub mod queue;
pub mod routes;
mod server;
mod spool;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::publisher::Publisher;
use crate::routes::Tracker;
use crate::spool::Spool;

/// Serves the pixel on `listener` until `shutdown` resolves, then stops accepting, lets open requests
/// finish, and delivers what the edge still holds (within `edge.drain_timeout_secs`).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // First, so that no metric is recorded before the recorder exists.
    let metrics = common::metrics::handle();
    let spool = match &settings.edge.spool_dir {
        Some(dir) => Some(
            Spool::open(dir, settings.edge.spool_max_bytes)
                .with_context(|| format!("opening edge.spool_dir {}", dir.display()))?,
        ),
        None => {
            tracing::warn!("no edge.spool_dir: visits wait in memory only and are lost if the edge stops while the broker is away");
            None
        }
    };
    let (queue, queue_rx) = queue::channel(settings.edge.queue_capacity);
    let broker_connected = Arc::new(AtomicBool::new(false));
    let stop_publishing = CancellationToken::new();
    let publisher = Publisher::new(&settings, queue_rx, spool, broker_connected.clone())?;
    let publisher = tokio::spawn(publisher.run(stop_publishing.clone(), settings.drain_timeout()));

    let tracker = Arc::new(Tracker {
        queue,
        edge_id: settings.edge.id.clone(),
        max_field_bytes: settings.edge.max_field_bytes,
        broker_connected,
        metrics,
    });
    tracing::info!(listen = %listener.local_addr()?, "pixel edge started");
    server::serve(listener, routes::routes(tracker), &settings.http, shutdown).await;

    stop_publishing.cancel();
    publisher.await?;
    Ok(())
}
