//! An append-only file with a write buffer that survives failures: what a failed flush did write
//! stays written, and the next flush continues after it, so a retried batch neither loses nor
//! repeats a byte.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct AppendFile {
    path: PathBuf,
    file: File,
    /// Bytes formatted but not yet known to be written.
    buffer: Vec<u8>,
    /// How much of `buffer` the OS already took.
    written: usize,
}

impl AppendFile {
    /// Opens `path` for appending, creating it (and its directory) if missing; never truncates.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            buffer: Vec::with_capacity(64 * 1024),
            written: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
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
        while self.written < self.buffer.len() {
            match self.file.write(&self.buffer[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if sync {
            self.file.sync_data()?;
        }
        self.buffer.clear();
        self.written = 0;
        Ok(())
    }
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
        file.flush(true).unwrap();
        drop(file);
        let mut again = AppendFile::open(&path).unwrap();
        again.buffer().extend_from_slice(b"two\n");
        again.flush(false).unwrap();
        again.flush(true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn a_full_disk_keeps_the_unwritten_rest_for_the_next_flush() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let mut file = AppendFile::open(Path::new("/dev/full")).unwrap();
        file.buffer().extend_from_slice(b"line\n");
        let err = file.flush(true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        assert_eq!(file.buffer().as_slice(), b"line\n");
    }
}
