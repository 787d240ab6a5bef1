//! The store-sink binary: logging, settings, bind the metrics listener, then [`store_sink::run`] until SIGTERM or SIGINT;
//! SIGHUP reopens the log files (log rotation).
//! Exits non-zero when a task of the sink ended unexpectedly.

use anyhow::Context;
use common::configuration::Sources;
use common::{shutdown, telemetry};
use std::sync::Arc;
use store_sink::configuration::Settings;

use tokio::net::TcpListener;
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(Sources::from_process())?;
    telemetry::init(&settings.log);
    tracing::info!(config = ?settings, "effective configuration (secrets masked)");
    let metrics_listener = TcpListener::bind(settings.metrics.listen)
        .await
        .with_context(|| format!("binding metrics.listen = {}", settings.metrics.listen))?;
    let reopen = Arc::new(Notify::new());
    let mut hangups = shutdown::forward_hangups(reopen.clone(), "reopening the log files")?;
    tokio::select! {
        result = store_sink::run(
            settings,
            metrics_listener,
            reopen,
            shutdown::signal_received(),
        ) => result,
        ended = hangups.ended() => Err(ended.into()),
    }
}
