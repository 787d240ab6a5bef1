//! HTTPS at the edge, fetched with curl as a browser would: HTTP/2 (and HTTP/1.1) over TLS with the
//! certificate `scripts/secrets` made, visits landing in the log; a renewed certificate served without
//! a restart, whether the files change or SIGHUP asks; a broken renewal keeps the one being served;
//! one connection slot shared by both listeners.

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::visits_log::parse;
use testkit::{
    free_port, https_get, init_secrets, spawn_edge_with, spawn_sink, wait_for_lines, Broker,
    Fetched, Service,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visits_over_https_land_over_http2_and_http1() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let secrets = broker.secrets_dir();
    let edge = spawn_edge_with(&broker, "secure", |settings| {
        settings.https.listen = Some("127.0.0.1:0".parse().unwrap());
        settings.https.cert_file = Some(secrets.join("https.crt"));
        settings.https.key_file = Some(secrets.join("https.key"));
    })
    .await;
    let url = edge.https_track_url();
    let ca = broker.ca_file();

    let h2 = ["-A", "over-h2", "-e", "https://shop.example/cart"];
    let fetched = https_get(&url, &ca, &h2).await.unwrap();
    assert_eq!(
        fetched,
        Fetched {
            status: 200,
            http_version: "2".into()
        }
    );
    let h1 = ["--http1.1", "-A", "over-h1"];
    let fetched = https_get(&url, &ca, &h1).await.unwrap();
    assert_eq!(fetched.http_version, "1.1");

    let lines = wait_for_lines(&sink.path, 2, Duration::from_secs(10)).await;
    let mut visits: Vec<_> = lines.iter().map(|line| parse(line)).collect();
    visits.sort_by(|a, b| a.user_agent.cmp(&b.user_agent));
    assert_eq!(visits.len(), 2, "{lines:?}");
    assert_eq!(visits[0].user_agent.as_deref(), Some(&b"over-h1"[..]));
    assert_eq!(visits[0].referrer, None);
    assert_eq!(visits[1].user_agent.as_deref(), Some(&b"over-h2"[..]));
    assert_eq!(
        visits[1].referrer.as_deref(),
        Some(&b"https://shop.example/cart"[..])
    );
    assert!(visits.iter().all(|visit| visit.ip == "127.0.0.1"));

    edge.stop().await;
    sink.stop().await;
}

/// One connection slot, two listeners: each is served in turn (the slot is not kept by whichever
/// listener waited for a connection first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_connection_slot_serves_http_and_https_in_turn() {
    let broker = Broker::start();
    let secrets = broker.secrets_dir();
    let edge = spawn_edge_with(&broker, "one-slot", |settings| {
        settings.http.max_connections = NonZeroUsize::MIN;
        // No sink: nothing to wait for at the stop.
        settings.edge.drain_timeout_secs = 1;
        settings.https.listen = Some("127.0.0.1:0".parse().unwrap());
        settings.https.cert_file = Some(secrets.join("https.crt"));
        settings.https.key_file = Some(secrets.join("https.key"));
    })
    .await;
    let (https, ca) = (edge.https_track_url(), broker.ca_file());
    // No keep-alive: an idle pooled connection would hold the slot itself.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for round in 0..2 {
        let fetched = https_get(&https, &ca, &[]).await;
        assert_eq!(fetched.map(|f| f.status), Ok(200), "HTTPS, round {round}");
        let status = plain.get(edge.track_url()).send().await.map(|r| r.status());
        assert_eq!(
            status.ok(),
            Some(reqwest::StatusCode::OK),
            "HTTP, round {round}"
        );
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (first_ca, renewed) = (broker.ca_file(), dir.path().join("renewed"));
    // Another CA's certificate stands for the renewal: a client trusting only that CA tells which
    // of the two the edge serves.
    init_secrets(&renewed);
    let renewed_ca = renewed.join("ca.crt");
    let live = dir.path().join("live");
    install_certificate(&broker.secrets_dir(), &live);

    // Watching the files every second.
    let port = free_port();
    let edge = edge_serving(&broker, dir.path(), "watching", &live, port, 1);
    let url = format!("https://localhost:{port}/track");
    assert!(https_get(&url, &first_ca, &[]).await.is_ok());
    assert!(https_get(&url, &renewed_ca, &[]).await.is_err());

    install_certificate(&renewed, &live);
    assert!(
        served_eventually(&url, &renewed_ca).await,
        "the renewed certificate was not picked up:\n{}",
        edge.log()
    );
    assert!(https_get(&url, &first_ca, &[]).await.is_err());

    std::fs::write(live.join("https.crt"), "not a certificate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !edge.log().contains("HTTPS certificate not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no failed reload:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(https_get(&url, &renewed_ca, &[]).await.is_ok());

    // Not watching (a check an hour apart): SIGHUP alone makes it reload.
    let live = dir.path().join("live-hup");
    install_certificate(&broker.secrets_dir(), &live);
    let port = free_port();
    let edge = edge_serving(&broker, dir.path(), "hangup", &live, port, 3600);
    let url = format!("https://localhost:{port}/track");
    assert!(https_get(&url, &first_ca, &[]).await.is_ok());
    install_certificate(&renewed, &live);
    edge.hangup();
    assert!(
        served_eventually(&url, &renewed_ca).await,
        "SIGHUP did not reload the certificate:\n{}",
        edge.log()
    );
}

/// An edge process serving HTTPS on `port` from `live/https.{crt,key}`, checking them every
/// `check_secs`.
fn edge_serving(
    broker: &Broker,
    dir: &Path,
    id: &str,
    live: &Path,
    port: u16,
    check_secs: u64,
) -> Service {
    Service::edge(
        broker,
        id,
        dir,
        &[
            ("TRACKER__HTTPS__LISTEN", &format!("127.0.0.1:{port}")),
            (
                "TRACKER__HTTPS__CERT_FILE",
                &live.join("https.crt").display().to_string(),
            ),
            (
                "TRACKER__HTTPS__KEY_FILE",
                &live.join("https.key").display().to_string(),
            ),
            ("TRACKER__HTTPS__RELOAD_CHECK_SECS", &check_secs.to_string()),
            ("TRACKER__EDGE__DRAIN_TIMEOUT_SECS", "1"),
        ],
    )
}

/// Puts `from`'s HTTPS certificate and key into `live` the way a renewal tool does: each written
/// beside, then renamed over the old one.
fn install_certificate(from: &Path, live: &Path) {
    std::fs::create_dir_all(live).unwrap();
    for file in ["https.key", "https.crt"] {
        let staged = live.join(format!(".{file}.new"));
        std::fs::copy(from.join(file), &staged).unwrap();
        std::fs::rename(&staged, live.join(file)).unwrap();
    }
}

/// Whether `url` comes to be served with a certificate `ca` trusts within 15 s.
async fn served_eventually(url: &str, ca: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if https_get(url, ca, &[]).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
