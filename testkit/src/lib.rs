//! The integration test harness: a real `mosquitto` started on a free port with the project's own
//! `mosquitto/mosquitto.conf` (so tests can stop, kill and restart it), and edges and sinks run in
//! process through their libraries' `run`, each with typed handles.

mod broker;
mod services;

pub use broker::Broker;
pub use services::{
    read_lines, spawn_edge, spawn_edge_on, spawn_sink, wait_for_lines, TestEdge, TestSink,
};
