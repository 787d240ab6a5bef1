//! Both libraries' `run` on a current-thread runtime (the default of `#[tokio::test]`): their file
//! I/O goes to the blocking pool, so nothing needs a multi-threaded runtime, and a visit goes all the
//! way through a real Mosquitto, spool and receipt included.

use std::time::Duration;

use reqwest::header::USER_AGENT;
use testkit::{spawn_edge, spawn_sink, wait_for_lines, Broker};

#[tokio::test]
async fn edge_and_sink_run_on_a_current_thread_runtime() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let edge = spawn_edge(&broker, "current-thread").await;

    let response = reqwest::Client::new()
        .get(edge.track_url())
        .header(USER_AGENT, "one-thread")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = wait_for_lines(&sink.path, 1, Duration::from_secs(30)).await;
    // Stopping waits for the sink's receipt: the edge says "everything delivered" only after it.
    edge.stop().await;
    sink.stop().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].ends_with("|null|one-thread|127.0.0.1"),
        "{}",
        lines[0]
    );
}
