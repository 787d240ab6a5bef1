//! The admin listener (`admin.listen`) of the real binaries, as the images' HEALTHCHECK uses it:
//! `pixel-edge healthcheck` and `store-sink healthcheck` read the same settings as the service and
//! ask its `/readyz`, whichever pixel ports are on (including `http.enabled = false`).

use std::time::{Duration, Instant};

use testkit::{free_port, Broker, Service};

const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `<binary> healthcheck` beside `service` until it succeeds or `PATIENCE` has passed (a
/// deadline for start-up, not a timing assertion); returns the last outcome.
fn healthcheck(service: &Service) -> std::process::Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let output = service.run_beside(&["healthcheck"]);
        if output.status.success() || Instant::now() > deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_healthcheck_follows_admin_listen_even_with_plain_http_off() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let secrets = broker.secrets_dir();
    let https = format!("127.0.0.1:{}", free_port());
    let cert = secrets.join("https.crt").display().to_string();
    let key = secrets.join("https.key").display().to_string();
    // The harness puts the admin listener on a port of its own choosing (`TRACKER__ADMIN__LISTEN`).
    let edge = Service::edge(
        &broker,
        "https-only",
        dir.path(),
        &[
            ("TRACKER__HTTP__ENABLED", "false"),
            ("TRACKER__HTTPS__LISTEN", &https),
            ("TRACKER__HTTPS__CERT_FILE", &cert),
            ("TRACKER__HTTPS__KEY_FILE", &key),
        ],
    );
    let output = healthcheck(&edge);
    assert!(output.status.success(), "{output:?}\n{}", edge.log());

    let sink_admin = format!("127.0.0.1:{}", free_port());
    let sink = Service::sink(
        &broker,
        dir.path(),
        &[("TRACKER__ADMIN__LISTEN", &sink_admin)],
    );
    let output = healthcheck(&sink);
    assert!(output.status.success(), "{output:?}\n{}", sink.log());
}

#[test]
fn the_healthcheck_fails_when_nothing_answers_on_admin_listen() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let mut sink = Service::sink(&broker, dir.path(), &[("TRACKER__ADMIN__LISTEN", &nowhere)]);
    sink.kill();
    let output = sink.run_beside(&["healthcheck"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&nowhere), "{stderr}");
}
