//! Fault injection against real processes: the two service binaries and a real `mosquitto`. Every
//! test visit carries its own marker (its user-agent); every visit that got its GIF must be in the log
//! exactly once. Figures (latency, loss) are printed for the record, never asserted as timings.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::visits_log::{assert_exactly_once, count_by_user_agent};
use testkit::{
    client, collect_lines, files_in, read_lines, settled_lines, wait_for_lines, Broker, Load,
    LoadReport, Service, SmallDisk,
};
use tokio::time::sleep;

/// How long a wait may take before the test gives up: generous, since a wait ends as soon as its
/// condition holds and a probe may be up to 32 receipt timeouts away on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(180);

/// Paced traffic to `edge`, in a task of its own so the test can inject faults meanwhile.
fn traffic(
    edge: &Service,
    prefix: &str,
    count: usize,
    pause_ms: u64,
) -> tokio::task::JoinHandle<LoadReport> {
    let load = Load {
        url: edge.track_url(),
        prefix: prefix.into(),
        count,
        concurrency: 8,
        pause: Duration::from_millis(pause_ms),
    };
    tokio::spawn(load.run(client()))
}

/// Waits until `service`'s log mentions `text`.
async fn wait_for_log(service: &Service, text: &str) {
    wait_for_log_count(service, text, 1).await;
}

/// Waits until `service`'s log mentions `text` at least `times` times.
async fn wait_for_log_count(service: &Service, text: &str, times: usize) {
    service.wait_for_log(text, times, PATIENCE).await;
}

fn start_stack(dir: &Path) -> (Broker, Service, Service) {
    let broker = Broker::start();
    let sink = Service::sink(&broker, dir, &[]);
    let edge = Service::edge(&broker, "edge-a", dir, &[]);
    (broker, sink, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_killed_twice_while_visits_flow_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;

    let traffic = traffic(&edge, "v", 4000, 4);
    for _ in 0..2 {
        sleep(Duration::from_millis(700)).await;
        sink.kill();
        sleep(Duration::from_millis(300)).await;
        sink.start();
    }
    let report = traffic.await.unwrap();
    println!("sink killed twice: {}", report.summary());
    assert!(edge.terminate().success());
    let lines = collect_lines(&dir.path().join("visits.log"), report.answered.len()).await;
    sink.terminate();
    assert_exactly_once(&lines, &report.answered, "sink SIGKILLed twice");
    assert!(sink
        .log()
        .contains("recovered the ids of recently written visits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restarted_while_visits_flow_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;

    let traffic = traffic(&edge, "v", 3000, 4);
    sleep(Duration::from_millis(800)).await;
    broker.stop();
    sleep(Duration::from_millis(500)).await;
    broker.restart();
    let report = traffic.await.unwrap();
    println!("broker restarted: {}", report.summary());
    assert!(edge.terminate().success());
    let lines = collect_lines(&dir.path().join("visits.log"), report.answered.len()).await;
    sink.terminate();
    assert_eq!(
        report.failed, 0,
        "the pixel is served whatever the broker does"
    );
    assert_exactly_once(&lines, &report.answered, "broker restarted");
    assert!(
        edge.log().contains("broker connection lost"),
        "{}",
        edge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ten_second_broker_outage_is_held_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;

    broker.stop();
    let down_since = Instant::now();
    let report = traffic(&edge, "v", 2000, 25).await.unwrap();
    println!("pixel during a broker outage: {}", report.summary());
    sleep(Duration::from_secs(10).saturating_sub(down_since.elapsed())).await;
    println!("broker down for {:?}", down_since.elapsed());
    broker.restart();

    assert!(edge.terminate().success());
    assert!(
        edge.log().contains("everything delivered"),
        "{}",
        edge.log()
    );
    let lines = collect_lines(&dir.path().join("visits.log"), report.answered.len()).await;
    sink.terminate();
    assert_eq!(report.failed, 0, "every request answered during the outage");
    assert_exactly_once(&lines, &report.answered, "10 s broker outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_stopped_under_load_delivers_every_visit_it_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;

    let traffic = traffic(&edge, "v", 3000, 2);
    sleep(Duration::from_millis(800)).await;
    let status = edge.terminate();
    let report = traffic.await.unwrap();
    println!("edge stopped under load: {}", report.summary());
    assert!(status.success(), "{}", edge.log());
    assert!(
        edge.log().contains("everything delivered"),
        "{}",
        edge.log()
    );
    let lines = collect_lines(&dir.path().join("visits.log"), report.answered.len()).await;
    sink.terminate();
    assert!(report.failed > 0, "the load outlived the edge");
    assert_exactly_once(&lines, &report.answered, "edge SIGTERMed under load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_restarted_during_a_broker_outage_keeps_its_visits_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let spool_dir = spool.display().to_string();
    let mut broker = Broker::start();
    let mut sink = Service::sink(&broker, dir.path(), &[]);
    let settings = [
        ("TRACKER__EDGE__SPOOL_DIR", spool_dir.as_str()),
        ("TRACKER__EDGE__DRAIN_TIMEOUT_SECS", "1"),
    ];
    let mut edge = Service::edge(&broker, "edge-a", dir.path(), &settings);
    wait_for_log(&sink, "connected to the broker").await;

    broker.stop();
    let report = traffic(&edge, "v", 1000, 1).await.unwrap();
    println!("edge restarted during an outage: {}", report.summary());
    assert!(edge.terminate().success());
    assert!(edge.log().contains("stay in the spool"), "{}", edge.log());
    edge.start();
    broker.restart();

    let lines = collect_lines(&dir.path().join("visits.log"), report.answered.len()).await;
    assert!(edge.terminate().success());
    sink.terminate();
    assert_eq!(report.failed, 0);
    assert_exactly_once(
        &lines,
        &report.answered,
        "edge restarted during a broker outage",
    );
    assert!(
        edge.log().contains("everything delivered"),
        "the sink confirmed every spooled visit: {}",
        edge.log()
    );
    assert_eq!(
        files_in(&spool),
        ["lock", "seq"],
        "a spool the sink confirmed entirely keeps only its numbering at a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visits_published_before_any_sink_subscribed_are_kept_until_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let mut edge = Service::edge(&broker, "edge-a", dir.path(), &[]);
    let report = traffic(&edge, "v", 300, 2).await.unwrap();
    sleep(Duration::from_millis(500)).await;
    assert!(
        edge.log().contains("NoMatchingSubscribers"),
        "{}",
        edge.log()
    );

    let mut sink = Service::sink(&broker, dir.path(), &[]);
    let lines = collect_lines(&dir.path().join("visits.log"), report.answered.len()).await;
    assert!(edge.terminate().success());
    sink.terminate();
    assert_exactly_once(&lines, &report.answered, "no subscriber at first");
}

/// Waits until `edge`'s metric `name` satisfies `done` (a deadline for waiting, not a timing assertion).
async fn wait_for_metric(edge: &Service, name: &str, done: impl Fn(f64) -> bool) {
    edge.wait_for_metric(name, PATIENCE, done).await;
}

/// An operator's `mosquitto_sub` subscribed before the sink's very first subscription: the broker
/// acknowledges the first 200 visits with success, but no session keeps them for the sink. Then the
/// sink subscribes and the edge takes `late` more visits. Once the edge holds nothing unconfirmed,
/// every visit is in the log exactly once.
async fn acked_but_never_delivered(late: usize) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let monitor = testkit::mqtt::watch(&broker, "monitor", "tracker/visits/#").await;
    let mut edge = Service::edge(
        &broker,
        "edge-a",
        dir.path(),
        &[("TRACKER__EDGE__RECEIPT_TIMEOUT_SECS", "1")],
    );
    let early = traffic(&edge, "early", 200, 2).await.unwrap();
    wait_for_metric(&edge, "tracker_edge_visits_acknowledged_total", |acked| {
        acked >= early.answered.len() as f64
    })
    .await;
    // Acknowledged, not confirmed: the edge shows what it holds and for how long.
    wait_for_metric(&edge, "tracker_edge_unconfirmed_visits", |held| {
        held == early.answered.len() as f64
    })
    .await;
    wait_for_metric(&edge, "tracker_edge_unconfirmed_oldest_seconds", |age| {
        age > 0.0
    })
    .await;

    let mut sink = Service::sink(&broker, dir.path(), &[]);
    wait_for_log(&sink, "connected to the broker").await;
    let late = traffic(&edge, "late", late, 2).await.unwrap();
    wait_for_metric(&edge, "tracker_edge_unconfirmed_visits", |held| held == 0.0).await;
    let lines = settled_lines(&dir.path().join("visits.log"), Duration::from_secs(1)).await;
    // Sent again by the edge (a probe or everything), not by the broker.
    let resends = edge.metric("tracker_edge_unconfirmed_resends_total").await;
    drop(monitor);
    assert!(edge.terminate().success());
    sink.terminate();
    let answered = [early.answered, late.answered].concat();
    assert_exactly_once(
        &lines,
        &answered,
        "acked by the broker, never delivered to the sink",
    );
    assert!(resends.is_some_and(|n| n >= 1.0), "{resends:?}");
}

/// The sink's receipt for the later visits must not confirm the lost ones: the edge sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visits_the_broker_acked_but_never_delivered_are_not_confirmed_by_later_ones() {
    acked_but_never_delivered(200).await;
}

/// No later visit and no receipt at all: the edge's probe reaches the sink, whose receipt brings
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visits_the_broker_acked_but_never_delivered_are_probed_for_by_an_idle_edge() {
    acked_but_never_delivered(0).await;
}

/// The broker's queue for an absent sink holds 5 messages (`max_queued_messages`): it acknowledges
/// the rest and drops them. The sink comes back, writes the 5 and then the edge's later visits; the
/// dropped ones are sent again by the edge, and every visit lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visits_a_full_broker_queue_dropped_are_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(&[("max_queued_messages", "5")]);
    let mut sink = Service::sink(&broker, dir.path(), &[]);
    wait_for_log(&sink, "connected to the broker").await;
    sink.terminate();
    let mut edge = Service::edge(
        &broker,
        "edge-a",
        dir.path(),
        &[("TRACKER__EDGE__RECEIPT_TIMEOUT_SECS", "1")],
    );
    let queued = traffic(&edge, "queued", 300, 2).await.unwrap();
    wait_for_metric(&edge, "tracker_edge_visits_acknowledged_total", |acked| {
        acked >= queued.answered.len() as f64
    })
    .await;
    assert!(
        broker.log().contains("Outgoing messages are being dropped"),
        "the broker dropped messages:\n{}",
        broker.log()
    );

    sink.start();
    wait_for_log(&sink, "connected to the broker").await;
    let late = traffic(&edge, "late", 100, 2).await.unwrap();
    wait_for_metric(&edge, "tracker_edge_unconfirmed_visits", |held| held == 0.0).await;
    let lines = settled_lines(&dir.path().join("visits.log"), Duration::from_secs(1)).await;
    let resends = edge.metric("tracker_edge_unconfirmed_resends_total").await;
    assert!(edge.terminate().success());
    sink.terminate();
    let answered = [queued.answered, late.answered].concat();
    assert_exactly_once(&lines, &answered, "dropped by a full broker queue");
    assert!(resends.is_some_and(|n| n >= 1.0), "{resends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_acked_while_writing_fails_and_everything_lands_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("visits.log");
    // /dev/full fails every write with ENOSPC, as a full disk does.
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    let (_broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;

    let report = traffic(&edge, "v", 500, 1).await.unwrap();
    wait_for_log(&sink, "writing visits failed").await;
    // Killed while failing: had anything been acked, the broker would not deliver it again.
    sink.kill();
    sink.start();
    wait_for_log(&sink, "No space left on device").await;
    std::fs::remove_file(&log).unwrap();

    assert!(edge.terminate().success());
    let lines = collect_lines(&log, report.answered.len()).await;
    sink.terminate();
    assert_exactly_once(&lines, &report.answered, "disk full, then space again");
}

/// How a broker crash is staged.
struct Crash {
    /// With `false` the sink is away during the load, so the visits wait in the broker's memory.
    sink_online: bool,
    /// SIGKILLs, one after another.
    times: usize,
    /// The broker's persistence file is deleted before each restart: its disk is lost.
    disk_lost: bool,
}

/// Kills the broker (SIGKILL) while 3000 visits flow and checks that every answered visit lands
/// exactly once: the edges keep what the sink has not confirmed and send it again.
async fn broker_crash(crash: Crash) {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;
    if !crash.sink_online {
        sink.terminate();
    }

    let traffic = traffic(&edge, "v", 3000, 4);
    for _ in 0..crash.times {
        sleep(Duration::from_millis(800)).await;
        broker.kill();
        if crash.disk_lost {
            broker.lose_persistence();
        }
        sleep(Duration::from_millis(300)).await;
        broker.restart();
    }
    let report = traffic.await.unwrap();
    let returned = Instant::now();
    if !crash.sink_online {
        sink.start();
    }
    let lines = collect_lines(&dir.path().join("visits.log"), report.answered.len()).await;
    println!(
        "broker SIGKILLed {} time(s) under load, sink {}{}: {} answered, {} in the log, all in {:?} after the load",
        crash.times,
        if crash.sink_online { "online" } else { "away" },
        if crash.disk_lost { ", its disk lost" } else { "" },
        report.answered.len(),
        lines.len(),
        returned.elapsed()
    );
    assert!(edge.terminate().success());
    sink.terminate();
    assert_eq!(
        report.failed, 0,
        "the pixel is served whatever the broker does"
    );
    assert_exactly_once(&lines, &report.answered, "broker SIGKILLed");
    assert!(
        edge.log()
            .contains("will send again every visit the sink has not confirmed"),
        "{}",
        edge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_crash_with_the_sink_online_loses_nothing() {
    broker_crash(Crash {
        sink_online: true,
        times: 1,
        disk_lost: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_crash_with_the_sink_away_loses_nothing() {
    broker_crash(Crash {
        sink_online: false,
        times: 1,
        disk_lost: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_broker_crashes_in_a_row_lose_nothing() {
    broker_crash(Crash {
        sink_online: false,
        times: 2,
        disk_lost: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_that_lost_its_disk_while_the_sink_was_away_loses_nothing() {
    broker_crash(Crash {
        sink_online: false,
        times: 1,
        disk_lost: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_beyond_the_id_window_redelivered_after_a_sink_crash_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let mut sink = Service::sink(
        &broker,
        dir.path(),
        &[("TRACKER__STORAGE__DEDUP_WINDOW", "10")],
    );
    let mut edge = Service::edge(&broker, "edge-a", dir.path(), &[]);
    wait_for_log(&sink, "connected to the broker").await;
    sink.terminate();
    let report = traffic(&edge, "v", 2000, 1).await.unwrap();
    let log = dir.path().join("visits.log");

    // Killed while it works through the backlog, before it acked all it wrote.
    sink.start();
    wait_for_lines(&log, 100, PATIENCE).await;
    sink.kill();
    sink.start();
    // A restarted edge sends its whole spool again, thousands of visits against a window of 10 ids.
    edge.kill();
    edge.start();
    let lines = collect_lines(&log, report.answered.len()).await;
    assert!(edge.terminate().success());
    sink.terminate();
    assert_exactly_once(&lines, &report.answered, "backlog beyond the id window");
    assert!(
        sink.log().contains("skipped visits already in the log"),
        "{}",
        sink.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_killed_during_a_broker_outage_loses_only_what_it_had_not_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;
    broker.stop();
    let traffic = traffic(&edge, "v", 2000, 1);
    sleep(Duration::from_millis(700)).await;
    edge.kill();
    let report = traffic.await.unwrap();
    edge.start();
    broker.restart();
    let lines = settled_lines(&dir.path().join("visits.log"), Duration::from_secs(3)).await;
    assert!(edge.terminate().success());
    sink.terminate();
    let counts = count_by_user_agent(&lines);
    let lost = report
        .answered
        .iter()
        .filter(|m| !counts.contains_key(*m))
        .count();
    println!(
        "edge SIGKILLed during a broker outage: {} answered, {} failed, {lost} answered visits lost",
        report.answered.len(),
        report.failed
    );
    assert!(report.failed > 0, "the kill fell inside the load");
    assert!(counts.values().all(|&n| n == 1), "no visit twice");
    assert!(
        counts.keys().all(|m| report.answered.contains(m)),
        "only answered visits"
    );
    assert_eq!(lines.len() + lost, report.answered.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_torn_by_a_full_disk_leaves_no_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount("96k");
    let log = disk.path().join("visits.log");
    let log_setting = log.display().to_string();
    let broker = Broker::start();
    let mut sink = Service::sink(
        &broker,
        dir.path(),
        &[("TRACKER__STORAGE__PATH", &log_setting)],
    );
    let mut edge = Service::edge(&broker, "edge-a", dir.path(), &[]);
    wait_for_log(&sink, "connected to the broker").await;

    // Long markers, so that a batch of lines needs far more room than its journal record.
    let marker = format!("v{}", "x".repeat(600));
    let report = traffic(&edge, &marker, 400, 1).await.unwrap();
    wait_for_log(&sink, "No space left on device").await;
    sink.kill();
    let torn = std::fs::read(&log).unwrap();
    println!(
        "disk full: the log holds {} bytes, ending {}",
        torn.len(),
        if torn.ends_with(b"\n") {
            "with a whole line"
        } else {
            "inside a line"
        }
    );
    assert!(
        !torn.ends_with(b"\n"),
        "the disk filled in the middle of a batch"
    );
    disk.grow("16m");
    sink.start();

    let lines = collect_lines(&log, report.answered.len()).await;
    assert!(edge.terminate().success());
    sink.terminate();
    for line in &lines {
        assert!(
            common::line::split_fields(line.as_bytes()).is_some(),
            "a broken line: {line}"
        );
    }
    assert_exactly_once(&lines, &report.answered, "batch torn by a full disk");
    assert!(sink.log().contains("cutting it back"), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_hold_visits_are_dropped_counted_and_logged_but_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start();
    let mut sink = Service::sink(&broker, dir.path(), &[]);
    let mut edge = Service::edge(
        &broker,
        "edge-a",
        dir.path(),
        // Without a disk, so that the queue is the whole hold (a spool would take all 50).
        &[
            ("TRACKER__EDGE__QUEUE_CAPACITY", "10"),
            ("TRACKER__EDGE__RECEIPTS", "false"),
        ],
    );
    wait_for_log(&sink, "connected to the broker").await;

    broker.stop();
    let report = traffic(&edge, "v", 50, 1).await.unwrap();
    assert_eq!(
        report.failed, 0,
        "the pixel is served even when the visit cannot be held"
    );
    wait_for_log(
        &edge,
        "visit dropped: the queue holds edge.queue_capacity visits",
    )
    .await;
    broker.restart();
    assert!(edge.terminate().success());
    let lines = collect_lines(&dir.path().join("visits.log"), 10).await;
    sink.terminate();
    let counts = count_by_user_agent(&lines);
    println!(
        "hold of 10, 50 visits during an outage: {} delivered",
        lines.len()
    );
    assert!(
        (10..50).contains(&lines.len()),
        "the held visits, not the dropped ones: {}",
        lines.len()
    );
    assert!(counts.values().all(|&n| n == 1));
    assert!(edge.log().contains("dropped_total="), "{}", edge.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_rotation_under_load_puts_every_visit_in_exactly_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;
    let log = dir.path().join("visits.log");
    let rotated = dir.path().join("visits.log.1");

    let traffic = traffic(&edge, "v", 3000, 2);
    sleep(Duration::from_millis(700)).await;
    // What logrotate does: move the file away, then `postrotate kill -HUP`.
    std::fs::rename(&log, &rotated).unwrap();
    sink.hangup();
    let report = traffic.await.unwrap();
    assert!(edge.terminate().success());
    wait_for_log(&sink, "reopened the visits log").await;

    let deadline = Instant::now() + PATIENCE;
    while read_lines(&rotated).len() + read_lines(&log).len() < report.answered.len()
        && Instant::now() < deadline
    {
        sleep(Duration::from_millis(100)).await;
    }
    sink.terminate();
    let (old, new) = (read_lines(&rotated), read_lines(&log));
    println!(
        "rotation under load: {} lines in the rotated file, {} in the new one",
        old.len(),
        new.len()
    );
    assert!(
        !old.is_empty() && !new.is_empty(),
        "the rotation fell inside the load"
    );
    for file in [&rotated, &log] {
        assert!(
            std::fs::read(file).unwrap().ends_with(b"\n"),
            "no partial line at the end of {}",
            file.display()
        );
    }
    assert_exactly_once(
        &[old, new].concat(),
        &report.answered,
        "log rotated under load",
    );
}

/// A backlog heavier than the sink's inbox budget, queued while the sink was away: on reconnection
/// the broker hands over more than the budget holds. When the writer still waited for room in
/// rumqttc's request channel to ack, which only the subscription's polling frees while the
/// subscription waited for the writer to free the budget, the sink stalled for good after ~2,900
/// messages (its broker then dropped it for missed keep-alives).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_heavier_than_the_sinks_inbox_drains_whole() {
    const MESSAGES: usize = 4_000;
    const PER_MESSAGE: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let mut sink = Service::sink(&broker, dir.path(), &[]);
    sink.wait_for_log("subscribed", 1, PATIENCE).await;
    assert!(sink.terminate().success());
    // 4,000 messages of ~11.7 KB: ~47 MB, past the inbox's 32 MiB.
    let payloads = (0..MESSAGES).map(|m| {
        let mut payload = Vec::new();
        for n in 0..PER_MESSAGE {
            let visit = common::visit::Visit::new(
                chrono::Utc::now(),
                common::visit::HeaderText::new("https://blog.example/articles/hello.html"),
                common::visit::HeaderText::new(format!("backlog-{m}-{n} {}", "x".repeat(90))),
                "192.0.2.1".parse().unwrap(),
                "edge/backlog",
            );
            common::wire::encode_event(&visit, &mut payload);
        }
        payload
    });
    let acked =
        testkit::mqtt::publish(&broker, "edge", "tracker/visits/edge/backlog", payloads).await;
    assert_eq!(acked, MESSAGES);

    sink.start();
    let lines = collect_lines(&dir.path().join("visits.log"), MESSAGES * PER_MESSAGE).await;
    let sent: Vec<String> = (0..MESSAGES)
        .flat_map(|m| (0..PER_MESSAGE).map(move |n| format!("backlog-{m}-{n} {}", "x".repeat(90))))
        .collect();
    assert_exactly_once(&lines, &sent, "a backlog heavier than the inbox");
    assert!(sink.terminate().success());
}
