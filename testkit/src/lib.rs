//! The integration test harness: a real `mosquitto` started on a free port with the project's own
//! `mosquitto/mosquitto.conf` (so tests can stop, kill and restart it); edges and sinks run either in
//! process through their libraries' `run`, or as real processes for fault tests; a real three-node
//! RabbitMQ cluster for the tests of that broker; test traffic with a
//! marker per visit, and the log read back.

mod broker;
mod curl;
mod haproxy;
mod link;
mod load;
pub mod mqtt;
mod process;
mod rabbitmq;
mod services;
mod small_disk;
pub mod visits_log;

pub use broker::{free_port, init_secrets, workspace_root, Broker};
pub use curl::{https_get, Fetched};
pub use haproxy::{Balancing, Haproxy};
pub use link::{Impairment, Link};
pub use load::{client, Load, LoadReport};
pub use process::{BrokerAccess, Service};
pub use rabbitmq::{Cluster, ClusterAccess};
pub use services::{
    collect_lines, files_in, read_lines, settled_lines, spawn_edge, spawn_edge_with, spawn_sink,
    wait_for_lines, TestEdge, TestSink, EDGE_USER,
};
pub use small_disk::SmallDisk;
