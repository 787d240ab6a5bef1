//! A real Mosquitto for one test: the shipped config with only the listener, the persistence directory
//! and the log destination changed.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub struct Broker {
    port: u16,
    /// Holds the derived config, the persistence snapshot and the broker's log.
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for the broker");
        write_config(port, dir.path());
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.launch();
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's own log, for a failing test to print.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// SIGTERM, as a clean shutdown: Mosquitto saves its persistence snapshot and exits.
    pub fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL: a crash, nothing saved since the last autosave.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    /// Starts it again on the same port with the same persistence directory.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the broker before restarting it"
        );
        self.launch();
    }

    fn launch(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed: run scripts/test, which installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), signal).expect("signalling mosquitto");
            child.wait().expect("waiting for mosquitto");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shipped config, derived by the same shell function `scripts/run-local` uses, plus a log file.
fn write_config(port: u16, dir: &Path) {
    let conf = dir.join("mosquitto.conf");
    let status = Command::new("bash")
        .current_dir(workspace_root())
        .arg("-c")
        .arg(r#"source scripts/lib.sh && derive_mosquitto_conf "$0" "$1" "$2""#)
        .arg(port.to_string())
        .arg(dir)
        .arg(&conf)
        .status()
        .expect("running bash");
    assert!(status.success(), "deriving the broker config");
    let mut config = std::fs::read_to_string(&conf).unwrap();
    config.push_str(&format!("log_dest file {}/mosquitto.log\n", dir.display()));
    std::fs::write(&conf, config).unwrap();
}
