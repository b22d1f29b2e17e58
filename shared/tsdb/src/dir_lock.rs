//! The TSDB directory's lock file: one process at a time owns `<tsdb dir>`.
//!
//! Two ingesters on one directory corrupt each other: the second replays every tenant, wipes
//! `chunks_head/` and `head_spill/` (caches it believes are its own) and starts WAL segments
//! the first then collides with. Prometheus guards its data directory with a `lock` file; so
//! does Norn. The lock is an `flock(2)` on `<dir>/lock`, taken before anything else touches the
//! directory and held for the life of the process: the kernel releases it when the process
//! exits, however it exits, so a crash never leaves a stale lock behind. The file holds the
//! owner's pid, for the error message a second process prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, TsdbError};

/// Name of the lock file inside the TSDB directory.
pub const LOCK_FILE: &str = "lock";

/// A held lock on a directory; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

impl DirLock {
    /// Locks `dir` (created if missing), or fails with [`TsdbError::Locked`] naming the
    /// process that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| TsdbError::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| TsdbError::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(TsdbError::Locked {
                    path: dir.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            return Err(TsdbError::io(&path, err));
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(|e| TsdbError::io(&path, e))?;
        Ok(DirLock { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second open in this process
        // conflicts exactly as another process would.
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in use by another process"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
