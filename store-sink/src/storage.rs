//! What the sink writes: visit lines to the log and rejected messages to the dead-letter file,
//! both through [`AppendFile`] buffers that are flushed (and synced) together, once per batch, after
//! the batch's record in the id journal (see [`WrittenIds`]). Visits already in the log are skipped.

use std::io;

use chrono::{DateTime, Utc};
use common::{line, timestamp, wire};

use crate::append_file::AppendFile;
use crate::configuration::StorageSettings;
use crate::written_ids::WrittenIds;

pub struct Storage {
    visits: AppendFile,
    rejected: AppendFile,
    written_ids: WrittenIds,
    /// Visit time of the newest visit formatted so far, for the lag metric.
    newest_visit: Option<DateTime<Utc>>,
    fsync: bool,
    max_field_bytes: usize,
}

/// What one message contributed to the batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub written: usize,
    /// Events whose id is already in the log: redelivered, skipped.
    pub duplicates: usize,
    pub rejected: usize,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, other: Self) {
        self.written += other.written;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
    }
}

impl Storage {
    pub fn open(settings: &StorageSettings) -> io::Result<Self> {
        let in_path = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("storage.path {}: {err}", settings.path.display()),
            )
        };
        let mut visits = AppendFile::open(&settings.path).map_err(in_path)?;
        let written_ids = WrittenIds::recover(
            &settings.path,
            visits.buffer_offset(),
            settings.dedup_window,
        )
        .map_err(in_path)?;
        if let Some(start) = written_ids.torn_batch_start() {
            // That batch was never acked: it is delivered again and written whole after the cut.
            cut_back(&settings.path, start).map_err(in_path)?;
            visits = AppendFile::open(&settings.path).map_err(in_path)?;
        }
        let rejected_path = settings.rejected_path();
        let rejected = AppendFile::open(&rejected_path).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("storage.rejected_path {}: {err}", rejected_path.display()),
            )
        })?;
        Ok(Self {
            visits,
            rejected,
            written_ids,
            newest_visit: None,
            fsync: settings.fsync,
            max_field_bytes: settings.max_field_bytes,
        })
    }

    /// Formats one MQTT message into the buffers: a line per visit, a dead-letter line per bad event.
    pub fn add_message(&mut self, topic: &str, payload: &[u8]) -> Outcome {
        let mut outcome = Outcome::default();
        for (event, decoded) in wire::decode_message(payload) {
            match decoded {
                Ok(wire::Event { visit, seq }) if self.written_ids.is_new(topic, visit.id, seq) => {
                    line::write_line(&visit, self.max_field_bytes, self.visits.buffer());
                    self.newest_visit = self.newest_visit.max(Some(visit.ts));
                    outcome.written += 1;
                }
                Ok(_) => outcome.duplicates += 1,
                Err(err) => {
                    self.reject(topic, &err.to_string(), event);
                    outcome.rejected += 1;
                }
            }
        }
        if outcome == Outcome::default() {
            self.reject(topic, "message holds no event", payload);
            outcome.rejected = 1;
        }
        outcome
    }

    /// Dead-letter line: `received-at|topic|reason|payload`, each field escaped as in the visits log.
    fn reject(&mut self, topic: &str, reason: &str, payload: &[u8]) {
        tracing::warn!(%topic, %reason, "message set aside in {}", self.rejected.path().display());
        let out = self.rejected.buffer();
        timestamp::write(&Utc::now(), out);
        for field in [topic.as_bytes(), reason.as_bytes(), payload] {
            out.push(b'|');
            line::escape_into(field, out);
        }
        out.push(b'\n');
    }

    /// Writes out both buffers (and syncs them when `storage.fsync`). On error, call again: it goes on
    /// where it stopped.
    /// Opens the log and the dead-letter file afresh (after a rotation moved them away). Call only
    /// with nothing waiting to be flushed, so that no visit is split across files.
    pub fn reopen(&mut self, settings: &StorageSettings) -> io::Result<()> {
        debug_assert_eq!(self.pending_bytes(), 0);
        self.visits = AppendFile::open(&settings.path)?;
        self.rejected = AppendFile::open(&settings.rejected_path())?;
        self.written_ids.log_reopened(self.fsync)
    }

    /// Bytes of visit lines waiting for the next flush.
    pub fn pending_bytes(&self) -> usize {
        self.visits.pending_bytes()
    }

    /// Visit time of the newest visit written so far.
    pub fn newest_visit(&self) -> Option<DateTime<Utc>> {
        self.newest_visit
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let start = self.visits.buffer_offset();
        let end = start + self.visits.buffer().len() as u64;
        self.written_ids.stage_batch(start, end);
        self.written_ids.flush(self.fsync)?;
        self.visits.flush(self.fsync)?;
        self.rejected.flush(self.fsync)
    }

    /// After a successful [`flush`](Self::flush): per edge topic of the batches flushed, the highest
    /// sequence number now durably in the log.
    pub fn take_receipts(&mut self) -> Vec<(String, u64)> {
        self.written_ids.batch_durable()
    }
}

/// Cuts the log back to `len` bytes (and syncs), dropping a batch a crash left half-written.
fn cut_back(path: &std::path::Path, len: u64) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use common::{HeaderText, Visit};

    use super::*;

    fn settings(dir: &Path) -> StorageSettings {
        StorageSettings {
            path: dir.join("visits.log"),
            ..StorageSettings::default()
        }
    }

    fn event(user_agent: &[u8]) -> Vec<u8> {
        let visit = Visit::new(
            Utc::now(),
            None,
            HeaderText::new(user_agent),
            "10.0.0.1".parse().unwrap(),
            "e",
        );
        let mut out = Vec::new();
        wire::encode_event(&visit, &mut out);
        out
    }

    #[test]
    fn good_events_are_written_and_bad_ones_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut storage = Storage::open(&settings).unwrap();
        let mut payload = event(b"good-1");
        payload.extend_from_slice(b"{\"v\":3}\n");
        payload.extend(event(b"good-2"));
        let outcome = storage.add_message("tracker/visits/e", &payload);
        assert_eq!(
            outcome,
            Outcome {
                written: 2,
                duplicates: 0,
                rejected: 1
            }
        );
        assert_eq!(
            storage.add_message("tracker/visits/x", b"\xff|\n"),
            Outcome {
                rejected: 1,
                ..Outcome::default()
            }
        );
        assert_eq!(
            storage.add_message("tracker/visits/x", b""),
            Outcome {
                rejected: 1,
                ..Outcome::default()
            }
        );
        storage.flush().unwrap();

        let visits = std::fs::read_to_string(&settings.path).unwrap();
        let lines: Vec<_> = visits.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("|null|good-1|10.0.0.1"), "{}", lines[0]);
        assert!(lines[1].ends_with("|null|good-2|10.0.0.1"), "{}", lines[1]);

        let rejected = std::fs::read_to_string(settings.rejected_path()).unwrap();
        let rejected: Vec<_> = rejected.lines().collect();
        assert_eq!(rejected.len(), 3);
        assert!(
            rejected[0].contains("|tracker/visits/e|unsupported event version 3|{\"v\":3}"),
            "{}",
            rejected[0]
        );
        assert!(rejected[1].ends_with(r"|\xff\|"), "{}", rejected[1]);
        assert!(
            rejected[2].ends_with("|tracker/visits/x|message holds no event|"),
            "{}",
            rejected[2]
        );
    }

    #[test]
    fn a_redelivered_event_is_written_once_even_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let payload = [event(b"a"), event(b"b")].concat();
        let mut storage = Storage::open(&settings).unwrap();
        assert_eq!(storage.add_message("t", &payload).written, 2);
        storage.flush().unwrap();
        assert_eq!(storage.add_message("t", &payload).duplicates, 2);
        storage.flush().unwrap();
        drop(storage);

        let mut restarted = Storage::open(&settings).unwrap();
        let outcome = restarted.add_message("t", &[payload, event(b"c")].concat());
        assert_eq!(outcome.duplicates, 2);
        assert_eq!(outcome.written, 1);
        restarted.flush().unwrap();
        let visits = std::fs::read_to_string(&settings.path).unwrap();
        assert_eq!(visits.lines().count(), 3);
    }
}
