//! The store-sink binary: logging, settings, bind the metrics listener, then [`store_sink::run`] until SIGTERM or SIGINT.

use anyhow::Context;
use common::configuration::Sources;
use common::{shutdown, telemetry};
use store_sink::configuration::Settings;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings = Settings::load(Sources::from_process())?;
    let metrics_listener = TcpListener::bind(settings.metrics.listen)
        .await
        .with_context(|| format!("binding metrics.listen = {}", settings.metrics.listen))?;
    store_sink::run(settings, metrics_listener, shutdown::signal_received()).await
}
