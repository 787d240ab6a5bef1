//! Several brokers and refusing ones, against the binaries and a real Mosquitto: with `mqtt.hosts`
//! naming a dead broker first, the edge, the sink and the sink's receipt connection all move on to
//! the live one, and every visit lands once; a sink whose subscription the broker refuses (SUBACK 0x80) backs
//! off as after a failed connection instead of asking again several times a second.

use std::time::{Duration, Instant};

use testkit::visits_log::assert_exactly_once;
use testkit::{client, collect_lines, free_port, Broker, Load, Service};

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_host_is_passed_over_and_every_visit_lands_and_is_confirmed() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: each client's first attempt fails.
    let hosts = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), broker.port());
    let settings = [("TRACKER__MQTT__HOSTS", hosts.as_str())];
    let sink = Service::sink(&broker, dir.path(), &settings);
    let edge = Service::edge(&broker, "edge-a", dir.path(), &settings);

    let report = Load {
        url: edge.track_url(),
        prefix: "failover".into(),
        count: 50,
        concurrency: 4,
        pause: Duration::ZERO,
    }
    .run(client())
    .await;
    assert_eq!(report.failed, 0, "{}", report.summary());
    let lines = collect_lines(&dir.path().join("visits.log"), 50).await;
    assert_exactly_once(&lines, &report.answered, "first host dead");
    assert_eq!(lines.len(), 50, "{}", sink.log());
    // The receipts come on the sink's second connection: it moved to the live broker too.
    let deadline = Instant::now() + PATIENCE;
    while edge.metric("tracker_edge_unconfirmed_visits").await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "never confirmed:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for service in [&sink, &edge] {
        assert!(
            service.log().contains("connection lost"),
            "the dead host was tried first:\n{}",
            service.log()
        );
    }
}

const REFUSED: &str = "the broker refused the subscription";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_backs_off_like_a_failed_connection() {
    let broker = Broker::start_refusing_subscriptions();
    let dir = tempfile::tempdir().unwrap();
    let sink = Service::sink(&broker, dir.path(), &[("TRACKER__LOG__FORMAT", "json")]);
    const REFUSALS: usize = 6;
    sink.wait_for_log(REFUSED, REFUSALS, PATIENCE).await;
    let delays: Vec<Duration> = sink
        .log()
        .lines()
        .filter(|line| line.contains(REFUSED))
        .map(retry_in)
        .collect();
    // The backoff doubles from 100 ms up to 2 s (jitter only adds): had the CONNACK reset it, as
    // before, every delay would be at most 200 ms.
    for (n, delay) in delays.iter().take(REFUSALS).enumerate() {
        let floor = Duration::from_millis(100 << n).min(Duration::from_secs(2));
        assert!(
            *delay >= floor,
            "refusal {n} retried after {delay:?}: {delays:?}"
        );
    }
}

/// The `retry_in` field of a JSON log line, as tracing prints a `Duration` (`812.5ms`, `1.6s`).
fn retry_in(line: &str) -> Duration {
    let json: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    let text = json["fields"]["retry_in"].as_str().expect("retry_in");
    let seconds = match text.strip_suffix("ms") {
        Some(millis) => millis.parse::<f64>().unwrap() / 1000.0,
        None => text.strip_suffix('s').unwrap().parse::<f64>().unwrap(),
    };
    Duration::from_secs_f64(seconds)
}
