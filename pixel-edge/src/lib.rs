//! The pixel edge: serves `GET /track` with a transparent GIF at once, over HTTP and HTTPS, and hands
//! each visit to a bounded queue; one publisher task delivers the queue to the broker. The server, the
//! publisher, the admin listener, the certificate reloader and the orphan adopter (`orphans`) are
//! watched: if one ends before shutdown, `run` fails.

mod batch;
pub mod configuration;
mod connection;
mod flight_window;
mod forwarded;
pub mod https;
mod idle;
mod orphans;
pub mod privacy;
mod proxy_protocol;
mod publisher;
pub mod queue;
mod receipt_wait;
pub mod routes;
mod server;
mod spool;
mod unacked;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use common::supervision::Watched;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::https::Certificate;
use crate::orphans::Orphans;
use crate::privacy::Privacy;
use crate::publisher::Publisher;
use crate::routes::{RequestCounters, Tracker};
use crate::spool::Spool;

/// The sockets the edge serves on.
pub struct Listeners {
    /// `/healthz`, `/readyz` and `/metrics`, on `admin.listen`.
    pub admin: TcpListener,
    /// Plain HTTP, when `http.enabled`.
    pub http: Option<TcpListener>,
    /// HTTPS, when `https.listen` is set.
    pub https: Option<TcpListener>,
}

impl Listeners {
    /// Binds `http.listen` and `https.listen` as the settings ask.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let http = match settings.http.enabled {
            true => Some(bind(settings.http.listen, "http.listen").await?),
            false => None,
        };
        let https = match settings.https.listen {
            Some(addr) => Some(bind(addr, "https.listen").await?),
            None => None,
        };
        let admin = bind(settings.admin.listen, "admin.listen").await?;
        Ok(Self { admin, http, https })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {key} = {addr}"))
}

/// Serves the pixel on `listeners` until `shutdown` resolves, then stops accepting, lets open requests
/// finish, and delivers what the edge still holds (within `edge.drain_timeout_secs`). Each
/// `reload_certificate` notification (SIGHUP) reloads the HTTPS certificate. Fails, after logging why,
/// as soon as one of its long-lived tasks ends unexpectedly.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    reload_certificate: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // First, so that no metric is recorded before the recorder exists.
    let metrics = common::metrics::handle();
    let privacy = Privacy::new(&settings.privacy)?;
    let spool = match settings.edge.spool_dir.clone() {
        Some(dir) => {
            let max_bytes = settings.edge.spool_max_bytes;
            let opened = tokio::task::spawn_blocking(move || {
                Spool::open(&dir, max_bytes)
                    .with_context(|| format!("opening edge.spool_dir {}", dir.display()))
            });
            Some(opened.await??)
        }
        None => {
            tracing::warn!("edge.receipts is off and there is no edge.spool_dir: visits wait in memory only and are lost if the edge stops while the broker is away, or if the broker crashes");
            None
        }
    };
    let (queue, queue_rx) = queue::channel(
        settings.edge.queue_capacity.get(),
        settings.edge.queue_max_bytes,
    );
    let broker_connected = Arc::new(AtomicBool::new(false));
    let stop_publishing = CancellationToken::new();
    let publisher = Publisher::new(&settings, queue_rx, spool, broker_connected.clone())?;
    let publishing = publisher.run(stop_publishing.clone(), settings.drain_timeout());
    let mut publisher = Watched::spawn("publisher", async move {
        publishing.await;
    });
    let stop_adopting = CancellationToken::new();
    let mut adopter = settings.spool_root().map(|root| {
        let orphans = Orphans::new(&settings, root);
        Watched::spawn("orphan adopter", orphans.run(stop_adopting.clone()))
    });

    let tracker = Arc::new(Tracker {
        queue,
        edge_id: settings.edge.id.clone(),
        max_field_bytes: settings.edge.max_field_bytes.get(),
        trusted_proxies: settings.http.trusted_proxies(),
        privacy,
        broker_connected,
        requests: RequestCounters::register(),
    });
    let stop_reloading = CancellationToken::new();
    let https = match listeners.https {
        Some(listener) => {
            let certificate = Certificate::load(&settings.https)?;
            let config = certificate.server_config();
            let reloader = Watched::spawn(
                "certificate reloader",
                certificate.keep_fresh(
                    settings.https.reload_check(),
                    reload_certificate,
                    stop_reloading.clone(),
                ),
            );
            Some((listener, config, reloader))
        }
        None => None,
    };
    tracing::info!(
        http = ?listeners.http.as_ref().map(TcpListener::local_addr).transpose()?,
        https = ?https.as_ref().map(|(l, _, _)| l.local_addr()).transpose()?,
        admin = %listeners.admin.local_addr()?,
        privacy = %tracker.privacy,
        "pixel edge started"
    );
    let (https, mut reloader) = match https {
        Some((listener, config, reloader)) => (Some((listener, config)), Some(reloader)),
        None => (None, None),
    };
    let stop_serving = CancellationToken::new();
    // Stopped last: health and metrics stay up while the edge drains.
    let stop_admin = CancellationToken::new();
    let mut admin = Watched::spawn(
        "admin listener",
        common::admin::serve(
            listeners.admin,
            tracker.clone(),
            metrics,
            stop_admin.clone().cancelled_owned(),
        ),
    );
    let http_settings = settings.http.clone();
    let serving = stop_serving.clone().cancelled_owned();
    let mut server = Watched::spawn("HTTP server", async move {
        server::serve(
            listeners.http,
            https,
            routes::routes(tracker),
            &http_settings,
            serving,
        )
        .await
    });

    tokio::select! {
        _ = shutdown => {}
        ended = server.ended() => return Err(ended.into()),
        ended = publisher.ended() => return Err(ended.into()),
        ended = admin.ended() => return Err(ended.into()),
        ended = async {
            match reloader.as_mut() {
                Some(reloader) => reloader.ended().await,
                None => std::future::pending().await,
            }
        } => return Err(ended.into()),
        ended = async {
            match adopter.as_mut() {
                Some(adopter) => adopter.ended().await,
                None => std::future::pending().await,
            }
        } => return Err(ended.into()),
    }
    stop_serving.cancel();
    server.join().await?;
    stop_reloading.cancel();
    if let Some(reloader) = reloader.as_mut() {
        reloader.join().await?;
    }
    // Together: an adoption drains within the same edge.drain_timeout_secs.
    stop_publishing.cancel();
    stop_adopting.cancel();
    publisher.join().await?;
    if let Some(adopter) = adopter.as_mut() {
        adopter.join().await?;
    }
    stop_admin.cancel();
    admin.join().await?;
    Ok(())
}
