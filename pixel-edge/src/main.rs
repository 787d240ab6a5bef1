//! The pixel-edge binary: settings, logging, a runtime of `http.workers` threads, bind, then
//! [`pixel_edge::run`] until SIGTERM or SIGINT.

use anyhow::Context;
use common::configuration::Sources;
use common::{shutdown, telemetry};
use pixel_edge::configuration::Settings;
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let settings = Settings::load(Sources::from_process())?;
    telemetry::init(&settings.log);
    tracing::info!(config = ?settings, "effective configuration (secrets masked)");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = settings.http.workers {
        runtime.worker_threads(workers);
    }
    runtime.enable_all().build()?.block_on(async {
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("binding http.listen = {}", settings.http.listen))?;
        pixel_edge::run(settings, listener, shutdown::signal_received()).await
    })
}
