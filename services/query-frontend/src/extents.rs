//! The results cache's entries: per cache key, the extents (time ranges on the query's step
//! grid) already answered, which are merged as more of the range is asked for.
//!
//! A key is the tenant, the query, its step, the split interval and which interval the leg
//! falls in, and the grid's offset (`start mod step`, since unaligned queries of the same text
//! have different points). Each split leg thus has its own entry, which a later query of the
//! same text and step finds whatever range it covers. An entry holds the key's full text, and
//! a read whose text differs (a hash collision) is a miss: a cache can never answer one
//! tenant's or one query's request with another's points.
//!
//! The freshest part of a range (`max_cache_freshness`) is never stored: samples may still
//! arrive for it. Answers with warnings or infos are not stored either (a warning can depend
//! on the range, and dropping it would hide it). See [`partition`] and [`merge_extents`].

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::response::{Matrix, SeriesData, merge, trim};

/// A range already answered: `[start, end]` on the key's grid, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub start: i64,
    pub end: i64,
    pub series: Vec<SeriesData>,
}

/// What is stored under a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key's full text, checked on read.
    pub key: String,
    pub extents: Vec<Extent>,
}

/// The full text of a leg's cache key.
pub fn key_text(tenant: &str, query: &str, step: i64, interval: i64, leg_start: i64) -> String {
    let bucket = if interval > 0 {
        leg_start.div_euclid(interval)
    } else {
        0
    };
    format!(
        "{tenant}:{step}:{interval}:{bucket}:{}:{query}",
        leg_start.rem_euclid(step)
    )
}

/// The key the cache backend sees: short enough for memcached (250 bytes, tenant ids are at
/// most 150) and free of the query's characters.
pub fn backend_key(tenant: &str, text: &str) -> String {
    format!("qf:{tenant}:{:032x}", xxh3_128(text.as_bytes()))
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The entry stored under `text`, or `None` (unreadable, or another key's).
    pub fn decode(bytes: &[u8], text: &str) -> Option<Entry> {
        let e: Entry = serde_json::from_slice(bytes).ok()?;
        (e.key == text).then_some(e)
    }
}

/// Splits `[start, end]` (grid `start + k·step`) into the parts `extents` answer (trimmed to
/// the range) and the gaps still to ask for, both in time order.
pub fn partition(
    start: i64,
    end: i64,
    step: i64,
    extents: &[Extent],
) -> (Vec<Extent>, Vec<(i64, i64)>) {
    let mut sorted: Vec<&Extent> = extents.iter().collect();
    sorted.sort_by_key(|e| e.start);
    let mut cached = Vec::new();
    let mut gaps = Vec::new();
    let mut cur = start;
    for e in sorted {
        if cur > end {
            break;
        }
        if e.end < cur || e.start > end {
            continue;
        }
        if e.start > cur {
            // The last grid point before the extent starts.
            let gap_end = cur + (e.start - 1 - cur) / step * step;
            gaps.push((cur, gap_end));
        }
        let from = cur.max(e.start);
        let to = e.end.min(end);
        cached.push(Extent {
            start: from,
            end: to,
            series: trim(&e.series, from, to),
        });
        // The first grid point after the extent.
        cur = match to.checked_add(step - (to - start).rem_euclid(step)) {
            Some(next) => next,
            None => return (cached, gaps),
        };
    }
    if cur <= end {
        gaps.push((cur, end));
    }
    (cached, gaps)
}

/// Sorts `extents` and merges those that overlap or touch (the next starts at most one step
/// after the previous ends) into one, so an entry stays a few extents however often it grows.
pub fn merge_extents(mut extents: Vec<Extent>, step: i64) -> Vec<Extent> {
    extents.sort_by_key(|e| (e.start, e.end));
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        match out.last_mut() {
            Some(last) if e.start <= last.end.saturating_add(step) => {
                let series = merge([
                    Matrix {
                        series: std::mem::take(&mut last.series),
                        ..Matrix::default()
                    },
                    Matrix {
                        series: e.series,
                        ..Matrix::default()
                    },
                ])
                .series;
                last.series = series;
                last.end = last.end.max(e.end);
            }
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: i64, end: i64, step: i64) -> Extent {
        let points = (0..)
            .map(|k| start + k * step)
            .take_while(|t| *t <= end)
            .map(|t| (t, t.to_string().into()))
            .collect();
        Extent {
            start,
            end,
            series: vec![SeriesData {
                labels: vec![("a".into(), "b".into())],
                points,
            }],
        }
    }

    #[test]
    fn partition_finds_the_gaps_on_the_grid() {
        // Grid 5 + 10k; cached [25, 45] and [85, 95]; asked [5, 125].
        let (cached, gaps) = partition(5, 125, 10, &[ext(85, 95, 10), ext(25, 45, 10)]);
        assert_eq!(gaps, [(5, 15), (55, 75), (105, 125)]);
        assert_eq!(cached.len(), 2);
        assert_eq!((cached[0].start, cached[0].end), (25, 45));
        // An extent reaching past the range is trimmed to it.
        let (cached, gaps) = partition(35, 90, 10, &[ext(25, 45, 10), ext(85, 95, 10)]);
        assert_eq!(gaps, [(55, 75)]);
        assert_eq!(cached[0].series[0].points.first().unwrap().0, 35);
        assert_eq!(cached[1].series[0].points, [(85, "85".into())]);
        // Nothing cached, or all of it.
        assert_eq!(partition(0, 30, 10, &[]).1, [(0, 30)]);
        assert!(partition(30, 40, 10, &[ext(0, 100, 10)]).1.is_empty());
    }

    #[test]
    fn touching_and_overlapping_extents_merge() {
        let m = merge_extents(vec![ext(40, 60, 10), ext(0, 20, 10), ext(30, 30, 10)], 10);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].start, m[0].end), (0, 60));
        assert_eq!(m[0].series[0].points.len(), 7);
        let m = merge_extents(vec![ext(0, 20, 10), ext(40, 60, 10)], 10);
        assert_eq!(m.len(), 2, "a gap of one point keeps them apart");
        let m = merge_extents(vec![ext(0, 50, 10), ext(20, 30, 10)], 10);
        assert_eq!((m.len(), m[0].end, m[0].series[0].points.len()), (1, 50, 6));
    }

    #[test]
    fn keys_separate_tenants_queries_steps_intervals_and_offsets() {
        let base = key_text("t", "up", 10, 100, 205);
        for other in [
            key_text("u", "up", 10, 100, 205),
            key_text("t", "up2", 10, 100, 205),
            key_text("t", "up", 20, 100, 205),
            key_text("t", "up", 10, 50, 205),
            key_text("t", "up", 10, 100, 305),
            key_text("t", "up", 10, 100, 206),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(
            base,
            key_text("t", "up", 10, 100, 215),
            "same leg, later start"
        );
        let e = Entry {
            key: base.clone(),
            extents: vec![ext(0, 10, 10)],
        };
        assert_eq!(Entry::decode(&e.encode(), &base), Some(e.clone()));
        assert_eq!(
            Entry::decode(&e.encode(), "other"),
            None,
            "a collision is a miss"
        );
        assert!(backend_key("t", &base).len() < 250);
    }
}
