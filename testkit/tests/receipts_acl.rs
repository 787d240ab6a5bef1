//! The shipped ACL and the sink's receipts: the sink publishes each edge's receipt retained on
//! `tracker/receipts/{edge.id}`; an edge user reads only its own edges' receipts and writes none, so a
//! stolen edge password can neither learn other sites' progress nor forge a receipt that would make an
//! edge delete visits the sink never wrote.

use std::process::Command;
use std::time::Duration;

use reqwest::header::USER_AGENT;
use testkit::{spawn_edge, spawn_sink, wait_for_lines, Broker, EDGE_USER};

const RECEIPT: &str = "tracker/receipts/edge/edge-a";

/// The first retained message on `topic` as `user` sees it, if one arrives within `wait` seconds.
fn read_retained(broker: &Broker, user: &str, topic: &str, wait: u32) -> Option<String> {
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-u", user, "-P", &broker.password(user)])
        .args(["-t", topic, "-C", "1", "-W", &wait.to_string()])
        .output()
        .expect("mosquitto_sub must be installed: run scripts/test, which installs it");
    let text = String::from_utf8(output.stdout).unwrap();
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_read_only_their_own_receipts_and_write_none() {
    let mut broker = Broker::start();
    broker.add_user("paris");
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let edge = spawn_edge(&broker, "edge-a").await;
    let response = reqwest::Client::new()
        .get(edge.track_url())
        .header(USER_AGENT, "receipted")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    wait_for_lines(&sink.path, 1, Duration::from_secs(20)).await;
    // Stopping waits until the receipt came back: it is retained on the broker now.
    edge.stop().await;

    let receipt = read_retained(&broker, EDGE_USER, RECEIPT, 10).expect("the edge reads its own");
    let seq: u64 = receipt.parse().expect("a receipt is a sequence number");
    assert_eq!(
        read_retained(&broker, "monitor", RECEIPT, 10),
        Some(receipt.clone())
    );
    assert_eq!(
        read_retained(&broker, "paris", "tracker/receipts/#", 2),
        None,
        "another site's user sees no receipt of edge/edge-a"
    );

    let forged = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-u", EDGE_USER, "-P", &broker.password(EDGE_USER)])
        .args([
            "-t",
            RECEIPT,
            "-r",
            "-q",
            "1",
            "-m",
            &(seq + 1_000_000).to_string(),
        ])
        .status()
        .unwrap();
    // Mosquitto acknowledges a denied MQTT 3.1.1 publish and drops it.
    assert!(forged.success());
    assert_eq!(
        read_retained(&broker, "monitor", RECEIPT, 10),
        Some(receipt),
        "an edge cannot write a receipt"
    );
    sink.stop().await;
}
