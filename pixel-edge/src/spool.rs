//! The edge's on-disk spool (`edge.spool_dir`): visits wait here, not in memory, until they are
//! confirmed — by the sink's receipt (`edge.receipts`, the default) or by the broker's PUBACK — so an
//! edge restarted, or a broker that lost its state, loses nothing.
//!
//! Append-only segments `<number>.ndjson` hold whole batches (NDJSON lines), each appended and
//! `fdatasync`ed before it is published. Appending gives every event its sequence number (the `seq`
//! field of the wire format): it only grows, also across restarts, so the sink can tell a redelivery
//! exactly, and it has no holes (a number is used up only by an event synced here), so the sink's
//! contiguous mark can follow it. The first event of each append also carries the spool's floor
//! (`seq_floor`: the lowest number it still holds unconfirmed), which lets the sink pass numbers that
//! will never come (those of a spool lost, or before a fresh one). Batches are read back oldest first. A confirmation "everything up to seq N" marks every
//! segment whose last event is at or below N as done; done segments are deleted, except the one being
//! appended to, which is replaced once full. After a reconnect (or a receipt that stopped short of what
//! the broker acknowledged, see `publisher`) the reader starts again at the first
//! unconfirmed segment.
//!
//! At start-up every segment left is replayed; empty ones are deleted. The highest sequence number is
//! found in the newest segment, or in the state file `seq` written whenever a new segment starts (so it
//! survives the deletion of every segment). A fresh spool starts at the current Unix time in
//! microseconds, so even an edge whose spool was lost never reuses a number it sent before (it would
//! have had to send more than a million visits a second). The spool is bounded by
//! `edge.spool_max_bytes`, and locked (`lock`, an `flock`) by the edge using it.
//!
//! At a clean stop a spool that holds nothing unconfirmed is removed (segments, `seq`, `lock` and the
//! directory), so edges that come and go (a new id per container) leave nothing behind; one that
//! still holds visits gets its lock file's time set instead, which tells adopters (see `orphans`)
//! that it was in use until then.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::wire;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::batch::{Batch, MAX_BATCH_BYTES};

/// Appending moves on to a new segment once the current one reaches this size.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// The highest sequence number given, as decimal text.
const STATE_FILE: &str = "seq";
const LOCK_FILE: &str = "lock";

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    active: File,
    /// The sequence number the next event gets.
    next_seq: u64,
    /// Held while the spool is open: a second edge pointed at the same directory refuses to start.
    lock: Flock<File>,
}

struct Segment {
    number: u64,
    path: PathBuf,
    /// Bytes of complete lines (a tail torn by a crash is left out).
    len: u64,
    /// Bytes read back so far.
    read: u64,
    /// Bytes confirmed: everything before this offset is safe and need not be sent again.
    confirmed: u64,
    /// Sequence numbers of its first and last events, if it holds any.
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// Events not yet confirmed.
    unconfirmed: usize,
    /// When the oldest unconfirmed event was taken (for the age metric).
    since: Option<SystemTime>,
}

impl Spool {
    /// Opens and locks the spool in `dir` (created if missing); segments left by an earlier run are
    /// replayed, empty ones removed.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let lock = loop {
            fs::create_dir_all(dir)?;
            match try_lock(dir, true) {
                Ok(Some(lock)) => break lock,
                // Removed between the two calls (an adopter finished with it): made again.
                Ok(None) if !dir.join(LOCK_FILE).exists() => continue,
                Ok(None) => return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "in use by another running edge (a second edge with this edge.id, or one delivering this edge's orphaned spool: see edge.adopt_orphaned_spools; its lock file is held)",
                )),
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            }
        };
        Self::open_locked(dir, max_bytes, lock)
    }

    /// The spool in `dir` if no process holds it (an orphan, see `orphans`): locked without waiting,
    /// then opened as [`open`](Self::open) does; `None` while another holds it, or once it is gone.
    pub fn open_unheld(dir: &Path, max_bytes: u64) -> io::Result<Option<Self>> {
        match try_lock(dir, false)? {
            Some(lock) => Self::open_locked(dir, max_bytes, lock).map(Some),
            None => Ok(None),
        }
    }

    fn open_locked(dir: &Path, max_bytes: u64, lock: Flock<File>) -> io::Result<Self> {
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let number = path
                .extension()
                .filter(|ext| *ext == "ndjson")
                .and_then(|_| path.file_stem()?.to_str()?.parse::<u64>().ok());
            if let Some(segment) = number.map(|n| scan_segment(n, path)).transpose()?.flatten() {
                segments.push(segment);
            }
        }
        segments.sort_by_key(|segment| segment.number);
        let highest = [
            read_state(dir)?,
            segments.iter().filter_map(|s| s.last_seq).max(),
        ]
        .into_iter()
        .flatten()
        .max();
        let next_seq = highest.map_or_else(unix_micros, |seq| seq + 1);
        let number = segments.last().map_or(1, |segment| segment.number + 1);
        // Never append to a segment of an earlier run: its tail may be torn.
        let (active, segment) = create_segment(dir, number)?;
        segments.push(segment);
        let mut spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            segments: segments.into(),
            active,
            next_seq,
            lock,
        };
        spool.write_state()?;
        spool.number_unnumbered()?;
        Ok(spool)
    }

    /// Bytes on disk, confirmed or not.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len).sum()
    }

    pub fn has_room(&self) -> bool {
        self.bytes() < self.max_bytes
    }

    /// True while some event is not confirmed.
    pub fn holds_unconfirmed(&self) -> bool {
        self.segments.iter().any(|s| s.confirmed < s.len)
    }

    /// Events not yet confirmed.
    pub fn unconfirmed_visits(&self) -> usize {
        self.segments.iter().map(|s| s.unconfirmed).sum()
    }

    /// When the oldest unconfirmed event was taken.
    pub fn oldest_unconfirmed(&self) -> Option<SystemTime> {
        self.segments.iter().filter_map(|s| s.since).min()
    }

    /// The lowest sequence number held unconfirmed, or the next one: every number below it is
    /// confirmed or was never given.
    pub fn floor(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.confirmed < s.len)
            .find_map(|s| s.first_seq)
            .unwrap_or(self.next_seq)
    }

    /// Appends a batch of event lines (without sequence numbers), giving each the next sequence
    /// number (and the first one the [floor](Self::floor)), and syncs it. After a failure the segment
    /// is cut back to where the batch began (or, if that fails too, closed: reading stops before the
    /// torn part) and no number is used up.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.active_segment().len >= SEGMENT_BYTES {
            self.start_segment()?;
        }
        let mut out = Vec::with_capacity(lines.len() + lines.len() / 8);
        let events = wire::append_numbered(lines, self.next_seq, self.floor(), &mut out);
        if events == 0 {
            return Ok(());
        }
        let seq = self.next_seq + events;
        let events = events as usize;
        let result = self
            .active
            .write_all(&out)
            .and_then(|()| self.active.sync_data());
        if let Err(err) = result {
            let before = self.active_segment().len;
            if self.active.set_len(before).is_err() {
                let _ = self.start_segment();
            }
            return Err(err);
        }
        let first = self.next_seq;
        self.next_seq = seq;
        let segment = self.active_segment_mut();
        segment.len += out.len() as u64;
        segment.first_seq.get_or_insert(first);
        segment.last_seq = Some(seq - 1);
        segment.unconfirmed += events;
        segment.since.get_or_insert_with(SystemTime::now);
        Ok(())
    }

    /// The next unread batch, oldest first: whole lines, up to [`MAX_BATCH_BYTES`] (or one longer line).
    pub fn next_batch(&mut self) -> io::Result<Option<Batch>> {
        let Some(segment) = self.segments.iter_mut().find(|s| s.read < s.len) else {
            return Ok(None);
        };
        let batch = read_batch(segment, segment.read)?;
        segment.read += batch.payload.len() as u64;
        Ok(Some(batch))
    }

    /// The oldest unconfirmed batch, read again without moving the reader (a probe: does it reach
    /// the sink?).
    pub fn oldest_unconfirmed_batch(&self) -> io::Result<Option<Batch>> {
        let Some(segment) = self.segments.iter().find(|s| s.confirmed < s.len) else {
            return Ok(None);
        };
        read_batch(segment, segment.confirmed).map(Some)
    }

    /// Everything up to sequence number `seq` is confirmed: segments that end at or below it are done
    /// (deleted, unless appended to) and not sent again.
    pub fn confirm_through(&mut self, seq: u64) -> io::Result<()> {
        for segment in &mut self.segments {
            if segment.last_seq.is_some_and(|last| last <= seq) && segment.confirmed < segment.len {
                segment.confirmed = segment.len;
                segment.read = segment.read.max(segment.len);
                segment.unconfirmed = 0;
                segment.since = None;
            }
        }
        let active = self.active_segment().number;
        while let Some(index) = self
            .segments
            .iter()
            .position(|s| s.number != active && s.confirmed == s.len)
        {
            let done = self.segments.remove(index).expect("found above");
            fs::remove_file(&done.path)?;
        }
        Ok(())
    }

    /// After a reconnect or a stalled receipt: read again from the first unconfirmed event (a broker may have lost what
    /// it acknowledged). Returns the events to be sent again.
    pub fn rewind(&mut self) -> usize {
        for segment in &mut self.segments {
            segment.read = segment.confirmed;
        }
        self.unconfirmed_visits()
    }

    /// The edge's own spool at shutdown: one that holds nothing unconfirmed loses its segments and
    /// `true` is returned. Its state file (the highest number given) and lock file stay, so an edge of
    /// this id restarted in place numbers on from there, whatever the clock says; an adopter removes
    /// the rest once it is `edge.orphan_after_secs` old (an edge gone for good: a compose recreate).
    /// Either way the lock file's time is set to now, so that no adopter takes it before then, and the
    /// spool is not to be used afterwards.
    pub fn close(&mut self) -> io::Result<bool> {
        self.lock.set_modified(SystemTime::now())?;
        if self.holds_unconfirmed() {
            return Ok(false);
        }
        self.write_state()?;
        for segment in &self.segments {
            remove_if_there(&segment.path)?;
        }
        Ok(true)
    }

    /// An adopted spool that holds nothing unconfirmed any more: removed from disk (segments, state
    /// file, lock file, and the directory unless something else is in it, e.g. a nested spool).
    pub fn remove(&mut self) -> io::Result<()> {
        debug_assert!(!self.holds_unconfirmed());
        for segment in &self.segments {
            remove_if_there(&segment.path)?;
        }
        // The lock file last: until then an edge of this id starting meanwhile waits for the lock.
        for name in [STATE_FILE, LOCK_FILE] {
            remove_if_there(&self.dir.join(name))?;
        }
        if let Err(err) = fs::remove_dir(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), "the spool's directory stays: {err}");
        }
        Ok(())
    }

    /// Segments written before events had sequence numbers are appended again, numbered.
    fn number_unnumbered(&mut self) -> io::Result<()> {
        let active = self.active_segment().number;
        while let Some(index) = self
            .segments
            .iter()
            .position(|s| s.number != active && s.last_seq.is_none())
        {
            let old = self.segments.remove(index).expect("found above");
            let content = fs::read(&old.path)?;
            self.append(&content[..old.len as usize])?;
            fs::remove_file(&old.path)?;
            tracing::info!(segment = %old.path.display(), "numbered the events of a spool segment from an older edge");
        }
        Ok(())
    }

    fn start_segment(&mut self) -> io::Result<()> {
        // The segment that holds the highest number may be deleted before the new one holds any.
        self.write_state()?;
        let (file, segment) = create_segment(&self.dir, self.active_segment().number + 1)?;
        self.active = file;
        self.segments.push_back(segment);
        Ok(())
    }

    /// Records the highest sequence number given: written aside, synced, then renamed into place.
    fn write_state(&self) -> io::Result<()> {
        let Some(highest) = self.next_seq.checked_sub(1) else {
            return Ok(());
        };
        let temporary = self.dir.join(format!("{STATE_FILE}.new"));
        let mut file = File::create(&temporary)?;
        file.write_all(highest.to_string().as_bytes())?;
        file.sync_data()?;
        fs::rename(&temporary, self.dir.join(STATE_FILE))?;
        File::open(&self.dir)?.sync_all()
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

/// The batch at `from` in `segment`: whole lines, up to [`MAX_BATCH_BYTES`] (or one longer line).
fn read_batch(segment: &Segment, from: u64) -> io::Result<Batch> {
    let mut file = File::open(&segment.path)?;
    file.seek(SeekFrom::Start(from))?;
    let remaining = segment.len - from;
    // Sized to what is read, so a batch held in flight takes no more than its bytes.
    let mut chunk = Vec::with_capacity(remaining.min(MAX_BATCH_BYTES as u64) as usize);
    (&mut file)
        .take(remaining.min(MAX_BATCH_BYTES as u64))
        .read_to_end(&mut chunk)?;
    let mut end = chunk.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
    if end.is_none() {
        // One line longer than a batch: read on to its end (`len` ends with a complete line).
        file.take(remaining - chunk.len() as u64)
            .read_to_end(&mut chunk)?;
        end = chunk.iter().position(|&b| b == b'\n').map(|i| i + 1);
    }
    let end = end.ok_or_else(|| io::Error::other("a spool segment changed under the edge"))?;
    chunk.truncate(end);
    let visits = memchr::memchr_iter(b'\n', &chunk).count();
    let last_line = chunk[..end - 1]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    Ok(Batch {
        last_seq: wire::trailing_seq(last_line),
        payload: Bytes::from(chunk),
        visits,
        spooled: true,
    })
}

/// Tells adopters (see `orphans`) that the spool in `dir` is in use: its lock file's time is set to
/// now. Taking no lock, it works beside the edge that holds it.
pub fn mark_in_use(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(dir.join(LOCK_FILE))?
        .set_modified(SystemTime::now())
}

/// Whether `dir` holds a spool that no process holds (false for one that is gone).
pub fn is_unheld(dir: &Path) -> io::Result<bool> {
    // The probe's lock is let go at once.
    Ok(try_lock(dir, false)?.is_some())
}

/// Takes the spool's lock without waiting; `None` while another process holds it. `create` makes the
/// lock file (the edge's own spool); without it a spool that has no lock file is gone (`None`). A
/// lock taken on a file removed meanwhile (an adopter finished with the spool) is let go: taken
/// again on the file now there, or `None` when there is none.
fn try_lock(dir: &Path, create: bool) -> io::Result<Option<Flock<File>>> {
    let path = dir.join(LOCK_FILE);
    loop {
        let file = match OpenOptions::new()
            .create(create)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if !create && err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, errno)) if errno == Errno::EWOULDBLOCK => return Ok(None),
            Err((_, errno)) => return Err(errno.into()),
        };
        let held = lock.metadata()?;
        match fs::metadata(&path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(Some(lock)),
            Ok(_) if create => {}
            Ok(_) => return Ok(None),
            Err(err) if !create && err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        }
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn read_state(dir: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(dir.join(STATE_FILE)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {err}", dir.join(STATE_FILE).display()),
            )
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// A segment of an earlier run, all of it unconfirmed; `None` (and the file deleted) when it holds no
/// complete line.
fn scan_segment(number: u64, path: PathBuf) -> io::Result<Option<Segment>> {
    let content = fs::read(&path)?;
    let len = content
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if len == 0 {
        fs::remove_file(&path)?;
        return Ok(None);
    }
    if len < content.len() {
        tracing::warn!(segment = %path.display(), "skipping an incomplete last line in the spool");
    }
    let lines = &content[..len - 1];
    let last_line = lines.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    let first_line = lines.split(|&b| b == b'\n').next().unwrap_or_default();
    let since = wire::decode_event(first_line)
        .ok()
        .map(|event| SystemTime::from(event.visit.ts));
    Ok(Some(Segment {
        number,
        path,
        len: len as u64,
        read: 0,
        confirmed: 0,
        first_seq: wire::trailing_seq(first_line),
        last_seq: wire::trailing_seq(last_line),
        unconfirmed: memchr::memchr_iter(b'\n', &content[..len]).count(),
        since,
    }))
}

fn create_segment(dir: &Path, number: u64) -> io::Result<(File, Segment)> {
    let path = dir.join(format!("{number:012}.ndjson"));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    Ok((
        file,
        Segment {
            number,
            path,
            len: 0,
            read: 0,
            confirmed: 0,
            first_seq: None,
            last_seq: None,
            unconfirmed: 0,
            since: None,
        },
    ))
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |since| since.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use common::{HeaderText, Visit};

    use super::*;

    fn events(markers: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for marker in markers {
            let visit = Visit::new(
                Utc::now(),
                None,
                HeaderText::new(marker.as_bytes()),
                "10.0.0.1".parse().unwrap(),
                "e",
            );
            wire::encode_event(&visit, &mut out);
        }
        out
    }

    /// (marker, seq) of each event of the batch.
    fn read(batch: &Batch) -> Vec<(String, u64)> {
        wire::decode_message(&batch.payload)
            .map(|(_, event)| {
                let event = event.unwrap();
                let ua = event.visit.user_agent.unwrap();
                (
                    String::from_utf8(ua.as_bytes().to_vec()).unwrap(),
                    event.seq.unwrap(),
                )
            })
            .collect()
    }

    fn segment_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "ndjson")
            })
            .count()
    }

    #[test]
    fn events_are_numbered_in_order_and_confirmed_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!spool.holds_unconfirmed());
        spool.append(&events(&["a", "b"])).unwrap();
        spool.append(&events(&["c"])).unwrap();
        assert_eq!(spool.unconfirmed_visits(), 3);
        let batch = spool.next_batch().unwrap().unwrap();
        let got = read(&batch);
        assert_eq!(
            got.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let first = got[0].1;
        assert_eq!([got[1].1, got[2].1], [first + 1, first + 2]);
        assert_eq!(batch.last_seq, Some(first + 2));
        assert!(spool.next_batch().unwrap().is_none());

        spool.confirm_through(first + 1).unwrap();
        assert!(
            spool.holds_unconfirmed(),
            "the last event is not confirmed yet"
        );
        spool.confirm_through(first + 2).unwrap();
        assert!(!spool.holds_unconfirmed());
        assert_eq!(spool.unconfirmed_visits(), 0);
        assert_eq!(spool.rewind(), 0, "nothing to send again");
        assert!(spool.next_batch().unwrap().is_none());
    }

    #[test]
    fn the_first_event_of_each_append_carries_the_lowest_unconfirmed_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let floors = |batch: &Batch| -> Vec<Option<u64>> {
            wire::decode_message(&batch.payload)
                .map(|(_, event)| event.unwrap().seq_floor)
                .collect()
        };
        spool.append(&events(&["a", "b"])).unwrap();
        let first = spool.next_batch().unwrap().unwrap();
        let a = read(&first)[0].1;
        assert_eq!(
            floors(&first),
            [Some(a), None],
            "a fresh spool: its own first number"
        );
        spool.append(&events(&["c"])).unwrap();
        assert_eq!(
            floors(&spool.next_batch().unwrap().unwrap()),
            [Some(a)],
            "a, b still held"
        );
        spool.confirm_through(a + 2).unwrap();
        assert_eq!(spool.floor(), a + 3);
        spool.append(&events(&["d"])).unwrap();
        let d = spool.next_batch().unwrap().unwrap();
        assert_eq!(floors(&d), [Some(a + 3)]);
        assert_eq!(read(&d)[0].1, a + 3, "no number was skipped");
    }

    #[test]
    fn a_rewind_sends_again_what_is_not_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&events(&["a"])).unwrap();
        let a = spool.next_batch().unwrap().unwrap();
        spool.confirm_through(a.last_seq.unwrap()).unwrap();
        spool.append(&events(&["b"])).unwrap();
        let b = spool.next_batch().unwrap().unwrap();
        assert_eq!(spool.rewind(), 1);
        assert_eq!(
            read(&spool.oldest_unconfirmed_batch().unwrap().unwrap()),
            read(&b),
            "a probe reads the same"
        );
        let again = spool.next_batch().unwrap().unwrap();
        assert_eq!(
            read(&again),
            read(&b),
            "only what follows the confirmed part"
        );
        assert!(
            spool.next_batch().unwrap().is_none(),
            "the probe moved no reader"
        );
    }

    #[test]
    fn a_restart_replays_keeps_numbering_skips_a_torn_tail_and_removes_empty_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&events(&["one", "two"])).unwrap();
        let before = spool.next_batch().unwrap().unwrap().last_seq.unwrap();
        drop(spool);
        // A crash tore the last append of the earlier run.
        let segment = dir.path().join(format!("{:012}.ndjson", 1));
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(b"{\"v\":1,\"id")
            .unwrap();
        // Restarts that appended nothing leave no empty segment behind.
        for _ in 0..3 {
            drop(Spool::open(dir.path(), 1 << 20).unwrap());
        }
        let mut again = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            2,
            "the old one and the fresh one"
        );
        again.append(&events(&["three"])).unwrap();
        let replayed = again.next_batch().unwrap().unwrap();
        assert_eq!(read(&replayed).len(), 2, "the torn line is skipped");
        let new = again.next_batch().unwrap().unwrap();
        assert_eq!(read(&new)[0].1, before + 1, "numbering goes on");
        again.confirm_through(before + 1).unwrap();
        assert!(!segment.exists());
        drop(again);
        // Every segment gone: the state file still knows the numbering.
        for entry in fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "ndjson") {
                fs::remove_file(path).unwrap();
            }
        }
        fs::write(dir.path().join(STATE_FILE), (before + 1).to_string()).unwrap();
        let mut fresh = Spool::open(dir.path(), 1 << 20).unwrap();
        fresh.append(&events(&["four"])).unwrap();
        assert_eq!(read(&fresh.next_batch().unwrap().unwrap())[0].1, before + 2);
    }

    #[test]
    fn a_second_edge_cannot_open_a_spool_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let err = Spool::open(dir.path(), 1 << 20).err().unwrap();
        assert!(
            err.to_string().contains("in use by another running edge"),
            "{err}"
        );
        drop(spool);
        Spool::open(dir.path(), 1 << 20).unwrap();
    }

    #[test]
    fn a_fully_confirmed_spool_keeps_only_its_numbering_at_close_and_an_adopter_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("edge/a");
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&events(&["a"])).unwrap();
        let a = spool.next_batch().unwrap().unwrap().last_seq.unwrap();
        assert!(!spool.close().unwrap(), "a is not confirmed: it stays");
        drop(spool);
        // The same edge again (docker restart): it replays a.
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            read(&spool.next_batch().unwrap().unwrap()),
            [("a".to_owned(), a)]
        );
        spool.append(&events(&["b"])).unwrap();
        let b = spool.next_batch().unwrap().unwrap().last_seq.unwrap();
        spool.confirm_through(b).unwrap();
        assert!(spool.close().unwrap());
        drop(spool);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [LOCK_FILE, STATE_FILE], "no segment stays");
        // The same id again (docker restart): it numbers on, not from the clock.
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&events(&["c"])).unwrap();
        let batch = spool.next_batch().unwrap().unwrap();
        let (_, event) = wire::decode_message(&batch.payload).next().unwrap();
        let event = event.unwrap();
        assert_eq!(event.seq, Some(b + 1));
        assert_eq!(event.seq_floor, event.seq);
        spool.confirm_through(b + 1).unwrap();
        assert!(spool.close().unwrap());
        drop(spool);
        // Gone for good: an adopter removes what is left.
        let mut adopted = Spool::open_unheld(&dir, 1 << 20).unwrap().unwrap();
        adopted.remove().unwrap();
        drop(adopted);
        assert!(
            !dir.exists(),
            "segments, seq, lock and the directory are gone"
        );
        assert!(root.path().join("edge").exists(), "the parent stays");
    }

    #[test]
    fn an_adopter_opens_a_spool_nobody_holds_never_one_held_or_gone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("edge/b");
        assert!(!is_unheld(&dir).unwrap());
        assert!(Spool::open_unheld(&dir, 1 << 20).unwrap().is_none());
        let mut held = Spool::open(&dir, 1 << 20).unwrap();
        held.append(&events(&["x"])).unwrap();
        assert!(!is_unheld(&dir).unwrap(), "its edge holds it");
        assert!(Spool::open_unheld(&dir, 1 << 20).unwrap().is_none());
        mark_in_use(&dir).unwrap();
        assert!(!is_unheld(&dir).unwrap(), "touching it takes no lock");
        drop(held);
        assert!(is_unheld(&dir).unwrap());
        let mut adopted = Spool::open_unheld(&dir, 1 << 20).unwrap().unwrap();
        assert_eq!(adopted.unconfirmed_visits(), 1);
        let err = Spool::open(&dir, 1 << 20).err().unwrap();
        assert!(
            err.to_string().contains("in use by another running edge"),
            "an edge of that id starting meanwhile: {err}"
        );
        let x = adopted.next_batch().unwrap().unwrap().last_seq.unwrap();
        adopted.confirm_through(x).unwrap();
        adopted.remove().unwrap();
        drop(adopted);
        assert!(
            Spool::open_unheld(&dir, 1 << 20).unwrap().is_none(),
            "removed"
        );
    }

    #[test]
    fn segments_of_an_older_edge_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(format!("{:012}.ndjson", 7)),
            events(&["old"]),
        )
        .unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let batch = spool.next_batch().unwrap().unwrap();
        assert_eq!(read(&batch)[0].0, "old");
        spool.confirm_through(batch.last_seq.unwrap()).unwrap();
        assert!(!spool.holds_unconfirmed());
    }

    #[test]
    fn the_size_is_bounded_and_big_batches_are_split_at_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 300 * 1024).unwrap();
        let line = events(&[&"x".repeat(900)]);
        let mut appended = 0;
        while spool.has_room() {
            spool.append(&line).unwrap();
            appended += 1;
        }
        let first = spool.next_batch().unwrap().unwrap();
        assert!(first.payload.len() <= MAX_BATCH_BYTES);
        let second = spool.next_batch().unwrap().unwrap();
        assert_eq!(first.visits + second.visits, appended);
    }
}
