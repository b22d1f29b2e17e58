//! Forward walks over a series' encoded chunks, for evaluations whose times only move forward
//! (the steps of a range query): one XOR decoder per series and the few samples the current
//! step needs, instead of the series' whole fetched range decoded up front.
//!
//! [`WindowWalk`] holds a range function's window; [`LatestWalk`] an instant selector's newest
//! sample. Both read the chunks in order; chunks of one series do not overlap (every source
//! promises it, see `norn_model::query::chunks`).

use std::collections::HashSet;

use norn_chunkenc::{ENCODING_XOR, XorIterator};
use norn_model::{EncodedChunk, Sample, is_stale_nan};
use promql_parser::parser::Expr;

use crate::ast::node_key;

/// The samples of a series' chunks, in order, decoded one at a time.
#[derive(Debug, Clone)]
struct ChunkReader<'a> {
    chunks: &'a [EncodedChunk],
    /// Index of the next chunk to open.
    next_chunk: usize,
    it: Option<XorIterator<'a>>,
}

impl<'a> ChunkReader<'a> {
    fn new(chunks: &'a [EncodedChunk]) -> Self {
        Self {
            chunks,
            next_chunk: 0,
            it: None,
        }
    }

    /// The mean interval between the samples of the chunk being read, from its header.
    fn interval_hint(&self) -> Option<i64> {
        let c = self.chunks.get(self.next_chunk.checked_sub(1)?)?;
        let n = i64::from(u16::from_be_bytes([*c.data.first()?, *c.data.get(1)?]));
        (n > 1)
            .then(|| (c.max_t - c.min_t) / (n - 1))
            .filter(|&d| d > 0)
    }

    fn next_sample(&mut self) -> Result<Option<Sample>, String> {
        loop {
            if let Some(it) = &mut self.it {
                if let Some((t, v)) = it.next() {
                    return Ok(Some(Sample::new(t, v)));
                }
                if let Some(e) = it.error() {
                    return Err(e.to_string());
                }
                self.it = None;
            }
            let Some(c) = self.chunks.get(self.next_chunk) else {
                return Ok(None);
            };
            self.next_chunk += 1;
            if c.encoding != ENCODING_XOR {
                return Err(format!("unsupported chunk encoding {}", c.encoding));
            }
            self.it = Some(XorIterator::new(&c.data));
        }
    }
}

/// One series held as encoded chunks, decoded as the steps move forward: only the samples
/// of the current window are held decoded, so a selector over a million series holds about
/// `range / scrape interval` samples per series, not its whole fetched range.
#[derive(Debug)]
pub(crate) struct WindowWalk<'a> {
    reader: ChunkReader<'a>,
    /// The newest sample read, past the last window's end, not yet in a window.
    ahead: Option<Sample>,
    /// `window[start..]` is the current window, without stale markers.
    window: Vec<Sample>,
    start: usize,
    /// Adjacent pairs in the window whose value drops (counter resets, as `rate` compares).
    pub resets: usize,
}

impl<'a> WindowWalk<'a> {
    pub fn new(chunks: &'a [EncodedChunk]) -> Self {
        Self {
            reader: ChunkReader::new(chunks),
            ahead: None,
            window: Vec::new(),
            start: 0,
            resets: 0,
        }
    }

    /// A walk whose first window starts after `t`: the leading chunks that end at or
    /// before `t` are not decoded (a walk of the later steps of a range, on its own thread).
    pub fn starting_after(chunks: &'a [EncodedChunk], t: i64) -> Self {
        let mut walk = Self::new(chunks);
        walk.reader.next_chunk = chunks.iter().take_while(|c| c.max_t <= t).count();
        walk
    }

    /// The next sample that is not a stale marker, in time order.
    fn next_sample(&mut self) -> Result<Option<Sample>, String> {
        while let Some(s) = self.reader.next_sample()? {
            if !is_stale_nan(s.v) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Moves the window to `(wstart, ref_t]`; both only ever grow.
    pub fn advance(&mut self, wstart: i64, ref_t: i64) -> Result<(), String> {
        while self.start < self.window.len() && self.window[self.start].t <= wstart {
            if let Some(next) = self.window.get(self.start + 1)
                && next.v < self.window[self.start].v
            {
                self.resets -= 1;
            }
            self.start += 1;
        }
        loop {
            let s = match self.ahead.take() {
                Some(s) => s,
                None => match self.next_sample()? {
                    Some(s) => s,
                    None => break,
                },
            };
            if s.t > ref_t {
                self.ahead = Some(s);
                break;
            }
            if s.t <= wstart {
                continue;
            }
            if self.window.capacity() == 0 {
                // Sized once for a window's worth of samples at the chunk's interval, rather
                // than grown by doubling, series by series, plus a quarter of slack: a full
                // buffer moves the window to its front, and with no slack that would happen
                // at nearly every sample (a memmove of the whole window each time).
                let want = self
                    .reader
                    .interval_hint()
                    .map_or(8, |d| (ref_t.saturating_sub(wstart) / d).saturating_add(2));
                let want = want.clamp(4, 1024);
                self.window.reserve_exact((want + want / 4 + 2) as usize);
            }
            if self.start == self.window.len() {
                self.window.clear();
                self.start = 0;
            } else if self.start > 0 && self.window.len() == self.window.capacity() {
                self.window.drain(..self.start);
                self.start = 0;
            }
            if let Some(last) = self.window[self.start..].last() {
                // Chunks of one series do not overlap; a sample out of order would be a
                // broken chunk, skipped rather than trusted.
                if s.t <= last.t {
                    continue;
                }
                self.resets += usize::from(s.v < last.v);
            }
            self.window.push(s);
        }
        Ok(())
    }

    pub fn window(&self) -> &[Sample] {
        &self.window[self.start..]
    }
}

/// An instant selector's view of one series: its newest sample at or before the time asked,
/// stale markers included (they end the series). Times asked must not go back; if they do,
/// the walk starts over from the first chunk.
#[derive(Debug, Clone)]
pub(crate) struct LatestWalk<'a> {
    chunks: &'a [EncodedChunk],
    reader: ChunkReader<'a>,
    ahead: Option<Sample>,
    latest: Option<Sample>,
    at: i64,
}

impl<'a> LatestWalk<'a> {
    pub fn new(chunks: &'a [EncodedChunk]) -> Self {
        Self {
            chunks,
            reader: ChunkReader::new(chunks),
            ahead: None,
            latest: None,
            at: i64::MIN,
        }
    }

    /// The newest sample with `t <= ref_t`.
    pub fn latest_at(&mut self, ref_t: i64) -> Result<Option<Sample>, String> {
        if ref_t < self.at {
            *self = Self::new(self.chunks);
        }
        self.at = ref_t;
        loop {
            let s = match self.ahead.take() {
                Some(s) => s,
                None => match self.reader.next_sample()? {
                    Some(s) => s,
                    None => break,
                },
            };
            if s.t > ref_t {
                self.ahead = Some(s);
                break;
            }
            self.latest = Some(s);
        }
        Ok(self.latest)
    }
}

/// The instant selector nodes ([`crate::ast::node_key`]) of a range query's expression that
/// are evaluated at the query's steps only, in order: every one outside subqueries (whose
/// inner steps are their own) and outside matrix selectors. The engine fetches them as
/// chunks and reads them with a [`LatestWalk`] per series.
pub(crate) fn step_selectors(e: &Expr, out: &mut HashSet<usize>) {
    match e {
        Expr::VectorSelector(vs) => {
            out.insert(node_key(vs));
        }
        Expr::Call(c) => c.args.args.iter().for_each(|a| step_selectors(a, out)),
        Expr::Paren(p) => step_selectors(&p.expr, out),
        Expr::Unary(u) => step_selectors(&u.expr, out),
        Expr::Binary(b) => {
            step_selectors(&b.lhs, out);
            step_selectors(&b.rhs, out);
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                step_selectors(p, out);
            }
            step_selectors(&a.expr, out);
        }
        Expr::Subquery(_)
        | Expr::MatrixSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use norn_model::query::encode_samples;
    use norn_model::{Labels, stale_nan};

    use super::*;
    use crate::value::FetchedSeries;

    /// Samples every 10 s with a counter reset and a stale marker, in chunks of 3.
    fn samples() -> Vec<Sample> {
        let vals = [1.0, 2.0, 3.0, 0.5, stale_nan(), 4.0, 5.0, 1.0, 2.0];
        vals.iter()
            .enumerate()
            .map(|(i, &v)| Sample::new(i as i64 * 10_000, v))
            .collect()
    }

    fn chunks(s: &[Sample]) -> Vec<EncodedChunk> {
        s.chunks(3).flat_map(encode_samples).collect()
    }

    #[test]
    fn a_window_walk_holds_the_clean_window_and_its_resets() {
        let s = samples();
        let cs = chunks(&s);
        let mut w = WindowWalk::new(&cs);
        for ref_t in (0..=100_000).step_by(5_000) {
            let wstart = ref_t - 25_000;
            w.advance(wstart, ref_t).unwrap();
            let want: Vec<Sample> = s
                .iter()
                .filter(|x| x.t > wstart && x.t <= ref_t && !is_stale_nan(x.v))
                .copied()
                .collect();
            assert_eq!(w.window(), want, "at {ref_t}");
            let resets = want.windows(2).filter(|p| p[1].v < p[0].v).count();
            assert_eq!(w.resets, resets, "at {ref_t}");
        }
    }

    #[test]
    fn a_latest_walk_keeps_stale_markers_and_starts_over_when_time_goes_back() {
        let s = samples();
        let cs = chunks(&s);
        let mut w = LatestWalk::new(&cs);
        let check = |w: &mut LatestWalk, t: i64| {
            let got = w.latest_at(t).unwrap();
            let want = s.iter().rev().find(|x| x.t <= t).copied();
            assert_eq!(
                got.map(|x| (x.t, x.v.to_bits())),
                want.map(|x| (x.t, x.v.to_bits()))
            );
        };
        for t in [-1, 0, 15_000, 40_000, 41_000, 90_000, 20_000, 85_000] {
            check(&mut w, t);
        }
    }

    #[test]
    fn broken_or_foreign_chunks_are_errors_not_panics() {
        let mut foreign = chunks(&samples());
        foreign[1].encoding = 9;
        let mut w = WindowWalk::new(&foreign);
        assert!(w.advance(0, 100_000).is_err());
        let truncated = vec![EncodedChunk::xor(0, 10, vec![0u8, 5, 1])];
        assert!(LatestWalk::new(&truncated).latest_at(100).is_err());
        // The ordinary path's fallback decodes the same window.
        let f = FetchedSeries {
            labels: Arc::new(Labels::from_pairs([("__name__", "x")])),
            samples: Vec::new(),
            chunks: chunks(&samples()),
        };
        let mut points = Vec::new();
        f.window_points(15_000, 60_000, &mut points).unwrap();
        assert_eq!(
            points,
            [(20_000, 3.0), (30_000, 0.5), (50_000, 4.0), (60_000, 5.0)]
        );
    }
}
