//! The pixel-edge binary's start and stop: a bad setting stops it with the key named; SIGTERM and
//! SIGINT end it cleanly with exit code 0, even with no broker to deliver to.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The binary with the shipped settings and its spool in `spool` (the default, `spool/{edge.id}` in
/// the working directory, would land in the source tree), and its admin listener on a free port (the
/// default 9091 would collide between tests run in parallel).
fn edge(spool: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pixel-edge"));
    command
        .env_clear()
        .env(
            "TRACKER_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/appsettings.json"),
        )
        .env("TRACKER__EDGE__SPOOL_DIR", spool)
        .env("TRACKER__ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_key() {
    let spool = tempfile::tempdir().unwrap();
    for (var, value, key) in [
        ("TRACKER__MQTT__PORT", "nope", "mqtt.port"),
        ("TRACKER__HTTP__LISTEN", "everywhere", "http.listen"),
        ("TRACKER__EDGE__ID", "a//b", "edge.id"),
        (
            "TRACKER__MQTT__PASSWORD_FILE",
            "/nonexistent",
            "mqtt.password_file",
        ),
        ("TRACKER__HTTPS__LISTEN", "0.0.0.0:8443", "https.cert_file"),
        ("TRACKER__PRIVACY__IP", "masked", "privacy.ip"),
        ("TRACKER__PRIVACY__IPV4_PREFIX", "33", "privacy.ipv4_prefix"),
    ] {
        let output = edge(spool.path()).env(var, value).output().unwrap();
        assert!(!output.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{var}={value}: {stderr}");
    }
}

#[test]
fn sigterm_and_sigint_exit_cleanly() {
    let spool = tempfile::tempdir().unwrap();
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let child = edge(spool.path())
            .env("TRACKER__HTTP__LISTEN", "127.0.0.1:0")
            // Nothing listens on port 1: the edge keeps trying and must still stop when asked.
            .env("TRACKER__MQTT__PORT", "1")
            .env("TRACKER__EDGE__DRAIN_TIMEOUT_SECS", "1")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{signal}: {stdout}");
        assert!(
            stdout.contains("everything delivered"),
            "{signal}: {stdout}"
        );
    }
}

#[test]
fn a_second_edge_on_the_same_spool_refuses_to_start_naming_the_key() {
    let spool = tempfile::tempdir().unwrap();
    let running = |command: &mut Command| {
        command
            .env("TRACKER__HTTP__LISTEN", "127.0.0.1:0")
            .env("TRACKER__MQTT__PORT", "1")
            .env("TRACKER__EDGE__DRAIN_TIMEOUT_SECS", "1")
            .spawn()
            .unwrap()
    };
    let first = running(&mut edge(spool.path()));
    // The spool's state file is written once the lock is held.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !spool.path().join("seq").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first edge did not open its spool"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = running(&mut edge(spool.path())).wait_with_output().unwrap();
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("edge.spool_dir"), "{stderr}");
    assert!(
        stderr.contains("in use by another running edge"),
        "{stderr}"
    );
}
