//! Rebuilding a head from its WAL: the parts of a head that exist before the WAL is opened
//! ([`HeadMem`]) and the record-by-record replay into them.
//!
//! Memory is written before the WAL on the write path, so the log can hold a series' samples
//! before its series record, and two appends to one series in the opposite order from
//! memory. Replay holds samples of a not-yet-seen series until its record arrives, and
//! inserts an older sample in order; samples whose record never comes are dropped and
//! counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::mmap_chunks::ChunkMapper;
use super::outcomes::ReplayStats;
use super::series::{MemSeries, Store};
use super::series_index::SeriesIndex;
use super::spill::SpillLog;
use crate::wal::record;

/// Samples of a series not known yet during replay, by ref.
type Pending = std::collections::HashMap<u64, Vec<(i64, f64)>>;

/// What replay carries from one record to the next.
#[derive(Default)]
pub(super) struct ReplayState {
    pub(super) pending: Pending,
}

/// The parts of a head that exist before its WAL is opened (during replay).
pub(super) struct HeadMem {
    pub(super) chunk_range: i64,
    /// Replay drops samples before this (they are in blocks already).
    pub(super) min_valid_time: i64,
    pub(super) mapper: ChunkMapper,
    pub(super) spill: SpillLog,
    pub(super) index: SeriesIndex,
    pub(super) min_t: AtomicI64,
    pub(super) max_t: AtomicI64,
}

impl HeadMem {
    pub(super) fn new(chunk_range: i64, mapper: ChunkMapper, spill: SpillLog) -> Self {
        Self {
            chunk_range,
            min_valid_time: i64::MIN,
            mapper,
            spill,
            index: SeriesIndex::new(),
            min_t: AtomicI64::new(i64::MAX),
            max_t: AtomicI64::new(i64::MIN),
        }
    }

    pub(super) fn replay_record(
        &self,
        rec: &[u8],
        state: &mut ReplayState,
        stats: &mut ReplayStats,
    ) {
        match record::decode(rec) {
            Ok(record::Record::Series(series)) => {
                for rs in series {
                    self.replay_series(rs, state, stats);
                }
            }
            Ok(record::Record::Samples(samples)) => {
                let mut last: Option<Arc<MemSeries>> = None;
                for s in &samples {
                    let series = match &last {
                        Some(l) if u64::from(l.id) == s.series => Some(Arc::clone(l)),
                        _ => u32::try_from(s.series)
                            .ok()
                            .and_then(|id| self.index.by_id(id)),
                    };
                    match series {
                        Some(series) => {
                            if self.replay_sample(&series, s.t, s.v) {
                                stats.samples += 1;
                            }
                            last = Some(series);
                        }
                        None => state.pending.entry(s.series).or_default().push((s.t, s.v)),
                    }
                }
            }
            Ok(record::Record::Unknown(_)) => {}
            Err(e) => {
                stats.bad_records += 1;
                tracing::warn!(error = %e, "skipping undecodable WAL record");
            }
        }
    }

    fn replay_series(
        &self,
        rs: record::RefSeries,
        state: &mut ReplayState,
        stats: &mut ReplayStats,
    ) {
        let Ok(id) = u32::try_from(rs.series) else {
            stats.bad_records += 1;
            return;
        };
        if self.index.by_id(id).is_some() {
            return;
        }
        let symbols = &self.index.symbols;
        let flat: Box<[u32]> = rs
            .labels
            .iter()
            .flat_map(|l| [symbols.intern(&l.name), symbols.intern(&l.value)])
            .collect();
        let series = Arc::new(MemSeries::new(id, flat));
        self.index.insert(rs.labels.stable_hash(), &series);
        stats.series += 1;
        if let Some(samples) = state.pending.remove(&rs.series) {
            for (t, v) in samples {
                if self.replay_sample(&series, t, v) {
                    stats.samples += 1;
                }
            }
        }
    }

    /// Appends a replayed sample; older ones are inserted in order (see the module docs).
    fn replay_sample(&self, series: &MemSeries, t: i64, v: f64) -> bool {
        // A WAL written before the absolute bounds existed may hold such a sample; taking it
        // back would put the head in a state no cut can handle.
        if t < self.min_valid_time || !norn_model::sample_time_in_bounds(t) {
            return false;
        }
        let store = Store {
            chunk_range: self.chunk_range,
            mapper: &self.mapper,
            spill: &self.spill,
        };
        let mut st = series.state.lock();
        let ok = match st.last() {
            Some((lt, _)) if t == lt => false,
            Some((lt, _)) if t < lt => st.insert_out_of_order(series.id, t, v, store),
            _ => {
                st.append(series.id, t, v, store);
                true
            }
        };
        if ok {
            self.min_t.fetch_min(t, Ordering::AcqRel);
            self.max_t.fetch_max(t, Ordering::AcqRel);
        }
        ok
    }
}
