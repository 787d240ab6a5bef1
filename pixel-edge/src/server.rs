//! The edge's HTTP server: hyper HTTP/1 with the limits a service facing browsers directly needs — a
//! cap on open connections, on the request head's size (answered 431 by hyper) and on the URI's (414),
//! and a timeout for reading the head — plus graceful shutdown. Requests go to the warp routes with
//! the peer address attached as a [`Peer`] extension.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::{Request, StatusCode};
use warp::reply::{Reply, Response};

use crate::configuration::HttpSettings;

/// How long open connections may take to finish after shutdown is asked for.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// The TCP peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting and gives open
/// connections up to 5 s to finish their requests.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    http: &HttpSettings,
    shutdown: impl Future<Output = ()>,
) {
    let routes = warp::service(routes);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(http.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(http.header_read_timeout_secs))
        .max_buf_size(http.max_header_bytes);
    let max_uri_bytes = http.max_uri_bytes;
    tokio::pin!(shutdown);

    loop {
        // At the cap, new connections wait in the kernel's backlog rather than being refused.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // E.g. out of file descriptors: pause instead of spinning.
                    tracing::warn!("accepting a connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let routes = routes.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            let uri_bytes = request
                .uri()
                .path_and_query()
                .map_or(0, |pq| pq.as_str().len());
            let mut routes = routes.clone();
            async move {
                if uri_bytes > max_uri_bytes {
                    return Ok::<_, Infallible>(StatusCode::URI_TOO_LONG.into_response());
                }
                request.extensions_mut().insert(Peer(peer));
                routes.call(request).await
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, "connection ended with an error: {err}");
            }
            drop(permit);
        });
    }

    drop(listener);
    if tokio::time::timeout(HTTP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP connections still open after {HTTP_GRACE:?}; no longer waiting for them"
        );
    }
}
