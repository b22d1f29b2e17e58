//! What the head's two cache directories, `chunks_head/` and `head_spill/`, share: they are
//! wiped when a head opens (the WAL rebuilds them), hold numbered files `000001`, … that
//! are created once and never reopened, and fall back to memory when they cannot write.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Result, TsdbError};

/// Empties `dir` (creating it if needed) and returns it.
pub(super) fn reset(dir: impl Into<PathBuf>) -> Result<PathBuf> {
    let dir = dir.into();
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| TsdbError::io(&dir, e))?;
    }
    fs::create_dir_all(&dir).map_err(|e| TsdbError::io(&dir, e))?;
    Ok(dir)
}

/// Path of file number `n`.
pub(super) fn file_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:06}"))
}

/// Creates file number `n`, which must not exist yet, for reading and writing.
pub(super) fn create(dir: &Path, n: u32) -> Result<(File, PathBuf)> {
    let path = file_path(dir, n);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| TsdbError::io(&path, e))?;
    Ok((file, path))
}

/// File number of the refs of values kept in memory.
const MEMORY_FILE: u32 = u32::MAX;

/// Whether `r` is a ref of a [`MemoryFallback`] rather than of a file.
pub(super) fn is_memory_ref(r: u64) -> bool {
    (r >> 32) as u32 == MEMORY_FILE
}

/// What a cache directory keeps in memory when it cannot write (disk full, I/O error), so a
/// failing disk costs memory, never samples: values by refs with file number
/// [`MEMORY_FILE`]. Warns once per run of failures, not per value.
pub(super) struct MemoryFallback<T> {
    /// Directory name for the log lines.
    what: &'static str,
    failing: AtomicBool,
    values: Mutex<Values<T>>,
}

struct Values<T> {
    next: u32,
    by_ref: HashMap<u64, T>,
}

impl<T> MemoryFallback<T> {
    pub(super) fn new(what: &'static str) -> Self {
        Self {
            what,
            failing: AtomicBool::new(false),
            values: Mutex::new(Values {
                next: 0,
                by_ref: HashMap::new(),
            }),
        }
    }

    /// A write to the directory worked (ends a run of failures).
    pub(super) fn wrote(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                dir = self.what,
                "writing to the head cache directory works again"
            );
        }
    }

    /// Keeps `value`, whose write failed with `error`; returns its ref.
    pub(super) fn keep(&self, error: &TsdbError, value: T) -> u64 {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(dir = self.what, error = %error, "cannot write to the head cache directory; keeping its data in memory");
        }
        let mut v = self.values.lock();
        v.next = v.next.wrapping_add(1);
        let r = (u64::from(MEMORY_FILE) << 32) | u64::from(v.next);
        v.by_ref.insert(r, value);
        r
    }

    /// `f` of the value at `r`, if it is still kept.
    pub(super) fn with<R>(&self, r: u64, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.values.lock().by_ref.get(&r).map(f)
    }

    pub(super) fn remove(&self, r: u64) {
        self.values.lock().by_ref.remove(&r);
    }

    pub(super) fn retain(&self, keep: impl FnMut(&u64, &mut T) -> bool) {
        self.values.lock().by_ref.retain(keep);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values.lock().by_ref.len()
    }
}
