//! The store-sink binary's start and stop: a bad setting stops it with the key named; SIGTERM and
//! SIGINT end it cleanly with exit code 0.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn sink(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_store-sink"));
    command
        .env_clear()
        .env(
            "TRACKER_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/appsettings.json"),
        )
        .env("TRACKER__STORAGE__PATH", dir.join("visits.log"))
        .env("TRACKER__ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, key) in [
        ("TRACKER__STORAGE__FSYNC", "sometimes", "storage.fsync"),
        ("TRACKER__MQTT__TOPIC", "tracker/#", "mqtt.topic"),
        (
            "TRACKER__STORAGE__PATH",
            "/proc/no/such/dir/visits.log",
            "storage.path",
        ),
    ] {
        let output = sink(dir.path()).env(var, value).output().unwrap();
        assert!(!output.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{var}={value}: {stderr}");
    }
}

#[test]
fn sigterm_and_sigint_exit_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // Nothing listens on port 1: the sink keeps trying and must still stop when asked.
        let child = sink(dir.path())
            .env("TRACKER__MQTT__PORT", "1")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{signal}: {stdout}");
        assert!(stdout.contains("store sink stopped"), "{signal}: {stdout}");
    }
    assert!(
        dir.path().join("visits.log").exists(),
        "the log is created at start"
    );
}
