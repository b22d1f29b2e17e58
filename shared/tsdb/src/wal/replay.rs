//! Replaying a WAL after a restart: the newest checkpoint, then every later segment, in
//! order; a damaged tail is cut back to the last intact record and later segments deleted,
//! so starting up is never refused because of a bad tail.

use std::fs::{self, OpenOptions};
use std::path::Path;

use super::checkpoint::{checkpoint_path, list_checkpoints};
use super::framing::{Damage, read_segment};
use super::{list_segments, segment_path, sync_dir};
use crate::error::{Result, TsdbError};
use crate::metrics::TsdbMetrics;

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayResult {
    /// Segments read.
    pub segments: usize,
    /// Records handed to the callback.
    pub records: u64,
    /// Corrupt or torn tails repaired (0 or 1: the first one ends the replay).
    pub corruptions: u64,
    /// Bytes cut off by the repair, later segments included.
    pub truncated_bytes: u64,
    /// Later segments deleted by the repair.
    pub deleted_segments: usize,
}

/// Replays `segments` of `dir`, repairing a damaged one (truncate it, delete the later ones
/// of this list). Returns whether damage was found.
fn replay_segments(
    dir: &Path,
    segments: &[u32],
    metrics: &TsdbMetrics,
    res: &mut ReplayResult,
    f: &mut dyn FnMut(&[u8]),
) -> Result<bool> {
    let mut decoder = snap::raw::Decoder::new();
    for (i, &seg) in segments.iter().enumerate() {
        let path = segment_path(dir, seg);
        let data = fs::read(&path).map_err(|e| TsdbError::io(&path, e))?;
        res.segments += 1;
        let (good_end, records, damage) = read_segment(&data, &mut decoder, f);
        res.records += records;
        let Some((offset, damage)) = damage else {
            continue;
        };
        tracing::warn!(
            segment = %path.display(),
            offset,
            truncate_at = good_end,
            reason = damage.reason(),
            torn = matches!(damage, Damage::Torn(_)),
            "WAL tail is damaged; truncating at the last intact record"
        );
        metrics.wal_corruptions.inc();
        res.corruptions += 1;
        res.truncated_bytes += (data.len() - good_end) as u64;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| TsdbError::io(&path, e))?;
        file.set_len(good_end as u64)
            .map_err(|e| TsdbError::io(&path, e))?;
        file.sync_all().map_err(|e| TsdbError::io(&path, e))?;
        for &later in &segments[i + 1..] {
            let p = segment_path(dir, later);
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&p).map_err(|e| TsdbError::io(&p, e))?;
            tracing::warn!(segment = %p.display(), "deleted WAL segment after a damaged one");
            res.truncated_bytes += len;
            res.deleted_segments += 1;
        }
        sync_dir(dir)?;
        return Ok(true);
    }
    Ok(false)
}

/// Reads the newest checkpoint (if any) and then every later segment in `dir`, in order,
/// calling `f` with each record payload (decompressed). Repairs a damaged tail as described
/// in the module docs; a damaged checkpoint is truncated the same way and replay goes on
/// with the segments.
pub fn replay(dir: &Path, metrics: &TsdbMetrics, mut f: impl FnMut(&[u8])) -> Result<ReplayResult> {
    let mut res = ReplayResult::default();
    let mut first_segment = 0u32;
    if let Some(&cp) = list_checkpoints(dir)?.last() {
        let cp_dir = checkpoint_path(dir, cp);
        let segs = list_segments(&cp_dir)?;
        replay_segments(&cp_dir, &segs, metrics, &mut res, &mut f)?;
        first_segment = cp.saturating_add(1);
    }
    // Segments the checkpoint covers may still exist if a crash interrupted their deletion.
    let segments: Vec<u32> = list_segments(dir)?
        .into_iter()
        .filter(|&s| s >= first_segment)
        .collect();
    replay_segments(dir, &segments, metrics, &mut res, &mut f)?;
    Ok(res)
}
