//! The compose topology without containers, from the same files: Mosquitto with the shipped config,
//! password file and ACL (secrets made by `scripts/secrets` with a CA generated for this test), the
//! sink and two edges as processes configured by `deploy/*.env` — the environment compose.yml gives
//! them — with only host names, ports and paths mapped to this machine. Everything goes over TLS.
//!
//! It shows: an edge cannot publish to another edge's topic, nor read visits; anonymous clients are
//! refused on both listeners; visits over HTTPS land in the log.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::configuration::MqttSettings;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use testkit::visits_log::count_by_user_agent;
use testkit::{free_port, https_get, wait_for_lines, workspace_root, Broker, Service};

const PATIENCE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_topology_is_locked_down_and_serves_https() {
    let mut broker = Broker::start();
    broker.add_user("edge-b");
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("visits.log");

    let sink_env = compose_env("store-sink", &broker);
    assert_eq!(sink_env["TRACKER__MQTT__TLS"], "true", "the sink uses TLS");
    let _sink = Service::from_env(
        "store-sink",
        with(
            sink_env,
            &[
                ("TRACKER__STORAGE__PATH", log_path.to_str().unwrap()),
                ("TRACKER__ADMIN__LISTEN", "127.0.0.1:0"),
            ],
        ),
        dir.path().join("store-sink.log"),
        None,
    );
    let edge_a = ComposeEdge::start(&broker, dir.path(), "edge", "edge/a");
    let edge_b = ComposeEdge::start(&broker, dir.path(), "edge-b", "edge-b/b");

    // Edge a's user listens to every visit: the broker grants the subscription but delivers nothing.
    let (eavesdropper, mut eavesdropping) = connect(&broker, Some("edge")).await.unwrap();
    eavesdropper
        .subscribe("tracker/visits/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match eavesdropping.poll().await.unwrap() {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }

    // Edge b's user forges a well-formed visit on edge a's topic: refused, and it never lands.
    let (forger, mut forging) = connect(&broker, Some("edge-b")).await.unwrap();
    let forged = forged_event();
    forger
        .publish("tracker/visits/edge/a", QoS::AtLeastOnce, false, forged)
        .await
        .unwrap();
    // Mosquitto answers PUBACK 0x87 (not authorised), then closes the connection: skip that error.
    let puback = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(ack))) = forging.poll().await {
                return ack;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no PUBACK for the forged visit:\n{}", broker.log()));
    assert_eq!(puback.reason, PubAckReason::NotAuthorized);

    for port in [broker.port(), broker.tls_port()] {
        let refused = connect_anonymously(&broker, port).await;
        assert!(refused.is_err(), "port {port}: anonymous client let in");
    }

    for (edge, agent) in [(&edge_a, "visitor-a"), (&edge_b, "visitor-b")] {
        let fetched = https_get(&edge.https_url(), &broker.ca_file(), &["-A", agent])
            .await
            .unwrap();
        assert_eq!((fetched.status, fetched.http_version.as_str()), (200, "2"));
    }
    let lines = wait_for_lines(&log_path, 2, PATIENCE).await;
    assert_eq!(
        count_by_user_agent(&lines),
        HashMap::from([("visitor-a".into(), 1), ("visitor-b".into(), 1)]),
        "the forged visit must not land; edges:\n{}\n{}",
        edge_a.service.log(),
        edge_b.service.log()
    );

    // Both visits went through the broker to the sink; whatever was delivered to the eavesdropper
    // has arrived by now, or it would be behind them.
    let delivered = drain_publishes(&mut eavesdropping, Duration::from_secs(1)).await;
    assert_eq!(delivered, 0, "an edge's user read visits");
}

/// An edge process configured like compose's `pixel-edge`, as broker user `user` with `edge_id`.
struct ComposeEdge {
    service: Service,
    https_port: u16,
}

impl ComposeEdge {
    fn start(broker: &Broker, dir: &Path, user: &str, edge_id: &str) -> Self {
        let (http_port, https_port) = (free_port(), free_port());
        let env = compose_env("pixel-edge", broker);
        assert_eq!(env["TRACKER__MQTT__TLS"], "true", "the edge uses TLS");
        let password_file = broker.password_file(user);
        let spool = dir.join(format!("spool-{user}"));
        let env = with(
            env,
            &[
                ("TRACKER__MQTT__USERNAME", user),
                (
                    "TRACKER__MQTT__PASSWORD_FILE",
                    password_file.to_str().unwrap(),
                ),
                // Compose gives each replica its host name; here both share one host.
                ("TRACKER__EDGE__ID", edge_id),
                ("TRACKER__HTTP__LISTEN", &format!("127.0.0.1:{http_port}")),
                ("TRACKER__HTTPS__LISTEN", &format!("127.0.0.1:{https_port}")),
                // Compose gives each replica its own 9091; here both share one host.
                ("TRACKER__ADMIN__LISTEN", "127.0.0.1:0"),
                ("TRACKER__EDGE__SPOOL_DIR", spool.to_str().unwrap()),
                ("TRACKER__EDGE__DRAIN_TIMEOUT_SECS", "1"),
            ],
        );
        let log = dir.join(format!("{user}.log"));
        Self {
            service: Service::from_env("pixel-edge", env, log, Some(http_port)),
            https_port,
        }
    }

    fn https_url(&self) -> String {
        format!("https://localhost:{}/track", self.https_port)
    }
}

/// `deploy/{service}.env` as compose passes it, mapped to this machine: the broker service
/// `mosquitto:8883` is the test broker's TLS listener, `/run/secrets/` its secrets directory.
fn compose_env(service: &str, broker: &Broker) -> HashMap<String, String> {
    let path = workspace_root().join(format!("deploy/{service}.env"));
    let secrets = format!("{}/", broker.secrets_dir().display());
    dotenvy::from_path_iter(&path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .map(|pair| {
            let (key, value) = pair.expect("a KEY=value line");
            let value = match (key.as_str(), value.as_str()) {
                ("TRACKER__MQTT__HOST", "mosquitto") => "127.0.0.1".to_owned(),
                ("TRACKER__MQTT__PORT", "8883") => broker.tls_port().to_string(),
                _ => value.replace("/run/secrets/", &secrets),
            };
            (key, value)
        })
        .chain([("RUST_LOG".to_owned(), "info".to_owned())])
        .collect()
}

fn with(mut env: HashMap<String, String>, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env.into_iter().collect()
}

/// A client of the broker's TLS listener, as `user` (with the password `scripts/secrets` made) or
/// anonymous, once the broker has answered its CONNECT.
async fn connect(
    broker: &Broker,
    user: Option<&str>,
) -> Result<(AsyncClient, EventLoop), ConnectReturnCode> {
    let client_id = format!("deploy-test-{}", user.unwrap_or("anonymous"));
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.tls_port());
    let tls = MqttSettings {
        tls: true,
        ca_file: Some(broker.ca_file()),
        ..MqttSettings::default()
    };
    options.set_transport(tls.transport().unwrap());
    if let Some(user) = user {
        options.set_credentials(user, broker.password(user));
    }
    handshake(options).await
}

/// Whether a client without credentials gets in, on the plain (`broker.port()`) or TLS listener.
async fn connect_anonymously(
    broker: &Broker,
    port: u16,
) -> Result<(AsyncClient, EventLoop), ConnectReturnCode> {
    if port == broker.tls_port() {
        return connect(broker, None).await;
    }
    handshake(MqttOptions::new("deploy-test-anonymous", "127.0.0.1", port)).await
}

async fn handshake(options: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectReturnCode> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return match ack.code {
                    ConnectReturnCode::Success => Ok((client, eventloop)),
                    refused => Err(refused),
                }
            }
            Ok(_) => continue,
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(err) => panic!("connecting to the broker: {err}"),
        }
    }
}

/// How many PUBLISH packets arrive on `eventloop` within `window`.
async fn drain_publishes(eventloop: &mut EventLoop, window: Duration) -> usize {
    let mut publishes = 0;
    let _ = tokio::time::timeout(window, async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(_))) = eventloop.poll().await {
                publishes += 1;
            }
        }
    })
    .await;
    publishes
}

/// A valid v1 visit event with user-agent `forged`, as an edge would publish it.
fn forged_event() -> Vec<u8> {
    let visit = common::visit::Visit::new(
        chrono::Utc::now(),
        None,
        common::visit::HeaderText::new("forged"),
        "203.0.113.9".parse().unwrap(),
        "edge/a",
    );
    let mut event = Vec::new();
    common::wire::encode_event(&visit, &mut event);
    event
}
