//! Long-lived tasks that must run as long as the service: each is spawned as a [`Watched`] task, and a
//! service's `run` selects over them beside its shutdown signal. One ending before shutdown (a panic,
//! or a return nobody asked for) is logged and ends `run` with an error, so the process exits non-zero
//! and systemd or compose restarts it instead of it answering ready while doing nothing.

use std::future::Future;

use tokio::task::{JoinError, JoinHandle};

/// The name of the environment variable that makes a watched task panic as it starts, in debug builds
/// only: the hook the supervision tests use against the real binaries. Its value is the task's name.
pub const FAULT_VAR: &str = "TRACKER_TEST_FAULT";

/// A watched task ended: unexpectedly before shutdown, or by panicking at any time.
#[derive(Debug, thiserror::Error)]
#[error("the {task} task {how}")]
pub struct TaskEnded {
    pub task: &'static str,
    how: String,
}

/// A spawned task with the name logs and errors call it by.
pub struct Watched {
    name: &'static str,
    handle: JoinHandle<()>,
}

impl Watched {
    pub fn spawn(name: &'static str, task: impl Future<Output = ()> + Send + 'static) -> Self {
        let handle = tokio::spawn(async move {
            fault_point(name);
            task.await
        });
        Self { name, handle }
    }

    /// Resolves when the task ends, which is unexpected while the service runs; logs why. Cancel-safe:
    /// meant for `select!` beside the shutdown signal.
    pub async fn ended(&mut self) -> TaskEnded {
        let outcome = (&mut self.handle).await;
        let ended = self.describe(outcome, "ended unexpectedly");
        tracing::error!(
            task = ended.task,
            "{ended}; exiting so that the service is restarted"
        );
        ended
    }

    /// Waits for a task that was asked to stop; an error (logged) if it panicked instead.
    pub async fn join(&mut self) -> Result<(), TaskEnded> {
        match (&mut self.handle).await {
            Ok(()) => Ok(()),
            Err(err) => {
                let ended = self.describe(Err(err), "");
                tracing::error!(task = ended.task, "{ended}");
                Err(ended)
            }
        }
    }

    pub fn abort(&self) {
        self.handle.abort();
    }

    fn describe(&self, outcome: Result<(), JoinError>, returned: &str) -> TaskEnded {
        let how = match outcome {
            Ok(()) => returned.to_owned(),
            Err(err) if err.is_panic() => {
                let panic = err.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                format!("panicked: {message}")
            }
            Err(_) => "was cancelled".to_owned(),
        };
        TaskEnded {
            task: self.name,
            how,
        }
    }
}

/// Panics when [`FAULT_VAR`] names `task`; compiled only into debug builds, never into a release.
#[cfg(debug_assertions)]
fn fault_point(task: &str) {
    if std::env::var(FAULT_VAR).is_ok_and(|named| named == task) {
        panic!("fault injected by {FAULT_VAR}");
    }
}

#[cfg(not(debug_assertions))]
fn fault_point(_: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_return_or_a_panic_is_reported_with_the_tasks_name() {
        let mut returned = Watched::spawn("quiet", async {});
        let ended = returned.ended().await;
        assert_eq!(ended.to_string(), "the quiet task ended unexpectedly");

        let mut panicked = Watched::spawn("loud", async { panic!("boom") });
        assert_eq!(
            panicked.ended().await.to_string(),
            "the loud task panicked: boom"
        );

        let mut stopped = Watched::spawn("asked", async {});
        assert!(stopped.join().await.is_ok());
        let mut broken = Watched::spawn("broken", async { panic!("{}", 42) });
        assert_eq!(
            broken.join().await.unwrap_err().to_string(),
            "the broken task panicked: 42"
        );
    }
}
