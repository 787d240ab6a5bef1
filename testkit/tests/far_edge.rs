//! Edges far from the broker: an edge process at the far end of an emulated link (300 ms round trip,
//! 3 % loss each way; [`testkit::Link`]) loses and repeats nothing across a silent partition, over
//! plain MQTT and over TLS with a broker user; and twenty edges reconnecting at once after a broker
//! outage deliver every visit exactly once. How long noticing and draining took is printed for the
//! record (README, "Edges far from the broker"), never asserted.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::visits_log::assert_exactly_once;
use testkit::{
    client, settled_lines, spawn_edge_with, spawn_sink, wait_for_lines, Broker, Impairment, Link,
    Load, Service,
};
use tokio::time::sleep;

const PATIENCE: Duration = Duration::from_secs(90);

/// The link every far edge here sits behind.
fn long_link() -> Link {
    Link::new(Impairment::long(Duration::from_millis(300), 0.03))
}

/// Waits until `service`'s log mentions `text` at least `times` times.
async fn wait_for_log(service: &Service, text: &str, times: usize) {
    service.wait_for_log(text, times, PATIENCE).await;
}

/// Waits until `expected` lines have landed and the log has settled; returns them and how long
/// after `since` the last expected one landed.
async fn landed(path: &Path, expected: usize, since: Instant) -> (Vec<String>, Duration) {
    wait_for_lines(path, expected, PATIENCE).await;
    let took = since.elapsed();
    (settled_lines(path, Duration::from_secs(1)).await, took)
}

/// Visits flow to a far edge while its link is cut silently for longer than two keep-alives: the
/// edge notices, reconnects once the link is back, and every answered visit lands exactly once.
async fn partition_run(tls: bool) {
    let link = long_link();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sink = spawn_sink(&broker, dir.path()).await;
    let (port, ca) = (broker.tls_port().to_string(), broker.ca_file());
    let ca = ca.display().to_string();
    let mut settings = vec![("TRACKER__MQTT__KEEP_ALIVE_SECS", "5")];
    if tls {
        settings.extend([
            ("TRACKER__MQTT__TLS", "true"),
            ("TRACKER__MQTT__HOST", "mosquitto"),
            ("TRACKER__MQTT__PORT", port.as_str()),
            ("TRACKER__MQTT__CA_FILE", ca.as_str()),
        ]);
    }
    let id = if tls { "far-tls" } else { "far-plain" };
    let mut edge = Service::far_edge(&broker, &link, id, dir.path(), &settings);
    wait_for_log(&edge, "connected to the broker", 1).await;

    let load = Load {
        url: edge.track_url(),
        prefix: id.into(),
        count: 2000,
        concurrency: 4,
        pause: Duration::from_millis(30),
    };
    let traffic = tokio::spawn(load.run(client()));
    sleep(Duration::from_secs(2)).await;
    link.partition(true);
    let cut = Instant::now();
    wait_for_log(&edge, "broker connection lost", 1).await;
    let noticed = cut.elapsed();
    // Long enough for an attempt or two to time out against the partition.
    sleep(Duration::from_secs(8)).await;
    link.partition(false);
    let healed = Instant::now();
    let report = traffic.await.unwrap();
    let (lines, drained) = landed(&sink.path, report.answered.len(), healed).await;
    println!(
        "{id} over 300 ms / 3 %: partition noticed after {noticed:?} (keep-alive 5 s); every visit \
         landed {drained:?} after the link came back; pixel: {}",
        report.summary()
    );
    assert!(edge.terminate().success());
    assert_eq!(
        report.failed, 0,
        "the pixel is served whatever the link does"
    );
    assert_exactly_once(&lines, &report.answered, id);
    assert_eq!(lines.len(), report.answered.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_partition_of_a_far_edge_is_noticed_and_every_visit_lands() {
    partition_run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_with_a_broker_user_a_far_edge_reconnects_after_a_partition() {
    partition_run(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_edges_reconnecting_at_once_deliver_every_visit_exactly_once() {
    const EDGES: usize = 20;
    const VISITS: usize = 500;
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let mut edges = Vec::new();
    for n in 0..EDGES {
        edges.push(spawn_edge_with(&broker, &format!("storm-{n}"), |_| {}).await);
    }
    broker.stop();
    // Every edge gathers a backlog while the broker is away.
    let loads = edges.iter().enumerate().map(|(n, edge)| {
        let load = Load {
            url: edge.track_url(),
            prefix: format!("storm-{n}"),
            count: VISITS,
            concurrency: 4,
            pause: Duration::ZERO,
        };
        tokio::spawn(load.run(client()))
    });
    let mut answered = Vec::new();
    for load in loads.collect::<Vec<_>>() {
        let report = load.await.unwrap();
        assert_eq!(report.failed, 0, "{}", report.summary());
        answered.extend(report.answered);
    }
    broker.restart();
    let back = Instant::now();
    let (lines, drained) = landed(&sink.path, answered.len(), back).await;
    println!(
        "{EDGES} edges x {VISITS} visits held through a broker outage: all {} landed {drained:?} \
         after the broker came back",
        answered.len()
    );
    for edge in edges {
        edge.stop().await;
    }
    sink.stop().await;
    assert_exactly_once(&lines, &answered, "reconnect storm");
    assert_eq!(lines.len(), answered.len());
}
