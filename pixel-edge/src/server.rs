//! The edge's HTTP server: plain HTTP/1 and, over TLS, HTTP/2 or HTTP/1.1 (hyper), with the limits a
//! service facing browsers directly needs — a cap on open connections (both listeners together), on the
//! request head's size (answered 431 by hyper) and on the URI's (414), a timeout for the TLS
//! handshake and for reading the head, an idle timeout (so idle keep-alive connections cannot hold the
//! cap) and HTTP/2 keep-alive pings — plus graceful shutdown. With `http.proxy_protocol`, each
//! connection's PROXY header is read first (before TLS). Requests go to the warp routes with the
//! client address attached as a [`Peer`] extension.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::{Request, StatusCode};
use warp::reply::{Reply, Response};

use crate::configuration::HttpSettings;
use crate::idle::Activity;
use crate::proxy_protocol;

/// How long open connections may take to finish after shutdown is asked for.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// The client of the connection a request came on: the TCP peer, or the source its PROXY header named.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What every connection of either listener shares.
struct Server {
    routes: BoxedFilter<(Response,)>,
    /// HTTP/1 only, for plain connections.
    plain: auto::Builder<TokioExecutor>,
    /// HTTP/2 or HTTP/1.1, whichever the client speaks, for TLS connections.
    negotiated: auto::Builder<TokioExecutor>,
    /// One per open connection; at the cap, new connections wait in the kernel's backlog.
    permits: Arc<Semaphore>,
    max_connections: usize,
    /// Cancelled at shutdown: every connection then finishes its requests and closes.
    closing: CancellationToken,
    max_uri_bytes: usize,
    /// For the PROXY header, the TLS handshake and (by hyper) the request head, each.
    handshake_timeout: Duration,
    /// A connection without a request in progress for this long is closed.
    idle_timeout: Duration,
    /// Whether every connection opens with a PROXY protocol header.
    proxy_protocol: bool,
}

/// Serves `routes` on the plain listener `http` and the TLS listener `https` (with the configuration
/// that serves the current certificate) until `shutdown` resolves, then stops accepting and gives
/// open connections up to 5 s to finish their requests.
pub async fn serve(
    http_listener: Option<TcpListener>,
    https_listener: Option<(TcpListener, Arc<ServerConfig>)>,
    routes: BoxedFilter<(Response,)>,
    http: &HttpSettings,
    shutdown: impl Future<Output = ()>,
) {
    let head_timeout = Duration::from_secs(http.header_read_timeout_secs.get());
    let mut negotiated = auto::Builder::new(TokioExecutor::new());
    // hyper starts the head timeout as soon as an HTTP/1 connection waits for its next request, so
    // an idle keep-alive connection is closed after the shorter of it and `http.idle_timeout_secs`.
    negotiated
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(head_timeout)
        .max_buf_size(http.max_header_bytes);
    // Pings find a peer that vanished (its streams are then reset); the idle timer below closes a
    // live peer's connection that carries no request.
    negotiated
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(
            http.http2_keep_alive_interval_secs.get(),
        ))
        .keep_alive_timeout(Duration::from_secs(
            http.http2_keep_alive_timeout_secs.get(),
        ))
        .max_header_list_size(u32::try_from(http.max_header_bytes).unwrap_or(u32::MAX));
    let server = Server {
        routes,
        plain: negotiated.clone().http1_only(),
        negotiated,
        permits: Arc::new(Semaphore::new(http.max_connections.get())),
        max_connections: http.max_connections.get(),
        closing: CancellationToken::new(),
        max_uri_bytes: http.max_uri_bytes,
        handshake_timeout: head_timeout,
        idle_timeout: Duration::from_secs(http.idle_timeout_secs.get()),
        proxy_protocol: http.proxy_protocol,
    };

    let https_listener = https_listener.map(|(listener, tls)| (listener, TlsAcceptor::from(tls)));
    // The accept loop never ends by itself; dropping it at shutdown closes the listeners.
    tokio::select! {
        _ = shutdown => {}
        _ = server.accept_loop(http_listener, https_listener) => {}
    }

    server.closing.cancel();
    // Each open connection holds a permit: all of them back means all connections are closed.
    let all = u32::try_from(server.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(HTTP_GRACE, server.permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP connections still open after {HTTP_GRACE:?}; no longer waiting for them"
        );
    }
}

impl Server {
    /// Accepts on both listeners in one loop: the permit it holds while waiting serves whichever
    /// listener a connection comes to first (a loop per listener would each hold one, so that
    /// `http.max_connections = 1` starved one of them).
    async fn accept_loop(
        &self,
        http: Option<TcpListener>,
        https: Option<(TcpListener, TlsAcceptor)>,
    ) {
        loop {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (accepted, tls) = tokio::select! {
                accepted = accept(http.as_ref()) => (accepted, None),
                accepted = accept(https.as_ref().map(|(listener, _)| listener)) => {
                    (accepted, https.as_ref().map(|(_, tls)| tls.clone()))
                }
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // E.g. out of file descriptors: pause instead of spinning.
                    tracing::warn!("accepting a connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let connection = self.connection(stream, peer, tls);
            tokio::spawn(async move {
                connection.await;
                drop(permit);
            });
        }
    }

    /// Serves one accepted connection to its end: its PROXY header first when `http.proxy_protocol`
    /// is on, then the TLS handshake when `tls` is given.
    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let serving = Serving {
            closing: self.closing.clone(),
            idle_timeout: self.idle_timeout,
            routes: self.routes.clone(),
            max_uri_bytes: self.max_uri_bytes,
            builder: match tls {
                None => self.plain.clone(),
                Some(_) => self.negotiated.clone(),
            },
            tls,
            handshake_timeout: self.handshake_timeout,
        };
        let (proxy_protocol, handshake_timeout) = (self.proxy_protocol, self.handshake_timeout);
        async move {
            let result = match proxy_protocol {
                false => serving.run(stream, peer).await,
                true => {
                    match tokio::time::timeout(
                        handshake_timeout,
                        proxy_protocol::read_header(stream),
                    )
                    .await
                    {
                        Ok(Ok((source, stream))) => {
                            serving.run(stream, source.unwrap_or(peer)).await
                        }
                        Ok(Err(err)) => Err(refused(err.to_string())),
                        Err(_) => Err(refused("no PROXY protocol header in time".into())),
                    }
                }
            };
            if let Err(err) = result {
                // No peer address: under `privacy.ip` other than `full` the raw address must not reach
                // the logs either.
                tracing::debug!("connection ended with an error: {err}");
            }
        }
    }
}

/// The next connection on `listener`; never, without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Counts a connection refused for its PROXY header: a balancer that does not send one (or a client
/// that bypasses the balancer) shows up in `/metrics`, not only in debug logs.
fn refused(why: String) -> ConnectionError {
    metrics::counter!("tracker_edge_proxy_header_refused_total").increment(1);
    why.into()
}

/// One connection's share of the [`Server`], owned by the connection's task.
struct Serving {
    closing: CancellationToken,
    idle_timeout: Duration,
    routes: BoxedFilter<(Response,)>,
    max_uri_bytes: usize,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl Serving {
    /// Serves HTTP on `stream`, whose client is `peer`, after the TLS handshake if there is one.
    async fn run<IO>(self, stream: IO, peer: SocketAddr) -> Result<(), ConnectionError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (routes, max_uri_bytes) = (self.routes, self.max_uri_bytes);
        let activity = Arc::new(Activity::new());
        let requests = activity.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            let uri_bytes = request
                .uri()
                .path_and_query()
                .map_or(0, |pq| pq.as_str().len());
            let mut routes = warp::service(routes.clone());
            let in_progress = requests.begin();
            async move {
                let _in_progress = in_progress;
                if uri_bytes > max_uri_bytes {
                    return Ok::<_, Infallible>(StatusCode::URI_TOO_LONG.into_response());
                }
                request.extensions_mut().insert(Peer(peer));
                routes.call(request).await
            }
        });
        let until = Closing {
            shutdown: self.closing,
            idle_timeout: self.idle_timeout,
            activity,
        };
        match self.tls {
            None => serve_io(&self.builder, until, stream, service).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_io(&self.builder, until, stream, service).await,
                    Ok(Err(err)) => Err(format!("TLS handshake failed: {err}").into()),
                    Err(_) => Err("TLS handshake timed out".into()),
                }
            }
        }
    }
}

type ConnectionError = Box<dyn std::error::Error + Send + Sync>;

/// What makes a connection finish its requests and close: the edge shutting down, or no request for
/// `idle_timeout`.
struct Closing {
    shutdown: CancellationToken,
    idle_timeout: Duration,
    activity: Arc<Activity>,
}

async fn serve_io<IO, S>(
    builder: &auto::Builder<TokioExecutor>,
    until: Closing,
    io: IO,
    service: S,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        served = connection.as_mut() => return served,
        _ = until.shutdown.cancelled() => {}
        _ = until.activity.idle_for(until.idle_timeout) => {
            metrics::counter!("tracker_edge_idle_connections_closed_total").increment(1);
        }
    }
    // HTTP/1: closed once the response in progress (if any) is out; HTTP/2: GOAWAY, then closed once
    // its open streams are done.
    connection.as_mut().graceful_shutdown();
    connection.await
}
