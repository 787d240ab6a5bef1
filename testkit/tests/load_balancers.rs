//! Edges behind a real HAProxy: with `http.proxy_protocol` (v1 to the HTTP listener, v2 to the HTTPS
//! listener with TLS passed through) and with `http.trusted_proxies` (HAProxy adding
//! `X-Forwarded-For`), each visit records the visitor, not the balancer; a forged header from a
//! client that is not a trusted proxy is ignored, and a connection without a PROXY header is refused.
//!
//! Visitors connect from their own loopback addresses (127.0.0.2, 127.0.0.3); HAProxy connects to
//! the edge from 127.0.0.1.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::header::USER_AGENT;
use testkit::visits_log::parse;
use testkit::{
    https_get, spawn_edge_with, spawn_sink, wait_for_lines, Balancing, Broker, Haproxy, TestEdge,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(30);

/// A client whose connections come from `source`.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GETs the pixel at `addr` as `marker`, with extra headers; returns the status (0: no answer).
async fn visit(client: &reqwest::Client, addr: SocketAddr, marker: &str, xff: Option<&str>) -> u16 {
    let mut request = client
        .get(format!("http://{addr}/track"))
        .header(USER_AGENT, marker);
    if let Some(xff) = xff {
        request = request.header("X-Forwarded-For", xff);
    }
    request.send().await.map_or(0, |r| r.status().as_u16())
}

/// The address each marker's visit recorded, once `count` lines have landed.
async fn recorded(path: &std::path::Path, count: usize) -> HashMap<String, String> {
    wait_for_lines(path, count, PATIENCE)
        .await
        .iter()
        .map(|line| {
            let line = parse(line);
            (
                String::from_utf8(line.user_agent.unwrap()).unwrap(),
                line.ip,
            )
        })
        .collect()
}

fn pairs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(marker, ip)| (marker.to_string(), ip.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_an_l4_balancer_the_proxy_protocol_names_the_visitor() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let secrets = broker.secrets_dir();
    let edge: TestEdge = spawn_edge_with(&broker, "behind-l4", |settings| {
        settings.http.proxy_protocol = true;
        settings.https.listen = Some("127.0.0.1:0".parse().unwrap());
        settings.https.cert_file = Some(secrets.join("https.crt"));
        settings.https.key_file = Some(secrets.join("https.key"));
    })
    .await;
    let v1 = Haproxy::start(Balancing::ProxyV1, edge.addr);
    let v2 = Haproxy::start(Balancing::ProxyV2, edge.https_addr.unwrap());

    let visitor = client_from("127.0.0.3");
    // Only trusted proxies' X-Forwarded-For counts, and there are none: the forged one is ignored.
    assert_eq!(
        visit(&visitor, v1.addr, "v1", Some("198.51.100.1")).await,
        200
    );
    let https = format!("https://localhost:{}/track", v2.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", v2.addr.port());
    let curl = [
        "-A",
        "v2-tls",
        "--interface",
        "127.0.0.3",
        "--resolve",
        &resolve,
    ];
    let fetched = https_get(&https, &broker.ca_file(), &curl).await.unwrap();
    assert_eq!(fetched.status, 200);

    // Straight to the edge, without a header: refused before any HTTP, and no visit.
    let direct = visit(&visitor, edge.addr, "direct", None).await;
    assert_eq!(direct, 0, "a connection without a PROXY header was served");
    let mut raw = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    raw.write_all(b"PROXY TCP4 not-an-address\r\nGET /track HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(visit(&visitor, v1.addr, "after", None).await, 200);

    let ips = recorded(&sink.path, 3).await;
    edge.stop().await;
    sink.stop().await;
    let expected = [
        ("v1", "127.0.0.3"),
        ("v2-tls", "127.0.0.3"),
        ("after", "127.0.0.3"),
    ];
    assert_eq!(ips, pairs(&expected));
    assert_eq!(sink.lines().len(), 3, "only the balanced visits landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_an_l7_balancer_only_a_trusted_proxy_names_the_visitor() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let edge = spawn_edge_with(&broker, "behind-l7", |settings| {
        settings.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let haproxy = Haproxy::start(Balancing::ForwardFor, edge.addr);

    let visitor = client_from("127.0.0.2");
    // Through the balancer, with a forged entry the balancer's own is appended to.
    let forged = Some("198.51.100.1");
    assert_eq!(visit(&visitor, haproxy.addr, "balanced", forged).await, 200);
    // Straight from an untrusted client: its header is ignored.
    assert_eq!(visit(&visitor, edge.addr, "spoofed", forged).await, 200);
    // From the trusted address, the header is taken (here nobody appended to it).
    let trusted = client_from("127.0.0.1");
    assert_eq!(
        visit(&trusted, edge.addr, "trusted", Some("198.51.100.7")).await,
        200
    );

    let ips = recorded(&sink.path, 3).await;
    edge.stop().await;
    sink.stop().await;
    let expected = [
        ("balanced", "127.0.0.2"),
        ("spoofed", "127.0.0.2"),
        ("trusted", "198.51.100.7"),
    ];
    assert_eq!(ips, pairs(&expected));
}
