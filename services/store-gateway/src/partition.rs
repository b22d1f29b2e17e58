//! Coalescing of byte ranges into few GETs, as Mimir's gap-based partitioner does: ranges
//! closer than `max_gap` are read with one request (a few wasted bytes cost less than a
//! round trip to object storage), and no request grows past `max_size`, so one query never
//! asks the bucket for an unbounded response.

use std::ops::Range;

/// One GET: the byte range to read and which of the input ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub start: u64,
    pub end: u64,
    /// Indices into the input slice, in input order.
    pub elems: Range<usize>,
}

/// Groups `ranges` (sorted by start; they may overlap) into parts. A single range longer
/// than `max_size` gets a part of its own.
pub fn partition(ranges: &[Range<u64>], max_gap: u64, max_size: u64) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        if let Some(p) = parts.last_mut() {
            let end = p.end.max(r.end);
            if r.start <= p.end.saturating_add(max_gap) && end - p.start <= max_size {
                p.end = end;
                p.elems.end = i + 1;
                continue;
            }
        }
        parts.push(Part {
            start: r.start,
            end: r.end,
            elems: i..i + 1,
        });
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_close_ranges_and_splits_far_ones() {
        let r = [0..10, 12..20, 100..110, 105..108, 400..410];
        let p = partition(&r, 10, 1000);
        assert_eq!(
            p,
            vec![
                Part {
                    start: 0,
                    end: 20,
                    elems: 0..2
                },
                Part {
                    start: 100,
                    end: 110,
                    elems: 2..4
                },
                Part {
                    start: 400,
                    end: 410,
                    elems: 4..5
                },
            ]
        );
        // Everything within the gap: one GET.
        assert_eq!(partition(&r, 1000, 1000).len(), 1);
    }

    #[test]
    fn bounds_the_size_of_a_get() {
        let r: Vec<Range<u64>> = (0..10).map(|i| i * 100..i * 100 + 100).collect();
        let p = partition(&r, 512, 300);
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|p| p.end - p.start <= 300));
        assert_eq!(p.iter().map(|p| p.elems.len()).sum::<usize>(), 10);
        // A range larger than the bound still gets read, alone.
        let p = partition(&[0..5000, 5000..5010], 10, 300);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].elems, 0..1);
    }

    #[test]
    fn empty_and_single() {
        assert!(partition(&[], 10, 10).is_empty());
        let one = [Range {
            start: 3u64,
            end: 4,
        }];
        assert_eq!(partition(&one, 0, 0).len(), 1);
    }
}
