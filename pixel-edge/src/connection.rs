//! One MQTT connection attempt of the edge: a fresh rumqttc client and event loop, the loop polled
//! without pause by its own task that forwards every event to the publisher.
//!
//! Why a fresh event loop per attempt: rumqttc, on reconnect to a clean session, silently clears both
//! its unacked publishes and the requests still in its channel. Starting over each time makes "what was
//! not acked on a connection is lost with it" exact, so the publisher alone decides what to send again.
//!
//! Why a watchdog on top of rumqttc's keep-alive: rumqttc sends a PINGREQ every keep-alive interval
//! and gives up when the previous one is unanswered, but its v5 event loop awaits each socket flush
//! without a timeout. On a silent partition with publishes in flight the send buffer fills, the
//! flush never returns, and the ping check never runs (until the kernel gives up on TCP, many minutes
//! later). The driver therefore drops a connection on which nothing has come from the broker for two
//! keep-alive intervals: a healthy broker answers each PINGREQ, so that silence means the link is dead.

use std::io;
use std::time::Duration;

use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// What the driver task reports; the stream ends after an error or after the DISCONNECT went out.
pub type LinkEvent = Result<Event, ConnectionError>;

pub struct Connection {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<LinkEvent>,
    driver: JoinHandle<()>,
}

impl Connection {
    /// Starts connecting; the outcome arrives as the first event (a CONNACK or an error).
    pub fn open(options: MqttOptions, request_capacity: usize) -> Self {
        // Assumption: the broker does not lower the keep-alive in its CONNACK (Mosquitto's
        // `max_keepalive` is unset in the shipped config); if it did, pings would only come more often.
        let silence_limit = 2 * options.keep_alive();
        let (client, eventloop) = AsyncClient::new(options, request_capacity);
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(eventloop, tx, silence_limit));
        Self {
            client,
            events,
            driver,
        }
    }

    /// Sends DISCONNECT and gives the driver up to `grace` to get it out; then drops the connection.
    pub async fn close(mut self, grace: Duration) {
        if self.client.try_disconnect().is_ok() {
            let _ =
                tokio::time::timeout(grace, async { while self.events.recv().await.is_some() {} })
                    .await;
        }
        self.driver.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Forwards events until the connection ends, or until nothing has come from the broker for
/// `silence_limit` once connected (connecting itself is bounded by rumqttc's connection timeout).
async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<LinkEvent>,
    silence_limit: Duration,
) {
    let mut give_up_at: Option<Instant> = None;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                Err(ConnectionError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing heard from the broker for {silence_limit:?}"),
                )))
            }
        };
        if let Ok(Event::Incoming(_)) = event {
            give_up_at = Some(Instant::now() + silence_limit);
        }
        let last = matches!(event, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
        if tx.send(event).is_err() || last {
            return;
        }
    }
}
