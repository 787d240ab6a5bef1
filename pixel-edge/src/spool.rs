//! The edge's optional on-disk spool (`edge.spool_dir`): visits wait here, not in memory, until the
//! broker acknowledges them, so an edge restarted during a broker outage loses nothing.
//!
//! Append-only segments `<seq>.ndjson` hold whole batches (NDJSON lines), each appended and
//! `fdatasync`ed before it is published. Batches are read back oldest first; a segment is deleted once
//! it is read to its end and every batch read from it is acknowledged. At start-up every segment left
//! is replayed from its start: a batch acknowledged just before a stop is sent again, and the sink drops
//! the duplicate by event id. The spool is bounded by `edge.spool_max_bytes`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::batch::{Batch, MAX_BATCH_BYTES};

/// Appending moves on to a new segment once the current one reaches this size.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    active: File,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// Bytes appended (known to be complete batches, except a tail torn by a crash).
    len: u64,
    /// Bytes read back so far.
    read: u64,
    /// Batches read from it and not yet acknowledged.
    unacked: usize,
}

impl Spool {
    /// Opens the spool in `dir` (created if missing); segments left by an earlier run are replayed.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let seq = path
                .extension()
                .filter(|ext| *ext == "ndjson")
                .and_then(|_| path.file_stem()?.to_str()?.parse::<u64>().ok());
            if let Some(seq) = seq {
                let len = fs::metadata(&path)?.len();
                segments.push(Segment {
                    seq,
                    path,
                    len,
                    read: 0,
                    unacked: 0,
                });
            }
        }
        segments.sort_by_key(|segment| segment.seq);
        let next = segments.last().map_or(1, |segment| segment.seq + 1);
        // Never append to a segment of an earlier run: its tail may be torn.
        let (active, segment) = create_segment(dir, next)?;
        segments.push(segment);
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            segments: segments.into(),
            active,
        })
    }

    /// Bytes on disk, read or not.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len).sum()
    }

    pub fn has_room(&self) -> bool {
        self.bytes() < self.max_bytes
    }

    /// True while some batch is unread or unacknowledged.
    pub fn holds_visits(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.read < s.len || s.unacked > 0)
    }

    /// Appends a batch and syncs it. After a failure the segment is closed (its tail may be torn;
    /// reading skips an incomplete last line) and the next batch goes to a new one.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.active_segment().len >= SEGMENT_BYTES {
            self.start_segment()?;
        }
        let result = self
            .active
            .write_all(payload)
            .and_then(|()| self.active.sync_data());
        match result {
            Ok(()) => self.active_segment_mut().len += payload.len() as u64,
            Err(_) => {
                let segment = self.active_segment_mut();
                segment.len = fs::metadata(&segment.path).map_or(segment.len, |m| m.len());
                let _ = self.start_segment();
            }
        }
        result
    }

    /// The next unread batch, oldest first: whole lines, up to [`MAX_BATCH_BYTES`] (or one longer line).
    pub fn next_batch(&mut self) -> io::Result<Option<Batch>> {
        let Some(segment) = self.segments.iter_mut().find(|s| s.read < s.len) else {
            return Ok(None);
        };
        let mut file = File::open(&segment.path)?;
        file.seek(SeekFrom::Start(segment.read))?;
        let remaining = segment.len - segment.read;
        let mut chunk = Vec::new();
        (&mut file)
            .take(remaining.min(MAX_BATCH_BYTES as u64))
            .read_to_end(&mut chunk)?;
        let mut end = chunk.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
        if end.is_none() && (chunk.len() as u64) < remaining {
            // One line longer than a batch: read on to its end.
            file.take(remaining - chunk.len() as u64)
                .read_to_end(&mut chunk)?;
            end = chunk.iter().position(|&b| b == b'\n').map(|i| i + 1);
        }
        let Some(end) = end else {
            tracing::warn!(segment = %segment.path.display(), "skipping an incomplete last line in the spool");
            segment.read = segment.len;
            return Ok(None);
        };
        chunk.truncate(end);
        segment.read += end as u64;
        segment.unacked += 1;
        let visits = chunk.iter().filter(|&&b| b == b'\n').count();
        Ok(Some(Batch {
            payload: Bytes::from(chunk),
            visits,
            segment: Some(segment.seq),
        }))
    }

    /// A batch read from segment `seq` was acknowledged; segments fully read and acknowledged are
    /// deleted (the one being appended to is replaced by a fresh one first).
    pub fn acked(&mut self, seq: u64) -> io::Result<()> {
        if let Some(segment) = self.segments.iter_mut().find(|s| s.seq == seq) {
            segment.unacked = segment.unacked.saturating_sub(1);
        }
        while let Some(front) = self.segments.front() {
            if front.read < front.len || front.unacked > 0 {
                break;
            }
            if self.segments.len() == 1 {
                if front.len == 0 {
                    break; // The fresh segment being appended to.
                }
                self.start_segment()?;
            }
            let done = self.segments.pop_front().expect("checked above");
            fs::remove_file(&done.path)?;
        }
        Ok(())
    }

    fn start_segment(&mut self) -> io::Result<()> {
        let (file, segment) = create_segment(&self.dir, self.active_segment().seq + 1)?;
        self.active = file;
        self.segments.push_back(segment);
        Ok(())
    }

    fn active_segment(&self) -> &Segment {
        self.segments
            .back()
            .expect("there is always an active segment")
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("there is always an active segment")
    }
}

fn create_segment(dir: &Path, seq: u64) -> io::Result<(File, Segment)> {
    let path = dir.join(format!("{seq:012}.ndjson"));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let len = file.metadata()?.len();
    Ok((
        file,
        Segment {
            seq,
            path,
            len,
            read: 0,
            unacked: 0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(batch: &Batch) -> Vec<&str> {
        std::str::from_utf8(&batch.payload)
            .unwrap()
            .lines()
            .collect()
    }

    fn segment_files(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn batches_come_back_in_order_and_acked_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!spool.holds_visits());
        spool.append(b"a\nb\n").unwrap();
        spool.append(b"c\n").unwrap();
        assert!(spool.holds_visits());
        let batch = spool.next_batch().unwrap().unwrap();
        assert_eq!(lines(&batch), ["a", "b", "c"]);
        assert_eq!(batch.visits, 3);
        assert!(spool.next_batch().unwrap().is_none());
        assert!(spool.holds_visits(), "read but not acknowledged");
        spool.acked(batch.segment.unwrap()).unwrap();
        assert!(!spool.holds_visits());
        assert_eq!(spool.bytes(), 0);
        assert_eq!(
            segment_files(dir.path()),
            1,
            "only a fresh, empty segment is left"
        );
    }

    #[test]
    fn a_restart_replays_what_was_not_acknowledged_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(b"one\n").unwrap();
        spool.append(b"two\n").unwrap();
        let read = spool.next_batch().unwrap().unwrap();
        assert_eq!(lines(&read), ["one", "two"]);
        drop(spool);
        // A crash tore the last append of the earlier run.
        let segment = dir.path().join(format!("{:012}.ndjson", 1));
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(b"thr")
            .unwrap();

        let mut again = Spool::open(dir.path(), 1 << 20).unwrap();
        again.append(b"four\n").unwrap();
        let first = again.next_batch().unwrap().unwrap();
        assert_eq!(lines(&first), ["one", "two"]);
        assert!(
            again.next_batch().unwrap().is_none(),
            "the torn line is skipped"
        );
        let second = again.next_batch().unwrap().unwrap();
        assert_eq!(lines(&second), ["four"]);
        again.acked(first.segment.unwrap()).unwrap();
        again.acked(second.segment.unwrap()).unwrap();
        assert!(!again.holds_visits());
        assert!(!segment.exists());
    }

    #[test]
    fn the_size_is_bounded_and_big_batches_are_split_at_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 300 * 1024).unwrap();
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        let mut appended = 0;
        while spool.has_room() {
            spool.append(&line).unwrap();
            appended += 1;
        }
        assert_eq!(appended, 300);
        let first = spool.next_batch().unwrap().unwrap();
        assert_eq!(first.visits, MAX_BATCH_BYTES / 1024);
        let second = spool.next_batch().unwrap().unwrap();
        assert_eq!(first.visits + second.visits, 300);
    }
}
