//! The pipeline on a real three-node RabbitMQ cluster (quorum queues, the shipped `rabbitmq/`
//! config), with the edges on `mqtt.protocol = 3.1.1` and every client given all three nodes
//! (`mqtt.hosts`): the core cases, and node faults with edge and sink on different nodes. Every test
//! visit carries its own marker; every visit that got its GIF must be in the log exactly once.
//!
//! One cluster serves every test here (a node boots in 15–20 s on 2 cores), and the tests take turns
//! on it; each has its own sink session (client id), edge ids and log, and deletes its session's
//! queue at the end so that it stops collecting the next tests' visits.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use testkit::visits_log::{assert_exactly_once, parse};
use testkit::{client, collect_lines, free_port, Cluster, Load, LoadReport, Service};

const PATIENCE: Duration = Duration::from_secs(90);

/// A sink on the cluster through the nodes in `order`, with session `client_id`, an admin
/// listener of its own; waits until its subscription is granted (with MQTT 3.1.1 nothing tells an
/// edge that no queue takes its visits, so the sink's queue must exist before edges publish).
async fn sink(cluster: &Cluster, order: [usize; 3], client_id: &str, dir: &Path) -> Service {
    let admin = format!("127.0.0.1:{}", free_port());
    let sink = Service::sink(
        &cluster.via(order),
        dir,
        &[
            ("TRACKER__MQTT__CLIENT_ID", client_id),
            ("TRACKER__ADMIN__LISTEN", &admin),
        ],
    );
    sink.wait_for_log("subscribed", 1, PATIENCE).await;
    sink
}

fn edge(cluster: &Cluster, order: [usize; 3], id: &str, dir: &Path) -> Service {
    Service::edge(&cluster.via(order), id, dir, &[])
}

/// `count` visits `{prefix}-{n}`, 8 at a time, each after `pause`.
async fn visits(edge: &Service, prefix: &str, count: usize, pause: Duration) -> LoadReport {
    let load = Load {
        url: edge.track_url(),
        prefix: prefix.into(),
        count,
        concurrency: 8,
        pause,
    };
    load.run(client()).await
}

/// Visits in rounds of 50 (`{prefix}{round}-{n}`) until `stop` is set, in a task of their own.
fn visits_until(
    edge: &Service,
    prefix: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    let (url, prefix) = (edge.track_url(), prefix.to_owned());
    tokio::spawn(async move {
        let mut all = LoadReport::default();
        for round in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let load = Load {
                url: url.clone(),
                prefix: format!("{prefix}{round}"),
                count: 50,
                concurrency: 4,
                pause: Duration::from_millis(40),
            };
            let report = load.run(client()).await;
            all.answered.extend(report.answered);
            all.failed += report.failed;
            all.latencies.extend(report.latencies);
        }
        all.latencies.sort();
        all
    })
}

/// The session's queue goes with the test (it would collect every later test's visits).
fn forget_session(cluster: &Cluster, client_id: &str) {
    cluster.ctl_any(
        "rabbitmqctl",
        &[
            "delete_queue",
            &format!("mqtt-subscription-{client_id}qos1"),
        ],
    );
}

/// Every answered visit exactly once in `dir/visits.log`, then edge and sink stopped.
async fn assert_all_landed(
    dir: &Path,
    report: &LoadReport,
    edges: &mut [Service],
    sink: Service,
    context: &str,
) {
    let lines = collect_lines(&dir.join("visits.log"), report.answered.len()).await;
    for edge in edges {
        assert!(edge.terminate().success());
    }
    drop(sink);
    assert_exactly_once(&lines, &report.answered, context);
    println!(
        "{context}: {} answered, {} failed, {} lines",
        report.answered.len(),
        report.failed,
        lines.len()
    );
}

/// A sink (client id `name`) on the nodes in `order`, the node leading its queue, and an edge that
/// connects to the other nodes first, so that a fault of the leader does not also cut the edge's link.
async fn sink_and_edge_off_the_leader(
    cluster: &Cluster,
    order: [usize; 3],
    name: &str,
    dir: &Path,
) -> (Service, usize, Service) {
    let sink = sink(cluster, order, name, dir).await;
    let leader = cluster.queue_leader(name);
    let away = (leader + 1) % 3;
    let edge = edge(
        cluster,
        [away, (away + 1) % 3, leader],
        &format!("edge-of-{name}"),
        dir,
    );
    (sink, leader, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_cluster_a_visit_becomes_one_exact_line() {
    let (_turn, cluster) = Cluster::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(cluster, [0, 1, 2], "sink-one-visit", dir.path()).await;
    let mut edge = edge(cluster, [1, 2, 0], "rabbit-one", dir.path());

    let response = client()
        .get(edge.track_url())
        .header("Referer", "https://google.com")
        .header("User-Agent", "SomeUserAgent 1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = collect_lines(&dir.path().join("visits.log"), 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = parse(&lines[0]);
    assert_eq!(line.referrer.as_deref(), Some(&b"https://google.com"[..]));
    assert_eq!(
        line.user_agent.as_deref(),
        Some(&b"SomeUserAgent 1.2.3"[..])
    );
    assert_eq!(line.ip, "127.0.0.1");
    assert!(lines[0].ends_with("|https://google.com|SomeUserAgent 1.2.3|127.0.0.1"));
    assert!(edge.terminate().success());
    assert!(edge.log().contains("protocol=3.1.1"));
    drop(sink);
    forget_session(cluster, "sink-one-visit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_cluster_two_edges_land_exactly_once() {
    let (_turn, cluster) = Cluster::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(cluster, [0, 1, 2], "sink-two-edges", dir.path()).await;
    let mut edges = [
        edge(cluster, [1, 2, 0], "rabbit-two-a", dir.path()),
        edge(cluster, [2, 0, 1], "rabbit-two-b", dir.path()),
    ];
    let (a, b) = tokio::join!(
        visits(&edges[0], "a", 1000, Duration::ZERO),
        visits(&edges[1], "b", 1000, Duration::ZERO)
    );
    let report = LoadReport {
        answered: [a.answered, b.answered].concat(),
        failed: a.failed + b.failed,
        latencies: Vec::new(),
    };
    assert_eq!(report.failed, 0);
    assert_all_landed(dir.path(), &report, &mut edges, sink, "2 edges x 1000").await;
    forget_session(cluster, "sink-two-edges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_cluster_visits_wait_for_a_sink_that_is_away() {
    let (_turn, cluster) = Cluster::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(cluster, [0, 1, 2], "sink-away", dir.path()).await;
    let edge = edge(cluster, [1, 2, 0], "rabbit-away", dir.path());
    assert!(sink.terminate().success());

    let report = visits(&edge, "away", 500, Duration::ZERO).await;
    edge.wait_until_acknowledged(report.answered.len(), PATIENCE)
        .await;
    sink.start();
    assert_all_landed(dir.path(), &report, &mut [edge], sink, "sink away and back").await;
    forget_session(cluster, "sink-away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_leading_the_sinks_queue_killed_with_the_sink_online_loses_nothing() {
    let (_turn, cluster) = Cluster::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, leader, edge) =
        sink_and_edge_off_the_leader(cluster, [0, 2, 1], "sink-leader-online", dir.path()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = visits_until(&edge, "online", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let report = traffic.await.unwrap();
    assert_eq!(report.failed, 0);
    assert_all_landed(
        dir.path(),
        &report,
        &mut [edge],
        sink,
        &format!("node {leader} (queue leader) SIGKILLed, sink online"),
    )
    .await;
    let rebooted = cluster.restart(leader);
    println!("node {leader} back after {rebooted:?}");
    forget_session(cluster, "sink-leader-online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_leading_the_sinks_queue_killed_with_the_sink_away_loses_nothing() {
    let (_turn, cluster) = Cluster::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, leader, edge) =
        sink_and_edge_off_the_leader(cluster, [1, 2, 0], "sink-leader-away", dir.path()).await;
    assert!(sink.terminate().success());

    let queued = visits(&edge, "queued", 500, Duration::ZERO).await;
    edge.wait_until_acknowledged(queued.answered.len(), PATIENCE)
        .await;
    cluster.kill(leader);
    let during = visits(&edge, "during", 100, Duration::ZERO).await;
    sink.start();
    let report = LoadReport {
        answered: [queued.answered, during.answered].concat(),
        failed: queued.failed + during.failed,
        latencies: Vec::new(),
    };
    assert_eq!(report.failed, 0);
    assert_all_landed(
        dir.path(),
        &report,
        &mut [edge],
        sink,
        &format!("node {leader} (queue leader) SIGKILLed, sink away"),
    )
    .await;
    cluster.restart(leader);
    forget_session(cluster, "sink-leader-away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_leading_the_sinks_queue_restarted_cleanly_while_visits_flow_loses_nothing() {
    let (_turn, cluster) = Cluster::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, leader, edge) =
        sink_and_edge_off_the_leader(cluster, [1, 0, 2], "sink-clean-restart", dir.path()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = visits_until(&edge, "clean", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(move || {
        cluster.stop(leader);
        cluster.restart(leader)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let report = traffic.await.unwrap();
    assert_eq!(report.failed, 0);
    assert_all_landed(
        dir.path(),
        &report,
        &mut [edge],
        sink,
        &format!("node {leader} (queue leader) stopped and restarted cleanly"),
    )
    .await;
    forget_session(cluster, "sink-clean-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_the_cluster_while_visits_flow_loses_nothing() {
    let (_turn, cluster) = Cluster::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(cluster, [2, 0, 1], "sink-rolling", dir.path()).await;
    let edge = edge(cluster, [0, 1, 2], "rabbit-rolling", dir.path());

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = visits_until(&edge, "rolling", stop.clone());
    for node in 0..3 {
        cluster.stop(node);
        let rebooted = tokio::task::spawn_blocking(move || cluster.restart(node))
            .await
            .unwrap();
        println!("rolling restart: node {node} back after {rebooted:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let report = traffic.await.unwrap();
    assert_eq!(report.failed, 0);
    assert_all_landed(
        dir.path(),
        &report,
        &mut [edge],
        sink,
        "rolling restart of the 3 nodes",
    )
    .await;
    forget_session(cluster, "sink-rolling");
}
