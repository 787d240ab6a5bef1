//! Test traffic: GETs to an edge, each with its own marker as user-agent, and what came of them.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use reqwest::header::USER_AGENT;

/// Requests `{prefix}-0` .. `{prefix}-{count-1}`, `concurrency` at a time, each after a `pause`
/// (so that a load can span a fault).
pub struct Load {
    pub url: String,
    pub prefix: String,
    pub count: usize,
    pub concurrency: usize,
    pub pause: Duration,
}

/// Which markers got their GIF, how many requests did not, and how long the answered ones took.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub answered: Vec<String>,
    pub failed: usize,
    pub latencies: Vec<Duration>,
}

impl Load {
    /// Owns what it needs, so it can run in a task of its own while a test injects faults.
    pub async fn run(self, client: reqwest::Client) -> LoadReport {
        let (this, client) = (&self, &client);
        let outcomes: Vec<_> = stream::iter(0..self.count)
            .map(|n| async move {
                tokio::time::sleep(this.pause).await;
                let marker = format!("{}-{n}", this.prefix);
                let started = Instant::now();
                let response = client
                    .get(&this.url)
                    .header(USER_AGENT, &marker)
                    .send()
                    .await;
                let answered = match response {
                    Ok(response) if response.status() == 200 => response.bytes().await.is_ok(),
                    _ => false,
                };
                (marker, answered.then(|| started.elapsed()))
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut report = LoadReport::default();
        for (marker, latency) in outcomes {
            match latency {
                Some(latency) => {
                    report.answered.push(marker);
                    report.latencies.push(latency);
                }
                None => report.failed += 1,
            }
        }
        report.latencies.sort();
        report
    }
}

impl LoadReport {
    /// The latency below which `fraction` of the answered requests fall.
    pub fn percentile(&self, fraction: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 * fraction).ceil() as usize)
            .clamp(1, self.latencies.len())
            - 1;
        self.latencies[index]
    }

    pub fn summary(&self) -> String {
        format!(
            "{} answered, {} failed, latency p50 {:?} p99 {:?} max {:?}",
            self.answered.len(),
            self.failed,
            self.percentile(0.50),
            self.percentile(0.99),
            self.latencies.last().copied().unwrap_or_default()
        )
    }
}

/// A client that gives up on a request after 10 s rather than hang a test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
