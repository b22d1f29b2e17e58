//! Segment framing (Prometheus' `wlog` §10): how records become fragments in 32 KiB pages
//! on the way in, and how a segment's bytes are parsed back into records on the way out,
//! telling a torn tail (a crash mid-write) from corruption.
//!
//! A fragment is `type u8 | len u16 BE | crc32c u32 BE (of the payload) | payload[len]`;
//! a header never straddles a page (fewer than 7 bytes left: the page is zero-filled).

use super::{Wal, Writer};
use crate::error::Result;

/// WAL page size.
pub const PAGE_SIZE: usize = 32 * 1024;
/// Fragment header size: type, length, CRC.
const HEADER_SIZE: usize = 7;

/// Fragment types (bits 0-2) and the snappy flag (bit 3).
const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;
const SNAPPY: u8 = 0x08;

impl Wal {
    /// Compresses `rec` and appends its fragments to the writer's buffer, moving to the next
    /// segment first when the record does not fit in what is left of this one.
    pub(super) fn frame_record(&self, w: &mut Writer, rec: &[u8]) -> Result<()> {
        // Compress the whole record; keep it raw when snappy does not help.
        let mut comp = std::mem::take(&mut w.comp);
        comp.resize(snap::raw::max_compress_len(rec.len()), 0);
        let (payload, flag): (&[u8], u8) = match w.encoder.compress(rec, &mut comp) {
            Ok(n) if n < rec.len() => (&comp[..n], SNAPPY),
            _ => (rec, 0),
        };

        let pages_per_segment = (self.opts.segment_size as usize) / PAGE_SIZE;
        let left = (PAGE_SIZE - w.page_alloc - HEADER_SIZE)
            + (PAGE_SIZE - HEADER_SIZE) * pages_per_segment.saturating_sub(w.done_pages + 1);
        let segment_empty = w.done_pages == 0 && w.page_alloc == 0;
        if payload.len() > left && !segment_empty {
            let res = self.next_segment(w);
            if let Err(e) = res {
                w.comp = comp;
                return Err(e);
            }
        }

        let mut rest = payload;
        let mut i = 0;
        while i == 0 || !rest.is_empty() {
            let l = rest.len().min(PAGE_SIZE - w.page_alloc - HEADER_SIZE);
            let (part, tail) = rest.split_at(l);
            let typ = match (i == 0, tail.is_empty()) {
                (true, true) => FULL,
                (false, true) => LAST,
                (true, false) => FIRST,
                (false, false) => MIDDLE,
            } | flag;
            w.out.push(typ);
            w.out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            w.out.extend_from_slice(&crc32c::crc32c(part).to_be_bytes());
            w.out.extend_from_slice(part);
            w.page_alloc += HEADER_SIZE + part.len();
            if PAGE_SIZE - w.page_alloc < HEADER_SIZE {
                let pad = PAGE_SIZE - w.page_alloc;
                w.out.resize(w.out.len() + pad, 0);
                w.page_alloc = 0;
                w.done_pages += 1;
            }
            rest = tail;
            i += 1;
        }
        w.comp = comp;
        Ok(())
    }
}

/// Why a segment's tail was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Damage {
    Torn(&'static str),
    Corrupt(&'static str),
}

impl Damage {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Damage::Torn(r) | Damage::Corrupt(r) => r,
        }
    }
}

/// Parses one segment's bytes, calling `f` for each complete record. Returns the offset just
/// past the last intact record and the damage found after it, if any.
pub(super) fn read_segment(
    data: &[u8],
    decoder: &mut snap::raw::Decoder,
    f: &mut dyn FnMut(&[u8]),
) -> (usize, u64, Option<(usize, Damage)>) {
    let mut pos = 0usize;
    let mut good_end = 0usize;
    let mut record_start = 0usize;
    let mut records = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    let mut in_record = false;
    let mut record_flag = 0u8;
    let mut out = Vec::new();
    while pos < data.len() {
        let page_end = (pos / PAGE_SIZE + 1) * PAGE_SIZE;
        let page_left = page_end - pos;
        if page_left < HEADER_SIZE || data[pos] == 0 {
            // Page padding: must be all zeros up to the page end (or the end of the file).
            let end = page_end.min(data.len());
            if data[pos..end].iter().any(|&b| b != 0) {
                return (
                    good_end,
                    records,
                    Some((pos, Damage::Corrupt("non-zero page padding"))),
                );
            }
            pos = end;
            continue;
        }
        if pos + HEADER_SIZE > data.len() {
            return (
                good_end,
                records,
                Some((pos, Damage::Torn("short fragment header"))),
            );
        }
        let typ = data[pos];
        let kind = typ & 0x07;
        let flag = typ & SNAPPY;
        if typ & !0x0f != 0 || kind > LAST {
            return (
                good_end,
                records,
                Some((pos, Damage::Corrupt("unknown fragment type"))),
            );
        }
        let len = u16::from_be_bytes([data[pos + 1], data[pos + 2]]) as usize;
        let crc = u32::from_be_bytes([data[pos + 3], data[pos + 4], data[pos + 5], data[pos + 6]]);
        if HEADER_SIZE + len > page_left {
            return (
                good_end,
                records,
                Some((pos, Damage::Corrupt("fragment crosses a page"))),
            );
        }
        let start = pos + HEADER_SIZE;
        if start + len > data.len() {
            return (
                good_end,
                records,
                Some((pos, Damage::Torn("short fragment payload"))),
            );
        }
        let part = &data[start..start + len];
        if crc32c::crc32c(part) != crc {
            return (
                good_end,
                records,
                Some((pos, Damage::Corrupt("fragment CRC mismatch"))),
            );
        }
        match (kind, in_record) {
            (FULL | FIRST, false) => {
                record_start = pos;
                record_flag = flag;
                buf.clear();
            }
            (MIDDLE | LAST, true) if flag == record_flag => {}
            _ => {
                return (
                    good_end,
                    records,
                    Some((pos, Damage::Corrupt("bad fragment sequence"))),
                );
            }
        }
        buf.extend_from_slice(part);
        pos = start + len;
        if kind == FULL || kind == LAST {
            in_record = false;
            let rec: &[u8] = if record_flag == SNAPPY {
                let n = match snap::raw::decompress_len(&buf) {
                    Ok(n) => n,
                    Err(_) => {
                        return (
                            good_end,
                            records,
                            Some((record_start, Damage::Corrupt("bad snappy payload"))),
                        );
                    }
                };
                out.resize(n, 0);
                match decoder.decompress(&buf, &mut out) {
                    Ok(n) => &out[..n],
                    Err(_) => {
                        return (
                            good_end,
                            records,
                            Some((record_start, Damage::Corrupt("bad snappy payload"))),
                        );
                    }
                }
            } else {
                &buf
            };
            f(rec);
            records += 1;
            good_end = pos;
        } else {
            in_record = true;
        }
    }
    if in_record {
        return (
            good_end,
            records,
            Some((record_start, Damage::Torn("record cut short"))),
        );
    }
    (good_end, records, None)
}
