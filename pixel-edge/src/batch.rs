//! A batch: some visits as one MQTT payload (NDJSON, one event per line).

use bytes::Bytes;

/// A batch stops growing here; the broker's limit (`max_packet_size`) is 1 MiB.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

pub struct Batch {
    pub payload: Bytes,
    pub visits: usize,
    /// Read from the spool (so safe on disk), rather than held in memory only.
    pub spooled: bool,
    /// Sequence number of its last event; `None` for a batch held in memory (its events carry none).
    pub last_seq: Option<u64>,
}
