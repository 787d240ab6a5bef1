//! An append-only file with a write buffer that survives failures: what a failed flush did write
//! stays written, and the next flush continues after it, so a retried batch neither loses nor
//! repeats a byte. After a failure the next flush first reopens the path, so a file that was
//! deleted, or a disk that was remounted, is written again once it is back.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct AppendFile {
    path: PathBuf,
    /// `None` after a failure: reopened by the next flush.
    file: Option<File>,
    /// The file's length as far as this writer knows: where the next written byte lands.
    len: u64,
    /// Bytes formatted but not yet known to be written.
    buffer: Vec<u8>,
    /// How much of `buffer` the OS already took.
    written: usize,
}

impl AppendFile {
    /// Opens `path` for appending, creating it (and its directory) if missing; never truncates.
    pub fn open(path: &Path) -> io::Result<Self> {
        let (file, len) = open_append(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
            len,
            buffer: Vec::with_capacity(64 * 1024),
            written: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the first byte of the buffer will land: the file's length before this flush.
    pub fn buffer_offset(&self) -> u64 {
        self.len - self.written as u64
    }

    /// Bytes formatted and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len() - self.written
    }

    /// Where to format what is to be appended by the next [`flush`](Self::flush).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// Writes out the buffer and, when `sync`, `fdatasync`s the file. On error the part already
    /// written is remembered; call again to finish.
    pub fn flush(&mut self, sync: bool) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self.write_out(sync);
        if result.is_err() {
            self.file = None;
        }
        result
    }

    fn write_out(&mut self, sync: bool) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let (file, len) = open_append(&self.path)?;
                self.len = len;
                self.file.insert(file)
            }
        };
        while self.written < self.buffer.len() {
            match file.write(&self.buffer[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    self.len += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if sync {
            let started = Instant::now();
            file.sync_data()?;
            metrics::histogram!("tracker_sink_fsync_seconds").record(started.elapsed());
        }
        self.buffer.clear();
        self.written = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_never_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/visits.log");
        let mut file = AppendFile::open(&path).unwrap();
        file.buffer().extend_from_slice(b"one\n");
        assert_eq!(file.buffer_offset(), 0);
        file.flush(true).unwrap();
        assert_eq!(file.buffer_offset(), 4);
        drop(file);
        let mut again = AppendFile::open(&path).unwrap();
        assert_eq!(again.buffer_offset(), 4);
        again.buffer().extend_from_slice(b"two\n");
        again.flush(false).unwrap();
        again.flush(true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn a_full_disk_keeps_the_unwritten_rest_and_the_next_flush_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("visits.log");
        // /dev/full accepts the open and fails every write with ENOSPC, like a full disk.
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let mut file = AppendFile::open(&path).unwrap();
        file.buffer().extend_from_slice(b"line\n");
        let err = file.flush(true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        assert_eq!(file.buffer().as_slice(), b"line\n");

        // Space again: the path now leads to a real file.
        std::fs::remove_file(&path).unwrap();
        file.flush(true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"line\n");
    }
}
