//! The admin listener both services serve on `admin.listen`, apart from any public port: `GET /healthz`
//! (200 while the process runs), `GET /readyz` (200, or 503 saying why not) and `GET /metrics`
//! (Prometheus); 404 for anything else. Also the client half, [`probe`], behind each binary's
//! `healthcheck` subcommand, which the images' HEALTHCHECK runs, so that it follows the settings.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use warp::http::{header, StatusCode};
use warp::reply::Reply;
use warp::Filter;

use crate::metrics::PrometheusHandle;

/// What `/readyz` and `/metrics` ask of the service.
pub trait Health: Send + Sync + 'static {
    /// `Err(why)` answers 503 with `why`.
    fn readiness(&self) -> Result<(), &'static str>;

    /// Sets the gauges that are read at scrape time, before `/metrics` renders.
    fn before_scrape(&self) {}
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub fn serve(
    listener: TcpListener,
    health: Arc<dyn Health>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let healthz = warp::path!("healthz").map(|| "ok".into_response());
    let ready = health.clone();
    let readyz = warp::path!("readyz").map(move || match ready.readiness() {
        Ok(()) => "ready".into_response(),
        Err(why) => warp::reply::with_status(why, StatusCode::SERVICE_UNAVAILABLE).into_response(),
    });
    let metrics = warp::path!("metrics").map(move || {
        health.before_scrape();
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
}

/// `GET /readyz` on the admin listener at `listen` (a wildcard address is reached on loopback):
/// `Ok` on 200, otherwise what went wrong.
pub fn probe(listen: SocketAddr) -> Result<(), String> {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, listen.port());
    let timeout = Duration::from_secs(2);
    let fail = |err: std::io::Error| format!("GET http://{addr}/readyz: {err}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(fail)?;
    // The answer is a status line and a short body: 4 KiB is plenty.
    let mut answer = Vec::new();
    stream.take(4096).read_to_end(&mut answer).map_err(fail)?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        return Ok(());
    }
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    Err(format!("GET http://{addr}/readyz: {status} {body}"))
}
