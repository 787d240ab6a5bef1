//! An emulated long-distance link, for edges far from the broker (this kernel has no netem). A
//! network namespace stands for the far site; two TUN devices, one on the host and one in the
//! namespace, are joined by a forwarder (a thread of its own) that delays each packet (with jitter,
//! never reordering), drops packets at random, or drops everything (a silent partition: no RST, no
//! ICMP). Visitors reach the far site over a veth pair, which the impairments do not touch.
//!
//! Needs root (CI and `scripts/test` run as root). Each link has its own namespace, device names and
//! private /30s, so tests using links run in parallel, also across test processes; dropping the link
//! removes all of it.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

/// Bytes a direction holds in flight at most, like a router's buffer; past it packets are dropped.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// What the link does to each packet, in each direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// One-way delay (half the round trip it adds).
    pub delay: Duration,
    /// Each packet's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// The share of packets dropped, 0.0 to 1.0.
    pub loss: f64,
}

impl Impairment {
    /// `rtt` round trip (with 5% jitter) and `loss` each way.
    pub fn long(rtt: Duration, loss: f64) -> Self {
        Self {
            delay: rtt / 2,
            jitter: rtt / 40,
            loss,
        }
    }
}

/// The state the forwarder reads for every packet.
#[derive(Default)]
struct Conditions {
    impairment: Mutex<Impairment>,
    partitioned: AtomicBool,
}

pub struct Link {
    /// The far site's network namespace: run its processes with `ip netns exec {namespace}`.
    pub namespace: String,
    /// The host's end of the emulated link: the far site reaches the broker here. Inside the
    /// namespace the name `mosquitto` (one the test broker's certificate is for) resolves to it.
    pub host_addr: Ipv4Addr,
    /// The far site's address on the visitors' veth: where tests reach what the far site serves.
    pub visitor_addr: Ipv4Addr,
    /// The host's end of the visitors' veth pair.
    host_veth: String,
    conditions: Arc<Conditions>,
    stop: Option<oneshot::Sender<()>>,
    forwarder: Option<JoinHandle<()>>,
}

impl Link {
    /// A new far site behind a link with `impairment`.
    pub fn new(impairment: Impairment) -> Self {
        let (index, namespace) = claim_namespace();
        let subnet = |second: u8, host: u8| {
            Ipv4Addr::new(
                10,
                second,
                (index / 64) as u8,
                (index % 64) as u8 * 4 + host,
            )
        };
        let (host_tun, far_tun) = (format!("flh{index}"), format!("flf{index}"));
        let (host_veth, far_veth) = (format!("flvh{index}"), format!("flvf{index}"));
        let conditions = Arc::new(Conditions::default());
        *conditions.impairment.lock().unwrap() = impairment;

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let forwarder = {
            let (conditions, host_tun, far_tun) =
                (conditions.clone(), host_tun.clone(), far_tun.clone());
            std::thread::spawn(move || forward(&host_tun, &far_tun, conditions, ready_tx, stopped))
        };
        ready_rx
            .recv()
            .expect("the link forwarder")
            .expect("creating the TUN devices (needs root)");
        let link = Self {
            namespace: namespace.clone(),
            host_addr: subnet(200, 1),
            visitor_addr: subnet(201, 2),
            host_veth: host_veth.clone(),
            conditions,
            stop: Some(stop),
            forwarder: Some(forwarder),
        };

        let (far_addr, host_veth_addr) = (subnet(200, 2), subnet(201, 1));
        ip(&["link", "set", &far_tun, "netns", &namespace]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", link.host_addr),
            "dev",
            &host_tun,
        ]);
        ip(&["link", "set", &host_tun, "up"]);
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", &far_veth, "netns",
            &namespace,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{host_veth_addr}/30"),
            "dev",
            &host_veth,
        ]);
        ip(&["link", "set", &host_veth, "up"]);
        let inside = |args: &[&str]| ip(&[&["netns", "exec", &namespace, "ip"], args].concat());
        inside(&["addr", "add", &format!("{far_addr}/30"), "dev", &far_tun]);
        inside(&["link", "set", &far_tun, "up"]);
        inside(&[
            "addr",
            "add",
            &format!("{}/30", link.visitor_addr),
            "dev",
            &far_veth,
        ]);
        inside(&["link", "set", &far_veth, "up"]);
        inside(&["link", "set", "lo", "up"]);
        // `ip netns exec` mounts /etc/netns/NAME/hosts over /etc/hosts for what it runs.
        let etc = format!("/etc/netns/{namespace}");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            format!("{etc}/hosts"),
            format!("127.0.0.1 localhost\n{} mosquitto\n", link.host_addr),
        )
        .unwrap();
        link
    }

    /// Changes what the link does to packets from now on.
    pub fn set(&self, impairment: Impairment) {
        *self.conditions.impairment.lock().unwrap() = impairment;
    }

    /// Starts (`true`) or ends a silent partition: every packet either way is dropped.
    pub fn partition(&self, partitioned: bool) {
        self.conditions
            .partitioned
            .store(partitioned, Ordering::Relaxed);
    }

    /// Sets a sysctl of the far site's own network stack (e.g. `net.ipv4.tcp_wmem`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let setting = format!("{key}={value}");
        ip(&[
            "netns",
            "exec",
            &self.namespace,
            "sysctl",
            "-q",
            "-w",
            &setting,
        ]);
    }

    /// Runs `work` on a thread of its own inside the far site's namespace: the sockets it opens
    /// are the far site's, and reach the host over the link.
    pub fn in_far_site<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.namespace))
            .expect("the far site's namespace");
        std::thread::spawn(move || {
            setns(&netns, CloneFlags::CLONE_NEWNET).expect("entering the far site's namespace");
            work()
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(forwarder) = self.forwarder.take() {
            let _ = forwarder.join();
        }
        // The TUN devices went with the forwarder's file descriptors. Deleting one end of the veth
        // pair deletes both; the namespace would take it along only once its last socket is gone
        // (a TIME_WAIT can keep it for a minute after the name is removed).
        for args in [
            ["link", "del", self.host_veth.as_str()],
            ["netns", "del", self.namespace.as_str()],
        ] {
            let _ = Command::new("ip").args(args).status();
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.namespace));
    }
}

/// Creates a namespace no one else uses (another test, another test process) and returns its index.
fn claim_namespace() -> (u16, String) {
    let mut rng = rand::rng();
    for _ in 0..100 {
        let index = rng.random_range(0..16_384u16);
        let name = format!("tracker-link-{index}");
        let created = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running ip (iproute2)");
        if created.success() {
            return (index, name);
        }
    }
    panic!("could not create a network namespace (needs root)");
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The forwarder thread: creates both TUN devices, reports, then moves packets both ways until stopped.
fn forward(
    host_tun: &str,
    far_tun: &str,
    conditions: Arc<Conditions>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stopped: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let create = |name: &str| {
            let mut config = tun::Configuration::default();
            config.tun_name(name);
            tun::create_as_async(&config).map_err(|err| format!("{name}: {err}"))
        };
        let (host, far) = match (create(host_tun), create(far_tun)) {
            (Ok(host), Ok(far)) => (host, far),
            (Err(err), _) | (_, Err(err)) => {
                let _ = ready.send(Err(err));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tokio::select! {
            _ = stopped => {}
            _ = one_way(&host, &far, &conditions) => {}
            _ = one_way(&far, &host, &conditions) => {}
        }
    });
}

/// Moves packets read from `from` to `to`, as the conditions say, in order.
async fn one_way(from: &tun::AsyncDevice, to: &tun::AsyncDevice, conditions: &Conditions) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut queued_bytes = 0;
    let mut buffer = vec![0; 65_536];
    loop {
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            read = from.recv(&mut buffer) => {
                let Ok(len) = read else { return };
                let impairment = *conditions.impairment.lock().unwrap();
                let mut rng = rand::rng();
                if conditions.partitioned.load(Ordering::Relaxed)
                    || rng.random_bool(impairment.loss.clamp(0.0, 1.0))
                    || queued_bytes + len > QUEUE_BYTES
                {
                    continue;
                }
                let jitter = impairment.jitter.as_secs_f64() * rng.random_range(-1.0..=1.0);
                let delay = (impairment.delay.as_secs_f64() + jitter).max(0.0);
                let at = Instant::now() + Duration::from_secs_f64(delay);
                // Never before the packet ahead of it: jitter must not reorder the stream.
                let at = queue.back().map_or(at, |(last, _)| at.max(*last));
                queued_bytes += len;
                queue.push_back((at, buffer[..len].to_vec()));
            }
            _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let (_, packet) = queue.pop_front().expect("a packet is due");
                queued_bytes -= packet.len();
                let _ = to.send(&packet).await;
            }
        }
    }
}
