//! The same pipeline through the three-node RabbitMQ cluster and through one Mosquitto, real release
//! binaries (an edge with `mqtt.protocol = 3.1.1` on the cluster, the sink): visits/s end to end
//! (`VISITS` requests, 64 at a time, until the last is a line), how long the sink takes to drain a
//! backlog of `BACKLOG` visits queued while it was away, and how long the cluster's nodes take to
//! boot (the three at once, then one restarted). Prints the figures; checks only that every visit
//! landed.
//!
//! Run by hand: `cargo build --release --bins && cargo bench -p testkit --bench cluster`
//! (`VISITS` default 50000, `BACKLOG` 100000).

use std::time::{Duration, Instant};

use testkit::{client, wait_for_lines, Broker, BrokerAccess, Cluster, Load, Service};

const PATIENCE: Duration = Duration::from_secs(600);

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let visits = setting("VISITS", 50_000);
    let backlog = setting("BACKLOG", 100_000);
    let broker = Broker::start();
    run("Mosquitto", &broker, visits, backlog).await;
    drop(broker);
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    println!(
        "cluster: 3 nodes booted (at once, first boot) in {:.1?}",
        cluster.boot_time
    );
    // The sink on node 0 and the edge on node 1, as in a deployment where they sit apart.
    run(
        "RabbitMQ cluster",
        &Cluster::shared().via([0, 1, 2]),
        visits,
        backlog,
    )
    .await;
    cluster.stop(2);
    let restarted = tokio::task::spawn_blocking(|| Cluster::shared().restart(2))
        .await
        .unwrap();
    println!("cluster: node 2 stopped and restarted, serving MQTT again after {restarted:.1?}");
}

async fn run(name: &str, broker: &impl BrokerAccess, visits: usize, backlog: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Service::sink(
        broker,
        dir.path(),
        &[("TRACKER__MQTT__CLIENT_ID", "bench-sink")],
    );
    sink.wait_for_log("subscribed", 1, PATIENCE).await;
    let mut edge = Service::edge(broker, "bench", dir.path(), &[]);
    let log = dir.path().join("visits.log");

    let started = Instant::now();
    load(&edge, "flow", visits).await;
    let lines = wait_for_lines(&log, visits, PATIENCE).await.len();
    let elapsed = started.elapsed();
    assert_eq!(lines, visits, "{name}: every visit landed");
    println!(
        "{name}: {visits} visits in {elapsed:.1?} from the first request to the last line: {:.0} visits/s",
        visits as f64 / elapsed.as_secs_f64()
    );

    assert!(sink.terminate().success());
    load(&edge, "backlog", backlog).await;
    // Held by the broker once the edge's PUBACKs are in.
    edge.wait_until_acknowledged(visits + backlog, PATIENCE)
        .await;
    let started = Instant::now();
    sink.start();
    let lines = wait_for_lines(&log, visits + backlog, PATIENCE).await.len();
    let drained = started.elapsed();
    assert_eq!(
        lines,
        visits + backlog,
        "{name}: every backlog visit landed"
    );
    println!(
        "{name}: a backlog of {backlog} drained in {drained:.1?} after the sink's start ({:.0} visits/s)",
        backlog as f64 / drained.as_secs_f64()
    );
    assert!(edge.terminate().success());
    sink.terminate();
}

async fn load(edge: &Service, prefix: &str, count: usize) {
    let report = Load {
        url: edge.track_url(),
        prefix: prefix.into(),
        count,
        concurrency: 64,
        pause: Duration::ZERO,
    }
    .run(client())
    .await;
    assert_eq!(report.failed, 0, "{}", report.summary());
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
