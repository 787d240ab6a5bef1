//! A size-limited tmpfs for tests of a full disk: mounted on a temporary directory (the tests run as
//! root), filled up by a file of its own when a test wants the disk full now, unmounted when dropped,
//! also when the test fails.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A tmpfs of `size` (as `mount -o size=` takes it: `96k`, `2m`).
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount must be installed (util-linux); the test runs as root");
        assert!(mounted.success(), "mounting a tmpfs needs root");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the disk a new size (more room, or less).
    pub fn grow(&self, size: &str) {
        let remounted = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(remounted.success());
    }

    /// Fills what room is left with a file of its own (other files filling the disk); deleting that
    /// file gives the room back.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::StorageFull => return filler,
                Err(err) => panic!("filling {}: {err}", self.path().display()),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a process the test started may still hold a file open on it.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}
