//! The pixel edge: serves `GET /track` with a transparent GIF at once and hands each visit to a
//! bounded queue; one publisher task delivers the queue to the broker.

mod batch;
pub mod configuration;
mod connection;
mod publisher;
pub mod queue;
pub mod routes;
mod spool;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::publisher::Publisher;
use crate::spool::Spool;

/// How long open HTTP connections may take to finish after shutdown is asked for.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Serves the pixel on `listener` until `shutdown` resolves, then stops accepting, lets open requests
/// finish, and delivers what the edge still holds (within `edge.drain_timeout_secs`).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
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
    let stop_publishing = CancellationToken::new();
    let publisher = tokio::spawn(
        Publisher::new(&settings, queue_rx, spool)
            .run(stop_publishing.clone(), settings.drain_timeout()),
    );

    tracing::info!(
        listen = %listener.local_addr()?,
        edge = %settings.edge.id,
        broker = %format!("{}:{}", settings.mqtt.host, settings.mqtt.port),
        "pixel edge started"
    );
    let stop_http = CancellationToken::new();
    let server = warp::serve(routes::routes(queue, Arc::from(settings.edge.id.as_str())))
        .incoming(listener)
        .graceful(stop_http.clone().cancelled_owned())
        .run();
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => {}
        _ = shutdown => {
            stop_http.cancel();
            if tokio::time::timeout(HTTP_GRACE, &mut server).await.is_err() {
                tracing::warn!("HTTP connections still open after {HTTP_GRACE:?}; no longer waiting for them");
            }
        }
    }

    stop_publishing.cancel();
    publisher.await?;
    Ok(())
}
