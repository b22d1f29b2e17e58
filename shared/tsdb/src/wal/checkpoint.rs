//! WAL checkpoints: after a block cut, the segments holding only older data are rewritten
//! into `checkpoint.N/` (Prometheus' layout, a directory of segments in the same format)
//! keeping only live series and recent samples, and then deleted. Crash-safe: the
//! checkpoint is written to a `.tmp` directory, fsynced and renamed before anything goes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::framing::read_segment;
use super::{FsyncPolicy, Wal, WalOptions, list_segments, record, segment_path, sync_dir};
use crate::error::{Result, TsdbError};

/// Checkpoint directories (`checkpoint.NNNNNNNN`) in `dir`, ascending by the segment they
/// cover. Unfinished ones (`.tmp`) are not listed.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TsdbError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| TsdbError::io(dir, e))?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("checkpoint.")) else {
            continue;
        };
        if rest.len() == 8
            && rest.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = rest.parse::<u32>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(super) fn checkpoint_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("checkpoint.{n:08}"))
}

/// What [`Wal::checkpoint`] kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// The last segment the checkpoint covers (its directory is `checkpoint.<this>`).
    pub segment: u32,
    pub series_kept: u64,
    pub series_dropped: u64,
    pub samples_kept: u64,
    pub samples_dropped: u64,
    /// Segments deleted after the checkpoint was written.
    pub segments_deleted: usize,
}

impl Wal {
    /// Compacts segments `..= upto` (and the previous checkpoint) into
    /// `checkpoint.<upto>`: series records of series for which `keep_series(ref)` holds and
    /// their samples at or after `mint`; everything else is dropped. Then deletes those
    /// segments and older checkpoints. Call [`Wal::rotate`] first so `upto` is complete;
    /// `upto` must be below the current segment. Crash-safe: the checkpoint is written to a
    /// `.tmp` directory, fsynced and renamed before anything is deleted.
    pub fn checkpoint(
        &self,
        upto: u32,
        keep_series: impl Fn(u64) -> bool,
        mint: i64,
    ) -> Result<CheckpointStats> {
        if upto >= self.current_segment() {
            return Err(TsdbError::InvalidOption(format!(
                "checkpoint must end before the current segment, got {upto}"
            )));
        }
        let mut stats = CheckpointStats {
            segment: upto,
            ..Default::default()
        };
        let prev = list_checkpoints(&self.dir)?
            .into_iter()
            .rfind(|&c| c <= upto);
        let tmp = self.dir.join(format!("checkpoint.{upto:08}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TsdbError::io(&tmp, e))?;
        }
        {
            let out = Wal::open(
                &tmp,
                WalOptions {
                    segment_size: self.opts.segment_size,
                    fsync: FsyncPolicy::Never,
                },
                Arc::clone(&self.metrics),
            )?;
            let mut inputs: Vec<(PathBuf, Vec<u32>)> = Vec::new();
            let first = match prev {
                Some(cp) => {
                    let d = checkpoint_path(&self.dir, cp);
                    let segs = list_segments(&d)?;
                    inputs.push((d, segs));
                    cp + 1
                }
                None => 0,
            };
            let segs: Vec<u32> = list_segments(&self.dir)?
                .into_iter()
                .filter(|&s| s >= first && s <= upto)
                .collect();
            inputs.push((self.dir.clone(), segs));

            let mut decoder = snap::raw::Decoder::new();
            let mut err: Option<TsdbError> = None;
            let mut buf = Vec::new();
            for (dir, segs) in &inputs {
                for &seg in segs {
                    let path = segment_path(dir, seg);
                    let data = fs::read(&path).map_err(|e| TsdbError::io(&path, e))?;
                    let mut on_record = |rec: &[u8]| {
                        if err.is_some() {
                            return;
                        }
                        buf.clear();
                        match record::decode(rec) {
                            Ok(record::Record::Series(series)) => {
                                record::begin_series(&mut buf);
                                let before = buf.len();
                                for s in series {
                                    if keep_series(s.series) {
                                        stats.series_kept += 1;
                                        record::push_series(
                                            &mut buf,
                                            s.series,
                                            s.labels
                                                .iter()
                                                .map(|l| (l.name.as_bytes(), l.value.as_bytes())),
                                        );
                                    } else {
                                        stats.series_dropped += 1;
                                    }
                                }
                                if buf.len() == before {
                                    buf.clear();
                                }
                            }
                            Ok(record::Record::Samples(samples)) => {
                                let kept: Vec<record::RefSample> = samples
                                    .iter()
                                    .filter(|s| s.t >= mint && keep_series(s.series))
                                    .copied()
                                    .collect();
                                stats.samples_kept += kept.len() as u64;
                                stats.samples_dropped += (samples.len() - kept.len()) as u64;
                                if !kept.is_empty() {
                                    record::encode_samples(&mut buf, &kept);
                                }
                            }
                            Ok(record::Record::Unknown(_)) | Err(_) => {}
                        }
                        if !buf.is_empty()
                            && let Err(e) = out.log(&[&buf])
                        {
                            err = Some(e);
                        }
                    };
                    let (_, _, damage) = read_segment(&data, &mut decoder, &mut on_record);
                    if let Some(e) = err.take() {
                        return Err(e);
                    }
                    if let Some((offset, damage)) = damage {
                        return Err(TsdbError::Corrupt {
                            path,
                            msg: format!("{} at offset {offset}", damage.reason()),
                        });
                    }
                }
            }
            out.close()?;
        }
        let final_dir = checkpoint_path(&self.dir, upto);
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(|e| TsdbError::io(&final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir).map_err(|e| TsdbError::io(&tmp, e))?;
        sync_dir(&self.dir)?;
        // Only now is it safe to delete what the checkpoint replaces.
        stats.segments_deleted = self.truncate_before(upto + 1)?;
        for cp in list_checkpoints(&self.dir)? {
            if cp < upto {
                let d = checkpoint_path(&self.dir, cp);
                fs::remove_dir_all(&d).map_err(|e| TsdbError::io(&d, e))?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(stats)
    }
}
