//! A disk full of other files under each service, with the real binaries and a real `mosquitto`; the
//! disk is a small tmpfs (the tests run as root), unmounted even when a test fails. The edge's spool
//! cannot append while the broker is away: what the edge holds in memory stays bounded, the rest is
//! dropped and counted, the pixel is served throughout. The sink cannot write its log: it retries
//! and counts it. In both, once there is room again, every visit kept lands exactly once.

use std::time::Duration;

use testkit::visits_log::{assert_exactly_once, count_by_user_agent};
use testkit::{client, collect_lines, Broker, Load, LoadReport, Service, SmallDisk};

/// How long a wait may take before the test gives up (a deadline, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(180);
/// The edge's bound on batches held in memory (`MAX_OUTBOX_BYTES` in pixel-edge/src/publisher.rs).
const EDGE_OUTBOX_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
/// The edge's largest batch (`MAX_BATCH_BYTES` in pixel-edge/src/batch.rs): the outbox takes one
/// more batch while below its bound.
const EDGE_BATCH_BYTES: f64 = 256.0 * 1024.0;

async fn load(edge: &Service, prefix: &str, count: usize) -> LoadReport {
    let load = Load {
        url: edge.track_url(),
        prefix: prefix.into(),
        count,
        concurrency: 8,
        pause: Duration::ZERO,
    };
    load.run(client()).await
}

/// 12000 visits of ~4 KiB (~48 MiB, three times the bound) come while the broker is away and the spool's disk is full:
/// every append fails (counted in `tracker_edge_spool_errors_total`), batches pile up in memory up
/// to the outbox bound, then the queue fills and the rest are dropped and counted. Then room and
/// broker come back: exactly the visits not dropped land, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spool_that_cannot_append_leaves_a_bounded_outbox_and_counted_drops() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount("1m");
    let spool = disk.path().join("spool").display().to_string();
    let mut broker = Broker::start();
    let mut sink = Service::sink(&broker, dir.path(), &[]);
    let mut edge = Service::edge(
        &broker,
        "edge-a",
        dir.path(),
        &[
            ("TRACKER__EDGE__SPOOL_DIR", &spool),
            ("TRACKER__EDGE__QUEUE_CAPACITY", "10"),
        ],
    );
    sink.wait_for_log("connected to the broker", 1, PATIENCE)
        .await;
    edge.wait_for_log("connected to the broker", 1, PATIENCE)
        .await;
    broker.stop();
    let filler = disk.fill();

    let marker = format!("v{}", "x".repeat(4000));
    let report = load(&edge, &marker, 12_000).await;
    assert_eq!(report.failed, 0, "the pixel is served whatever is held");
    edge.wait_for_log("the in-memory outbox is full", 1, PATIENCE)
        .await;
    edge.wait_for_log(
        "visit dropped: the queue holds edge.queue_capacity visits",
        1,
        PATIENCE,
    )
    .await;
    let append_errors = edge
        .metric("tracker_edge_spool_errors_total{operation=\"append\"}")
        .await;
    let outbox = edge.metric("tracker_edge_outbox_bytes").await.unwrap();
    let dropped = edge
        .metric("tracker_edge_visits_dropped_total{reason=\"queue_full\"}")
        .await
        .unwrap();
    let rss = edge.peak_rss();
    println!(
        "spool full, broker away: {append_errors:?} failed appends, outbox {outbox} bytes, \
         {dropped} of {} visits dropped, edge peak RSS {} MB",
        report.answered.len(),
        rss / 1_000_000
    );
    assert!(append_errors.is_some_and(|n| n >= 1.0), "{append_errors:?}");
    // One line a second at most, each counting those it stands for: not one line per batch.
    let logged = edge.log().matches("could not spool a batch").count();
    assert!(
        (logged as f64) * 10.0 <= append_errors.unwrap(),
        "{logged} error lines for {append_errors:?} failed appends"
    );
    assert!(
        (EDGE_OUTBOX_BYTES..EDGE_OUTBOX_BYTES + EDGE_BATCH_BYTES).contains(&outbox),
        "the outbox fills to its bound and no further: {outbox}"
    );
    assert!(dropped > 0.0);
    // Held whole, the 48 MiB would take it past this; the outbox bound keeps it near 45 MB.
    assert!(rss < 64_000_000, "edge peak RSS {rss} bytes");

    std::fs::remove_file(filler).unwrap();
    broker.restart();
    let log = dir.path().join("visits.log");
    let kept = report.answered.len() - dropped as usize;
    let lines = collect_lines(&log, kept).await;
    assert!(edge.terminate().success());
    sink.terminate();
    let counts = count_by_user_agent(&lines);
    assert!(counts.values().all(|&n| n == 1), "no visit twice");
    assert!(counts.keys().all(|m| report.answered.contains(m)));
    assert_eq!(lines.len(), kept, "every visit not dropped lands");
}

/// The sink's log is on a disk other files have filled: each write fails, nothing is acked, and
/// the sink retries (counted in `tracker_sink_write_retries_total`) until there is room; then
/// every visit lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_whose_disk_is_full_retries_and_writes_every_visit_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount("1m");
    let log = disk.path().join("visits.log");
    let broker = Broker::start();
    let mut sink = Service::sink_with_metrics(
        &broker,
        dir.path(),
        &[("TRACKER__STORAGE__PATH", &log.display().to_string())],
    );
    let mut edge = Service::edge(&broker, "edge-a", dir.path(), &[]);
    sink.wait_for_log("connected to the broker", 1, PATIENCE)
        .await;
    let filler = disk.fill();

    let report = load(&edge, "v", 300).await;
    // Failed, then failed again when retried.
    sink.wait_for_metric("tracker_sink_write_retries_total", PATIENCE, |n| n >= 2.0)
        .await;
    assert!(
        sink.log().contains("No space left on device"),
        "{}",
        sink.log()
    );
    std::fs::remove_file(filler).unwrap();

    let lines = collect_lines(&log, report.answered.len()).await;
    assert!(edge.terminate().success());
    sink.terminate();
    assert_exactly_once(&lines, &report.answered, "a full disk under the sink");
}
