//! The sink's small HTTP listener (`metrics.listen`): `GET /healthz` (alive), `GET /readyz` (subscribed
//! and the log writable) and `GET /metrics` (Prometheus).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::metrics::PrometheusHandle;
use tokio::net::TcpListener;
use warp::http::{header, StatusCode};
use warp::reply::Reply;
use warp::Filter;

/// What `/readyz` reports on, set by the subscription and the writer.
#[derive(Debug, Default)]
pub struct SinkHealth {
    /// The broker confirmed the subscription on the current connection.
    pub subscribed: AtomicBool,
    /// The last flush succeeded (true until one fails).
    pub writable: AtomicBool,
}

/// Serves the health and metrics routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Arc<SinkHealth>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let healthz = warp::path!("healthz").map(|| "ok".into_response());
    let readyz = warp::path!("readyz").map(move || {
        let subscribed = health.subscribed.load(Ordering::Relaxed);
        let writable = health.writable.load(Ordering::Relaxed);
        match (subscribed, writable) {
            (true, true) => "ready".into_response(),
            (false, _) => {
                warp::reply::with_status("not subscribed", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            }
            (true, false) => {
                warp::reply::with_status("the log is not writable", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            }
        }
    });
    let metrics = warp::path!("metrics").map(move || {
        warp::reply::with_header(
            metrics.render(),
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    let routes = warp::get().and(healthz.or(readyz).unify().or(metrics).unify());
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
