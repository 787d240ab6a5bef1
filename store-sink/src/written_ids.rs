//! Which visits are already in the log, so that a redelivered event is not written twice.
//!
//! The ids of the most recent `storage.dedup_window` visits are kept in memory. They also go to an id
//! journal beside the log (`<storage.path>.ids`, rotated to `.ids.old`), so the window survives a
//! restart. Each batch's journal record is synced *before* its lines are written, and names the byte
//! range the lines take in the log: at start-up a record counts only if the log reaches its end, so a
//! crash between the two writes can only make the sink write a batch again, never skip one.
//!
//! Journal record: `<start> <end> <id> <id> ...\n`, ids in simple (32 hex digits) form. When the sink
//! reopens its log (SIGHUP, after a rotation) it writes a `reopen` line: records before the last one
//! refer to an older file, were flushed before the reopen, and count without an offset check.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::append_file::AppendFile;

/// The journal line written when the log is reopened.
const REOPEN: &[u8] = b"reopen\n";

pub struct WrittenIds {
    /// Hashed with foldhash: SipHash was most of the cost of remembering an id.
    seen: HashSet<Uuid, foldhash::fast::RandomState>,
    /// The same ids, oldest first, to evict beyond the window.
    order: VecDeque<Uuid>,
    window: usize,
    journal: AppendFile,
    /// Ids in the current journal file; at `window` it is rotated.
    journaled: usize,
    /// Ids taken by the batch being formatted.
    batch: Vec<Uuid>,
}

impl WrittenIds {
    /// Loads the window from the journal of the log at `log_path`, whose length is `log_len`.
    pub fn recover(log_path: &Path, log_len: u64, window: usize) -> io::Result<Self> {
        let path = journal_path(log_path);
        let mut written = Self {
            seen: HashSet::with_capacity_and_hasher(window.min(1 << 20), Default::default()),
            order: VecDeque::new(),
            window,
            journal: AppendFile::open(&path)?,
            journaled: 0,
            batch: Vec::new(),
        };
        // (ids, whether the log reaches its batch); a `reopen` line vouches for everything before it.
        let mut records: Vec<(Vec<Uuid>, bool)> = Vec::new();
        for file in [old_journal_path(log_path), path] {
            let text = match std::fs::read(&file) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            // A record cut short by a crash has no newline; its batch was never written to the log.
            for record in text
                .split_inclusive(|&b| b == b'\n')
                .filter(|r| r.ends_with(b"\n"))
            {
                if record == REOPEN {
                    records.iter_mut().for_each(|(_, written)| *written = true);
                    continue;
                }
                let Some((start, end, ids)) = parse_record(record) else {
                    tracing::warn!(journal = %file.display(), "unreadable id journal record skipped");
                    continue;
                };
                records.push((ids, end <= log_len));
                if start < log_len && log_len < end {
                    tracing::warn!(
                        start,
                        end,
                        log_len,
                        "the log ends inside a batch (power cut?); it will be written again"
                    );
                }
            }
        }
        for (ids, _) in records.into_iter().filter(|(_, written)| *written) {
            ids.into_iter().for_each(|id| written.remember(id));
        }
        written.journaled = written.order.len();
        tracing::info!(
            ids = written.order.len(),
            "recovered the ids of recently written visits"
        );
        Ok(written)
    }

    /// True the first time an id is offered (it joins the batch), false for a duplicate.
    pub fn is_new(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        self.batch.push(id);
        self.evict();
        true
    }

    /// Puts the batch's record in the journal buffer: its ids take `start..end` of the log.
    pub fn stage_batch(&mut self, start: u64, end: u64) {
        if self.batch.is_empty() {
            return;
        }
        self.journaled += self.batch.len();
        let out = self.journal.buffer();
        out.extend_from_slice(format!("{start} {end}").as_bytes());
        for id in self.batch.drain(..) {
            out.push(b' ');
            out.extend_from_slice(
                id.simple()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .as_bytes(),
            );
        }
        out.push(b'\n');
    }

    /// Writes (and syncs) the staged records; rotates the journal once it holds a window of ids.
    pub fn flush(&mut self, sync: bool) -> io::Result<()> {
        let staged = self.journal.buffer().len();
        self.journal.flush(sync)?;
        if staged > 0 && self.journaled >= self.window {
            let path = self.journal.path().to_owned();
            std::fs::rename(&path, with_suffix(&path, ".old"))?;
            self.journal = AppendFile::open(&path)?;
            self.journaled = 0;
        }
        Ok(())
    }

    /// The log was reopened (flushed first): records from now on refer to the new file.
    pub fn log_reopened(&mut self, sync: bool) -> io::Result<()> {
        self.journal.buffer().extend_from_slice(REOPEN);
        self.journal.flush(sync)
    }

    fn remember(&mut self, id: Uuid) {
        if self.seen.insert(id) {
            self.order.push_back(id);
            self.evict();
        }
    }

    fn evict(&mut self) {
        while self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

fn parse_record(record: &[u8]) -> Option<(u64, u64, Vec<Uuid>)> {
    let text = std::str::from_utf8(record).ok()?;
    let mut parts = text.split_ascii_whitespace();
    let start = parts.next()?.parse().ok()?;
    let end = parts.next()?.parse().ok()?;
    let ids = parts.map(Uuid::try_parse).collect::<Result<_, _>>().ok()?;
    Some((start, end, ids))
}

fn journal_path(log_path: &Path) -> PathBuf {
    with_suffix(log_path, ".ids")
}

fn old_journal_path(log_path: &Path) -> PathBuf {
    with_suffix(&journal_path(log_path), ".old")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut path = path.as_os_str().to_owned();
    path.push(suffix);
    path.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn duplicates_are_recognised_within_the_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = WrittenIds::recover(&dir.path().join("visits.log"), 0, 3).unwrap();
        let ids = ids(4);
        assert!(written.is_new(ids[0]));
        assert!(!written.is_new(ids[0]));
        for id in &ids[1..] {
            assert!(written.is_new(*id));
        }
        assert!(written.is_new(ids[0]), "evicted from a window of 3");
        assert!(!written.is_new(ids[3]));
    }

    #[test]
    fn the_window_survives_a_restart_for_batches_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let (first, second) = (ids(2), ids(2));
        let mut written = WrittenIds::recover(&log, 0, 100).unwrap();
        first.iter().for_each(|id| assert!(written.is_new(*id)));
        written.stage_batch(0, 100);
        second.iter().for_each(|id| assert!(written.is_new(*id)));
        written.stage_batch(100, 200);
        written.flush(true).unwrap();
        // A crash cut the last record short.
        std::fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&log))
            .and_then(|mut f| io::Write::write_all(&mut f, b"200 300 0123"))
            .unwrap();

        // The log reached the end of the first batch only: the second is to be written again.
        let mut recovered = WrittenIds::recover(&log, 150, 100).unwrap();
        assert!(!recovered.is_new(first[0]) && !recovered.is_new(first[1]));
        assert!(recovered.is_new(second[0]) && recovered.is_new(second[1]));
        let mut all = WrittenIds::recover(&log, 200, 100).unwrap();
        assert!(!all.is_new(second[1]));
    }

    #[test]
    fn the_journal_rotates_and_both_generations_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let mut written = WrittenIds::recover(&log, 0, 4).unwrap();
        let ids = ids(6);
        for (n, id) in ids.iter().enumerate() {
            assert!(written.is_new(*id));
            written.stage_batch(n as u64, n as u64 + 1);
            written.flush(false).unwrap();
        }
        assert!(old_journal_path(&log).exists());
        let mut recovered = WrittenIds::recover(&log, 6, 4).unwrap();
        assert!(
            ids[2..].iter().all(|id| !recovered.is_new(*id)),
            "the last window is known"
        );
        assert!(recovered.is_new(ids[0]), "older ids fell out of the window");
    }

    #[test]
    fn records_before_a_reopen_count_whatever_the_new_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let (before, after) = (ids(2), ids(1));
        let mut written = WrittenIds::recover(&log, 0, 100).unwrap();
        before.iter().for_each(|id| assert!(written.is_new(*id)));
        written.stage_batch(0, 500);
        written.flush(true).unwrap();
        written.log_reopened(true).unwrap();
        assert!(written.is_new(after[0]));
        written.stage_batch(0, 100);
        written.flush(true).unwrap();

        // The new log holds 50 bytes: the batch after the reopen did not make it, the ones before did.
        let mut recovered = WrittenIds::recover(&log, 50, 100).unwrap();
        assert!(!recovered.is_new(before[0]) && !recovered.is_new(before[1]));
        assert!(recovered.is_new(after[0]));
    }
}
