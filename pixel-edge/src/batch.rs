//! A batch: some visits as one MQTT payload (NDJSON, one event per line).

use bytes::Bytes;

/// A batch stops growing here; the broker's limit (`max_packet_size`) is 1 MiB.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

pub struct Batch {
    pub payload: Bytes,
    pub visits: usize,
    /// The spool segment holding this batch, if it was spooled; it may be deleted once every batch
    /// read from it is acknowledged.
    pub segment: Option<u64>,
}
