//! What the sink writes: visit lines to the log and rejected messages to the dead-letter file,
//! both through [`AppendFile`] buffers that are flushed (and synced) together, once per batch, after
//! the batch's record in the id journal (see [`WrittenIds`]). Visits already in the log are skipped.

use std::io;

use chrono::{DateTime, Utc};
use common::rate_limit::RateLimited;
use common::{line, timestamp, wire};

use crate::append_file::AppendFile;
use crate::configuration::StorageSettings;
use crate::written_ids::WrittenIds;

pub struct Storage {
    visits: AppendFile,
    rejected: AppendFile,
    written_ids: WrittenIds,
    /// Visit time of the newest visit formatted since the last [`Storage::take_newest_visit`].
    newest_visit: Option<DateTime<Utc>>,
    fsync: bool,
    max_field_bytes: usize,
    /// The rejected content kept in one dead-letter record.
    max_rejected_bytes: usize,
    /// A flood of junk logs a line a second, not a line a message.
    warnings: RateLimited,
}

/// What one message contributed to the batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub written: usize,
    /// Events whose id is already in the log: redelivered, skipped.
    pub duplicates: usize,
    /// Lines that are not visits (or 1 for a message without any event).
    pub rejected: usize,
    /// Dead-letter records: at most one per message.
    pub dead_letters: usize,
    pub dead_letter_bytes: usize,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, other: Self) {
        self.written += other.written;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.dead_letters += other.dead_letters;
        self.dead_letter_bytes += other.dead_letter_bytes;
    }
}

/// What of one message is set aside: its rejected lines counted, the first one's reason, and their
/// content (newline-separated) kept up to a cap, so a message of a million junk lines makes one small
/// record.
struct Rejection {
    lines: usize,
    first_reason: String,
    content: Vec<u8>,
    /// Bytes of rejected content, kept or not.
    content_bytes: usize,
    max_content_bytes: usize,
}

impl Rejection {
    fn new(max_content_bytes: usize) -> Self {
        Self {
            lines: 0,
            first_reason: String::new(),
            content: Vec::new(),
            content_bytes: 0,
            max_content_bytes,
        }
    }

    /// Adds a rejected line; `reason` is only asked for the first one (formatting each is not free).
    fn add(&mut self, line: &[u8], reason: impl FnOnce() -> String) {
        if self.lines == 0 {
            self.first_reason = reason();
        } else {
            self.content_bytes += 1;
            if self.content.len() < self.max_content_bytes {
                self.content.push(b'\n');
            }
        }
        self.lines += 1;
        self.content_bytes += line.len();
        let room = self.max_content_bytes.saturating_sub(self.content.len());
        self.content
            .extend_from_slice(&line[..line.len().min(room)]);
    }

    fn reason(&self) -> String {
        let mut reason = match self.lines {
            1 => self.first_reason.clone(),
            lines => format!("{lines} lines rejected, the first: {}", self.first_reason),
        };
        if self.content_bytes > self.content.len() {
            reason += &format!(
                " (content cut to {} of {} bytes)",
                self.content.len(),
                self.content_bytes
            );
        }
        reason
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
            settings.dedup_window.get(),
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
            max_field_bytes: settings.max_field_bytes.get(),
            max_rejected_bytes: settings.max_rejected_bytes,
            warnings: RateLimited::default(),
        })
    }

    /// Formats one MQTT message into the buffers: a line per visit, and one bounded dead-letter
    /// record for whatever in it is not a visit.
    pub fn add_message(&mut self, topic: &str, payload: &[u8]) -> Outcome {
        let mut outcome = Outcome::default();
        let mut rejection = Rejection::new(self.max_rejected_bytes);
        for (event, decoded) in wire::decode_message(payload) {
            match decoded {
                Ok(wire::Event {
                    visit,
                    seq,
                    seq_floor,
                }) if self.written_ids.is_new(topic, visit.id, seq, seq_floor) => {
                    line::write_line(&visit, self.max_field_bytes, self.visits.buffer());
                    self.newest_visit = self.newest_visit.max(Some(visit.ts));
                    outcome.written += 1;
                }
                Ok(_) => outcome.duplicates += 1,
                Err(err) => rejection.add(event, || err.to_string()),
            }
        }
        if outcome == Outcome::default() && rejection.lines == 0 {
            rejection.add(payload, || "message holds no event".into());
        }
        if rejection.lines > 0 {
            outcome.rejected = rejection.lines;
            outcome.dead_letter_bytes = self.reject(topic, &rejection);
            outcome.dead_letters = 1;
        }
        outcome
    }

    /// Dead-letter record: `received-at|topic|reason|content`, each field escaped as in the visits
    /// log; returns its size in bytes.
    fn reject(&mut self, topic: &str, rejection: &Rejection) -> usize {
        self.warnings.warn(|unlogged| {
            tracing::warn!(
                %topic,
                reason = %rejection.reason(),
                similar_since_last_warning = unlogged,
                "message set aside in {}",
                self.rejected.path().display()
            )
        });
        let out = self.rejected.buffer();
        let start = out.len();
        timestamp::write(&Utc::now(), out);
        for field in [
            topic.as_bytes(),
            rejection.reason().as_bytes(),
            &rejection.content,
        ] {
            out.push(b'|');
            line::escape_into(field, out);
        }
        out.push(b'\n');
        out.len() - start
    }

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

    /// Visit time of the newest visit formatted since the last call: the lag metric follows each
    /// batch, so one future-dated visit does not hold it at 0 for good.
    pub fn take_newest_visit(&mut self) -> Option<DateTime<Utc>> {
        self.newest_visit.take()
    }

    /// Writes out both buffers (and syncs them when `storage.fsync`). On error, call again: it goes on
    /// where it stopped.
    pub fn flush(&mut self) -> io::Result<()> {
        let start = self.visits.buffer_offset();
        let end = start + self.visits.buffer().len() as u64;
        self.written_ids.stage_batch(start, end);
        self.written_ids.flush(self.fsync)?;
        self.visits.flush(self.fsync)?;
        self.rejected.flush(self.fsync)
    }

    /// After a successful [`flush`](Self::flush): per edge topic of the batches flushed, the mark
    /// (every sequence number up to it is now durably in the log).
    pub fn take_receipts(&mut self) -> Vec<(String, u64)> {
        self.written_ids.batch_durable()
    }

    /// Per edge topic, the durable mark (recovered at start-up).
    pub fn all_receipts(&self) -> Vec<(String, u64)> {
        self.written_ids.all_durable()
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
                rejected: 1,
                dead_letters: 1,
                dead_letter_bytes: outcome.dead_letter_bytes,
                ..Outcome::default()
            }
        );
        let mut dead_letter_bytes = outcome.dead_letter_bytes;
        for junk in [&b"\xff|\n"[..], b""] {
            let outcome = storage.add_message("tracker/visits/x", junk);
            assert_eq!((outcome.rejected, outcome.dead_letters), (1, 1));
            dead_letter_bytes += outcome.dead_letter_bytes;
        }
        storage.flush().unwrap();

        let visits = std::fs::read_to_string(&settings.path).unwrap();
        let lines: Vec<_> = visits.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("|null|good-1|10.0.0.1"), "{}", lines[0]);
        assert!(lines[1].ends_with("|null|good-2|10.0.0.1"), "{}", lines[1]);

        let rejected = std::fs::read_to_string(settings.rejected_path()).unwrap();
        assert_eq!(rejected.len(), dead_letter_bytes);
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
    fn a_message_of_many_junk_lines_makes_one_bounded_record() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut storage = Storage::open(&settings).unwrap();
        let mut payload = b"x\n".repeat(512 * 1024);
        payload.extend(event(b"real"));
        let outcome = storage.add_message("tracker/visits/junk", &payload);
        assert_eq!(
            (outcome.written, outcome.rejected, outcome.dead_letters),
            (1, 512 * 1024, 1)
        );
        assert!(outcome.dead_letter_bytes < settings.max_rejected_bytes * 4 + 200);
        storage.flush().unwrap();

        let rejected = std::fs::read_to_string(settings.rejected_path()).unwrap();
        let rejected: Vec<_> = rejected.lines().collect();
        assert_eq!(rejected.len(), 1);
        let [_, topic, reason, content] = rejected[0].splitn(4, '|').collect::<Vec<_>>()[..] else {
            panic!("4 fields: {}", rejected[0]);
        };
        assert_eq!(topic, "tracker/visits/junk");
        assert_eq!(
            reason,
            "524288 lines rejected, the first: not a v1 visit event: not a JSON object \
             (content cut to 65536 of 1048575 bytes)"
        );
        assert_eq!(content, r"x\x0a".repeat(32 * 1024));
        let visits = std::fs::read_to_string(&settings.path).unwrap();
        assert!(visits.ends_with("|null|real|10.0.0.1\n"), "{visits}");
    }

    #[test]
    fn the_newest_visit_is_that_of_the_latest_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = Storage::open(&settings(dir.path())).unwrap();
        let at = |ts: DateTime<Utc>| {
            let visit = Visit::new(ts, None, None, "10.0.0.1".parse().unwrap(), "e");
            let mut out = Vec::new();
            wire::encode_event(&visit, &mut out);
            out
        };
        let seconds = |ts: Option<DateTime<Utc>>| ts.map(|ts| ts.timestamp());
        let future = Utc::now() + chrono::Duration::days(365);
        storage.add_message("t", &at(future));
        assert_eq!(seconds(storage.take_newest_visit()), seconds(Some(future)));
        let now = Utc::now();
        storage.add_message("t", &at(now));
        assert_eq!(
            seconds(storage.take_newest_visit()),
            seconds(Some(now)),
            "not pinned by the future-dated one"
        );
        assert_eq!(storage.take_newest_visit(), None);
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
