//! Finding the blocks to import: each DIR is a block, or a TSDB directory holding blocks.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use norn_storage::layout::{META_FILE, is_block_id};

/// The block directories named by `dirs`, in order: a DIR that is a block (it has
/// `meta.json`, or its name is a ULID) is itself; otherwise its ULID-named subdirectories.
/// A DIR that does not exist, or holds no block, is an error before anything is uploaded.
pub fn discover(dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for d in dirs {
        let md = match std::fs::metadata(d) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{}: no such directory", d.display())
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", d.display())),
        };
        if !md.is_dir() {
            bail!(
                "{}: not a directory (expected a block directory or a TSDB directory)",
                d.display()
            );
        }
        let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
        let found = if d.join(META_FILE).exists() || name.as_deref().is_some_and(is_block_id) {
            vec![d.clone()]
        } else {
            let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(d)
                .with_context(|| format!("{}: cannot list", d.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: cannot list", d.display()))?
                .into_iter()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect();
            entries.sort();
            let mut blocks = Vec::new();
            for (name, path) in entries {
                if let Some(why) = ignored_entry(&name, path.is_dir()) {
                    tracing::debug!(path = %path.display(), why, "ignoring");
                } else {
                    blocks.push(path);
                }
            }
            if blocks.is_empty() {
                bail!(
                    "{}: no blocks found (expected a block directory with meta.json, or a TSDB directory holding <ULID>/ block directories)",
                    d.display()
                );
            }
            blocks
        };
        for b in found {
            // The same directory named twice (`DIR DIR/<ULID>`) is imported once.
            let canonical = std::fs::canonicalize(&b).unwrap_or_else(|_| b.clone());
            if seen.insert(canonical) {
                out.push(b);
            }
        }
    }
    Ok(out)
}

/// Why an entry of a TSDB directory is not a block to import, if it is not.
fn ignored_entry(name: &str, is_dir: bool) -> Option<&'static str> {
    if name == "wal" || name == "chunks_head" {
        Some("the head's data, not a block (take a snapshot to include it)")
    } else if name.contains(".tmp") {
        Some("a block being written or deleted")
    } else if !is_dir {
        Some("not a directory")
    } else if !is_block_id(name) {
        Some("not named by a block ULID")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsdb_dir_entries() {
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH", true).is_none());
        assert!(ignored_entry("wal", true).is_some());
        assert!(ignored_entry("chunks_head", true).is_some());
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH.tmp-for-creation", true).is_some());
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH.tmp-for-deletion", true).is_some());
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH", false).is_some());
        assert!(ignored_entry("lock", false).is_some());
        assert!(ignored_entry("snapshots", true).is_some());
    }
}
