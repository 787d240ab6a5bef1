//! `privacy.*` end to end: edge and sink binaries on a real Mosquitto, every visit from 127.0.0.1
//! with a referrer that carries a query, a fragment and credentials. Each mode is checked where the
//! raw values could leak: the log line, and the MQTT payload as a subscriber (the broker's `monitor`
//! user) reads it. Every request carries its own marker (its user-agent).

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::header::{REFERER, USER_AGENT};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use testkit::visits_log::parse;
use testkit::{client, free_port, wait_for_lines, Broker, Service};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);
const RAW_IP: &str = "127.0.0.1";
const REFERRER: &str = "https://user:pw@shop.example:8443/cart?email=a@b.example#top";
/// What of [`REFERRER`] must be gone under `strip_query` (and `origin`).
const QUERY_PARTS: [&str; 3] = ["?", "email=", "#top"];

/// A broker, a sink process writing `visits.log` in a temporary directory, and a subscriber.
struct Stack {
    broker: Broker,
    dir: tempfile::TempDir,
    _sink: Service,
    payloads: Payloads,
}

async fn stack() -> Stack {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let sink = Service::sink(
        &broker,
        dir.path(),
        &[("TRACKER__ADMIN__LISTEN", metrics.as_str())],
    );
    // Until the sink has subscribed, the test's subscriber would be the only one, and the broker
    // would accept (and the sink never get) what the edges publish.
    wait_until_ready(&format!("http://{metrics}/readyz"), &sink).await;
    let payloads = Payloads::subscribe(&broker).await;
    Stack {
        broker,
        dir,
        _sink: sink,
        payloads,
    }
}

impl Stack {
    fn edge(&self, id: &str, privacy: &[(&str, &str)]) -> Service {
        Service::edge(&self.broker, id, self.dir.path(), privacy)
    }

    /// Waits for the line of each marker, in that order, and returns them.
    async fn lines_of(&self, markers: &[&str]) -> Vec<String> {
        let path = self.dir.path().join("visits.log");
        let lines = wait_for_lines(&path, markers.len(), PATIENCE).await;
        markers
            .iter()
            .map(|marker| {
                let found: Vec<_> = lines
                    .iter()
                    .filter(|line| parse(line).user_agent.as_deref() == Some(marker.as_bytes()))
                    .collect();
                assert_eq!(found.len(), 1, "{marker} in {lines:#?}");
                found[0].clone()
            })
            .collect()
    }
}

/// Everything the broker delivers on `tracker/visits/#`, read by a task that owns the event loop.
struct Payloads {
    received: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Payloads {
    /// Connects as `monitor` and returns once the subscription is acknowledged.
    async fn subscribe(broker: &Broker) -> Self {
        let mut options = MqttOptions::new("privacy-test-monitor", "127.0.0.1", broker.port());
        options.set_credentials("monitor", broker.password("monitor"));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe("tracker/visits/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _client = client;
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let payload = String::from_utf8(publish.payload.to_vec()).unwrap();
                        if tx.send(payload).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // The broker stops when the test ends; before that, `event_of` reports what is missing.
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(PATIENCE, subscribed)
            .await
            .expect("no SUBACK")
            .unwrap();
        Self {
            received,
            seen: Vec::new(),
        }
    }

    /// The event carrying `marker` as its user-agent, waiting for it if it has not come yet.
    async fn event_of(&mut self, marker: &str) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.seen.iter().flat_map(|payload| payload.lines());
            let found: Vec<serde_json::Value> = events
                .map(|event| serde_json::from_str(event).unwrap())
                .filter(|event: &serde_json::Value| event["user_agent"] == marker)
                .collect();
            match found.len() {
                1 => return found.into_iter().next().unwrap(),
                0 => {}
                _ => panic!("{marker} published twice: {:#?}", self.seen),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.received.recv()).await {
                Ok(Some(payload)) => self.seen.push(payload),
                _ => panic!("{marker} never published; got {:#?}", self.seen),
            }
        }
    }

    /// Every payload received so far, raw.
    fn raw(&self) -> String {
        self.seen.join("")
    }
}

/// One GET of the pixel from `edge` with user-agent `marker`, the test's referrer and `extra` headers.
async fn visit(edge: &Service, marker: &str, extra: &[(&str, &str)]) {
    let mut request = client()
        .get(edge.track_url())
        .header(REFERER, REFERRER)
        .header(USER_AGENT, marker);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/gif");
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &pixel_edge::routes::PIXEL_GIF[..]
    );
}

/// The `ip` and `referrer` fields of a line, checked to hold neither the raw address nor (unless
/// `full_referrer`) the referrer's query.
fn fields_without_raw_values(line: &str, event: &serde_json::Value) -> (String, String) {
    let parsed = parse(line);
    let referrer = String::from_utf8(parsed.referrer.unwrap_or_default()).unwrap();
    let event_text = event.to_string();
    for text in [line, event_text.as_str()] {
        assert!(!text.contains(RAW_IP), "the raw address leaked: {text}");
        for part in QUERY_PARTS {
            assert!(
                !text.contains(part),
                "{part:?} of the referrer leaked: {text}"
            );
        }
    }
    assert_eq!(
        event["ip"],
        parsed.ip.as_str(),
        "the line holds what travelled"
    );
    assert_eq!(event["referrer"], referrer.as_str());
    (parsed.ip, referrer)
}

fn is_hash(ip: &str) -> bool {
    ip.strip_prefix("hash-").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

async fn wait_until_ready(readyz: &str, sink: &Service) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = client().get(readyz).send().await;
        if response.is_ok_and(|response| response.status() == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never got ready:\n{}",
            sink.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the edge's own log holds `text` (its start-up line is written once it serves).
async fn edge_log_mentions(edge: &Service, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !edge.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{text:?} not in:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_keep_todays_line_byte_for_byte() {
    let mut stack = stack().await;
    let edge = stack.edge("full", &[]);
    visit(&edge, "full", &[("Sec-GPC", "1"), ("DNT", "1")]).await;
    let line = stack.lines_of(&["full"]).await.remove(0);
    let ts = line.split('|').next().unwrap();
    assert_eq!(line, format!("{ts}|{REFERRER}|full|{RAW_IP}"));
    let event = stack.payloads.event_of("full").await;
    assert_eq!(event["ip"], RAW_IP);
    assert_eq!(event["referrer"], REFERRER);
    edge_log_mentions(&edge, "privacy=ip=full referrer=full opt_out=ignore").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_hash_strip_query_and_origin_keep_raw_values_out_of_log_and_broker() {
    let mut stack = stack().await;
    let truncating = stack.edge(
        "truncate",
        &[
            ("TRACKER__PRIVACY__IP", "truncate"),
            ("TRACKER__PRIVACY__REFERRER", "strip_query"),
        ],
    );
    let hashing = [
        ("TRACKER__PRIVACY__IP", "hash"),
        ("TRACKER__PRIVACY__REFERRER", "origin"),
    ];
    let hashing_a = stack.edge("hash-a", &hashing);
    let hashing_b = stack.edge("hash-b", &hashing);
    visit(&truncating, "truncate", &[]).await;
    visit(&hashing_a, "hash-a-1", &[]).await;
    visit(&hashing_a, "hash-a-2", &[]).await;
    visit(&hashing_b, "hash-b", &[]).await;

    let markers = ["truncate", "hash-a-1", "hash-a-2", "hash-b"];
    let lines = stack.lines_of(&markers).await;
    let mut recorded = Vec::new();
    for (line, marker) in lines.iter().zip(markers) {
        let event = stack.payloads.event_of(marker).await;
        recorded.push(fields_without_raw_values(line, &event));
    }
    assert_eq!(
        recorded[0],
        (
            "127.0.0.0".to_owned(),
            "https://user:pw@shop.example:8443/cart".to_owned()
        )
    );
    for (ip, referrer) in &recorded[1..] {
        assert!(is_hash(ip), "{ip}");
        assert_eq!(referrer, "https://shop.example:8443");
    }
    assert_eq!(recorded[1].0, recorded[2].0, "one key per edge and day");
    assert_ne!(recorded[1].0, recorded[3].0, "each edge draws its own key");
    edge_log_mentions(
        &truncating,
        "privacy=ip=truncate(/24, /48) referrer=strip_query opt_out=ignore",
    )
    .await;
    edge_log_mentions(
        &hashing_a,
        "privacy=ip=hash(random key in memory, replaced daily) referrer=origin",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_visitor_is_what_is_truncated() {
    let mut stack = stack().await;
    let edge = stack.edge(
        "behind-proxy",
        &[
            ("TRACKER__HTTP__TRUSTED_PROXIES", "127.0.0.1/32"),
            ("TRACKER__PRIVACY__IP", "truncate"),
        ],
    );
    visit(&edge, "forwarded", &[("X-Forwarded-For", "203.0.113.77")]).await;
    let line = stack.lines_of(&["forwarded"]).await.remove(0);
    let event = stack.payloads.event_of("forwarded").await;
    assert_eq!(parse(&line).ip, "203.0.113.0");
    assert_eq!(event["ip"], "203.0.113.0");
    for text in [line, event.to_string()] {
        assert!(!text.contains("203.0.113.77"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_key_file_keeps_hashes_across_restarts() {
    let mut stack = stack().await;
    let key_file = stack.dir.path().join("hash.key");
    let key_setting = key_file.to_str().unwrap();
    let settings = [
        ("TRACKER__PRIVACY__IP", "hash"),
        ("TRACKER__PRIVACY__HASH_KEY_FILE", key_setting),
    ];
    let mut edge = stack.edge("keyed", &settings);
    visit(&edge, "before-restart", &[]).await;
    edge.terminate();
    edge.start();
    visit(&edge, "after-restart", &[]).await;

    let lines = stack.lines_of(&["before-restart", "after-restart"]).await;
    let ips: Vec<String> = lines.iter().map(|line| parse(line).ip).collect();
    assert!(is_hash(&ips[0]), "{}", ips[0]);
    assert_eq!(ips[0], ips[1]);
    let event = stack.payloads.event_of("after-restart").await;
    assert_eq!(event["ip"], ips[1].as_str());
    assert!(!stack.payloads.raw().contains(RAW_IP));
    assert_key_file_is_private(&key_file);
    edge_log_mentions(&edge, &format!("ip=hash(key from {key_setting})")).await;
}

fn assert_key_file_is_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_visit_is_anonymized_whatever_the_other_settings() {
    let mut stack = stack().await;
    let edge = stack.edge(
        "anonymize",
        &[
            ("TRACKER__PRIVACY__IP", "hash"),
            ("TRACKER__PRIVACY__OPT_OUT", "anonymize"),
        ],
    );
    visit(&edge, "gpc", &[("Sec-GPC", "1")]).await;
    visit(&edge, "dnt", &[("DNT", "1")]).await;
    visit(&edge, "no-signal", &[("DNT", "0")]).await;

    let markers = ["gpc", "dnt", "no-signal"];
    let lines = stack.lines_of(&markers).await;
    for (line, marker) in lines[..2].iter().zip(markers) {
        let event = stack.payloads.event_of(marker).await;
        assert_eq!(
            fields_without_raw_values(line, &event),
            ("127.0.0.0".into(), "https://shop.example:8443".into())
        );
    }
    let not_opted_out = parse(&lines[2]);
    assert!(is_hash(&not_opted_out.ip), "{}", not_opted_out.ip);
    assert_eq!(not_opted_out.referrer.unwrap(), REFERRER.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_serves_the_pixel_records_nothing_and_counts() {
    let mut stack = stack().await;
    let edge = stack.edge(
        "skip",
        &[
            ("TRACKER__PRIVACY__OPT_OUT", "skip"),
            ("TRACKER__PRIVACY__HONOUR_DNT", "false"),
        ],
    );
    visit(&edge, "skipped-gpc", &[("Sec-GPC", "1")]).await;
    visit(&edge, "dnt-not-honoured", &[("DNT", "1")]).await;
    visit(&edge, "last", &[]).await;

    // The edge publishes in order: once the last visit is in, a skipped one would be too.
    let lines = stack.lines_of(&["dnt-not-honoured", "last"]).await;
    stack.payloads.event_of("last").await;
    let log = std::fs::read_to_string(stack.dir.path().join("visits.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(!log.contains("skipped"), "{log}");
    assert!(!stack.payloads.raw().contains("skipped"));
    assert!(lines[0].ends_with(&format!("|{RAW_IP}")), "{}", lines[0]);

    let metrics = client()
        .get(edge.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"tracker_edge_requests_total{outcome="opted_out"} 1"#,
        r#"tracker_edge_requests_total{outcome="visit"} 2"#,
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    edge_log_mentions(&edge, "opt_out=skip(on Sec-GPC)").await;
}
