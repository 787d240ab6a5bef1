//! One MQTT connection attempt of the edge: a fresh rumqttc client and event loop, the loop polled
//! without pause by its own task that forwards every event to the publisher.
//!
//! Why a fresh event loop per attempt: rumqttc, on reconnect to a clean session, silently clears both
//! its unacked publishes and the requests still in its channel. Starting over each time makes "what was
//! not acked on a connection is lost with it" exact, so the publisher alone decides what to send again.

use std::time::Duration;

use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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
        let (client, eventloop) = AsyncClient::new(options, request_capacity);
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(eventloop, tx));
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

async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<LinkEvent>) {
    loop {
        let event = eventloop.poll().await;
        let last = matches!(event, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
        if tx.send(event).is_err() || last {
            return;
        }
    }
}
