//! The store-sink binary: logging, settings, bind the admin listener, then [`store_sink::run`] until SIGTERM or SIGINT;
//! SIGHUP reopens the log files (log rotation).
//! Exits non-zero when a task of the sink ended unexpectedly. `store-sink healthcheck` instead asks the
//! running sink's `/readyz` on `admin.listen` (the image's HEALTHCHECK) and exits 0 only on 200.

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
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return common::admin::probe(settings.admin.listen).map_err(anyhow::Error::msg);
    }
    telemetry::init(&settings.log);
    tracing::info!(config = ?settings, "effective configuration (secrets masked)");
    let admin_listener = TcpListener::bind(settings.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen = {}", settings.admin.listen))?;
    let reopen = Arc::new(Notify::new());
    let mut hangups = shutdown::forward_hangups(reopen.clone(), "reopening the log files")?;
    tokio::select! {
        result = store_sink::run(
            settings,
            admin_listener,
            reopen,
            shutdown::signal_received(),
        ) => result,
        ended = hangups.ended() => Err(ended.into()),
    }
}
