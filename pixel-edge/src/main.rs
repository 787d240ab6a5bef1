//! The pixel-edge binary: settings, logging, a runtime of `http.workers` threads, bind, then
//! [`pixel_edge::run`] until SIGTERM or SIGINT; SIGHUP reloads the HTTPS certificate. Exits non-zero
//! when a task of the edge ended unexpectedly. `pixel-edge healthcheck` instead asks the running edge's
//! `/readyz` on `admin.listen` (the image's HEALTHCHECK) and exits 0 only on 200.

use std::sync::Arc;

use common::configuration::Sources;
use common::{shutdown, telemetry};
use pixel_edge::configuration::Settings;
use pixel_edge::Listeners;
use tokio::sync::Notify;

fn main() -> anyhow::Result<()> {
    let settings = Settings::load(Sources::from_process())?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return common::admin::probe(settings.admin.listen).map_err(anyhow::Error::msg);
    }
    telemetry::init(&settings.log);
    tracing::info!(config = ?settings, "effective configuration (secrets masked)");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = settings.http.workers {
        runtime.worker_threads(workers.get());
    }
    runtime.enable_all().build()?.block_on(async {
        let listeners = Listeners::bind(&settings).await?;
        let reload_certificate = Arc::new(Notify::new());
        let mut hangups = shutdown::forward_hangups(
            reload_certificate.clone(),
            "reloading the HTTPS certificate",
        )?;
        tokio::select! {
            result = pixel_edge::run(
                settings,
                listeners,
                reload_certificate,
                shutdown::signal_received(),
            ) => result,
            ended = hangups.ended() => Err(ended.into()),
        }
    })
}
