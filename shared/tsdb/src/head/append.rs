//! The head's write path: [`Head::append`] and keeping the WAL's series records whole after
//! a WAL write error.
//!
//! For each series of a [`WriteBatch`] the head hashes the borrowed label bytes and looks the
//! series up in its [`SeriesIndex`](super::series_index::SeriesIndex) without allocating;
//! only a new series is copied (interned, given an id, indexed). Samples are checked (too
//! old, out of order, duplicate) and appended under the series' own mutex, so appenders only
//! contend when they write the same series. Everything accepted is then written to the WAL,
//! new series records before the samples, and `append` returns after the WAL's group commit
//! made it durable.

use std::sync::atomic::Ordering;

use norn_model::WriteBatch;

use super::outcomes::{AppendOutcome, RejectReason, Rejection};
use super::series_index::labels_hash;
use super::{AppendLimits, Head};
use crate::error::Result;
use crate::wal::record::{self, RefSample};

impl Head {
    /// Appends a batch and returns once everything accepted is durable in the WAL (with
    /// fsync policy `always`; it blocks on fsync, so async callers should use
    /// `spawn_blocking`). Per-sample problems are reported in the outcome, not as errors;
    /// an error means the WAL failed and nothing about this batch can be promised (the head
    /// then refuses further writes with [`TsdbError::WalBroken`](crate::TsdbError::WalBroken)).
    pub fn append(&self, batch: &WriteBatch, limits: &AppendLimits) -> Result<AppendOutcome> {
        self.ensure_wal_writable()?;
        let _gate = self.append_gate.read();
        let mut out = AppendOutcome::default();
        let mut series_rec: Vec<u8> = Vec::new();
        let mut wal_samples: Vec<RefSample> = Vec::with_capacity(batch.num_samples());
        let max_t = self.max_t.load(Ordering::Acquire);
        let min_valid = if max_t == i64::MIN {
            i64::MIN
        } else {
            max_t.saturating_sub(self.too_old_window)
        }
        .max(self.min_valid_time.load(Ordering::Acquire));
        let mut batch_min = i64::MAX;
        let mut batch_max = i64::MIN;
        let mem = &self.index;
        let store = self.store();
        let mut hash_buf = Vec::with_capacity(256);
        let mut start_zeros = 0usize;

        'series: for (idx, sv) in batch.iter().enumerate() {
            let samples = sv.samples();
            if samples.is_empty() {
                continue;
            }
            let hash = labels_hash(&sv, &mut hash_buf);
            let (mut too_old, mut ooo, mut dup, mut bounds) = (0usize, 0usize, 0usize, 0usize);
            // A series found here may be removed by a concurrent truncation before its lock
            // is taken (the flag is set under that lock); then it is looked up, and so
            // created, again.
            loop {
                let series = match mem.get(hash, &sv) {
                    Some(s) => s,
                    None => match mem.create(hash, &sv, limits) {
                        Ok((s, created)) => {
                            if created {
                                out.series_created += 1;
                                if series_rec.is_empty() {
                                    record::begin_series(&mut series_rec);
                                }
                                record::push_series(
                                    &mut series_rec,
                                    u64::from(s.id),
                                    sv.label_bytes(),
                                );
                            }
                            s
                        }
                        Err(reason) => {
                            out.rejected.push(Rejection {
                                series_index: idx,
                                reason,
                                samples: samples.len(),
                            });
                            continue 'series;
                        }
                    },
                };
                let mut st = series.state.lock();
                if st.is_removed() {
                    continue;
                }
                let mut last = st.last();
                // Created-timestamp zero ingestion, as Prometheus does it: a 0 at the series'
                // start time when that is before its first sample here and newer than what is
                // stored (so a counter's increase from its start is visible); otherwise it is
                // skipped silently — never an out-of-order refusal — and it is never counted
                // as an appended sample.
                if let Some(ct) = sv.start_timestamp()
                    && norn_model::sample_time_in_bounds(ct)
                    && ct < samples[0].t
                    && ct >= min_valid
                    && last.is_none_or(|(lt, _)| ct > lt)
                {
                    st.append(series.id, ct, 0.0, store);
                    last = Some((ct, 0.0f64.to_bits()));
                    wal_samples.push(RefSample {
                        series: u64::from(series.id),
                        t: ct,
                        v: 0.0,
                    });
                    start_zeros += 1;
                    batch_min = batch_min.min(ct);
                    batch_max = batch_max.max(ct);
                }
                for s in samples {
                    if !norn_model::sample_time_in_bounds(s.t) {
                        bounds += 1;
                        continue;
                    }
                    if s.t < min_valid {
                        too_old += 1;
                        continue;
                    }
                    if let Some((lt, lv)) = last {
                        if s.t < lt {
                            ooo += 1;
                            continue;
                        }
                        if s.t == lt {
                            if s.v.to_bits() != lv {
                                dup += 1;
                            }
                            continue;
                        }
                    }
                    st.append(series.id, s.t, s.v, store);
                    last = Some((s.t, s.v.to_bits()));
                    wal_samples.push(RefSample {
                        series: u64::from(series.id),
                        t: s.t,
                        v: s.v,
                    });
                    batch_min = batch_min.min(s.t);
                    batch_max = batch_max.max(s.t);
                }
                break;
            }
            for (reason, n) in [
                (RejectReason::TooOld, too_old),
                (RejectReason::OutOfOrder, ooo),
                (RejectReason::DuplicateTimestamp, dup),
                (RejectReason::OutOfBounds, bounds),
            ] {
                if n > 0 {
                    out.rejected.push(Rejection {
                        series_index: idx,
                        reason,
                        samples: n,
                    });
                }
            }
        }

        out.appended = wal_samples.len() - start_zeros;
        let mut samples_rec = Vec::new();
        if !wal_samples.is_empty() {
            record::encode_samples(&mut samples_rec, &wal_samples);
        }
        let recs: Vec<&[u8]> = [&series_rec[..], &samples_rec[..]]
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect();
        if let Err(e) = self.wal.log(&recs) {
            self.wal_relog.store(true, Ordering::Release);
            return Err(e);
        }

        if batch_max != i64::MIN {
            self.min_t.fetch_min(batch_min, Ordering::AcqRel);
            self.max_t.fetch_max(batch_max, Ordering::AcqRel);
        }
        self.metrics
            .head_samples_appended
            .inc_by(out.appended as u64);
        self.metrics
            .head_series_created
            .inc_by(out.series_created as u64);
        Ok(out)
    }

    /// Fails while the WAL cannot be written; after it recovered from an error, first logs
    /// every series record again (see `wal_relog`). Replay ignores a series record it has
    /// seen, and holds samples that arrive before their series' record, so neither the
    /// duplicates nor a concurrent append's samples written ahead of the records harm it.
    fn ensure_wal_writable(&self) -> Result<()> {
        if self.wal.is_broken() {
            self.wal_relog.store(true, Ordering::Release);
        }
        self.wal.check_writable()?;
        if !self.wal_relog.load(Ordering::Acquire) {
            return Ok(());
        }
        let _relog = self.relog_lock.lock();
        if !self.wal_relog.load(Ordering::Acquire) {
            return Ok(());
        }
        self.log_all_series()?;
        self.wal_relog.store(false, Ordering::Release);
        Ok(())
    }

    /// Writes a series record for every series in the head, about 1 MiB per record.
    fn log_all_series(&self) -> Result<()> {
        const RECORD_BYTES: usize = 1 << 20;
        let mut rec = Vec::new();
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        let mut logged = 0usize;
        let symbols = &self.index.symbols;
        for series in self.index.shards() {
            for s in series {
                if rec.is_empty() {
                    record::begin_series(&mut rec);
                }
                pairs.clear();
                pairs.extend(
                    s.labels()
                        .chunks_exact(2)
                        .map(|p| (symbols.get(p[0]).as_bytes(), symbols.get(p[1]).as_bytes())),
                );
                record::push_series(&mut rec, u64::from(s.id), pairs.iter().copied());
                logged += 1;
                if rec.len() >= RECORD_BYTES {
                    self.wal.log(&[&rec])?;
                    rec.clear();
                }
            }
        }
        if !rec.is_empty() {
            self.wal.log(&[&rec])?;
        }
        tracing::info!(
            series = logged,
            "series records logged again after a WAL write error"
        );
        Ok(())
    }
}
