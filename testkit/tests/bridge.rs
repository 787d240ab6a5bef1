//! The edge-site bridge (`mosquitto/bridge/edge-site.conf`): an edge publishes to its site's broker,
//! which forwards the visits to the central broker at QoS 1 as the site's user, and holds them while
//! the central broker is away.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::USER_AGENT;
use testkit::visits_log::count_by_user_agent;
use testkit::{mqtt, spawn_edge_with, spawn_sink, wait_for_lines, Broker};

const PATIENCE: Duration = Duration::from_secs(20);
const WHILE_AWAY: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_bridge_forwards_visits_and_holds_them_while_the_centre_is_away() {
    let mut central = Broker::start();
    central.add_user("paris");
    let site = Broker::start_site(&central, "paris");
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&central, dir.path()).await;
    let edge = spawn_edge_with(&site, "unused", |settings| {
        settings.mqtt = site.mqtt_settings("paris");
        settings.edge.id = "paris/edge-1".into();
    })
    .await;
    let client = testkit::client();
    let visit = |agent: &'static str| {
        let request = client.get(edge.track_url()).header(USER_AGENT, agent);
        async move { assert_eq!(request.send().await.unwrap().status(), 200) }
    };

    visit("before").await;
    let lines = wait_for_lines(&sink.path, 1, PATIENCE).await;
    assert_eq!(
        lines.len(),
        1,
        "central log:\n{}\nsite log:\n{}",
        central.log(),
        site.log()
    );

    central.stop();
    for _ in 0..WHILE_AWAY {
        visit("while-away").await;
    }
    central.restart();
    let lines = wait_for_lines(&sink.path, 1 + WHILE_AWAY, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    assert_eq!(
        count_by_user_agent(&lines),
        HashMap::from([("before".into(), 1), ("while-away".into(), WHILE_AWAY)]),
        "site log:\n{}",
        site.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_packet_sent_to_a_site_does_not_wedge_its_bridge() {
    let mut central = Broker::start();
    central.add_user("paris");
    let site = Broker::start_site(&central, "paris");
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&central, dir.path()).await;
    let edge = spawn_edge_with(&site, "unused", |settings| {
        settings.mqtt = site.mqtt_settings("paris");
        settings.edge.id = "paris/edge-1".into();
    })
    .await;

    // Over the centre's max_packet_size: the site must refuse it, not queue it for the bridge.
    let acked = mqtt::publish(
        &site,
        "paris",
        "tracker/visits/paris/big",
        vec![vec![b'x'; 2 << 20]].into_iter(),
    )
    .await;
    assert_eq!(acked, 0, "site log:\n{}", site.log());
    let client = testkit::client();
    let response = client
        .get(edge.track_url())
        .header(USER_AGENT, "after-the-big-one")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = wait_for_lines(&sink.path, 1, PATIENCE).await;
    edge.stop().await;
    sink.stop().await;
    assert_eq!(
        count_by_user_agent(&lines),
        HashMap::from([("after-the-big-one".into(), 1)]),
        "central log:\n{}\nsite log:\n{}",
        central.log(),
        site.log()
    );
}
