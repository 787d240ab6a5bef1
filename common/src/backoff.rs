//! The retry pacing both services use after a failure (lost broker, failed write): exponential from
//! 100 ms to 2 s, each delay stretched by a random jitter of up to 100 % so that many edges do not
//! reconnect in step (so at most 4 s).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An endless series of delays; build a new one after a success to start again from the shortest.
pub fn retry_delays() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded() {
        let delays: Vec<_> = retry_delays().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        assert!(delays[19] >= Duration::from_secs(2));
    }
}
