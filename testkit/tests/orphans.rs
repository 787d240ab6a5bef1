//! Orphaned spools, with the real binaries, a real Mosquitto and real files: edges in the default
//! spool layout (`spool/{edge.id}` in a shared working directory, as compose's replicas on one
//! volume) that stopped before they could deliver leave their spools there under ids no later edge
//! takes; another edge adopts them and delivers each under its own edge id, exactly once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use testkit::visits_log::{assert_exactly_once, count_by_user_agent};
use testkit::{client, collect_lines, files_in, Broker, Load, LoadReport, Service};
use tokio::time::sleep;

/// How long a wait may take before the test gives up (a deadline, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(120);

/// An edge that gives up its drain after a second (the broker or the sink is away).
const SHORT_DRAIN: (&str, &str) = ("TRACKER__EDGE__DRAIN_TIMEOUT_SECS", "1");

async fn visits(edge: &Service, prefix: &str, count: usize) -> LoadReport {
    let load = Load {
        url: edge.track_url(),
        prefix: prefix.into(),
        count,
        concurrency: 4,
        pause: Duration::from_millis(1),
    };
    let report = load.run(client()).await;
    assert_eq!(report.failed, 0, "the pixel answers whatever is down");
    report
}

/// The spool of edge `edge/{id}` in `dir`, the spool root's parent.
fn spool_of(dir: &Path, id: &str) -> PathBuf {
    dir.join("spool/edge").join(id)
}

/// An edge `id` that takes `count` visits and stops before it can deliver them (the broker or the
/// sink away): its spool stays.
async fn gone_with_its_spool(broker: &Broker, dir: &Path, id: &str, count: usize) -> LoadReport {
    let mut edge = Service::edge_in_spool_root(broker, id, dir, &[SHORT_DRAIN]);
    let report = visits(&edge, id, count).await;
    assert!(edge.terminate().success());
    assert!(edge.log().contains("stay in the spool"), "{}", edge.log());
    assert!(spool_of(dir, id).join("lock").exists());
    report
}

/// Waits until `edge`'s metric `name` satisfies `done`, and returns its value.
async fn wait_for_metric(edge: &Service, name: &str, done: impl Fn(f64) -> bool) -> f64 {
    edge.wait_for_metric(name, PATIENCE, done).await
}

/// Makes the spool in `dir` look untouched for an hour.
fn age(dir: &Path) {
    let then = SystemTime::now() - Duration::from_secs(3600);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(then).unwrap();
    }
    std::fs::File::open(dir)
        .unwrap()
        .set_modified(then)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spool_left_while_the_broker_was_away_is_adopted_and_every_visit_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut broker = Broker::start();
    let mut sink = Service::sink(&broker, dir, &[]);
    sink.wait_for_log("subscribed", 1, PATIENCE).await;
    broker.stop();
    let gone = gone_with_its_spool(&broker, dir, "a", 300).await;

    broker.restart();
    let mut adopter = Service::edge_in_spool_root(
        &broker,
        "b",
        dir,
        &[("TRACKER__EDGE__ORPHAN_AFTER_SECS", "1")],
    );
    let lines = collect_lines(&dir.join("visits.log"), gone.answered.len()).await;
    assert_exactly_once(&lines, &gone.answered, "edge a's orphaned spool");
    let adopted = wait_for_metric(
        &adopter,
        "tracker_edge_orphaned_spools_adopted_total",
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(adopted, 1.0);
    assert_eq!(
        adopter.metric("tracker_edge_orphaned_spools").await,
        Some(0.0)
    );
    assert!(!spool_of(dir, "a").exists(), "delivered, then removed");
    let log = adopter.log();
    assert!(
        log.contains("adopting the orphaned spool of edge edge/a: delivering its 300 visits"),
        "{log}"
    );
    assert!(
        log.contains("adopted the orphaned spool of edge edge/a"),
        "{log}"
    );
    assert!(adopter.terminate().success());
    assert_eq!(
        files_in(&spool_of(dir, "b")),
        ["lock", "seq"],
        "a fully confirmed spool keeps only its numbering at a clean stop"
    );
    sink.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_clean_stop_leaves_is_kept_for_a_restart_and_removed_once_its_edge_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Broker::start();
    let mut sink = Service::sink(&broker, dir, &[]);
    sink.wait_for_log("subscribed", 1, PATIENCE).await;
    let mut gone = Service::edge_in_spool_root(&broker, "c", dir, &[]);
    let sent = visits(&gone, "c", 20).await;
    collect_lines(&dir.join("visits.log"), sent.answered.len()).await;
    assert!(gone.terminate().success());
    assert!(
        gone.log().contains("everything delivered"),
        "{}",
        gone.log()
    );
    assert_eq!(files_in(&spool_of(dir, "c")), ["lock", "seq"]);
    age(&spool_of(dir, "c"));

    let mut other = Service::edge_in_spool_root(&broker, "d", dir, &[]);
    let deadline = Instant::now() + PATIENCE;
    while spool_of(dir, "c").exists() {
        assert!(Instant::now() < deadline, "never removed:\n{}", other.log());
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        other
            .log()
            .contains("removed the spool edge edge/c left: nothing in it was unconfirmed"),
        "{}",
        other.log()
    );
    assert_eq!(
        other
            .metric("tracker_edge_orphaned_spools_adopted_total")
            .await
            .unwrap_or_default(),
        0.0,
        "nothing to deliver: not counted as adopted"
    );
    assert!(other.terminate().success());
    sink.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spools_their_edges_hold_are_never_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Broker::start();
    let mut sink = Service::sink(&broker, dir, &[]);
    sink.wait_for_log("subscribed", 1, PATIENCE).await;
    sink.terminate();
    // The broker holds c's visits for the sink, but without a receipt c keeps them too.
    let gone = gone_with_its_spool(&broker, dir, "c", 100).await;

    // Two running edges, quick to call a spool orphaned, whose own spools hold unconfirmed visits.
    let eager = [("TRACKER__EDGE__ORPHAN_AFTER_SECS", "1")];
    let mut a = Service::edge_in_spool_root(&broker, "a", dir, &eager);
    let mut b = Service::edge_in_spool_root(&broker, "b", dir, &eager);
    let mut answered = gone.answered;
    answered.extend(visits(&a, "a", 100).await.answered);
    answered.extend(visits(&b, "b", 100).await.answered);
    // Seconds of scans (one a second) while the spools are older than edge.orphan_after_secs.
    for edge in [&a, &b] {
        wait_for_metric(edge, "tracker_edge_unconfirmed_oldest_seconds", |s| {
            s >= 4.0
        })
        .await;
    }
    sink.start();
    let lines = collect_lines(&dir.join("visits.log"), answered.len()).await;
    assert_exactly_once(&lines, &answered, "two running edges and an orphan");
    // c's visits may have landed through the broker's queue before its adopter heard the receipt.
    let deadline = Instant::now() + PATIENCE;
    let adopted = loop {
        let mut adopted = 0.0;
        for edge in [&a, &b] {
            let metric = edge.metric("tracker_edge_orphaned_spools_adopted_total");
            adopted += metric.await.unwrap_or_default();
        }
        if adopted >= 1.0 {
            break adopted;
        }
        assert!(Instant::now() < deadline, "c's spool was never adopted");
        sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(adopted, 1.0);
    assert!(!spool_of(dir, "c").exists(), "delivered, then removed");
    let logs = a.log() + &b.log();
    assert_eq!(
        logs.matches("adopting the orphaned spool").count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("adopting the orphaned spool of edge edge/c"));
    for edge in [&a, &b] {
        assert_eq!(edge.metric("tracker_edge_orphaned_spools").await, Some(0.0));
    }
    assert!(spool_of(dir, "a").exists() && spool_of(dir, "b").exists());
    assert!(a.terminate().success() && b.terminate().success());
    sink.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spool_younger_than_orphan_after_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut broker = Broker::start();
    let mut sink = Service::sink(&broker, dir, &[]);
    sink.wait_for_log("subscribed", 1, PATIENCE).await;
    broker.stop();
    let old = gone_with_its_spool(&broker, dir, "old", 50).await;
    let young = gone_with_its_spool(&broker, dir, "young", 50).await;
    age(&spool_of(dir, "old"));

    broker.restart();
    // The default edge.orphan_after_secs (300 s): the young spool is minutes from it.
    let mut adopter = Service::edge_in_spool_root(&broker, "b", dir, &[]);
    let lines = collect_lines(&dir.join("visits.log"), old.answered.len()).await;
    assert_exactly_once(&lines, &old.answered, "the old orphan");
    wait_for_metric(
        &adopter,
        "tracker_edge_orphaned_spools_adopted_total",
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(
        adopter.metric("tracker_edge_orphaned_spools").await,
        Some(0.0),
        "the young spool was never counted"
    );
    assert!(!spool_of(dir, "old").exists());
    assert!(spool_of(dir, "young").join("lock").exists());
    let counts = count_by_user_agent(&lines);
    assert!(
        young.answered.iter().all(|m| !counts.contains_key(m)),
        "none of the young spool's visits was sent"
    );
    assert!(adopter.terminate().success());
    sink.terminate();
}
