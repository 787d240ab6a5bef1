//! The process's signals: the shutdown request, SIGTERM (container stop) or SIGINT (Ctrl-C), and
//! SIGHUP, which asks a service to pick up renewed files.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::supervision::Watched;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal_received() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Notifies `to` on every SIGHUP, logging that it will `then` (e.g. "reopening the log files"), from a
/// task the caller watches.
pub fn forward_hangups(to: Arc<Notify>, then: &'static str) -> std::io::Result<Watched> {
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(Watched::spawn("SIGHUP forwarder", async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received, {then}");
            to.notify_one();
        }
    }))
}
