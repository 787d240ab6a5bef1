//! What a hostile credential holder can do to the real binaries and broker: an edge's password lets
//! it publish whatever it likes below its own topic. It must not stop real visits landing, nor make
//! the sink hold memory in proportion to what it sends.

use std::time::Duration;

use testkit::visits_log::assert_exactly_once;
use testkit::{client, collect_lines, wait_for_lines, Broker, Load, Service, EDGE_USER};

/// The bound on the sink's memory under the flood below.
const MAX_SINK_RSS: u64 = 200 * 1000 * 1000;
const JUNK_MESSAGES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_messages_of_tiny_junk_lines_neither_stop_visits_nor_swell_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    // A debug build takes seconds over each 16 MiB batch of junk, while the subscription waits for
    // room in the inbox without reading the socket; the broker must not take that for a dead client.
    let mut sink = Service::sink(
        &broker,
        dir.path(),
        &[("TRACKER__MQTT__KEEP_ALIVE_SECS", "120")],
    );
    let edge = Service::edge(&broker, "edge-a", dir.path(), &[]);
    let log = dir.path().join("visits.log");
    // A first visit landing means the sink's subscription is in place: nothing is published unread.
    let first = Load {
        url: edge.track_url(),
        prefix: "first".into(),
        count: 1,
        concurrency: 1,
        pause: Duration::ZERO,
    }
    .run(client())
    .await;
    wait_for_lines(&log, 1, Duration::from_secs(60)).await;

    // 256 KiB of `x\n` a message (131072 junk lines): 1000 of them weigh more than the bound on the
    // sink's memory, yet a debug build gets through them in minutes (1 MiB each would take 15).
    let junk = b"x\n".repeat(128 * 1024);
    let topic = format!("tracker/visits/{EDGE_USER}/intruder");
    let flood = testkit::mqtt::publish(
        &broker,
        EDGE_USER,
        &topic,
        std::iter::repeat_n(junk.clone(), JUNK_MESSAGES),
    );
    let visits = Load {
        url: edge.track_url(),
        prefix: "real".into(),
        count: 300,
        concurrency: 4,
        pause: Duration::from_millis(20),
    }
    .run(client());
    let (flooded, visits) = tokio::join!(flood, visits);
    assert_eq!(visits.failed, 0, "the pixel is served throughout");
    assert_eq!(flooded, JUNK_MESSAGES, "the broker took them all");

    let rejected_path = dir.path().join("visits.log.rejected");
    let rejected = wait_for_lines(&rejected_path, JUNK_MESSAGES, Duration::from_secs(900)).await;
    assert_eq!(
        rejected.len(),
        JUNK_MESSAGES,
        "one dead-letter record a message"
    );
    assert!(
        rejected
            .iter()
            .all(|record| record.contains("131072 lines rejected")),
        "each record counts its message's lines: {}",
        rejected[0]
    );

    let answered = [first.answered, visits.answered].concat();
    let lines = collect_lines(&log, answered.len()).await;
    assert_exactly_once(&lines, &answered, "visits during a junk flood");
    assert!(sink.is_running(), "the sink lives on:\n{}", sink.log());
    let peak = sink.peak_rss();
    println!(
        "{JUNK_MESSAGES} messages of {} bytes of junk: the sink's peak RSS was {:.1} MB",
        junk.len(),
        peak as f64 / 1e6
    );
    assert!(peak < MAX_SINK_RSS, "the sink's peak RSS: {peak} bytes");
    let warnings = sink.log().matches("message set aside").count();
    assert!(
        warnings < JUNK_MESSAGES,
        "warnings are rate-limited, not one a message: {warnings}"
    );
    sink.terminate();
}
