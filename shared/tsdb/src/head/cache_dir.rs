//! What the head's two cache directories, `chunks_head/` and `head_spill/`, share: they are
//! wiped when a head opens (the WAL rebuilds them) and hold numbered files `000001`, … that
//! are created once and never reopened.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

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
