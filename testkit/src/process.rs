//! The two services as real processes, for fault tests that kill and restart them. They run the
//! binaries `cargo test --workspace` builds, configured only through `TRACKER__*` variables, and
//! append their logs to a file in the test's directory.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::broker::free_port;
use crate::services::EDGE_USER;
use crate::Broker;

/// What a service needs to reach a broker (or the nodes of a cluster) as `user`: its `TRACKER__MQTT__*`
/// settings.
pub trait BrokerAccess {
    fn mqtt_env(&self, user: &str) -> Vec<(String, String)>;
}

impl BrokerAccess for Broker {
    fn mqtt_env(&self, user: &str) -> Vec<(String, String)> {
        vec![
            ("TRACKER__MQTT__HOST".into(), "127.0.0.1".into()),
            ("TRACKER__MQTT__PORT".into(), self.port().to_string()),
            ("TRACKER__MQTT__USERNAME".into(), user.into()),
            (
                "TRACKER__MQTT__PASSWORD_FILE".into(),
                self.password_file(user).display().to_string(),
            ),
        ]
    }
}

pub struct Service {
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Where the edge serves plain HTTP; `None` for the sink.
    http_addr: Option<SocketAddr>,
    /// Where the edge serves `/healthz`, `/readyz` and `/metrics`, when the harness chose it.
    admin_addr: Option<SocketAddr>,
    /// The network namespace it runs in (a far site's, see [`crate::Link`]); `None`: the host's.
    namespace: Option<String>,
    /// Its working directory; `None`: the test's.
    working_dir: Option<PathBuf>,
    child: Option<Child>,
}

impl Service {
    /// A pixel edge with id `edge/{id}`, on a free port kept across restarts; `extra` adds or overrides settings.
    pub fn edge(broker: &impl BrokerAccess, id: &str, dir: &Path, extra: &[(&str, &str)]) -> Self {
        let mut service = Self::unstarted_edge(broker, id, dir, extra);
        service.start();
        service
    }

    /// A pixel edge with id `edge/{id}` as [`edge`](Self::edge), but in the default spool layout: it
    /// runs in `dir` without `edge.spool_dir`, so its spool is `dir/spool/edge/{id}`, where the
    /// other edges of the test find it (orphaned spools).
    pub fn edge_in_spool_root(
        broker: &impl BrokerAccess,
        id: &str,
        dir: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut service = Self::unstarted_edge(broker, id, dir, extra);
        service
            .env
            .retain(|(key, _)| key != "TRACKER__EDGE__SPOOL_DIR");
        service.working_dir = Some(dir.to_owned());
        service.start();
        service
    }

    fn unstarted_edge(
        broker: &impl BrokerAccess,
        id: &str,
        dir: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let env = edge_env(broker, id, dir, listen, admin, extra);
        Self {
            binary: binary("pixel-edge"),
            env,
            log: dir.join(format!("{id}.log")),
            http_addr: Some(listen),
            admin_addr: Some(admin),
            namespace: None,
            working_dir: None,
            child: None,
        }
    }

    /// A pixel edge with id `edge/{id}` at the far site of `link`: it reaches the broker over the
    /// link (plain MQTT on `host_addr`, or TLS to `mosquitto` when `extra` says so) and serves
    /// visitors on the link's `visitor_addr`; `extra` adds or overrides settings.
    pub fn far_edge(
        broker: &Broker,
        link: &crate::Link,
        id: &str,
        dir: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let addr = SocketAddr::from((link.visitor_addr, 8080));
        let admin = SocketAddr::from((link.visitor_addr, 9091));
        let host = link.host_addr.to_string();
        let env = edge_env(
            broker,
            id,
            dir,
            addr,
            admin,
            &[&[("TRACKER__MQTT__HOST", host.as_str())], extra].concat(),
        );
        let mut service = Self {
            binary: binary("pixel-edge"),
            env,
            log: dir.join(format!("{id}.log")),
            http_addr: Some(addr),
            admin_addr: Some(admin),
            namespace: Some(link.namespace.clone()),
            working_dir: None,
            child: None,
        };
        service.start();
        service
    }

    /// The store sink writing `dir/visits.log`; `extra` adds or overrides settings.
    pub fn sink(broker: &impl BrokerAccess, dir: &Path, extra: &[(&str, &str)]) -> Self {
        let env = sink_env(broker, dir, "127.0.0.1:0", extra);
        Self::from_env("store-sink", env, dir.join("store-sink.log"), None)
    }

    /// As [`Self::sink`], with its admin listener on a free port (waited for at each start), so
    /// that [`Self::metric`] reads the sink's metrics.
    pub fn sink_with_metrics(
        broker: &impl BrokerAccess,
        dir: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut service = Self {
            binary: binary("store-sink"),
            env: sink_env(broker, dir, &admin.to_string(), extra),
            log: dir.join("store-sink.log"),
            http_addr: None,
            admin_addr: Some(admin),
            namespace: None,
            working_dir: None,
            child: None,
        };
        service.start();
        service
    }

    /// Starts binary `name` configured by `env` alone, logging to `log`; for an edge, `http_port` is
    /// where it serves plain HTTP on 127.0.0.1.
    pub fn from_env(
        name: &str,
        env: Vec<(String, String)>,
        log: PathBuf,
        http_port: Option<u16>,
    ) -> Self {
        let mut service = Self {
            binary: binary(name),
            env,
            log,
            http_addr: http_port.map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            admin_addr: None,
            namespace: None,
            working_dir: None,
            child: None,
        };
        service.start();
        service
    }

    /// `http://<addr>/track` of an edge.
    pub fn track_url(&self) -> String {
        format!("http://{}/track", self.http_addr.expect("an edge"))
    }

    /// `http://<admin addr>/metrics` of an edge, or of a sink with metrics, the harness configured.
    pub fn metrics_url(&self) -> String {
        format!(
            "http://{}/metrics",
            self.admin_addr.expect("an edge or a sink with metrics")
        )
    }

    /// Starts the process (again); an edge, or a sink with metrics, is waited for until it accepts
    /// connections (on its admin listener when the harness chose it: that one is always on).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match &self.namespace {
            Some(namespace) => {
                // `ip netns exec` execs the binary, so the child's pid is the service's own.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        let child = command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", self.binary.display()));
        self.child = Some(child);
        if let Some(addr) = self.admin_addr.or(self.http_addr) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the service did not start:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGTERM, and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM)
            .expect("the service was running")
    }

    /// SIGHUP: the sink reopens its log files, the edge reloads its HTTPS certificate.
    pub fn hangup(&self) {
        let child = self.child.as_ref().expect("the service is running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).expect("signalling the service");
    }

    /// Runs the same binary with the same settings and `args` to its end (e.g. `healthcheck`, as the
    /// image's HEALTHCHECK does beside the running service).
    pub fn run_beside(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("running {}: {err}", self.binary.display()))
    }

    /// Waits for the process to exit by itself; panics, with its log, if it is still running after
    /// `patience` (a deadline for waiting, not a timing assertion).
    pub fn wait_for_exit(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        let child = self.child.as_mut().expect("the service was started");
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the service") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {patience:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of the counter or gauge `name` (with its labels, if any, as `/metrics` shows them) on
    /// the service's `/metrics`; `None` until it is there (or while the service does not answer).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = crate::client()
            .get(self.metrics_url())
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))?;
        value.trim().parse().ok()
    }

    /// Waits until the service's metric `name` (see [`Self::metric`]) satisfies `done`, and returns
    /// its value then; panics, with the service's log, after `patience` (a deadline for waiting, not a
    /// timing assertion).
    pub async fn wait_for_metric(
        &self,
        name: &str,
        patience: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + patience;
        loop {
            let value = self.metric(name).await;
            if let Some(value) = value.filter(|v| done(*v)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached the expected value (last {value:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an edge's broker has acknowledged `count` visits (`tracker_edge_visits_acknowledged_total`,
    /// which counts again what is sent again); panics after `patience` (a deadline, not a timing assertion).
    pub async fn wait_until_acknowledged(&self, count: usize, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let metrics = crate::client()
                .get(self.metrics_url())
                .send()
                .await
                .expect("the edge's metrics")
                .text()
                .await
                .unwrap();
            let acked = metrics
                .lines()
                .find_map(|line| line.strip_prefix("tracker_edge_visits_acknowledged_total "))
                .map_or(0.0, |value| value.trim().parse::<f64>().unwrap());
            if acked as usize >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{acked} of {count} visits acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    /// Whether the process is still running (it has not exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("waiting for the service").is_none())
    }

    /// The most memory the running process has had resident (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let child = self.child.as_ref().expect("the service is running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log mentions `text` at least `times` times; panics, with the log, after
    /// `patience` (a deadline for waiting, not a timing assertion).
    pub async fn wait_for_log(&self, text: &str, times: usize, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.log().matches(text).count() < times {
            assert!(
                Instant::now() < deadline,
                "{text:?} not logged {times} times:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&mut self, signal: Signal) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        kill(Pid::from_raw(child.id() as i32), signal).expect("signalling the service");
        Some(child.wait().expect("waiting for the service"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An edge's settings: id `edge/{id}`, plain HTTP on `listen`, admin routes on `admin`, a spool in
/// `dir`, then `extra`.
fn edge_env(
    broker: &impl BrokerAccess,
    id: &str,
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = base_env(broker, EDGE_USER);
    env.push(("TRACKER__EDGE__ID".into(), format!("{EDGE_USER}/{id}")));
    env.push(("TRACKER__HTTP__LISTEN".into(), listen.to_string()));
    env.push(("TRACKER__ADMIN__LISTEN".into(), admin.to_string()));
    // The default would be `spool/edge/{id}` in the working directory, shared by parallel tests;
    // an edge with receipts off runs without a disk unless `extra` names a spool.
    if !extra.contains(&("TRACKER__EDGE__RECEIPTS", "false")) {
        env.push((
            "TRACKER__EDGE__SPOOL_DIR".into(),
            dir.join(format!("spool-{id}")).display().to_string(),
        ));
    }
    env.extend(owned(extra));
    env
}

/// The sink's settings: its admin listener on `admin`, the log at `dir/visits.log`, then `extra`.
fn sink_env(
    broker: &impl BrokerAccess,
    dir: &Path,
    admin: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = base_env(broker, "store-sink");
    env.push(("TRACKER__ADMIN__LISTEN".into(), admin.into()));
    env.push((
        "TRACKER__STORAGE__PATH".into(),
        dir.join("visits.log").display().to_string(),
    ));
    env.extend(owned(extra));
    env
}

fn base_env(broker: &impl BrokerAccess, user: &str) -> Vec<(String, String)> {
    let mut env = broker.mqtt_env(user);
    env.push(("RUST_LOG".into(), "info".into()));
    env
}

/// The binaries sit beside the test executable's `deps/` directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test --workspace` (scripts/test) builds it",
        path.display()
    );
    path
}
