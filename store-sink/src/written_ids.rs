//! Which visits are already in the log, so that a redelivered event is not written twice.
//!
//! The ids of the most recent `storage.dedup_window` visits are kept in memory. They also go to an id
//! journal beside the log (`<storage.path>.ids`, rotated to `.ids.old`), so the window survives a
//! restart. Each batch's journal record is synced *before* its lines are written, and names the byte
//! range the lines take in the log: at start-up a record counts only if the log reaches its end, so a
//! crash between the two writes can only make the sink write a batch again, never skip one.
//!
//! Events that carry an edge's sequence number are also checked against the numbers written for that
//! edge's topic ([`Written`]: a contiguous mark and the ranges above it): one already written is a
//! duplicate, however large the redelivered backlog (the id window still applies). They take memory
//! per edge and per gap, not per visit, and are journaled with the batch that wrote them.
//!
//! Journal records: `<start> <end> <id> <id> ...\n`, ids in simple (32 hex digits) form; per edge topic
//! of the batch, `R <start> <end> <lo>-<hi>,... <topic>\n` (topic escaped as in the log) for the
//! numbers it wrote, and `S <start> <end> <mark> <topic>\n` when an event's `seq_floor` raised the
//! mark (older sinks wrote their highest number there: they confirmed it, so it reads as a mark).
//! When the sink reopens its log (SIGHUP, after a rotation) it writes a `reopen`
//! line: records before the last one refer to an older file, were flushed before the reopen, and count
//! without an offset check. A rotated journal starts with every edge's durable state (`S 0 0 ...`,
//! `R 0 0 ...`).
//!
//! At start-up, when the log ends inside the last batch (a crash or a short write in its middle), the
//! sink cuts the log back to where that batch began: those lines were never acked and come again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use common::line;
use uuid::Uuid;

use crate::append_file::AppendFile;
use crate::sequences::Written;

/// The journal line written when the log is reopened.
const REOPEN: &[u8] = b"reopen\n";
/// Starts a record of an edge's mark.
const SEQ_RECORD: &[u8] = b"S ";
/// Starts a record of the sequence numbers a batch wrote for an edge.
const RANGES_RECORD: &[u8] = b"R ";

type Sequences = HashMap<String, Written, foldhash::fast::RandomState>;
type Topics = HashSet<String, foldhash::fast::RandomState>;
/// Per edge topic, what the batch being formatted wrote.
type BatchSequences = HashMap<String, BatchWritten, foldhash::fast::RandomState>;

/// One batch's part in an edge's [`Written`]: what it adds, journaled with it.
#[derive(Default)]
struct BatchWritten {
    /// Disjoint, in the order written: an edge's numbers mostly come in one run.
    seqs: Vec<RangeInclusive<u64>>,
    /// The highest mark an event's `seq_floor` asked for; 0: none.
    mark: u64,
}

pub struct WrittenIds {
    /// Hashed with foldhash: SipHash was most of the cost of remembering an id.
    ids: HashSet<Uuid, foldhash::fast::RandomState>,
    /// The same ids, oldest first, to evict beyond the window.
    order: VecDeque<Uuid>,
    window: usize,
    journal: AppendFile,
    /// Ids and sequence records in the current journal file; at `window` it is rotated.
    journaled: usize,
    /// Ids taken by the batch being formatted.
    batch: Vec<Uuid>,
    /// Per edge topic, the sequence numbers written, counting the batch being formatted.
    sequences: Sequences,
    /// The same, for what is synced in the log: what receipts may say.
    durable: Sequences,
    /// What the batch being formatted wrote, to be journaled with it.
    batch_sequences: BatchSequences,
    /// Topics the batches since the last durable flush came from (raised or not): each gets a receipt,
    /// also for a batch of duplicates, since the broker may have lost the retained one.
    seen: Topics,
    /// Batches' numbers journaled and waiting for the log's flush to become durable.
    staged: Vec<(String, BatchWritten)>,
    /// Where the last batch began when the log ends inside it; the log is to be cut back there.
    torn_batch_start: Option<u64>,
}

impl WrittenIds {
    /// Loads the window from the journal of the log at `log_path`, whose length is `log_len`.
    pub fn recover(log_path: &Path, log_len: u64, window: usize) -> io::Result<Self> {
        let path = journal_path(log_path);
        let mut written = Self {
            ids: HashSet::with_capacity_and_hasher(window.min(1 << 20), Default::default()),
            order: VecDeque::new(),
            window,
            journal: AppendFile::open(&path)?,
            journaled: 0,
            batch: Vec::new(),
            sequences: Sequences::default(),
            durable: Sequences::default(),
            batch_sequences: BatchSequences::default(),
            seen: Topics::default(),
            staged: Vec::new(),
            torn_batch_start: None,
        };
        // (ids, whether the log reaches its batch); a `reopen` line vouches for everything before it.
        let mut records: Vec<(Vec<Uuid>, bool)> = Vec::new();
        // (topic, mark, written ranges, whether the log reaches its batch).
        let mut sequences: Vec<(String, u64, Vec<RangeInclusive<u64>>, bool)> = Vec::new();
        // The byte range of the last batch written to the current log.
        let mut last_range: Option<(u64, u64)> = None;
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
                    sequences
                        .iter_mut()
                        .for_each(|(_, _, _, written)| *written = true);
                    last_range = None;
                    continue;
                }
                let parsed = if let Some(seq_record) = record.strip_prefix(SEQ_RECORD) {
                    Some(parse_seq_record(seq_record, |mark| {
                        Some((mark.parse().ok()?, Vec::new()))
                    }))
                } else {
                    record.strip_prefix(RANGES_RECORD).map(|ranges_record| {
                        parse_seq_record(ranges_record, |ranges| Some((0, parse_ranges(ranges)?)))
                    })
                };
                if let Some(parsed) = parsed {
                    match parsed {
                        Some((start, end, (mark, ranges), topic)) => {
                            sequences.push((topic, mark, ranges, end <= log_len));
                            if start < end {
                                last_range = Some((start, end));
                            }
                        }
                        None => {
                            tracing::warn!(journal = %file.display(), "unreadable sequence record skipped")
                        }
                    }
                    continue;
                }
                let Some((start, end, ids)) = parse_record(record) else {
                    tracing::warn!(journal = %file.display(), "unreadable id journal record skipped");
                    continue;
                };
                records.push((ids, end <= log_len));
                if start < end {
                    last_range = Some((start, end));
                }
            }
        }
        if let Some((start, end)) =
            last_range.filter(|&(start, end)| start < log_len && log_len < end)
        {
            tracing::warn!(
                start,
                end,
                log_len,
                "the log ends inside its last batch (crash or short write); cutting it back to where the batch began, it will be written again"
            );
            written.torn_batch_start = Some(start);
        }
        for (ids, _) in records.into_iter().filter(|(_, written)| *written) {
            ids.into_iter().for_each(|id| written.remember(id));
        }
        for (topic, mark, ranges, _) in sequences.into_iter().filter(|(.., written)| *written) {
            let durable = written.durable.entry(topic).or_default();
            durable.raise_mark(mark);
            ranges.into_iter().for_each(|range| durable.insert(range));
        }
        written.sequences = written.durable.clone();
        written.journaled = written.order.len() + written.durable.len();
        tracing::info!(
            ids = written.order.len(),
            "recovered the ids of recently written visits"
        );
        Ok(written)
    }

    /// Where the log is to be cut back to at start-up, if it ends inside its last batch.
    pub fn torn_batch_start(&self) -> Option<u64> {
        self.torn_batch_start
    }

    /// True the first time an event is offered (it joins the batch), false for a duplicate: an id seen
    /// before, or a sequence number already written for `topic`. A `floor` (the event's `seq_floor`)
    /// first raises `topic`'s mark to just below it.
    pub fn is_new(&mut self, topic: &str, id: Uuid, seq: Option<u64>, floor: Option<u64>) -> bool {
        if let Some(seq) = seq {
            if !self.seen.contains(topic) {
                self.seen.insert(topic.to_owned());
            }
            if !self.sequences.contains_key(topic) {
                self.sequences.insert(topic.to_owned(), Written::default());
            }
            if !self.batch_sequences.contains_key(topic) {
                self.batch_sequences
                    .insert(topic.to_owned(), BatchWritten::default());
            }
            let written = self.sequences.get_mut(topic).expect("inserted above");
            let batch = self.batch_sequences.get_mut(topic).expect("inserted above");
            // Journaled only when it moves the mark: usually the floor is at or below it already.
            if let Some(mark) = floor
                .and_then(|floor| floor.checked_sub(1))
                .filter(|&mark| mark > written.mark())
            {
                written.raise_mark(mark);
                batch.mark = batch.mark.max(mark);
            }
            if written.contains(seq) {
                return false;
            }
            // Recorded even when the id turns out to be known: the event is in the log either way.
            written.insert(seq..=seq);
            match batch.seqs.last_mut() {
                Some(run) if run.end().checked_add(1) == Some(seq) => *run = *run.start()..=seq,
                _ => batch.seqs.push(seq..=seq),
            }
        }
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        self.batch.push(id);
        self.evict();
        true
    }

    /// Puts the batch's records in the journal buffer: its events take `start..end` of the log.
    pub fn stage_batch(&mut self, start: u64, end: u64) {
        if !self.batch.is_empty() {
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
        for (topic, batch) in self.batch_sequences.drain() {
            if batch.mark > 0 {
                write_seq_record(self.journal.buffer(), start, end, batch.mark, &topic);
                self.journaled += 1;
            }
            if !batch.seqs.is_empty() {
                write_ranges_record(self.journal.buffer(), start, end, batch.seqs.iter(), &topic);
                self.journaled += 1;
            }
            self.staged.push((topic, batch));
        }
    }

    /// Writes (and syncs) the staged records; rotates the journal once it holds a window of entries.
    pub fn flush(&mut self, sync: bool) -> io::Result<()> {
        let staged = self.journal.buffer().len();
        self.journal.flush(sync)?;
        if staged > 0 && self.journaled >= self.window {
            let path = self.journal.path().to_owned();
            std::fs::rename(&path, with_suffix(&path, ".old"))?;
            self.journal = AppendFile::open(&path)?;
            // Only durable numbers: the batch just journaled is not in the log yet, and its own
            // records stay in `.old`, which start-up reads too.
            self.journaled = 0;
            for (topic, written) in &self.durable {
                write_seq_record(self.journal.buffer(), 0, 0, written.mark(), topic);
                if written.above().next().is_some() {
                    write_ranges_record(self.journal.buffer(), 0, 0, written.above(), topic);
                    self.journaled += 1;
                }
                self.journaled += 1;
            }
            self.journal.flush(sync)?;
        }
        Ok(())
    }

    /// Every edge topic's durable mark, as recovered or written since.
    pub fn all_durable(&self) -> Vec<(String, u64)> {
        self.durable
            .iter()
            .filter(|(_, written)| written.mark() > 0)
            .map(|(topic, written)| (topic.clone(), written.mark()))
            .collect()
    }

    /// The batches flushed so far are in the log: their numbers are durable. Returns, for each topic
    /// they came from, the durable mark (every number up to it is in the log): what its edge's
    /// receipt says.
    pub fn batch_durable(&mut self) -> Vec<(String, u64)> {
        for (topic, batch) in self.staged.drain(..) {
            let durable = self.durable.entry(topic).or_default();
            durable.raise_mark(batch.mark);
            batch
                .seqs
                .iter()
                .for_each(|range| durable.insert(range.clone()));
        }
        self.seen
            .drain()
            .filter_map(|topic| {
                let mark = self.durable.get(&topic)?.mark();
                (mark > 0).then_some((topic, mark))
            })
            .collect()
    }

    /// The log was reopened (flushed first): records from now on refer to the new file.
    pub fn log_reopened(&mut self, sync: bool) -> io::Result<()> {
        self.journal.buffer().extend_from_slice(REOPEN);
        self.journal.flush(sync)
    }

    fn remember(&mut self, id: Uuid) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            self.evict();
        }
    }

    fn evict(&mut self) {
        while self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
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

fn write_seq_record(out: &mut Vec<u8>, start: u64, end: u64, mark: u64, topic: &str) {
    out.extend_from_slice(SEQ_RECORD);
    out.extend_from_slice(format!("{start} {end} {mark} ").as_bytes());
    line::escape_into(topic.as_bytes(), out);
    out.push(b'\n');
}

fn write_ranges_record<'a>(
    out: &mut Vec<u8>,
    start: u64,
    end: u64,
    ranges: impl Iterator<Item = &'a RangeInclusive<u64>>,
    topic: &str,
) {
    out.extend_from_slice(RANGES_RECORD);
    out.extend_from_slice(format!("{start} {end} ").as_bytes());
    for (n, range) in ranges.enumerate() {
        let separator = if n == 0 { "" } else { "," };
        out.extend_from_slice(format!("{separator}{}-{}", range.start(), range.end()).as_bytes());
    }
    out.push(b' ');
    line::escape_into(topic.as_bytes(), out);
    out.push(b'\n');
}

/// `<start> <end> <value> <escaped topic>` (the topic is the rest of the line), `value` read by
/// `parse_value`.
fn parse_seq_record<T>(
    record: &[u8],
    parse_value: impl FnOnce(&str) -> Option<T>,
) -> Option<(u64, u64, T, String)> {
    let record = record.strip_suffix(b"\n")?;
    let mut parts = record.splitn(4, |&b| b == b' ');
    let mut number = || std::str::from_utf8(parts.next()?).ok()?.parse::<u64>().ok();
    let (start, end) = (number()?, number()?);
    let value = parse_value(std::str::from_utf8(parts.next()?).ok()?)?;
    let topic = line::unescape_field(parts.next()?).ok()??;
    Some((
        start,
        end,
        value,
        String::from_utf8(topic.as_bytes().to_vec()).ok()?,
    ))
}

/// `<lo>-<hi>,<lo>-<hi>...`
fn parse_ranges(text: &str) -> Option<Vec<RangeInclusive<u64>>> {
    text.split(',')
        .map(|range| {
            let (lo, hi) = range.split_once('-')?;
            Some(lo.parse().ok()?..=hi.parse().ok()?)
        })
        .collect()
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
        assert!(written.is_new("t", ids[0], None, None));
        assert!(!written.is_new("t", ids[0], None, None));
        for id in &ids[1..] {
            assert!(written.is_new("t", *id, None, None));
        }
        assert!(
            written.is_new("t", ids[0], None, None),
            "evicted from a window of 3"
        );
        assert!(!written.is_new("t", ids[3], None, None));
    }

    #[test]
    fn the_window_survives_a_restart_for_batches_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let (first, second) = (ids(2), ids(2));
        let mut written = WrittenIds::recover(&log, 0, 100).unwrap();
        first
            .iter()
            .for_each(|id| assert!(written.is_new("t", *id, None, None)));
        written.stage_batch(0, 100);
        second
            .iter()
            .for_each(|id| assert!(written.is_new("t", *id, None, None)));
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
        assert!(
            !recovered.is_new("t", first[0], None, None)
                && !recovered.is_new("t", first[1], None, None)
        );
        assert!(
            recovered.is_new("t", second[0], None, None)
                && recovered.is_new("t", second[1], None, None)
        );
        let mut all = WrittenIds::recover(&log, 200, 100).unwrap();
        assert!(!all.is_new("t", second[1], None, None));
    }

    #[test]
    fn the_journal_rotates_and_both_generations_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let mut written = WrittenIds::recover(&log, 0, 4).unwrap();
        let ids = ids(6);
        for (n, id) in ids.iter().enumerate() {
            assert!(written.is_new("t", *id, None, None));
            written.stage_batch(n as u64, n as u64 + 1);
            written.flush(false).unwrap();
        }
        assert!(old_journal_path(&log).exists());
        let mut recovered = WrittenIds::recover(&log, 6, 4).unwrap();
        assert!(
            ids[2..]
                .iter()
                .all(|id| !recovered.is_new("t", *id, None, None)),
            "the last window is known"
        );
        assert!(
            recovered.is_new("t", ids[0], None, None),
            "older ids fell out of the window"
        );
    }

    #[test]
    fn records_before_a_reopen_count_whatever_the_new_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let (before, after) = (ids(2), ids(1));
        let mut written = WrittenIds::recover(&log, 0, 100).unwrap();
        before
            .iter()
            .for_each(|id| assert!(written.is_new("t", *id, None, None)));
        written.stage_batch(0, 500);
        written.flush(true).unwrap();
        written.log_reopened(true).unwrap();
        assert!(written.is_new("t", after[0], None, None));
        written.stage_batch(0, 100);
        written.flush(true).unwrap();

        // The new log holds 50 bytes: the batch after the reopen did not make it, the ones before did.
        let mut recovered = WrittenIds::recover(&log, 50, 100).unwrap();
        assert!(
            !recovered.is_new("t", before[0], None, None)
                && !recovered.is_new("t", before[1], None, None)
        );
        assert!(recovered.is_new("t", after[0], None, None));
    }

    #[test]
    fn sequence_numbers_find_duplicates_beyond_the_window_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let mut written = WrittenIds::recover(&log, 0, 2).unwrap();
        for seq in 1..=5 {
            assert!(written.is_new("tracker/visits/a b", Uuid::now_v7(), Some(seq), None));
        }
        // An edge whose numbering starts at 9: its floor says nothing below will come.
        assert!(written.is_new("tracker/visits/c", Uuid::now_v7(), Some(9), Some(9)));
        written.stage_batch(0, 100);
        written.flush(true).unwrap();
        let mut receipts = written.batch_durable();
        receipts.sort();
        assert_eq!(
            receipts,
            [
                ("tracker/visits/a b".to_owned(), 5),
                ("tracker/visits/c".to_owned(), 9)
            ]
        );
        // Far more than the window of 2 ids, recognised by number alone.
        assert!(!written.is_new("tracker/visits/a b", Uuid::now_v7(), Some(1), None));
        assert!(!written.is_new("tracker/visits/c", Uuid::now_v7(), Some(1), None));
        let mut again = written.batch_durable();
        again.sort();
        assert_eq!(
            again, receipts,
            "a batch of duplicates still earns receipts"
        );

        let mut recovered = WrittenIds::recover(&log, 100, 2).unwrap();
        assert!(!recovered.is_new("tracker/visits/a b", Uuid::now_v7(), Some(5), None));
        assert!(recovered.is_new("tracker/visits/a b", Uuid::now_v7(), Some(6), None));
        // The log never got the batch: nothing it numbered counts.
        let mut short = WrittenIds::recover(&log, 50, 2).unwrap();
        assert_eq!(short.torn_batch_start(), Some(0));
        assert!(short.is_new("tracker/visits/a b", Uuid::now_v7(), Some(1), None));
    }

    #[test]
    fn receipts_stop_at_a_gap_and_the_numbers_above_it_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let mut written = WrittenIds::recover(&log, 0, 2).unwrap();
        // 103 was acknowledged by the broker and never delivered.
        for seq in [101, 102, 104, 105] {
            assert!(written.is_new("e", Uuid::now_v7(), Some(seq), Some(101)));
        }
        written.stage_batch(0, 100);
        written.flush(true).unwrap();
        assert_eq!(written.batch_durable(), [("e".to_owned(), 102)]);

        let mut recovered = WrittenIds::recover(&log, 100, 2).unwrap();
        assert_eq!(recovered.all_durable(), [("e".to_owned(), 102)]);
        assert!(!recovered.is_new("e", Uuid::now_v7(), Some(104), None));
        assert!(
            recovered.is_new("e", Uuid::now_v7(), Some(103), None),
            "the gap is filled"
        );
        assert!(!recovered.is_new("e", Uuid::now_v7(), Some(103), None));
        recovered.stage_batch(100, 200);
        recovered.flush(true).unwrap();
        assert_eq!(recovered.batch_durable(), [("e".to_owned(), 105)]);

        // The edge lost its spool and starts afresh far above: its floor passes what will never come.
        assert!(recovered.is_new("e", Uuid::now_v7(), Some(900), Some(900)));
        assert!(recovered.is_new("e", Uuid::now_v7(), Some(902), None));
        recovered.stage_batch(200, 300);
        recovered.flush(true).unwrap();
        assert_eq!(recovered.batch_durable(), [("e".to_owned(), 900)]);
        let mut again = WrittenIds::recover(&log, 300, 2).unwrap();
        assert_eq!(again.all_durable(), [("e".to_owned(), 900)]);
        assert!(!again.is_new("e", Uuid::now_v7(), Some(902), None));
        assert!(again.is_new("e", Uuid::now_v7(), Some(901), None));
    }

    #[test]
    fn a_journal_of_an_older_sink_reads_its_highest_numbers_as_marks() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        std::fs::write(journal_path(&log), "S 0 10 77 tracker/visits/e\n").unwrap();
        let mut recovered = WrittenIds::recover(&log, 10, 2).unwrap();
        assert_eq!(
            recovered.all_durable(),
            [("tracker/visits/e".to_owned(), 77)]
        );
        assert!(!recovered.is_new("tracker/visits/e", Uuid::now_v7(), Some(77), None));
        assert!(recovered.is_new("tracker/visits/e", Uuid::now_v7(), Some(78), None));
    }

    #[test]
    fn a_rotated_journal_keeps_every_edges_number() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("visits.log");
        let mut written = WrittenIds::recover(&log, 0, 3).unwrap();
        assert!(written.is_new("quiet", Uuid::now_v7(), Some(7), None));
        written.stage_batch(0, 1);
        written.flush(false).unwrap();
        written.batch_durable();
        // Two rotations of a busy edge's records, which would drop the quiet edge's record with `.old`.
        for n in 1..8u64 {
            assert!(written.is_new("busy", Uuid::now_v7(), Some(n), None));
            written.stage_batch(n, n + 1);
            written.flush(false).unwrap();
            written.batch_durable();
        }
        let mut recovered = WrittenIds::recover(&log, 8, 3).unwrap();
        assert!(!recovered.is_new("quiet", Uuid::now_v7(), Some(7), None));
        assert!(
            recovered.is_new("quiet", Uuid::now_v7(), Some(6), None),
            "the gap below 7 is kept through the rotations"
        );
        assert!(!recovered.is_new("busy", Uuid::now_v7(), Some(7), None));
    }
}
