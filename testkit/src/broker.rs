//! A real Mosquitto for one test: the shipped config (no anonymous clients, the ACL, a TLS listener)
//! with only the ports, the persistence directory, the secrets' directory and the log destination
//! changed. Its secrets come from `scripts/secrets init`, as an operator's would: a fresh test CA and
//! the users `store-sink`, `edge` and `monitor`.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::configuration::MqttSettings;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub struct Broker {
    port: u16,
    tls_port: u16,
    /// Holds the derived config, the persistence snapshot and the broker's log.
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a broker whose shipped settings named in `overrides` (e.g. `max_queued_messages`) have
    /// the given values instead.
    pub fn start_with(overrides: &[(&str, &str)]) -> Self {
        let (port, tls_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("temp dir for the broker");
        init_secrets(&dir.path().join("secrets"));
        derive_config(port, tls_port, dir.path(), "mosquitto/mosquitto.conf");
        let conf = dir.path().join("mosquitto.conf");
        let mut config = String::new();
        for line in std::fs::read_to_string(&conf).unwrap().lines() {
            let key = line.split_whitespace().next().unwrap_or_default();
            match overrides.iter().find(|(overridden, _)| *overridden == key) {
                Some((key, value)) => config += &format!("{key} {value}\n"),
                None => config += &format!("{line}\n"),
            }
        }
        std::fs::write(&conf, config).unwrap();
        Self::launched(port, tls_port, dir)
    }

    /// An edge-site broker for `site_user`: `mosquitto/bridge/edge-site.conf` bridging to `central`'s
    /// TLS listener as that user (which it must have), with `central`'s users and CA, and a shorter
    /// reconnect back-off than the shipped one so tests need not wait a minute.
    pub fn start_site(central: &Broker, site_user: &str) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for the site broker");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        for file in ["passwd", "ca.crt"] {
            std::fs::copy(central.secrets_dir().join(file), secrets.join(file)).unwrap();
        }
        std::fs::copy(
            central.password_file(site_user),
            secrets.join(format!("{site_user}.password")),
        )
        .unwrap();
        derive_config(port, 0, dir.path(), "mosquitto/bridge/edge-site.conf");
        let overrides = [
            ("address", format!("127.0.0.1:{}", central.tls_port())),
            ("remote_username", site_user.to_owned()),
            ("remote_password", central.password(site_user)),
            ("remote_clientid", format!("bridge-{site_user}")),
            ("local_clientid", format!("bridge-{site_user}-local")),
            ("restart_timeout", "1 3".to_owned()),
        ];
        let conf = dir.path().join("mosquitto.conf");
        let mut config = String::new();
        for line in std::fs::read_to_string(&conf).unwrap().lines() {
            let key = line.split_whitespace().next().unwrap_or_default();
            if overrides.iter().all(|(overridden, _)| *overridden != key) {
                config += &format!("{line}\n");
            }
        }
        // Still inside the bridge's `connection` block, the last one of the file.
        for (key, value) in overrides {
            config += &format!("{key} {value}\n");
        }
        std::fs::write(&conf, config).unwrap();
        // No TLS listener: the site's edges are local.
        Self::launched(port, 0, dir)
    }

    /// A Mosquitto that lets `store-sink` in but refuses it every subscription (SUBACK 0x80), as a
    /// broker with a wrong ACL does. Mosquitto's `acl_file` cannot do that (it grants every SUBSCRIBE
    /// and filters on delivery), so this one uses its dynamic-security plugin: `store-sink` is a
    /// client without any role, and the default denies subscribing. Plain MQTT only.
    pub fn start_refusing_subscriptions() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for the broker");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        let password = format!("refused-{port}");
        std::fs::write(secrets.join("store-sink.password"), &password).unwrap();
        let dynsec = dir.path().join("dynamic-security.json");
        let status = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args(["store-sink", &password])
            .stdout(Stdio::null())
            .status()
            .expect("mosquitto_ctrl (package mosquitto) must be installed: run scripts/test");
        assert!(status.success(), "mosquitto_ctrl dynsec init");
        // `init` makes the user an administrator, who may subscribe to anything: take that away.
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&dynsec).unwrap()).unwrap();
        config["clients"][0]["roles"] = serde_json::json!([]);
        std::fs::write(&dynsec, config.to_string()).unwrap();
        let conf = [
            format!("listener {port} 127.0.0.1"),
            format!("plugin {}", dynamic_security_plugin().display()),
            format!("plugin_opt_config_file {}", dynsec.display()),
            "persistence false".into(),
            // Root keeps its own files readable (Mosquitto would switch to its own user otherwise).
            "user root".into(),
            format!("log_dest file {}/mosquitto.log", dir.path().display()),
        ];
        std::fs::write(dir.path().join("mosquitto.conf"), conf.join("\n") + "\n").unwrap();
        Self::launched(port, 0, dir)
    }

    /// Plain MQTT.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// MQTT over TLS, with a certificate for `localhost` and `127.0.0.1` from [`Self::ca_file`].
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.secrets_dir().join("ca.crt")
    }

    /// Where `scripts/secrets` put `user`'s password.
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.secrets_dir().join(format!("{user}.password"))
    }

    pub fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.password_file(user))
            .expect("a user made by scripts/secrets")
            .trim()
            .to_owned()
    }

    /// Settings for reaching this broker over plain MQTT as `user`.
    pub fn mqtt_settings(&self, user: &str) -> MqttSettings {
        MqttSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            username: Some(user.into()),
            password_file: Some(self.password_file(user)),
            ..MqttSettings::default()
        }
    }

    /// Adds a broker user with `scripts/secrets user` and makes the running broker reload its
    /// password file.
    pub fn add_user(&mut self, user: &str) {
        run_script(&["scripts/secrets", "user", user], &self.secrets_dir());
        self.signal_running(Signal::SIGHUP);
        // A reload is not acknowledged; wait until the new user is let in.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.accepts(user) {
            assert!(
                Instant::now() < deadline,
                "the broker did not reload its users"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `user` can connect (checked with `mosquitto_pub`).
    fn accepts(&self, user: &str) -> bool {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-u", user, "-P", &self.password(user)])
            .args(["-t", "probe", "-n"])
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_pub must be installed: run scripts/test, which installs it")
            .success()
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

    /// Deletes the persistence snapshot of a stopped broker, as if it had lost its disk.
    pub fn lose_persistence(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        match std::fs::remove_file(self.dir.path().join("mosquitto.db")) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("deleting the broker's persistence: {err}"),
        }
    }

    /// Starts it again on the same port with the same persistence directory.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the broker before restarting it"
        );
        self.launch();
    }

    /// Starts Mosquitto with `dir/mosquitto.conf`, which listens on `port` (and `tls_port` unless 0).
    fn launched(port: u16, tls_port: u16, dir: TempDir) -> Self {
        let mut broker = Self {
            port,
            tls_port,
            dir,
            child: None,
        };
        broker.launch();
        broker
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

    fn signal_running(&self, signal: Signal) {
        let child = self.child.as_ref().expect("a running broker");
        kill(Pid::from_raw(child.id() as i32), signal).expect("signalling mosquitto");
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

/// A TCP port nothing listens on right now, taken below Linux's ephemeral range (32768 and up), where
/// `bind(0)` and outgoing connections never land: a broker stopped for an outage gets its port back,
/// instead of finding it taken by a parallel test meanwhile.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts at its own offset, so processes run side by side rarely probe the same ports.
    let start = std::process::id() % 1_000 * 22;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// Where Debian's package `mosquitto` put its dynamic-security plugin (a directory per architecture).
fn dynamic_security_plugin() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .map(|entry| entry.unwrap().path().join("mosquitto_dynamic_security.so"))
        .find(|plugin| plugin.exists())
        .expect(
            "mosquitto_dynamic_security.so (package mosquitto) must be installed: run scripts/test",
        )
}

/// What an operator's `scripts/secrets init DIR` makes: a fresh CA, certificates for the broker and
/// the edge's HTTPS (`localhost`, `127.0.0.1`), and the users `store-sink`, `edge` and `monitor`.
pub fn init_secrets(dir: &Path) {
    run_script(&["scripts/secrets", "init"], dir);
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs one of the project's scripts with `dir` as its last argument, from the workspace root.
fn run_script(command: &[&str], dir: &Path) {
    let status = Command::new("bash")
        .current_dir(workspace_root())
        .args(command)
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .expect("running bash");
    assert!(status.success(), "{command:?} failed");
}

/// The shipped config `source`, derived by the same shell function `scripts/run-local` uses, plus a
/// log file.
fn derive_config(port: u16, tls_port: u16, dir: &Path, source: &str) {
    let conf = dir.join("mosquitto.conf");
    let status = Command::new("bash")
        .current_dir(workspace_root())
        .arg("-c")
        .arg(r#"source scripts/lib.sh && derive_mosquitto_conf "$@""#)
        .arg("derive")
        .args([port.to_string(), tls_port.to_string()])
        .arg(dir)
        .arg(dir.join("secrets"))
        .arg(&conf)
        .arg(source)
        .status()
        .expect("running bash");
    assert!(status.success(), "deriving the broker config");
    let mut config = std::fs::read_to_string(&conf).unwrap();
    config.push_str(&format!("log_dest file {}/mosquitto.log\n", dir.display()));
    std::fs::write(&conf, config).unwrap();
}
