//! Throughput of an edge far from the broker, release build, real Mosquitto and sink: the edge process
//! sits at the far end of an emulated link ([`testkit::Link`], 300 ms round trip, 3 % loss each way),
//! takes `VISITS` requests (testkit's load helper, over the visitors' veth) while the link is cut, and
//! when the link is back the rate at which they land in the log, once the window has grown, is the
//! sustained throughput. Run with `edge.max_in_flight_bytes` at two batches (the old fixed window), at
//! the default, and at the default with the far site's `net.ipv4.tcp_wmem` raised (the kernel's
//! default send buffer limit caps one TCP connection there). Then, on loopback, the visits per MQTT
//! message under busy load for both windows: the window must not change it there. Prints the figures;
//! checks only that every visit landed.
//!
//! Needs root (the link). Run by hand: `cargo build --release -p pixel-edge && cargo bench -p testkit
//! --bench far_link`; `VISITS` (default 150000) varies it, `ONLY` (`flood`, `far`, `partition` or
//! `loopback`) runs one part. A flood of the bare link first gives the link's own ceiling; a silent
//! partition with batches in flight, at the default keep-alive and at 5 s, gives the time to notice
//! it and the time to drain after it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt::TcpCongestion};
use testkit::visits_log::LineCounter;
use testkit::{client, spawn_sink, Broker, Impairment, Link, Load, Service};

/// How long each flood of the bare link sends.
const FLOOD: Duration = Duration::from_secs(20);

/// Visits sent to the edge a partition cuts, as fast as it takes them.
const PARTITION_VISITS: usize = 20_000;
/// How long a partition lasts after the edge noticed it (its reconnect attempts time out meanwhile).
const PARTITION_AFTER_NOTICE: Duration = Duration::from_secs(8);

/// The old fixed window: two 256 KiB batches.
const TWO_BATCHES: &str = "524288";
/// `edge.max_in_flight_bytes` by default.
const DEFAULT_WINDOW: &str = "8388608";
/// A far site's sysctl: a TCP send buffer limit for long links (the kernel's default max is 4 MiB).
const BIG_WMEM: (&str, &str) = ("net.ipv4.tcp_wmem", "4096 16384 16777216");

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let visits = std::env::var("VISITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150_000);
    let only = std::env::var("ONLY").ok();
    let runs = |part: &str| only.as_deref().is_none_or(|only| only == part);
    if runs("flood") {
        flood(Impairment::default(), &[], None);
        flood(long_link(), &[], None);
        flood(long_link(), &[BIG_WMEM], None);
        // Most kernels default to CUBIC; a namespace may not choose it here, a socket may.
        flood(long_link(), &[], Some("cubic"));
    }
    if runs("far") {
        far_drain("two batches", TWO_BATCHES, visits, &[]).await;
        far_drain("default 8 MiB", DEFAULT_WINDOW, visits, &[]).await;
        far_drain("default 8 MiB", DEFAULT_WINDOW, visits, &[BIG_WMEM]).await;
    }
    if runs("partition") {
        partition(None).await;
        partition(Some("5")).await;
    }
    for (window, max_in_flight) in [
        ("two batches", TWO_BATCHES),
        ("default 8 MiB", DEFAULT_WINDOW),
    ] {
        if runs("loopback") {
            busy_loopback(window, max_in_flight, visits / 2).await;
        }
    }
}

/// The link every run here uses: 300 ms round trip, 3 % loss each way.
fn long_link() -> Impairment {
    Impairment::long(Duration::from_millis(300), 0.03)
}

/// A far site behind `impairment`, its network stack tuned by the sysctls in `tuning`.
fn far_site(impairment: Impairment, tuning: &[(&str, &str)]) -> Link {
    let link = Link::new(impairment);
    for (key, value) in tuning {
        link.sysctl(key, value);
    }
    link
}

fn described(tuning: &[(&str, &str)]) -> String {
    tuning
        .iter()
        .map(|(key, value)| format!(", far site's {key} = {value}"))
        .collect()
}

/// The link's own ceiling: one TCP connection from the far site to the host sends zeros for
/// [`FLOOD`], with `congestion` control if given (else the kernel's default, BBR here); the rate
/// counts what arrived after the first quarter (slow start).
fn flood(impairment: Impairment, tuning: &[(&str, &str)], congestion: Option<&'static str>) {
    let link = far_site(impairment, tuning);
    let listener = TcpListener::bind((link.host_addr, 0)).unwrap();
    let to = listener.local_addr().unwrap();
    let sender = link.in_far_site(move || {
        let mut stream = TcpStream::connect(to).unwrap();
        if let Some(algorithm) = congestion {
            setsockopt(&stream, TcpCongestion, &OsString::from(algorithm)).unwrap();
        }
        let chunk = vec![0u8; 64 * 1024];
        let started = Instant::now();
        while started.elapsed() < FLOOD {
            stream.write_all(&chunk).unwrap();
        }
    });
    let (mut stream, _) = listener.accept().unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let started = Instant::now();
    let (mut total, mut counted_from) = (0usize, None);
    loop {
        let read = stream.read(&mut buffer).unwrap();
        if read == 0 {
            break;
        }
        total += read;
        if counted_from.is_none() && started.elapsed() >= FLOOD / 4 {
            counted_from = Some((Instant::now(), total));
        }
    }
    sender.join().unwrap();
    let (from, before) = counted_from.expect("the flood lasted");
    let rate = (total - before) as f64 / from.elapsed().as_secs_f64();
    println!(
        "the link alone ({impairment:?}{}): one TCP connection ({}), {:.2} MB/s",
        described(tuning),
        congestion.unwrap_or("the kernel's default congestion control"),
        rate / 1e6
    );
}

fn load(edge: &Service, prefix: &str, count: usize) -> Load {
    Load {
        url: edge.track_url(),
        prefix: prefix.into(),
        count,
        concurrency: 64,
        pause: Duration::ZERO,
    }
}

async fn far_drain(window: &str, max_in_flight: &str, visits: usize, tuning: &[(&str, &str)]) {
    let link = far_site(long_link(), tuning);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let settings = [("TRACKER__EDGE__MAX_IN_FLIGHT_BYTES", max_in_flight)];
    let mut edge = Service::far_edge(&broker, &link, "far-bench", dir.path(), &settings);
    wait_for_log(&edge, "connected to the broker").await;

    link.partition(true);
    let report = load(&edge, "far", visits).run(client()).await;
    assert_eq!(report.failed, 0, "{}", report.summary());
    let spooled: u64 = std::fs::read_dir(dir.path().join("spool-far-bench"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    link.partition(false);
    let healed = Instant::now();
    let mut log = LineCounter::new(sink.path.clone());
    let first_at = wait_until(&mut log, 1).await;
    // From a third on the window has grown (or never will): the rest is the steady rate.
    let third = visits / 3;
    let third_at = wait_until(&mut log, third).await;
    let landed = log.wait_for(visits, Duration::from_secs(600));
    let steady = (landed - third) as f64 / third_at.elapsed().as_secs_f64();
    let overall = landed as f64 / first_at.elapsed().as_secs_f64();
    let visit_bytes = spooled as f64 / visits as f64;
    let metrics = metrics(&edge).await;
    println!(
        "over 300 ms / 3 % loss, window {window}{}: {landed} of {visits} visits (~{visit_bytes:.0} \
         bytes each on the wire); the first landed {:.1} s after the link came back (reconnecting), \
         then {overall:.0} visits/s for {:.1} s, after the first third {steady:.0} visits/s \
         ({:.2} MB/s); {:.0} visits per message, PUBACK after {:.2} s on average; edge peak RSS \
         {:.1} MB",
        described(tuning),
        (first_at - healed).as_secs_f64(),
        first_at.elapsed().as_secs_f64(),
        steady * visit_bytes / 1e6,
        metric(&metrics, "tracker_edge_visits_acknowledged_total")
            / metric(&metrics, "tracker_edge_publish_ack_seconds_count"),
        metric(&metrics, "tracker_edge_publish_ack_seconds_sum")
            / metric(&metrics, "tracker_edge_publish_ack_seconds_count"),
        edge.peak_rss() as f64 / 1e6,
    );
    edge.terminate();
    sink.stop().await;
    assert_eq!(landed, visits, "every visit landed");
}

/// A silent partition cuts the link while batches are in flight: how long the edge takes to notice
/// at `keep_alive` (`None`: the default), and once the link is back after [`PARTITION_AFTER_NOTICE`]
/// more, how long until every visit has landed.
async fn partition(keep_alive: Option<&str>) {
    let link = Link::new(long_link());
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let settings: Vec<_> = keep_alive
        .map(|secs| ("TRACKER__MQTT__KEEP_ALIVE_SECS", secs))
        .into_iter()
        .collect();
    let mut edge = Service::far_edge(&broker, &link, "far-cut", dir.path(), &settings);
    wait_for_log(&edge, "connected to the broker").await;

    let traffic = tokio::spawn(load(&edge, "cut", PARTITION_VISITS).run(client()));
    let mut log = LineCounter::new(sink.path.clone());
    wait_until(&mut log, 1).await;
    link.partition(true);
    let cut = Instant::now();
    let report = traffic.await.unwrap();
    assert_eq!(report.failed, 0, "{}", report.summary());
    wait_for_log(&edge, "broker connection lost").await;
    let noticed = cut.elapsed();
    let backlog = PARTITION_VISITS - log.count();
    tokio::time::sleep(PARTITION_AFTER_NOTICE).await;
    link.partition(false);
    let healed = Instant::now();
    let landed = log.wait_for(PARTITION_VISITS, Duration::from_secs(600));
    println!(
        "silent partition over 300 ms / 3 % loss, keep-alive {} s: noticed after {:.1} s; the link \
         back {:?} later, all {landed} visits ({backlog} of them held at the far site) landed {:.1} s \
         after it came back",
        keep_alive.unwrap_or("15 (default)"),
        noticed.as_secs_f64(),
        PARTITION_AFTER_NOTICE,
        healed.elapsed().as_secs_f64(),
    );
    edge.terminate();
    sink.stop().await;
    assert_eq!(landed, PARTITION_VISITS, "every visit landed");
}

async fn busy_loopback(window: &str, max_in_flight: &str, visits: usize) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let settings = [("TRACKER__EDGE__MAX_IN_FLIGHT_BYTES", max_in_flight)];
    let mut edge = Service::edge(&broker, "loopback-bench", dir.path(), &settings);
    wait_for_log(&edge, "connected to the broker").await;

    let started = Instant::now();
    let report = load(&edge, "loop", visits).run(client()).await;
    assert_eq!(report.failed, 0, "{}", report.summary());
    let landed = LineCounter::new(sink.path.clone()).wait_for(visits, Duration::from_secs(600));
    let took = started.elapsed();
    let metrics = metrics(&edge).await;
    let acked = metric(&metrics, "tracker_edge_visits_acknowledged_total");
    let messages = metric(&metrics, "tracker_edge_publish_ack_seconds_count");
    println!(
        "loopback, busy, window {window}: {landed} of {visits} visits in {:.1} s ({:.0}/s), \
         {:.1} visits per message",
        took.as_secs_f64(),
        landed as f64 / took.as_secs_f64(),
        acked / messages
    );
    edge.terminate();
    sink.stop().await;
    assert_eq!(landed, visits, "every visit landed");
}

/// When the log has `count` lines.
async fn wait_until(log: &mut LineCounter, count: usize) -> Instant {
    while log.count() < count {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Instant::now()
}

async fn metrics(edge: &Service) -> String {
    let response = client().get(edge.metrics_url()).send().await.unwrap();
    response.text().await.unwrap()
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in:\n{text}"))
}

async fn wait_for_log(service: &Service, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !service.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
