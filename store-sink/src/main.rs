//! The store-sink binary: logging, settings, then [`store_sink::run`] until SIGTERM or SIGINT.

use common::configuration::Sources;
use common::{shutdown, telemetry};
use store_sink::configuration::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings = Settings::load(Sources::from_process())?;
    store_sink::run(settings, shutdown::signal_received()).await
}
