//! A real three-node RabbitMQ cluster (Debian's `rabbitmq-server` 3.10.8 with `rabbitmq_mqtt`) on
//! free ports, with the shipped `rabbitmq/rabbitmq.conf` and `rabbitmq/definitions.json`: only the
//! ports, the node names, the paths and the users' passwords (from `scripts/secrets init`) changed.
//!
//! A node takes 15–20 s to boot on the 2-core dev machine, so one cluster serves all the tests of a
//! test binary ([`Cluster::shared`]), which take turns ([`Cluster::exclusive`]) since some kill nodes.
//! Each node has its own name, ports, data directory and `RABBITMQ_*` settings, and the cluster its
//! own `epmd` on a free port, so nothing is shared with another cluster or a system RabbitMQ. Every
//! process is started by one long-lived thread with `PR_SET_PDEATHSIG`: when the test process ends,
//! however it ends, the kernel kills the nodes and `epmd` with it.

use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::broker::{free_port, init_secrets, workspace_root};
use crate::process::BrokerAccess;

pub const NODES: usize = 3;
/// RabbitMQ's own scripts, which run as the calling user (`/usr/sbin/rabbitmq-*` switch to the
/// `rabbitmq` user, who could not write the test's directories).
const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";
const BOOT_PATIENCE: Duration = Duration::from_secs(180);

pub struct Cluster {
    /// Holds the secrets, the definitions and each node's directory.
    dir: TempDir,
    epmd_port: u16,
    nodes: Vec<Node>,
    _epmd: Child,
    /// How long the first boot of the three nodes (in parallel) took, for the record.
    pub boot_time: Duration,
}

struct Node {
    name: String,
    mqtt_port: u16,
    dir: PathBuf,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
}

/// The users `scripts/secrets init` makes, each with its permissions in `rabbitmq/definitions.json`.
const USERS: [&str; 3] = ["store-sink", "edge", "monitor"];

static SHARED: OnceLock<Cluster> = OnceLock::new();
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// The test binary's cluster, started by the first test that asks.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(Cluster::start)
    }

    /// The shared cluster, for one test at a time: a test that kills nodes must not pull them from
    /// under another one.
    pub async fn exclusive() -> (tokio::sync::MutexGuard<'static, ()>, &'static Cluster) {
        let turn = TURN.lock().await;
        let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
        (turn, cluster)
    }

    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let secrets = dir.path().join("secrets");
        init_secrets(&secrets);
        write_definitions(dir.path(), &secrets);
        let epmd_port = free_port();
        let epmd = launch(
            Command::new("epmd")
                .args(["-port", &epmd_port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(epmd_port, Duration::from_secs(10), || "epmd".into());
        let names: Vec<String> = (1..=NODES)
            .map(|n| format!("rabbit-{n}@localhost"))
            .collect();
        let nodes: Vec<Node> = names
            .iter()
            .map(|name| Node::prepare(dir.path(), &secrets, name, &names, epmd_port))
            .collect();
        let started = Instant::now();
        // In parallel: each node waits for the others at its first boot (classic peer discovery).
        nodes.iter().for_each(Node::launch);
        nodes.iter().for_each(Node::wait_until_serving);
        let cluster = Self {
            dir,
            epmd_port,
            nodes,
            _epmd: epmd,
            boot_time: started.elapsed(),
        };
        println!(
            "RabbitMQ cluster of {NODES} booted in {:?}",
            cluster.boot_time
        );
        cluster
    }

    /// The nodes (0-based) in this order as a client's `mqtt.hosts`: it starts at the first and moves
    /// on when a node fails.
    pub fn via(&self, order: [usize; NODES]) -> ClusterAccess<'_> {
        ClusterAccess {
            cluster: self,
            order,
        }
    }

    pub fn mqtt_port(&self, node: usize) -> u16 {
        self.nodes[node].mqtt_port
    }

    /// The node leading the quorum queue of the sink's persistent session (client id `client_id`).
    pub fn queue_leader(&self, client_id: &str) -> usize {
        let queue = format!("mqtt-subscription-{client_id}qos1");
        let listing = self.ctl(0, "rabbitmqctl", &["list_queues", "-q", "name", "leader"]);
        let leader = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .unwrap_or_else(|| panic!("no queue {queue}:\n{listing}"));
        self.nodes
            .iter()
            .position(|node| node.name == leader)
            .unwrap_or_else(|| panic!("leader {leader} is none of the nodes"))
    }

    /// SIGKILL: the node crashes.
    pub fn kill(&self, node: usize) {
        self.nodes[node].signal(Signal::SIGKILL);
    }

    /// SIGTERM: a clean shutdown (RabbitMQ stops its listeners, hands leadership over and syncs).
    pub fn stop(&self, node: usize) {
        self.nodes[node].signal(Signal::SIGTERM);
    }

    /// Starts a stopped or killed node again with its data and waits until it serves MQTT and the
    /// cluster's quorum queues have it back (so that another node may go down next).
    pub fn restart(&self, node: usize) -> Duration {
        let started = Instant::now();
        self.nodes[node].launch();
        self.nodes[node].wait_until_serving();
        let booted = started.elapsed();
        self.ctl(
            node,
            "rabbitmq-upgrade",
            &["await_online_quorum_plus_one", "-t", "120"],
        );
        booted
    }

    /// Runs one of RabbitMQ's command-line tools against `node`; panics with its output if it fails.
    pub fn ctl(&self, node: usize, tool: &str, args: &[&str]) -> String {
        self.try_ctl(node, tool, args)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// As [`Self::ctl`], on any node that takes it, trying again for up to a minute: a node back
    /// from a fault may still pause its app for a moment (`pause_minority`) before it settles.
    pub fn ctl_any(&self, tool: &str, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut failures = Vec::new();
            for node in 0..self.nodes.len() {
                match self.try_ctl(node, tool, args) {
                    Ok(text) => return text,
                    Err(failure) => failures.push(failure),
                }
            }
            assert!(Instant::now() < deadline, "{}", failures.join("\n"));
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn try_ctl(&self, node: usize, tool: &str, args: &[&str]) -> Result<String, String> {
        let node = &self.nodes[node];
        let output = Command::new(Path::new(SCRIPTS).join(tool))
            .env_clear()
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .args(["-n", &node.name])
            .args(args)
            .output()
            .expect(
                "RabbitMQ's tools (package rabbitmq-server) must be installed: run scripts/test",
            );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.success() {
            true => Ok(text),
            false => Err(format!(
                "{tool} {args:?} failed on {}: {text}{}",
                node.name,
                String::from_utf8_lossy(&output.stderr)
            )),
        }
    }

    /// The node's own log, for a failing test to print.
    pub fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.nodes[node].dir.join("node.log")).unwrap_or_default()
    }

    pub fn password_file(&self, user: &str) -> PathBuf {
        self.dir
            .path()
            .join("secrets")
            .join(format!("{user}.password"))
    }

    pub fn epmd_port(&self) -> u16 {
        self.epmd_port
    }
}

/// The cluster's nodes as a client's `mqtt.hosts`, in turn from one of them.
pub struct ClusterAccess<'a> {
    cluster: &'a Cluster,
    order: [usize; NODES],
}

impl BrokerAccess for ClusterAccess<'_> {
    fn mqtt_env(&self, user: &str) -> Vec<(String, String)> {
        let hosts: Vec<String> = self
            .order
            .iter()
            .map(|&node| format!("127.0.0.1:{}", self.cluster.mqtt_port(node)))
            .collect();
        vec![
            ("TRACKER__MQTT__HOSTS".into(), hosts.join(",")),
            ("TRACKER__MQTT__PROTOCOL".into(), "3.1.1".into()),
            ("TRACKER__MQTT__USERNAME".into(), user.into()),
            (
                "TRACKER__MQTT__PASSWORD_FILE".into(),
                self.cluster.password_file(user).display().to_string(),
            ),
        ]
    }
}

impl Node {
    /// The node's directory, its derived config and its environment.
    fn prepare(
        cluster_dir: &Path,
        secrets: &Path,
        name: &str,
        names: &[String],
        epmd_port: u16,
    ) -> Self {
        let short = name.split('@').next().unwrap();
        let dir = cluster_dir.join(short);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        // The nodes of a cluster and its tools share this secret; Erlang wants it private.
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("tracker-test-cluster-{epmd_port}")).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        let (mqtt_port, tls_port, dist_port) = (free_port(), free_port(), free_port());
        let config = derive_config(
            &std::fs::read_to_string(workspace_root().join("rabbitmq/rabbitmq.conf")).unwrap(),
            mqtt_port,
            tls_port,
            secrets,
            &cluster_dir.join("definitions.json"),
            names,
        );
        std::fs::write(dir.join("rabbitmq.conf"), config).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        let path = |file: &str| dir.join(file).display().to_string();
        let env = [
            ("PATH", "/usr/bin:/bin:/usr/sbin:/sbin".to_owned()),
            ("HOME", home.display().to_string()),
            ("ERL_EPMD_PORT", epmd_port.to_string()),
            ("RABBITMQ_NODENAME", name.to_owned()),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_MNESIA_BASE", path("data")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_LOGS", "-".to_owned()),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_PID_FILE", path("rabbitmq.pid")),
            // The script then execs the VM itself (its pid is the node's) instead of waiting on it.
            ("RABBITMQ_ALLOW_INPUT", "1".to_owned()),
            // No console; and no busy-waiting schedulers on a machine of 2 shared cores.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-noinput +sbwt none +sbwtdcpu none +sbwtdio none".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self {
            name: name.to_owned(),
            mqtt_port,
            dir,
            env,
            child: Mutex::new(None),
        }
    }

    fn launch(&self) {
        let mut child = self.child.lock().unwrap();
        assert!(child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        *child = Some(launch(
            Command::new(Path::new(SCRIPTS).join("rabbitmq-server"))
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        ));
    }

    fn wait_until_serving(&self) {
        wait_for_port(self.mqtt_port, BOOT_PATIENCE, || {
            std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
        });
    }

    fn signal(&self, signal: Signal) {
        let mut child = self
            .child
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        kill(Pid::from_raw(child.id() as i32), signal).expect("signalling a RabbitMQ node");
        child.wait().expect("waiting for a RabbitMQ node");
    }
}

/// The shipped config with this node's ports, the test's secrets and definitions, and the
/// cluster's node names.
fn derive_config(
    shipped: &str,
    mqtt_port: u16,
    tls_port: u16,
    secrets: &Path,
    definitions: &Path,
    names: &[String],
) -> String {
    let mut config = String::new();
    for line in shipped.lines() {
        let key = line.split(" = ").next().unwrap_or_default();
        let line = match key {
            "mqtt.listeners.tcp.default" => format!("{key} = {mqtt_port}"),
            "mqtt.listeners.ssl.default" => format!("{key} = {tls_port}"),
            "load_definitions" => format!("{key} = {}", definitions.display()),
            _ if key.starts_with("cluster_formation.classic_config.nodes.") => {
                let n: usize = key.rsplit('.').next().unwrap().parse().unwrap();
                format!("{key} = {}", names[n - 1])
            }
            _ => line.replace("/etc/rabbitmq/secrets", &secrets.display().to_string()),
        };
        config += &line;
        config.push('\n');
    }
    config
}

/// `rabbitmq/definitions.json` with the users added, each with the password `scripts/secrets` made,
/// hashed as RabbitMQ does (`rabbit_password_hashing_sha256`: base64 of a 4-byte salt and
/// SHA-256(salt ++ password)).
fn write_definitions(dir: &Path, secrets: &Path) {
    let shipped = std::fs::read(workspace_root().join("rabbitmq/definitions.json")).unwrap();
    let mut definitions: serde_json::Value = serde_json::from_slice(&shipped).unwrap();
    let users: Vec<serde_json::Value> = USERS
        .iter()
        .map(|user| {
            let password =
                std::fs::read_to_string(secrets.join(format!("{user}.password"))).unwrap();
            let salt: [u8; 4] = rand::random();
            let mut salted = salt.to_vec();
            salted.extend_from_slice(
                &Sha256::new()
                    .chain_update(salt)
                    .chain_update(password.trim())
                    .finalize(),
            );
            serde_json::json!({
                "name": user,
                "password_hash": base64::engine::general_purpose::STANDARD.encode(salted),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            })
        })
        .collect();
    definitions["users"] = users.into();
    std::fs::write(dir.join("definitions.json"), definitions.to_string()).unwrap();
}

/// Starts `command` from the one thread that lives as long as the test process, with SIGKILL as its
/// parent-death signal: the kernel sends it when that thread, so the process, ends.
fn launch(command: &mut Command) -> Child {
    static LAUNCHER: OnceLock<Mutex<mpsc::Sender<Launch>>> = OnceLock::new();
    type Launch = (Command, mpsc::Sender<std::io::Result<Child>>);
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Launch>();
        std::thread::spawn(move || {
            for (mut command, reply) in rx {
                // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
                unsafe {
                    command.pre_exec(|| {
                        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(Into::into)
                    });
                }
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (reply, child) = mpsc::channel();
    let command = std::mem::replace(command, Command::new("true"));
    launcher
        .lock()
        .unwrap()
        .send((command, reply))
        .expect("the launcher thread");
    child
        .recv()
        .expect("the launcher thread")
        .expect("starting a RabbitMQ process (package rabbitmq-server): run scripts/test")
}

fn wait_for_port(port: u16, patience: Duration, log: impl Fn() -> String) {
    let deadline = Instant::now() + patience;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} after {patience:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
