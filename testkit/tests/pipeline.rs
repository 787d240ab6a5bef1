//! End to end through a real Mosquitto: HTTP request → edge → broker → sink → one line in the log.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use chrono::Utc;
use reqwest::header::{HeaderValue, REFERER, USER_AGENT};
use testkit::visits_log::{count_by_user_agent, parse};
use testkit::{
    spawn_edge, spawn_edge_with, spawn_sink, wait_for_lines, Broker, Load, TestEdge, TestSink,
    EDGE_USER,
};

const PATIENCE: Duration = Duration::from_secs(30);

/// A broker, a sink writing into a temporary directory, and an edge `edge-a`.
struct Stack {
    broker: Broker,
    dir: tempfile::TempDir,
    sink: TestSink,
    edge: TestEdge,
}

async fn stack() -> Stack {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sink = spawn_sink(&broker, dir.path()).await;
    let edge = spawn_edge(&broker, "edge-a").await;
    Stack {
        broker,
        dir,
        sink,
        edge,
    }
}

/// Sends `count` GETs with user-agent `{prefix}-{n}`, `concurrency` at a time; all must be answered.
async fn load(client: &reqwest::Client, url: &str, prefix: &str, count: usize, concurrency: usize) {
    let load = Load {
        url: url.into(),
        prefix: prefix.into(),
        count,
        concurrency,
        pause: Duration::ZERO,
    };
    let report = load.run(client.clone()).await;
    assert_eq!(report.failed, 0, "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_becomes_exactly_one_correct_line() {
    let Stack {
        broker: _broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;

    let before = Utc::now();
    let response = reqwest::Client::new()
        .get(format!("{}?cb=123", edge.track_url()))
        .header(REFERER, "https://google.com")
        .header(USER_AGENT, "SomeUserAgent 1.2.3")
        .header("X-Forwarded-For", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let after = Utc::now();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "image/gif");
    assert_eq!(
        headers["cache-control"],
        "no-store, no-cache, must-revalidate, max-age=0"
    );
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(headers["expires"], "0");
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &pixel_edge::routes::PIXEL_GIF[..]
    );

    wait_for_lines(&sink.path, 1, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    assert_eq!(sink.lines().len(), 1, "{:?}", sink.lines());
    let line = parse(&sink.lines()[0]);
    assert!(
        line.ts >= before - chrono::Duration::microseconds(1) && line.ts <= after,
        "{}",
        sink.lines()[0]
    );
    assert_eq!(line.referrer.as_deref(), Some(&b"https://google.com"[..]));
    assert_eq!(
        line.user_agent.as_deref(),
        Some(&b"SomeUserAgent 1.2.3"[..])
    );
    assert_eq!(
        line.ip, "127.0.0.1",
        "the socket's address, not X-Forwarded-For"
    );
    let ts_text = sink.lines()[0].split('|').next().unwrap().to_owned();
    assert_eq!(
        ts_text.len(),
        "2022-12-19T14:16:49.9605280Z".len(),
        "{ts_text}"
    );
    assert!(ts_text.ends_with('Z'));
    assert!(sink.rejected_lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_or_empty_headers_are_null() {
    let Stack {
        broker: _broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;
    let client = reqwest::Client::new();
    // reqwest sends no User-Agent unless told to.
    client.get(edge.track_url()).send().await.unwrap();
    client
        .get(edge.track_url())
        .header(REFERER, "")
        .header(USER_AGENT, "")
        .send()
        .await
        .unwrap();

    wait_for_lines(&sink.path, 2, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    let lines = sink.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert!(line.ends_with("|null|null|127.0.0.1"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_records_nothing_and_other_methods_and_paths_are_refused() {
    let Stack {
        broker: _broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;
    let client = reqwest::Client::new();

    let head = client
        .head(edge.track_url())
        .header(USER_AGENT, "head")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "image/gif");
    assert_eq!(
        head.headers()["cache-control"],
        "no-store, no-cache, must-revalidate, max-age=0"
    );
    assert!(head.bytes().await.unwrap().is_empty());
    let post = client
        .post(edge.track_url())
        .header(USER_AGENT, "post")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    let other = client
        .get(format!("http://{}/other", edge.addr))
        .header(USER_AGENT, "other")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    client
        .get(edge.track_url())
        .header(USER_AGENT, "get")
        .send()
        .await
        .unwrap();

    wait_for_lines(&sink.path, 1, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    assert_eq!(
        count_by_user_agent(&sink.lines()),
        HashMap::from([("get".to_owned(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_bytes_that_could_forge_a_line_are_escaped_and_recoverable() {
    let Stack {
        broker: _broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;
    let user_agent: &[u8] = b"Evil \xff\xfe|6.6.6.6\\ \xe2\x80\xa8 \xc3\xa9";
    let referrer: &[u8] = b"https://example.com/?q=a|b\tc";
    reqwest::Client::new()
        .get(edge.track_url())
        .header(USER_AGENT, HeaderValue::from_bytes(user_agent).unwrap())
        .header(REFERER, HeaderValue::from_bytes(referrer).unwrap())
        .send()
        .await
        .unwrap();

    wait_for_lines(&sink.path, 1, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    let lines = sink.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(r"Evil \xff\xfe\|6.6.6.6\\ \xe2\x80\xa8 é|"),
        "{}",
        lines[0]
    );
    let line = parse(&lines[0]);
    assert_eq!(line.user_agent.as_deref(), Some(user_agent));
    assert_eq!(line.referrer.as_deref(), Some(referrer));
    assert_eq!(line.ip, "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_are_recorded_as_plain_ipv4_or_ipv6() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    // A dual-stack socket sees an IPv4 client as ::ffff:127.0.0.1.
    let dual_stack = spawn_edge_with(&broker, "edge-dual", |settings| {
        settings.http.listen = "[::]:0".parse().unwrap();
    })
    .await;
    let client = reqwest::Client::new();
    let port = dual_stack.addr.port();
    client
        .get(format!("http://127.0.0.1:{port}/track"))
        .header(USER_AGENT, "v4")
        .send()
        .await
        .unwrap();
    client
        .get(format!("http://[::1]:{port}/track"))
        .header(USER_AGENT, "v6")
        .send()
        .await
        .unwrap();

    wait_for_lines(&sink.path, 2, PATIENCE).await;
    dual_stack.stop().await;
    sink.stop().await;
    let ips: HashMap<_, _> = sink
        .lines()
        .iter()
        .map(|l| parse(l))
        .map(|l| (String::from_utf8(l.user_agent.unwrap()).unwrap(), l.ip))
        .collect();
    assert_eq!(
        ips,
        HashMap::from([
            ("v4".into(), "127.0.0.1".into()),
            ("v6".into(), "::1".into())
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_edges_thousands_of_requests_each_land_exactly_once() {
    const PER_EDGE: usize = 2500;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let (edge_a, edge_b) = (
        spawn_edge(&broker, "edge-a").await,
        spawn_edge(&broker, "edge-b").await,
    );
    let client = reqwest::Client::new();
    let (url_a, url_b) = (edge_a.track_url(), edge_b.track_url());
    tokio::join!(
        load(&client, &url_a, "a", PER_EDGE, 32),
        load(&client, &url_b, "b", PER_EDGE, 32),
    );

    edge_a.stop().await;
    edge_b.stop().await;
    wait_for_lines(&sink.path, 2 * PER_EDGE, PATIENCE).await;
    sink.stop().await;
    let counts = count_by_user_agent(&sink.lines());
    assert_eq!(counts.len(), 2 * PER_EDGE, "distinct visits");
    for prefix in ["a", "b"] {
        for n in 0..PER_EDGE {
            assert_eq!(
                counts.get(&format!("{prefix}-{n}")),
                Some(&1),
                "{prefix}-{n}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_message_is_set_aside_and_the_next_visit_lands() {
    let Stack {
        broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;
    let client = reqwest::Client::new();
    // Wait for the sink's subscription before publishing behind the edge's back.
    client
        .get(edge.track_url())
        .header(USER_AGENT, "first")
        .send()
        .await
        .unwrap();
    wait_for_lines(&sink.path, 1, PATIENCE).await;

    for payload in ["garbage|with\nnewline", r#"{"v":2,"ts":"x"}"#] {
        let status = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port().to_string(),
                "-q",
                "1",
            ])
            .args(["-u", EDGE_USER, "-P", &broker.password(EDGE_USER)])
            .args(["-t", "tracker/visits/edge/intruder", "-m", payload])
            .status()
            .expect("mosquitto_pub must be installed: run scripts/test, which installs it");
        assert!(status.success());
    }
    client
        .get(edge.track_url())
        .header(USER_AGENT, "after")
        .send()
        .await
        .unwrap();

    wait_for_lines(&sink.path, 2, PATIENCE).await;
    let rejected = wait_for_lines(&sink.rejected_path, 2, PATIENCE).await;
    edge.stop().await;
    let metrics = client
        .get(format!("http://{}/metrics", sink.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sink.stop().await;
    assert_eq!(
        count_by_user_agent(&sink.lines()),
        HashMap::from([("first".to_owned(), 1), ("after".to_owned(), 1)])
    );
    assert_eq!(
        rejected.len(),
        2,
        "one record per message (two lines of garbage, then one v2 event): {rejected:?}"
    );
    assert!(
        rejected[0].contains(
            "|tracker/visits/edge/intruder|2 lines rejected, the first: not a v1 visit event"
        ),
        "{}",
        rejected[0]
    );
    assert!(
        rejected[0].ends_with(r"|garbage\|with\x0anewline"),
        "{}",
        rejected[0]
    );
    assert!(
        rejected[1].contains("|unsupported event version 2|"),
        "{}",
        rejected[1]
    );
    for (metric, at_least) in [
        ("tracker_sink_dead_letter_messages_total", 2.0),
        ("tracker_sink_dead_letter_bytes_total", 100.0),
        ("tracker_sink_broker_connected", 1.0),
    ] {
        let value: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(metric)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{metric} missing from:\n{metrics}"));
        assert!(value >= at_least, "{metric} = {value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visits_taken_while_the_sink_is_down_arrive_when_it_returns() {
    const VISITS: usize = 500;
    let Stack {
        broker: _broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;
    let client = reqwest::Client::new();
    client
        .get(edge.track_url())
        .header(USER_AGENT, "before")
        .send()
        .await
        .unwrap();
    wait_for_lines(&sink.path, 1, PATIENCE).await;

    sink.stop().await;
    load(&client, &edge.track_url(), "while-down", VISITS, 16).await;
    edge.stop().await;
    assert_eq!(
        sink.lines().len(),
        1,
        "nothing written while the sink is down"
    );

    sink.restart();
    wait_for_lines(&sink.path, VISITS + 1, PATIENCE).await;
    sink.stop().await;
    let counts = count_by_user_agent(&sink.lines());
    assert_eq!(counts.len(), VISITS + 1);
    assert!(counts.values().all(|&n| n == 1), "each visit exactly once");
    assert!((0..VISITS).all(|n| counts.contains_key(&format!("while-down-{n}"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacknowledged_visits_are_sent_again_after_the_broker_returns() {
    const VISITS: usize = 300;
    let Stack {
        mut broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;
    let client = reqwest::Client::new();
    client
        .get(edge.track_url())
        .header(USER_AGENT, "before")
        .send()
        .await
        .unwrap();
    wait_for_lines(&sink.path, 1, PATIENCE).await;

    broker.stop();
    // The pixel is still served while the broker is away; the edge holds the visits.
    load(&client, &edge.track_url(), "outage", VISITS, 16).await;
    broker.restart();

    edge.stop().await;
    wait_for_lines(&sink.path, VISITS + 1, PATIENCE).await;
    sink.stop().await;
    let counts = count_by_user_agent(&sink.lines());
    for n in 0..VISITS {
        let marker = format!("outage-{n}");
        assert_eq!(
            counts.get(&marker),
            Some(&1),
            "{marker}; broker log:\n{}",
            broker.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visits_taken_before_any_sink_subscribed_wait_for_one() {
    const VISITS: usize = 50;
    let broker = Broker::start();
    let edge = spawn_edge(&broker, "edge-a").await;
    let client = reqwest::Client::new();
    // Mosquitto acks with "no matching subscribers" and discards; the edge must keep these visits.
    load(&client, &edge.track_url(), "early", VISITS, 8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    wait_for_lines(&sink.path, VISITS, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    let counts = count_by_user_agent(&sink.lines());
    assert!(
        (0..VISITS).all(|n| counts.contains_key(&format!("early-{n}"))),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sink_reports_health_readiness_and_metrics() {
    let Stack {
        broker: _broker,
        dir: _dir,
        mut sink,
        edge,
    } = stack().await;
    let client = reqwest::Client::new();
    load(&client, &edge.track_url(), "m", 20, 4).await;
    wait_for_lines(&sink.path, 20, PATIENCE).await;

    let base = format!("http://{}", sink.admin_addr);
    let healthz = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200, "subscribed and writable");
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "tracker_sink_visits_written_total",
        "tracker_sink_bytes_written_total",
        "tracker_sink_flush_seconds_bucket",
        "tracker_sink_fsync_seconds_bucket",
        "tracker_sink_lag_seconds",
        "tracker_sink_receipts_published_total",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    edge.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headers_are_cut_at_the_edge_before_they_are_queued() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let edge = spawn_edge_with(&broker, "edge-a", |s| {
        s.edge.max_field_bytes = NonZeroUsize::new(10).unwrap()
    })
    .await;
    reqwest::Client::new()
        .get(edge.track_url())
        .header(USER_AGENT, "0123456789-and-much-more")
        .header(REFERER, "https://xé.example/long/path")
        .send()
        .await
        .unwrap();

    wait_for_lines(&sink.path, 1, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    let line = parse(&sink.lines()[0]);
    assert_eq!(line.user_agent.as_deref(), Some(&b"0123456789"[..]));
    // 10 bytes would split the two-byte é: the cut moves back to the character's start.
    assert_eq!(line.referrer.as_deref(), Some(&b"https://x"[..]));
}
