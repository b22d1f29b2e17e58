//! Range functions of a range query evaluated across all its steps at once.
//!
//! Evaluating a range query step by step cuts each series' window anew at every step and
//! redoes per-series work (copying the window without stale markers, the counter-name check).
//! For `f(selector[range])` outside any subquery, [`SlidingRangeFn`] instead walks each
//! fetched series once across a chunk of consecutive steps with two forward-moving cursors,
//! as Prometheus does for range queries, and hands each step its ready instant vector. The
//! windows are borrowed slices of the fetched samples; only a series that holds stale markers
//! is copied, once, without them.
//!
//! This module holds the state and the walk; it knows nothing of the evaluator, which hands
//! it the fetched series and takes the results (see `Evaluator::sliding_value`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use norn_model::{Sample as ModelSample, is_stale_nan};
use promql_parser::parser::{Call, Expr, MatrixSelector};

use crate::ast::{at_ms, call_key, dur_ms, matrix_arg, node_key, offset_ms};
use crate::chunk_walk::WindowWalk;
use crate::error::{PromqlError, Result};
use crate::guard::Stop;
use crate::range_fn::RangeFn;
use crate::value::{FetchedSeries, Sample};

/// The steps of a range query and its sample limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Steps {
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub max_samples: usize,
}

/// Most output samples one chunk of steps may hold (all series × the chunk's steps), so the
/// memory held ahead stays bounded however many series a selector matches. Tiny in unit
/// tests, so that their few series still cross chunk boundaries.
const CHUNK_CELLS: usize = if cfg!(test) { 16 } else { 1 << 20 };
/// Most steps evaluated ahead per chunk.
const MAX_CHUNK_STEPS: usize = 256;

/// State of one `f(selector[range])` call evaluated across the steps of a range query.
/// `'a` is the lifetime of the fetched series, whose chunks the walks decode.
#[derive(Debug)]
pub(crate) struct SlidingRangeFn<'a> {
    f: RangeFn,
    initialized: bool,
    /// Per fetched series: a copy without stale markers, only for series that hold any;
    /// the others' windows are slices of the fetched samples.
    clean: Vec<Option<Vec<ModelSample>>>,
    /// Per fetched series: the window of the last step evaluated.
    cursors: Vec<Cursor>,
    /// Per fetched series held as encoded chunks: its decoder and window (`None` for the
    /// series fetched as samples).
    walks: Vec<Option<WindowWalk<'a>>>,
    /// Per fetched series: whether the counter-name check already ran (its outcome does not
    /// change between steps).
    noted: Vec<bool>,
    /// Step index of `results[0]`.
    first: usize,
    /// The values of each step of the current chunk, as (series index in the selector,
    /// value) in series order; `None` once handed out, or for a step that must be evaluated
    /// the ordinary way (to report the error it runs into). Labels are attached only when a
    /// step is taken as an instant vector: an aggregation over the call takes the bare
    /// values (see [`Self::take_values`]).
    results: Vec<Option<StepValues>>,
    /// Emptied step buffers handed back once consumed, refilled by the next chunk of steps:
    /// at a dashboard's size a chunk's buffers are megabytes, and fresh ones cost a page
    /// fault per 4 KiB.
    spare: Vec<StepValues>,
}

/// One step's values of a sliding range function: (series index in the selector, value), in
/// series order.
pub(crate) type StepValues = Vec<(usize, f64)>;

impl SlidingRangeFn<'_> {
    fn new(f: RangeFn) -> Self {
        Self {
            f,
            initialized: false,
            clean: Vec::new(),
            cursors: Vec::new(),
            walks: Vec::new(),
            noted: Vec::new(),
            first: 0,
            results: Vec::new(),
            spare: Vec::new(),
        }
    }
}

/// A series' window `[lo, hi)` and its counter resets: `resets_hi` counts the `k` in
/// `[1, hi)`, `resets_lo` the `k` in `[1, lo]` with `v[k] < v[k-1]`, so the window holds
/// `resets_hi - resets_lo` resets (the comparison `rate` uses, over the same samples).
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    lo: usize,
    hi: usize,
    resets_lo: usize,
    resets_hi: usize,
}

/// Finds the calls of a range query that can be evaluated across all steps at once: a range
/// function directly over a matrix selector, not inside a subquery (whose inner expression
/// is evaluated at the subquery's own timestamps, not at the query's steps).
pub(crate) fn plan_sliding(e: &Expr, out: &mut HashMap<usize, SlidingRangeFn<'_>>) {
    visit_sliding(e, &mut |c, f| {
        out.insert(call_key(c), SlidingRangeFn::new(f));
    });
}

/// The selector nodes ([`crate::ast::node_key`]) read only by a call [`plan_sliding`] finds:
/// the engine fetches them as encoded chunks, which the walk decodes series by series.
pub(crate) fn sliding_selectors(e: &Expr) -> HashSet<usize> {
    let mut out = HashSet::new();
    visit_sliding(e, &mut |c, _| {
        if let Some(ms) = matrix_arg(c) {
            out.insert(node_key(&ms.vs));
        }
    });
    out
}

fn visit_sliding(e: &Expr, found: &mut dyn FnMut(&Call, RangeFn)) {
    match e {
        Expr::Call(c) => {
            if let Some(f) = RangeFn::parse(c.func.name)
                && matrix_arg(c).is_some()
            {
                found(c, f);
            }
            for a in &c.args.args {
                visit_sliding(a, found);
            }
        }
        Expr::Paren(p) => visit_sliding(&p.expr, found),
        Expr::Unary(u) => visit_sliding(&u.expr, found),
        Expr::Binary(b) => {
            visit_sliding(&b.lhs, found);
            visit_sliding(&b.rhs, found);
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                visit_sliding(p, found);
            }
            visit_sliding(&a.expr, found);
        }
        Expr::Subquery(_)
        | Expr::MatrixSelector(_)
        | Expr::VectorSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
}

impl<'a> SlidingRangeFn<'a> {
    /// Whether step `idx` (its index in the query) lies past the chunk evaluated so far, so
    /// that [`Self::slide_chunk`] must run from it first.
    pub fn needs_chunk(&self, idx: usize) -> bool {
        idx >= self.first + self.results.len()
    }

    /// The values of step `idx` if the current chunk holds them ready; `None` for a step
    /// before the chunk, already handed out, or left to the ordinary path.
    pub fn take_values(&mut self, idx: usize) -> Option<StepValues> {
        let i = idx.checked_sub(self.first)?;
        self.results.get_mut(i)?.take()
    }

    /// Hands back a step's buffer taken with [`Self::take_values`], for the next chunk.
    pub fn give_back(&mut self, mut values: StepValues) {
        if self.spare.len() < MAX_CHUNK_STEPS {
            values.clear();
            self.spare.push(values);
        }
    }

    /// [`Self::take_values`] as an instant vector over `fetched`, the selector's series.
    pub fn take_step(&mut self, idx: usize, fetched: &[FetchedSeries]) -> Option<Vec<Sample>> {
        let drop_name = !self.f.keeps_name();
        let values = self.take_values(idx)?;
        let out = values
            .iter()
            .map(|&(i, v)| Sample {
                metric: Arc::clone(&fetched[i].labels),
                v,
                drop_name,
            })
            .collect();
        self.give_back(values);
        Some(out)
    }

    /// Evaluates the function for a chunk of steps from step index `first` on: each series
    /// once, its window cursors moving forward from where the previous chunk left them.
    ///
    /// `held` is what the query holds besides; `stop` is the query's deadline and
    /// cancellation, looked at every few hundred series. Returns the series (by index in `fetched`) that produced
    /// a first sample of a counter function, for the evaluator's "not a counter" check.
    pub fn slide_chunk(
        &mut self,
        fetched: &'a [FetchedSeries],
        ms: &MatrixSelector,
        steps: Steps,
        first: usize,
        held: usize,
        stop: &Stop,
    ) -> Result<Vec<usize>> {
        let vs = &ms.vs;
        let range = dur_ms(&ms.range);
        if !self.initialized {
            self.clean = fetched
                .iter()
                .map(|s| {
                    s.samples.iter().any(|x| is_stale_nan(x.v)).then(|| {
                        s.samples
                            .iter()
                            .filter(|x| !is_stale_nan(x.v))
                            .copied()
                            .collect()
                    })
                })
                .collect();
            self.cursors = vec![Cursor::default(); fetched.len()];
            self.walks = fetched
                .iter()
                .map(|s| (!s.chunks.is_empty()).then(|| WindowWalk::new(&s.chunks)))
                .collect();
            self.noted = vec![false; fetched.len()];
            self.initialized = true;
        }
        let Steps {
            start: qstart,
            end: qend,
            step: qstep,
            max_samples,
        } = steps;
        let at = at_ms(&vs.at, qstart, qend);
        let off = offset_ms(&vs.offset);
        let steps_left = ((qend - qstart) / qstep) as usize + 1 - first;
        let chunk = (CHUNK_CELLS / fetched.len().max(1)).clamp(1, MAX_CHUNK_STEPS);
        let ref_ts: Vec<i64> = (0..chunk.min(steps_left))
            .map(|i| {
                at.unwrap_or(qstart + (first + i) as i64 * qstep)
                    .saturating_sub(off)
            })
            .collect();
        let f = self.f;
        let n = fetched.len();
        let threads = slide_threads(n, ref_ts.len());
        let per = n.div_ceil(threads).max(1);
        // The first part's vectors take the others' samples after: room for all up front.
        let mut bufs: Vec<StepValues> = ref_ts
            .iter()
            .map(|_| {
                let mut b = self.spare.pop().unwrap_or_default();
                b.reserve(n);
                b
            })
            .collect();
        self.spare.clear();
        let parts: Vec<Part<'_, 'a>> = fetched
            .chunks(per)
            .zip(self.clean.chunks(per))
            .zip(self.cursors.chunks_mut(per))
            .zip(self.walks.chunks_mut(per))
            .zip(self.noted.chunks_mut(per))
            .enumerate()
            .map(|(k, ((((series, clean), cursors), walks), noted))| Part {
                offset: k * per,
                bufs: if k == 0 {
                    std::mem::take(&mut bufs)
                } else {
                    Vec::new()
                },
                series,
                clean,
                cursors,
                walks,
                noted,
            })
            .collect();
        let outs: Vec<Result<PartOut>> = if parts.len() <= 1 {
            parts
                .into_iter()
                .map(|p| slide_part(f, p, &ref_ts, range, stop))
                .collect()
        } else {
            // Series are independent: big selectors are walked on several threads, each
            // over a contiguous part, so the parts' outputs join in series order.
            std::thread::scope(|scope| {
                let handles: Vec<_> = parts
                    .into_iter()
                    .map(|p| {
                        let ref_ts = &ref_ts;
                        scope.spawn(move || slide_part(f, p, ref_ts, range, stop))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(PromqlError::Internal(
                                "a range function thread panicked".into(),
                            ))
                        })
                    })
                    .collect()
            })
        };
        let mut results: Vec<StepValues> = Vec::new();
        let mut totals = vec![0usize; ref_ts.len()];
        let mut to_note = Vec::new();
        for out in outs {
            let out = out?;
            if results.is_empty() {
                results = out.results;
            } else {
                for (r, more) in results.iter_mut().zip(out.results) {
                    r.extend(more);
                }
            }
            for (t, more) in totals.iter_mut().zip(out.totals) {
                *t += more;
            }
            to_note.extend(out.to_note);
        }
        if results.is_empty() {
            results = ref_ts.iter().map(|_| Vec::new()).collect();
        }
        if ref_ts.len() >= steps_left {
            // The last steps: the windows and decoders are no longer needed. (Were the walk
            // asked again, it would start over.)
            self.walks = Vec::new();
            self.initialized = false;
        }
        self.first = first;
        self.results = results
            .into_iter()
            .zip(totals)
            // A step whose windows hold too many samples is left to the ordinary path,
            // which fails it the same way (and only once the query gets there).
            .map(|(r, total)| (held.saturating_add(total) <= max_samples).then_some(r))
            .collect();
        Ok(to_note)
    }
}

/// Most threads one range function's walk uses, and the fewest windows (series × steps) each
/// must get: about 5 ms of work, against some 20 µs to start a thread.
const MAX_SLIDE_THREADS: usize = 8;
const MIN_WINDOWS_PER_THREAD: usize = if cfg!(test) { 2 } else { 65_536 };

/// Threads to walk `n` series across `steps` steps on: one unless that is much work, at
/// most the machine's cores.
fn slide_threads(n: usize, steps: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    (n.saturating_mul(steps) / MIN_WINDOWS_PER_THREAD)
        .clamp(1, cores.min(MAX_SLIDE_THREADS).min(n.max(1)))
}

/// A contiguous part of a selector's series and their walk state; `offset` is the index of
/// its first series in the selector.
struct Part<'p, 'a> {
    offset: usize,
    /// Empty buffers for the part's step results, one per step (or none: the part makes
    /// its own).
    bufs: Vec<StepValues>,
    series: &'a [FetchedSeries],
    clean: &'p [Option<Vec<ModelSample>>],
    cursors: &'p mut [Cursor],
    walks: &'p mut [Option<WindowWalk<'a>>],
    noted: &'p mut [bool],
}

/// What a part yields for the chunk's steps: per step its instant vector and window
/// samples, and the series (by index in the selector) that first produced a counter value.
struct PartOut {
    results: Vec<StepValues>,
    totals: Vec<usize>,
    to_note: Vec<usize>,
}

/// Walks a part's series across the steps `ref_ts` (already offset).
fn slide_part(
    f: RangeFn,
    p: Part<'_, '_>,
    ref_ts: &[i64],
    range: i64,
    stop: &Stop,
) -> Result<PartOut> {
    let mut results: Vec<StepValues> = if p.bufs.len() == ref_ts.len() {
        p.bufs
    } else {
        ref_ts
            .iter()
            .map(|_| Vec::with_capacity(p.series.len()))
            .collect()
    };
    let mut totals = vec![0usize; ref_ts.len()];
    let mut to_note = Vec::new();
    for (i, s) in p.series.iter().enumerate() {
        if i % CHECK_SERIES == 0 {
            stop.check()?;
        }
        let mut produced = false;
        if let Some(walk) = &mut p.walks[i] {
            let mut shape = None;
            for (j, &ref_t) in ref_ts.iter().enumerate() {
                let wstart = ref_t.saturating_sub(range);
                walk.advance(wstart, ref_t).map_err(|e| {
                    PromqlError::Internal(format!("decoding the chunks of {}: {e}", s.labels))
                })?;
                let window = walk.window();
                if window.is_empty() {
                    continue;
                }
                totals[j] += window.len();
                if let Some(v) = f.value_walked(window, wstart, ref_t, walk.resets == 0, &mut shape)
                {
                    results[j].push((p.offset + i, v));
                    produced = true;
                }
            }
        } else {
            let samples: &[ModelSample] = p.clean[i].as_deref().unwrap_or(&s.samples);
            let mut c = p.cursors[i];
            let is_reset =
                |k: usize| k >= 1 && k < samples.len() && samples[k].v < samples[k - 1].v;
            for (j, &ref_t) in ref_ts.iter().enumerate() {
                let wstart = ref_t.saturating_sub(range);
                while c.lo < samples.len() && samples[c.lo].t <= wstart {
                    c.lo += 1;
                    c.resets_lo += usize::from(is_reset(c.lo));
                }
                while c.hi < c.lo || (c.hi < samples.len() && samples[c.hi].t <= ref_t) {
                    c.resets_hi += usize::from(is_reset(c.hi));
                    c.hi += 1;
                }
                let (lo, hi) = (c.lo, c.hi);
                if lo == hi {
                    continue;
                }
                totals[j] += hi - lo;
                let no_resets = c.resets_hi == c.resets_lo;
                if let Some(v) = f.value_hinted(&samples[lo..hi], wstart, ref_t, no_resets) {
                    results[j].push((p.offset + i, v));
                    produced = true;
                }
            }
            p.cursors[i] = c;
        }
        if produced && f.is_counter_fn() && !p.noted[i] {
            p.noted[i] = true;
            to_note.push(p.offset + i);
        }
    }
    Ok(PartOut {
        results,
        totals,
        to_note,
    })
}

/// Series walked between two looks at the query's deadline.
const CHECK_SERIES: usize = 256;
