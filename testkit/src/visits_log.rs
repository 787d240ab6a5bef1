//! Reading the visits log back in tests: fields unescaped, and visits counted by their marker (the
//! user-agent each test request carries), and the lines of a growing log counted as they come.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::line::{split_fields, unescape_field};

/// The four fields of a log line, with referrer and user-agent unescaped (`None` for `null`).
pub struct Line {
    pub ts: DateTime<Utc>,
    pub referrer: Option<Vec<u8>>,
    pub user_agent: Option<Vec<u8>>,
    pub ip: String,
}

/// Parses a line of the log; panics on anything that is not one.
pub fn parse(line: &str) -> Line {
    let [ts, referrer, user_agent, ip] =
        split_fields(line.as_bytes()).unwrap_or_else(|| panic!("4 fields: {line}"));
    let field = |f| unescape_field(f).unwrap().map(|t| t.as_bytes().to_vec());
    Line {
        ts: DateTime::parse_from_rfc3339(std::str::from_utf8(ts).unwrap())
            .unwrap()
            .to_utc(),
        referrer: field(referrer),
        user_agent: field(user_agent),
        ip: String::from_utf8(ip.to_vec()).unwrap(),
    }
}

/// How often each user-agent occurs in the log (`""` for `null`).
pub fn count_by_user_agent(lines: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        let ua = parse(line)
            .user_agent
            .map(|ua| String::from_utf8(ua).unwrap())
            .unwrap_or_default();
        *counts.entry(ua).or_default() += 1;
    }
    counts
}

/// No marker twice, and every answered marker exactly once.
pub fn assert_exactly_once(lines: &[String], answered: &[String], context: &str) {
    let counts = count_by_user_agent(lines);
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{context}: written more than once: {twice:?}"
    );
    let lost: Vec<_> = answered
        .iter()
        .filter(|m| !counts.contains_key(*m))
        .collect();
    assert!(
        lost.is_empty(),
        "{context}: {} of {} answered visits lost, e.g. {:?}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Counts the lines of a growing file, reading only what was appended since the last look.
pub struct LineCounter {
    path: PathBuf,
    file: Option<File>,
    lines: usize,
    buffer: Vec<u8>,
}

impl LineCounter {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            lines: 0,
            buffer: vec![0; 1 << 20],
        }
    }

    /// Waits (checking every 50 µs, with this worker thread handed over to blocking) until the file
    /// has `count` lines or `patience` is over; returns the lines seen.
    pub fn wait_for(&mut self, count: usize, patience: Duration) -> usize {
        tokio::task::block_in_place(|| {
            let deadline = Instant::now() + patience;
            while self.count() < count && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(50));
            }
            self.lines
        })
    }

    /// The lines the file has now.
    pub fn count(&mut self) -> usize {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        if let Some(file) = &mut self.file {
            while let Ok(read) = file.read(&mut self.buffer) {
                if read == 0 {
                    break;
                }
                self.lines += self.buffer[..read].iter().filter(|&&b| b == b'\n').count();
            }
        }
        self.lines
    }
}
