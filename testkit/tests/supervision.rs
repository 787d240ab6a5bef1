//! A dead task means a dead process: each long-lived task of the real binaries is made to panic by the
//! debug-build fault hook (`TRACKER_TEST_FAULT`), and the process must log which task died and exit
//! non-zero, so that systemd or compose restarts it, instead of living on and answering ready.

use std::time::Duration;

use common::supervision::FAULT_VAR;
use testkit::{free_port, Broker, Service, EDGE_USER};

const PATIENCE: Duration = Duration::from_secs(30);

/// The settings both services connect to `broker` with, as `user`.
fn broker_env(broker: &Broker, user: &str) -> Vec<(String, String)> {
    vec![
        ("TRACKER__MQTT__HOST".into(), "127.0.0.1".into()),
        ("TRACKER__MQTT__PORT".into(), broker.port().to_string()),
        ("TRACKER__MQTT__USERNAME".into(), user.into()),
        (
            "TRACKER__MQTT__PASSWORD_FILE".into(),
            broker.password_file(user).display().to_string(),
        ),
    ]
}

fn assert_dies_of(mut service: Service, task: &str) {
    let status = service.wait_for_exit(PATIENCE);
    let log = service.log();
    assert!(!status.success(), "{task}: exit {status}:\n{log}");
    assert!(
        log.contains(&format!(
            "the {task} task panicked: fault injected by {FAULT_VAR}; exiting"
        )),
        "{task}:\n{log}"
    );
}

#[test]
fn an_edge_whose_task_dies_exits_non_zero_naming_it() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let secrets = broker.secrets_dir();
    for task in [
        "publisher",
        "HTTP server",
        "certificate reloader",
        "admin listener",
        "SIGHUP forwarder",
    ] {
        let mut env = broker_env(&broker, EDGE_USER);
        env.extend(
            [
                ("TRACKER__EDGE__ID", format!("{EDGE_USER}/dying")),
                (
                    "TRACKER__EDGE__SPOOL_DIR",
                    dir.path().join("spool").display().to_string(),
                ),
                (
                    "TRACKER__HTTP__LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
                ("TRACKER__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
                (
                    "TRACKER__HTTPS__LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
                (
                    "TRACKER__HTTPS__CERT_FILE",
                    secrets.join("https.crt").display().to_string(),
                ),
                (
                    "TRACKER__HTTPS__KEY_FILE",
                    secrets.join("https.key").display().to_string(),
                ),
                (FAULT_VAR, task.to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let log = dir.path().join(format!("{task}.log"));
        assert_dies_of(Service::from_env("pixel-edge", env, log, None), task);
    }
}

#[test]
fn a_sink_whose_task_dies_exits_non_zero_naming_it() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    for task in [
        "subscription",
        "writer",
        "admin listener",
        "SIGHUP forwarder",
    ] {
        let mut env = broker_env(&broker, "store-sink");
        env.extend(
            [
                ("TRACKER__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
                (
                    "TRACKER__STORAGE__PATH",
                    dir.path().join("visits.log").display().to_string(),
                ),
                (FAULT_VAR, task.to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let log = dir.path().join(format!("{task}.log"));
        assert_dies_of(Service::from_env("store-sink", env, log, None), task);
    }
}
