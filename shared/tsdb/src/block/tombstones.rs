//! The `tombstones` file (spec §8): deleted time intervals per series.
//!
//! Layout: magic `0x0130BA30` · version `1` · entries (`uvarint series_ref`, `varint mint`,
//! `varint maxt`, closed interval) · CRC32C over the entries only. Norn never deletes inside
//! a block, so it writes the empty file; it reads and applies tombstones because blocks from
//! Prometheus (admin API `delete_series`) may carry them.

use std::collections::HashMap;
use std::path::Path;

use super::io::{Decbuf, crc, put_uvarint, put_varint};
use crate::error::{Result, TsdbError};

pub const MAGIC_TOMBSTONES: u32 = 0x0130_BA30;
pub const TOMBSTONES_V1: u8 = 1;

/// Deleted intervals (closed) keyed by series ref.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tombstones {
    by_ref: HashMap<u64, Vec<(i64, i64)>>,
}

impl Tombstones {
    /// Adds a deleted interval.
    pub fn add(&mut self, series_ref: u64, mint: i64, maxt: i64) {
        self.by_ref
            .entry(series_ref)
            .or_default()
            .push((mint, maxt));
    }

    /// Intervals deleted from a series (empty for most).
    pub fn get(&self, series_ref: u64) -> &[(i64, i64)] {
        self.by_ref.get(&series_ref).map_or(&[], Vec::as_slice)
    }

    /// Number of intervals.
    pub fn len(&self) -> usize {
        self.by_ref.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ref.is_empty()
    }

    /// Encodes the file, entries sorted by series ref for a deterministic output.
    pub fn encode(&self) -> Vec<u8> {
        let mut refs: Vec<_> = self.by_ref.keys().copied().collect();
        refs.sort_unstable();
        let mut entries = Vec::new();
        for r in refs {
            for &(mint, maxt) in self.get(r) {
                put_uvarint(&mut entries, r);
                put_varint(&mut entries, mint);
                put_varint(&mut entries, maxt);
            }
        }
        let mut out = Vec::with_capacity(entries.len() + 9);
        out.extend_from_slice(&MAGIC_TOMBSTONES.to_be_bytes());
        out.push(TOMBSTONES_V1);
        out.extend_from_slice(&entries);
        out.extend_from_slice(&crc(&entries).to_be_bytes());
        out
    }

    /// Decodes the file; `path` names it in errors.
    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |msg: &str| TsdbError::Corrupt {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        };
        if b.len() < 9 {
            return Err(corrupt("tombstones file shorter than 9 bytes (truncated?)"));
        }
        if b[..4] != MAGIC_TOMBSTONES.to_be_bytes() {
            return Err(corrupt("bad tombstones magic"));
        }
        if b[4] != TOMBSTONES_V1 {
            return Err(corrupt("unsupported tombstones version"));
        }
        let entries = &b[5..b.len() - 4];
        let want = u32::from_be_bytes([
            b[b.len() - 4],
            b[b.len() - 3],
            b[b.len() - 2],
            b[b.len() - 1],
        ]);
        if crc(entries) != want {
            return Err(corrupt("tombstones checksum mismatch"));
        }
        let mut t = Tombstones::default();
        let mut d = Decbuf::new(entries);
        while d.remaining() > 0 {
            let (Some(r), Some(mint), Some(maxt)) = (d.uvarint(), d.varint(), d.varint()) else {
                return Err(corrupt("truncated tombstone entry"));
            };
            t.add(r, mint, maxt);
        }
        Ok(t)
    }

    /// Whether `t` falls in a deleted interval of `intervals`.
    pub fn is_deleted(intervals: &[(i64, i64)], t: i64) -> bool {
        intervals.iter().any(|&(a, b)| a <= t && t <= b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_matches_prometheus() {
        assert_eq!(
            Tombstones::default().encode(),
            [0x01, 0x30, 0xBA, 0x30, 0x01, 0, 0, 0, 0]
        );
    }

    #[test]
    fn round_trip_and_damage() {
        let mut t = Tombstones::default();
        t.add(3, -5, 100);
        t.add(3, 200, 300);
        t.add(1, 0, 0);
        let b = t.encode();
        let p = Path::new("tombstones");
        assert_eq!(Tombstones::decode(&b, p).unwrap(), t);
        assert!(Tombstones::is_deleted(t.get(3), 250));
        assert!(!Tombstones::is_deleted(t.get(3), 150));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x04;
            assert!(Tombstones::decode(&bad, p).is_err(), "flip at {i}");
        }
        assert!(Tombstones::decode(&b[..b.len() - 1], p).is_err());
    }
}
