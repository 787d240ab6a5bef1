//! What the pixel edge and the store sink share: the validated [`Visit`], how it travels over MQTT
//! ([`wire`]), how it is written to the log ([`line`]), and the plumbing both binaries need
//! (layered settings, logging, shutdown signals, task supervision).

pub mod admin;
pub mod backoff;
pub mod blocking;
pub mod configuration;
pub mod in_turn;
pub mod line;
pub mod metrics;
pub mod mqtt_protocol;
pub mod rate_limit;
pub mod shutdown;
pub mod supervision;
pub mod telemetry;
pub mod timestamp;
pub mod tls;
pub mod visit;
pub mod visitor_ip;
pub mod wire;

pub use visit::{HeaderText, Visit};
pub use visitor_ip::VisitorIp;
