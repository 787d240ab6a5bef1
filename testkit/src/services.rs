//! Edges and sinks run in the test's process through their libraries, on the test's broker.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::Broker;

/// A running pixel edge.
pub struct TestEdge {
    /// Its plain-HTTP address.
    pub addr: SocketAddr,
    /// Its HTTPS address, when the settings asked for one.
    pub https_addr: Option<SocketAddr>,
    /// Where it serves `/healthz`, `/readyz` and `/metrics`.
    pub admin_addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
    /// Holds its spool, unless the test chose another place.
    _spool: tempfile::TempDir,
}

impl TestEdge {
    /// `http://<addr>/track`
    pub fn track_url(&self) -> String {
        format!("http://{}/track", self.addr)
    }

    /// `https://localhost:<port>/track`, a name the test certificate is for.
    pub fn https_track_url(&self) -> String {
        let addr = self.https_addr.expect("the edge serves HTTPS");
        format!("https://localhost:{}/track", addr.port())
    }

    /// Asks it to shut down and waits until it has delivered what it held.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task.await.expect("edge task").expect("edge run");
    }
}

/// A running store sink and the files it writes.
pub struct TestSink {
    pub path: PathBuf,
    pub rejected_path: PathBuf,
    /// Where the running sink serves `/metrics`, `/healthz` and `/readyz`.
    pub admin_addr: SocketAddr,
    settings: store_sink::configuration::Settings,
    reopen: Arc<Notify>,
    running: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

impl TestSink {
    /// Asks it to shut down and waits until it has written, synced and acked what it received.
    pub async fn stop(&mut self) {
        if let Some((shutdown, task)) = self.running.take() {
            let _ = shutdown.send(());
            task.await.expect("sink task").expect("sink run");
        }
    }

    /// Starts it again with the same settings, so the same persistent session.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "stop the sink before restarting it");
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the sink's metrics");
        listener.set_nonblocking(true).unwrap();
        self.admin_addr = listener.local_addr().unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let reopen = self.reopen.clone();
        self.running = Some(start(self.settings.clone(), |settings, shutdown| {
            store_sink::run(settings, listener, reopen, shutdown)
        }));
    }

    /// What SIGHUP does to the binary: reopen the log files.
    pub fn reopen_logs(&self) {
        self.reopen.notify_one();
    }

    pub fn lines(&self) -> Vec<String> {
        read_lines(&self.path)
    }

    pub fn rejected_lines(&self) -> Vec<String> {
        read_lines(&self.rejected_path)
    }
}

/// The broker user every test edge connects as; an edge `x` gets the edge id `edge/x`, the topic
/// the broker's ACL allows that user.
pub const EDGE_USER: &str = "edge";

/// Starts an edge with id `edge/{id}` on `127.0.0.1:0`.
pub async fn spawn_edge(broker: &Broker, id: &str) -> TestEdge {
    spawn_edge_with(broker, id, |_| {}).await
}

/// Starts an edge with id `edge/{id}` on `127.0.0.1:0`, after `customize` had its say on the settings
/// (another listen address, limits, ...).
pub async fn spawn_edge_with(
    broker: &Broker,
    id: &str,
    customize: impl FnOnce(&mut pixel_edge::configuration::Settings),
) -> TestEdge {
    let mut settings = pixel_edge::configuration::Settings {
        mqtt: broker.mqtt_settings(EDGE_USER),
        ..Default::default()
    };
    settings.edge.id = format!("{EDGE_USER}/{id}");
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin.listen = "127.0.0.1:0".parse().unwrap();
    // What `Settings::load` defaults to, but per test, so parallel tests never share a spool.
    let spool = tempfile::tempdir().expect("temp dir for the spool");
    settings.edge.spool_dir = Some(spool.path().to_owned());
    customize(&mut settings);
    settings.validate().expect("valid edge settings");
    let listeners = pixel_edge::Listeners::bind(&settings)
        .await
        .expect("binding the edge");
    let addr = listeners.http_addr().expect("the edge serves plain HTTP");
    let https_addr = listeners.https_addr();
    let admin_addr = listeners.admin_addr();
    // Certificate reloads are tested on the binary, with a real SIGHUP (tests/edge_https.rs).
    let (shutdown, task) = start(settings, |settings, shutdown| {
        pixel_edge::run(settings, listeners, Arc::new(Notify::new()), shutdown)
    });
    TestEdge {
        addr,
        https_addr,
        admin_addr,
        shutdown,
        task,
        _spool: spool,
    }
}

/// Starts a sink writing into `dir`.
pub async fn spawn_sink(broker: &Broker, dir: &Path) -> TestSink {
    let mut settings = store_sink::configuration::Settings {
        mqtt: broker.mqtt_settings("store-sink"),
        ..Default::default()
    };
    settings.storage.path = dir.join("visits.log");
    settings.validate().expect("valid sink settings");
    let mut sink = TestSink {
        path: settings.storage.path.clone(),
        rejected_path: settings.storage.rejected_path(),
        settings,
        admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        reopen: Arc::new(Notify::new()),
        running: None,
    };
    sink.restart();
    sink
}

/// What `run` gets as its shutdown signal: resolves when the test asks (or drops its handle).
type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

fn start<S, F>(
    settings: S,
    run: impl FnOnce(S, Shutdown) -> F,
) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown: Shutdown = Box::pin(async move {
        let _ = rx.await;
    });
    (tx, tokio::spawn(run(settings, shutdown)))
}

/// The file's lines; none if it does not exist yet.
pub fn read_lines(path: &Path) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .expect("the log is UTF-8")
            .lines()
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until `path` holds at least `count` lines or `patience` has passed, and returns its lines.
/// A deadline for waiting, not a timing assertion: the caller checks the lines.
pub async fn wait_for_lines(path: &Path, count: usize, patience: Duration) -> Vec<String> {
    let deadline = Instant::now() + patience;
    loop {
        let lines = read_lines(path);
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long [`settled_lines`] and [`collect_lines`] wait at most.
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

/// Waits until the log has stopped growing for `quiet` (or a minute has passed), then returns its lines.
pub async fn settled_lines(path: &Path, quiet: Duration) -> Vec<String> {
    let (mut count, mut since) = (usize::MAX, Instant::now());
    let deadline = Instant::now() + SETTLE_PATIENCE;
    loop {
        let lines = read_lines(path);
        if lines.len() != count {
            (count, since) = (lines.len(), Instant::now());
        } else if since.elapsed() >= quiet || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the log holds the `expected` visits, then until it stops growing (a duplicate would
/// come late), and returns its lines.
pub async fn collect_lines(path: &Path, expected: usize) -> Vec<String> {
    wait_for_lines(path, expected, SETTLE_PATIENCE).await;
    settled_lines(path, Duration::from_secs(1)).await
}

/// The names of the files in `dir`, sorted (what a spool directory holds, say).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}
