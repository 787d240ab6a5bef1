//! The edge's HTTP hardening, health and metrics, against a real broker: limits answered 431/414,
//! slow clients cut off, idle HTTP/1 and HTTP/2-over-TLS connections closed, the connection cap,
//! `/healthz`, `/readyz`, `/metrics` on the admin listener and not on the pixel's port.

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::{Duration, Instant};

use reqwest::header::USER_AGENT;
use testkit::{spawn_edge_with, Broker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An edge with no sink behind it: it need not try long to deliver at shutdown.
async fn edge_without_sink(
    broker: &Broker,
    customize: impl FnOnce(&mut pixel_edge::configuration::Settings),
) -> testkit::TestEdge {
    spawn_edge_with(broker, "edge-a", |settings| {
        settings.edge.drain_timeout_secs = 1;
        customize(settings);
    })
    .await
}

/// GETs `url` until it answers `status` or `patience` has passed; returns the last status seen.
async fn poll_status(client: &reqwest::Client, url: &str, status: u16, patience: Duration) -> u16 {
    let deadline = Instant::now() + patience;
    loop {
        let seen = client
            .get(url)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        if seen == status || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_heads_get_431_and_long_uris_414_and_the_edge_serves_on() {
    let broker = Broker::start();
    let edge = edge_without_sink(&broker, |_| {}).await;
    let client = reqwest::Client::new();

    let huge_header = "x".repeat(20 * 1024);
    let response = client
        .get(edge.track_url())
        .header("X-Padding", huge_header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let long_uri = format!("{}?q={}", edge.track_url(), "a".repeat(10 * 1024));
    assert_eq!(client.get(long_uri).send().await.unwrap().status(), 414);
    let ok = client
        .get(edge.track_url())
        .header(USER_AGENT, "after")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let broker = Broker::start();
    let edge = edge_without_sink(&broker, |s| {
        s.http.header_read_timeout_secs = NonZeroU64::MIN
    })
    .await;
    let mut slow = TcpStream::connect(edge.addr).await.unwrap();
    slow.write_all(b"GET /track HTTP/1.1\r\nHost: edge\r\nUser-Agent: slo")
        .await
        .unwrap();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut answer)).await;
    let read = read.expect("the edge closed the connection");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{answer:?}"
    );
    edge.stop().await;
}

/// Patience for the edge to close an idle connection: far beyond the 1 s idle timeout, so only an
/// edge that never closes it fails.
const CLOSE_PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_http1_and_http2_connections_are_closed() {
    let broker = Broker::start();
    let secrets = broker.secrets_dir();
    let edge = edge_without_sink(&broker, |s| {
        s.http.idle_timeout_secs = NonZeroU64::MIN;
        // Far longer: what closes the HTTP/1 connection is the idle timeout, not hyper's head timer.
        s.http.header_read_timeout_secs = NonZeroU64::new(3600).unwrap();
        s.https.listen = Some("127.0.0.1:0".parse().unwrap());
        s.https.cert_file = Some(secrets.join("https.crt"));
        s.https.key_file = Some(secrets.join("https.key"));
    })
    .await;

    // HTTP/1.1 keep-alive: one request answered, then nothing sent; the edge must close it.
    let mut http1 = TcpStream::connect(edge.addr).await.unwrap();
    http1
        .write_all(b"GET /track HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(CLOSE_PATIENCE, http1.read_to_end(&mut answer))
        .await
        .expect("the edge closed the idle HTTP/1 connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        !answer.contains("connection: close"),
        "kept alive: {answer}"
    );

    // HTTP/2 over TLS: one request answered, then no stream open; the edge must close it.
    let https_addr = edge.https_addr.unwrap();
    let mut tls = common::tls::client_config(Some(&broker.ca_file()), None).unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(https_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(format!("https://localhost:{}/track", https_addr.port()))
        .body(String::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    drop(response);
    tokio::time::timeout(CLOSE_PATIENCE, connection)
        .await
        .expect("the edge closed the idle HTTP/2 connection")
        .unwrap()
        .expect("closed cleanly (GOAWAY), not torn down");

    let metrics = reqwest::get(format!("http://{}/metrics", edge.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tracker_edge_idle_connections_closed_total 2"),
        "{metrics}"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let broker = Broker::start();
    let edge = edge_without_sink(&broker, |s| {
        s.http.max_connections = NonZeroUsize::new(2).unwrap()
    })
    .await;
    let idle_a = TcpStream::connect(edge.addr).await.unwrap();
    let idle_b = TcpStream::connect(edge.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    assert!(
        client.get(edge.track_url()).send().await.is_err(),
        "a third connection is not served"
    );
    drop(idle_a);
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    assert_eq!(
        patient.get(edge.track_url()).send().await.unwrap().status(),
        200
    );
    drop(idle_b);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics() {
    let mut broker = Broker::start();
    // Without a spool, so that the hold is the one-visit queue (a spool would take the visits and
    // keep the edge ready, or not, depending on how fast it drained the queue).
    let edge = edge_without_sink(&broker, |s| {
        s.edge.receipts = false;
        s.edge.spool_dir = None;
        s.edge.queue_capacity = NonZeroUsize::MIN;
    })
    .await;
    let base = format!("http://{}", edge.admin_addr);
    let client = reqwest::Client::new();

    let healthz = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    // The pixel's port serves `/track` and nothing else.
    for path in ["healthz", "readyz", "metrics", ""] {
        let url = format!("http://{}/{path}", edge.addr);
        let status = client.get(url).send().await.unwrap().status();
        assert_eq!(status, 404, "/{path} on the pixel port");
    }
    assert_eq!(
        poll_status(
            &client,
            &format!("{base}/readyz"),
            200,
            Duration::from_secs(30)
        )
        .await,
        200
    );
    client
        .get(edge.track_url())
        .header(USER_AGENT, "m")
        .send()
        .await
        .unwrap();
    client.post(edge.track_url()).send().await.unwrap();

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "tracker_edge_requests_total{outcome=\"visit\"}",
        "tracker_edge_requests_total{outcome=\"method_not_allowed\"}",
        "tracker_edge_visits_queued_total",
        "tracker_edge_queue_depth",
        "tracker_edge_broker_connected",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    // Broker away and the hold (one visit) full: not ready, yet still serving the pixel.
    broker.stop();
    for n in 0..3 {
        let status = client
            .get(edge.track_url())
            .header(USER_AGENT, format!("held-{n}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    assert_eq!(
        poll_status(
            &client,
            &format!("{base}/readyz"),
            503,
            Duration::from_secs(30)
        )
        .await,
        503
    );
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    broker.restart();
    assert_eq!(
        poll_status(
            &client,
            &format!("{base}/readyz"),
            200,
            Duration::from_secs(30)
        )
        .await,
        200
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // No sink subscribed: the broker refused the visits with "no matching subscribers".
    for expected in [
        "tracker_edge_broker_reconnects_total",
        "tracker_edge_puback_refused_total{reason=\"NoMatchingSubscribers\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_is_bounded_in_bytes_and_drops_are_counted_by_reason() {
    let mut broker = Broker::start();
    // Without a spool, visits wait in the queue alone while the broker is away.
    let edge = edge_without_sink(&broker, |s| {
        s.edge.receipts = false;
        s.edge.spool_dir = None;
        s.edge.queue_max_bytes = 1 << 20;
    })
    .await;
    let client = reqwest::Client::new();
    broker.stop();
    // Two 4 KiB headers: ~8.5 KB a visit, so 1 MiB holds about 120 of them, well under the count bound.
    let header = "x".repeat(4096);
    for _ in 0..300 {
        let status = client
            .get(edge.track_url())
            .header(USER_AGENT, &header)
            .header("Referer", &header)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "the pixel is served whatever is dropped");
    }
    let metrics = client
        .get(format!("http://{}/metrics", edge.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    let dropped = value("tracker_edge_visits_dropped_total{reason=\"queue_bytes\"}");
    let depth = value("tracker_edge_queue_depth");
    let bytes = value("tracker_edge_queue_bytes");
    assert!(dropped > 100.0 && dropped < 250.0, "{dropped} dropped");
    assert_eq!(dropped + depth, 300.0);
    assert!(
        bytes <= (1 << 20) as f64 && bytes > 0.9 * (1 << 20) as f64,
        "{bytes} bytes"
    );
    broker.restart();
    edge.stop().await;
}
