//! Fault injection against real processes: the two service binaries and a real `mosquitto`. Every
//! test visit carries its own marker (its user-agent); every visit that got its GIF must be in the log
//! exactly once. Figures (latency, loss) are printed for the record, never asserted as timings.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::visits_log::count_by_user_agent;
use testkit::{client, read_lines, wait_for_lines, Broker, Load, LoadReport, Service};
use tokio::time::sleep;

const PATIENCE: Duration = Duration::from_secs(60);

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

/// Waits until the log has stopped growing for `quiet`, then returns its lines.
async fn settled_lines(path: &Path, quiet: Duration) -> Vec<String> {
    let (mut count, mut since) = (usize::MAX, Instant::now());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = read_lines(path);
        if lines.len() != count {
            (count, since) = (lines.len(), Instant::now());
        } else if since.elapsed() >= quiet || Instant::now() > deadline {
            return lines;
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the log holds the `expected` visits, then until it stops growing (a duplicate would
/// come late), and returns its lines.
async fn collect_lines(path: &Path, expected: usize) -> Vec<String> {
    wait_for_lines(path, expected, PATIENCE).await;
    settled_lines(path, Duration::from_secs(1)).await
}

/// Waits until `service`'s log mentions `text`.
async fn wait_for_log(service: &Service, text: &str) {
    wait_for_log_count(service, text, 1).await;
}

/// Waits until `service`'s log mentions `text` at least `times` times.
async fn wait_for_log_count(service: &Service, text: &str, times: usize) {
    let deadline = Instant::now() + PATIENCE;
    while service.log().matches(text).count() < times {
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged {times} times:\n{}",
            service.log()
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// No marker twice, and every answered marker exactly once.
fn assert_exactly_once(lines: &[String], answered: &[String], context: &str) {
    let counts = count_by_user_agent(lines);
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{context}: written more than once: {twice:?}"
    );
    let lost: Vec<_> = answered
        .iter()
        .filter(|m| !counts.contains_key(*m))
        .collect();
    assert!(
        lost.is_empty(),
        "{context}: {} of {} answered visits lost, e.g. {:?}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)]
    );
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
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        left.iter()
            .all(|p| std::fs::metadata(p).unwrap().len() == 0),
        "delivered segments are deleted: {left:?}"
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

/// Kills the broker (SIGKILL) half-way through `count` visits and returns what was answered and
/// what landed. With `sink_online` false the sink is away during the load, so the visits wait in the
/// broker's memory when it dies.
async fn broker_crash(sink_online: bool) -> (LoadReport, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut sink, mut edge) = start_stack(dir.path());
    wait_for_log(&sink, "connected to the broker").await;
    if !sink_online {
        sink.terminate();
    }

    let traffic = traffic(&edge, "v", 3000, 4);
    sleep(Duration::from_millis(800)).await;
    broker.kill();
    sleep(Duration::from_millis(500)).await;
    broker.restart();
    let report = traffic.await.unwrap();
    assert!(edge.terminate().success());
    if !sink_online {
        sink.start();
    }
    // Once the sink is back on the restarted broker, what survived arrives at once.
    wait_for_log_count(&sink, "connected to the broker", 2).await;
    let lines = settled_lines(&dir.path().join("visits.log"), Duration::from_secs(2)).await;
    sink.terminate();
    (report, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_crash_is_measured() {
    for sink_online in [true, false] {
        let (report, lines) = broker_crash(sink_online).await;
        let counts = count_by_user_agent(&lines);
        let lost = report
            .answered
            .iter()
            .filter(|m| !counts.contains_key(*m))
            .count();
        println!(
            "broker SIGKILL under load, sink {}: {} visits answered, {} in the log, {lost} lost",
            if sink_online { "online" } else { "away" },
            report.answered.len(),
            lines.len()
        );
        assert!(counts.values().all(|&n| n == 1), "no visit twice");
        assert!(
            counts.keys().all(|m| m.starts_with("v-")),
            "only test visits"
        );
        assert_eq!(
            lines.len() + lost,
            report.answered.len(),
            "every answered visit is either in the log or counted lost"
        );
    }
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
        &[("TRACKER__EDGE__QUEUE_CAPACITY", "10")],
    );
    wait_for_log(&sink, "connected to the broker").await;

    broker.stop();
    let report = traffic(&edge, "v", 50, 1).await.unwrap();
    assert_eq!(
        report.failed, 0,
        "the pixel is served even when the visit cannot be held"
    );
    wait_for_log(&edge, "visit dropped: the queue is full").await;
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
