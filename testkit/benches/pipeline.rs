//! End-to-end figures of the real pipeline, release build, against a real Mosquitto with the shipped
//! config (the draining sink the release binary, `cargo build --release` first; otherwise edge and
//! sink in this process): how fast the sink drains a backlog that was queued in the
//! broker while it was down, how long after a broker crash the visits an edge took for an absent sink
//! are all in the log (the edge sends again what the sink had not confirmed), and how long one visit
//! takes under light load from sending the request to its line in the log. Prints the figures;
//! checks only that every visit landed.
//!
//! Run by hand: `cargo bench -p testkit --bench pipeline` (`bench/run` runs it too). `BACKLOG`
//! (default 1000000), `VISITS_PER_MESSAGE` (40; a saturated edge now sends a few hundred), `CRASH_BACKLOG` (100000) and
//! `SAMPLES` (500) vary it.

use std::time::{Duration, Instant};

use common::visit::{HeaderText, Visit};
use reqwest::header::{REFERER, USER_AGENT};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use testkit::visits_log::LineCounter;
use testkit::{spawn_edge, spawn_sink, Broker, Load, Service, TestSink, EDGE_USER};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36";
const REFERRER: &str = "https://blog.example/articles/hello.html";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let backlog = setting("BACKLOG", 1_000_000);
    let per_message = setting("VISITS_PER_MESSAGE", 40);
    let samples = setting("SAMPLES", 500);
    drain(backlog, per_message).await;
    crash_recovery(setting("CRASH_BACKLOG", 100_000)).await;
    single_visit_latency(samples).await;
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// An edge takes `backlog` visits while the sink is away, the broker holding them is SIGKILLed and
/// restarted without its persistence file (the worst case: nothing it held survives, every visit
/// comes again from the edge's spool), the sink comes back: times from the broker's return until
/// every answered visit is a line.
async fn crash_recovery(backlog: usize) {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    wait_until_ready(&sink).await;
    sink.stop().await;
    let edge = spawn_edge(&broker, "crash").await;
    let load = Load {
        url: edge.track_url(),
        prefix: "v".into(),
        count: backlog,
        concurrency: 64,
        pause: Duration::ZERO,
    };
    let answered = load.run(testkit::client()).await.answered.len();
    // Let the edge hand everything to the broker, which then holds it only in memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.kill();
    broker.lose_persistence();
    broker.restart();
    let returned = Instant::now();
    sink.restart();
    let landed = LineCounter::new(sink.path.clone()).wait_for(answered, Duration::from_secs(600));
    let took = returned.elapsed();
    edge.stop().await;
    sink.stop().await;
    println!(
        "broker crash (its disk lost too): {landed} of {answered} visits taken for an absent sink in the log {:.2} s after the broker returned{}",
        took.as_secs_f64(),
        if landed == answered { "" } else { " (MISSING)" }
    );
}

/// Queues `backlog` visits for a stopped sink, then times the restarted sink until all are lines.
/// The sink here is the release binary, its own process as operators run it (started afresh, so
/// the time includes its start-up): sharing this bench's runtime, the library sink stalled after
/// ~2,000 messages of such a backlog, which the binary drains whole (bench/RESULTS.md).
async fn drain(backlog: usize, per_message: usize) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Service::sink(&broker, dir.path(), &[]);
    sink.wait_for_log("subscribed", 1, Duration::from_secs(60))
        .await;
    assert!(sink.terminate().success());

    let queued_at = Instant::now();
    publish_backlog(&broker, backlog, per_message).await;
    let queued_in = queued_at.elapsed();

    let mut log = LineCounter::new(dir.path().join("visits.log"));
    let started = Instant::now();
    sink.start();
    let landed = log.wait_for(backlog, Duration::from_secs(600));
    let took = started.elapsed();
    sink.terminate();
    println!(
        "sink drain: {landed} of {backlog} visits ({per_message} per message, queued in {:.1} s) written in {:.2} s: {:.0} lines/s{}",
        queued_in.as_secs_f64(),
        took.as_secs_f64(),
        landed as f64 / took.as_secs_f64(),
        if landed == backlog { "" } else { " — MISSING VISITS" }
    );
}

/// Publishes the backlog as the edge user would, at QoS 1, and waits for every PUBACK.
async fn publish_backlog(broker: &Broker, backlog: usize, per_message: usize) {
    let mut options = MqttOptions::new("bench-backlog", "127.0.0.1", broker.port());
    options.set_credentials(EDGE_USER, broker.password(EDGE_USER));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let messages = backlog.div_ceil(per_message);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < messages {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(err) => panic!("publishing the backlog: {err}"),
            }
        }
    });
    let mut left = backlog;
    while left > 0 {
        let visits = left.min(per_message);
        let mut payload = Vec::with_capacity(visits * 300);
        for _ in 0..visits {
            let visit = Visit::new(
                chrono::Utc::now(),
                HeaderText::new(REFERRER),
                HeaderText::new(UA),
                "192.0.2.1".parse().unwrap(),
                "edge/bench",
            );
            common::wire::encode_event(&visit, &mut payload);
        }
        client
            .publish(
                "tracker/visits/edge/bench",
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
        left -= visits;
    }
    acks.await.unwrap();
}

/// One request at a time, 20 ms apart, each timed from sending it to its line in the log.
async fn single_visit_latency(samples: usize) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    wait_until_ready(&sink).await;
    let edge = spawn_edge(&broker, "bench").await;
    let client = testkit::client();
    let mut log = LineCounter::new(sink.path.clone());
    let (mut answered, mut landed) = (Vec::new(), Vec::new());
    for n in 1..=samples {
        let started = Instant::now();
        let response = client
            .get(edge.track_url())
            .header(REFERER, REFERRER)
            .header(USER_AGENT, UA)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        answered.push(started.elapsed());
        if log.wait_for(n, Duration::from_secs(10)) < n {
            panic!("visit {n} did not land");
        }
        landed.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    edge.stop().await;
    sink.stop().await;
    println!(
        "single visit, light load ({samples} visits, one at a time): GIF answered p50 {:?} p99 {:?}; line in the log p50 {:?} p99 {:?}",
        percentile(&mut answered, 0.50),
        percentile(&mut answered, 0.99),
        percentile(&mut landed, 0.50),
        percentile(&mut landed, 0.99),
    );
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 * fraction).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}

async fn wait_until_ready(sink: &TestSink) {
    let url = format!("http://{}/readyz", sink.admin_addr);
    let client = testkit::client();
    for _ in 0..200 {
        if let Ok(response) = client.get(&url).send().await {
            if response.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sink never became ready");
}
