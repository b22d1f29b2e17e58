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

use std::collections::HashSet;
use std::sync::Arc;

use norn_model::{Sample as ModelSample, is_stale_nan};
use promql_parser::parser::{Call, Expr, MatrixSelector};

use crate::ast::{at_ms, call_key, dur_ms, matrix_arg, node_key, offset_ms};
use crate::chunk_walk::WindowWalk;
use crate::error::{PromqlError, Result};
use crate::fused_aggregate::Acc;
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
    /// The groups of each step of the current chunk when an aggregation is fused with the
    /// function (see [`Self::slide_fused_chunk`]); `None` as for `results`.
    fused: Vec<Option<StepGroups>>,
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
            fused: Vec::new(),
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
pub(crate) fn plan_sliding(e: &Expr, out: &mut crate::eval::NodeMap<SlidingRangeFn<'_>>) {
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
        let range = dur_ms(&ms.range);
        self.init(fetched);
        let (ref_ts, steps_left) = chunk_steps(fetched.len(), ms, steps, first);
        let max_samples = steps.max_samples;
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
        // Series are independent: big selectors are walked on several threads, each over a
        // contiguous part, so the parts' outputs join in series order.
        let outs = run_parts(parts, |p| slide_part(f, p, &ref_ts, range, stop));
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
        self.results = self.end_chunk(
            first,
            ref_ts.len() >= steps_left,
            results,
            totals,
            held,
            max_samples,
        );
        Ok(to_note)
    }
}

impl<'a> SlidingRangeFn<'a> {
    /// Sets up the walk state of `fetched` on the first chunk.
    fn init(&mut self, fetched: &'a [FetchedSeries]) {
        if self.initialized {
            return;
        }
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

    /// Whether step `idx` lies past the fused chunk evaluated so far (see
    /// [`Self::slide_fused_chunk`]).
    pub fn needs_fused_chunk(&self, idx: usize) -> bool {
        idx >= self.first + self.fused.len()
    }

    /// The groups of step `idx` if the current fused chunk holds them ready.
    pub fn take_fused(&mut self, idx: usize) -> Option<StepGroups> {
        let i = idx.checked_sub(self.first)?;
        self.fused.get_mut(i)?.take()
    }

    /// [`Self::slide_chunk`] for an aggregation fused with the function (`sum by (job)
    /// (rate(x[5m]))`): every value goes straight into its group's accumulator at its step,
    /// so no step vector of one value per series is built. The steps, not the series, are
    /// split over threads: each step still takes its values in series order, the order the
    /// accumulators' float arithmetic follows, so results are the same to the last bit. A
    /// later thread starts its own walks at its first window (decoding from the chunk that
    /// holds it), and its walks go on to the next chunk.
    #[allow(clippy::too_many_arguments)]
    pub fn slide_fused_chunk(
        &mut self,
        fetched: &'a [FetchedSeries],
        ms: &MatrixSelector,
        steps: Steps,
        first: usize,
        held: usize,
        stop: &Stop,
        fusion: &Fusion<'_>,
    ) -> Result<Vec<usize>> {
        let range = dur_ms(&ms.range);
        self.init(fetched);
        // A chunk holds a place per group per step, not a value per series.
        let (ref_ts, steps_left) = chunk_steps(fusion.ngroups, ms, steps, first);
        let f = self.f;
        let n = fetched.len();
        let threads = slide_threads(n, ref_ts.len()).min(ref_ts.len()).max(1);
        // A later thread first decodes from the start of the chunk that holds its first
        // window (some 30 minutes of samples a series): it gets an eighth fewer steps.
        let len = ref_ts.len();
        let later = (len * 7).div_ceil(8 * threads).max(1);
        let first_len = len.saturating_sub(later * (threads - 1)).max(1);
        let spans: Vec<std::ops::Range<usize>> = std::iter::once(0..first_len.min(len))
            .chain(
                (first_len..len)
                    .step_by(later)
                    .map(|a| a..(a + later).min(len)),
            )
            .collect();
        type Fresh<'w> = (Vec<Cursor>, Vec<Option<WindowWalk<'w>>>, Vec<bool>);
        let mut fresh: Vec<Fresh<'a>> = spans
            .iter()
            .skip(1)
            .map(|r| {
                let after = ref_ts[r.start].saturating_sub(range);
                let walks = fetched
                    .iter()
                    .map(|s| {
                        (!s.chunks.is_empty()).then(|| WindowWalk::starting_after(&s.chunks, after))
                    })
                    .collect();
                (vec![Cursor::default(); n], walks, self.noted.clone())
            })
            .collect();
        let mut parts: Vec<Part<'_, 'a>> = Vec::with_capacity(spans.len());
        parts.push(Part {
            offset: 0,
            bufs: Vec::new(),
            series: fetched,
            clean: &self.clean,
            cursors: &mut self.cursors,
            walks: &mut self.walks,
            noted: &mut self.noted,
        });
        for (cursors, walks, noted) in &mut fresh {
            parts.push(Part {
                offset: 0,
                bufs: Vec::new(),
                series: fetched,
                clean: &self.clean,
                cursors,
                walks,
                noted,
            });
        }
        type FusedOut = (Vec<usize>, Vec<usize>, Vec<StepGroups>);
        let run = |p: Part<'_, 'a>, r: std::ops::Range<usize>| -> Result<FusedOut> {
            let mut sink = GroupSink::new(fusion, r.len());
            let (totals, to_note) = walk_part(f, p, &ref_ts[r], range, stop, &mut sink)?;
            Ok((totals, to_note, sink.steps))
        };
        let outs = run_parts(
            parts.into_iter().zip(spans.iter().cloned()).collect(),
            |(p, r)| run(p, r),
        );
        let mut totals = Vec::with_capacity(ref_ts.len());
        let mut to_note = Vec::new();
        let mut groups = Vec::with_capacity(ref_ts.len());
        for out in outs {
            let (t, notes, g) = out?;
            totals.extend(t);
            to_note.extend(notes);
            groups.extend(g);
        }
        to_note.sort_unstable();
        to_note.dedup();
        for &i in &to_note {
            self.noted[i] = true;
        }
        // The last thread's walks stand at the chunk's end, where the next chunk goes on.
        if let Some((cursors, walks, _)) = fresh.pop() {
            self.cursors = cursors;
            self.walks = walks;
        }
        let last = ref_ts.len() >= steps_left;
        self.fused = self.end_chunk(first, last, groups, totals, held, steps.max_samples);
        Ok(to_note)
    }

    /// Ends a chunk of steps from `first` on (`last`: the query's last steps): its outputs,
    /// one per step, each kept where the step's windows held at most `max_samples` besides
    /// `held`; a step over it is left to the ordinary path, which fails it the same way (and
    /// only once the query gets there).
    fn end_chunk<T>(
        &mut self,
        first: usize,
        last: bool,
        outputs: Vec<T>,
        totals: Vec<usize>,
        held: usize,
        max_samples: usize,
    ) -> Vec<Option<T>> {
        if last {
            // The windows and decoders are no longer needed. (Were the walk asked again, it
            // would start over.)
            self.walks = Vec::new();
            self.initialized = false;
        }
        self.first = first;
        outputs
            .into_iter()
            .zip(totals)
            .map(|(o, total)| (held.saturating_add(total) <= max_samples).then_some(o))
            .collect()
    }
}

/// The chunk of steps from step index `first` on (the windows' ends, offset applied), for
/// `cells` results a step, and the steps left from `first` to the query's end.
fn chunk_steps(cells: usize, ms: &MatrixSelector, steps: Steps, first: usize) -> (Vec<i64>, usize) {
    let Steps {
        start: qstart,
        end: qend,
        step: qstep,
        ..
    } = steps;
    let at = at_ms(&ms.vs.at, qstart, qend);
    let off = offset_ms(&ms.vs.offset);
    let steps_left = ((qend - qstart) / qstep) as usize + 1 - first;
    let chunk = (CHUNK_CELLS / cells.max(1)).clamp(1, MAX_CHUNK_STEPS);
    let ref_ts = (0..chunk.min(steps_left))
        .map(|i| {
            at.unwrap_or(qstart + (first + i) as i64 * qstep)
                .saturating_sub(off)
        })
        .collect();
    (ref_ts, steps_left)
}

/// An aggregation fused with a sliding range function: each series' group (by index in
/// the selector), the number of groups, and an empty accumulator of the aggregation.
pub(crate) struct Fusion<'g> {
    pub groups: &'g [usize],
    pub ngroups: usize,
    pub empty: Acc,
}

/// One step's groups of a fused aggregation: (group id, accumulator) in the order the
/// groups first took a value, and how many values they took.
#[derive(Debug)]
pub(crate) struct StepGroups {
    /// Per group id, its place in `accs` (`u32::MAX`: none yet).
    place: Vec<u32>,
    pub accs: Vec<(usize, Acc)>,
    pub values: usize,
}

/// Accumulates a walk's values into the groups of each step it walks.
struct GroupSink<'f> {
    fusion: &'f Fusion<'f>,
    steps: Vec<StepGroups>,
}

impl<'f> GroupSink<'f> {
    fn new(fusion: &'f Fusion<'f>, steps: usize) -> Self {
        let steps = (0..steps)
            .map(|_| StepGroups {
                place: vec![u32::MAX; fusion.ngroups],
                accs: Vec::new(),
                values: 0,
            })
            .collect();
        Self { fusion, steps }
    }
}

impl StepSink for GroupSink<'_> {
    #[inline]
    fn put(&mut self, j: usize, series: usize, v: f64) {
        let g = self.fusion.groups[series];
        let st = &mut self.steps[j];
        st.values += 1;
        match st.place[g] {
            u32::MAX => {
                st.place[g] = st.accs.len() as u32;
                let mut acc = self.fusion.empty.clone();
                acc.add(v);
                st.accs.push((g, acc));
            }
            at => st.accs[at as usize].1.add(v),
        }
    }
}

/// `work` over each of `items`: on the calling thread for one, else one scoped thread each;
/// the outputs in the items' order.
fn run_parts<I: Send, T: Send>(
    items: Vec<I>,
    work: impl Fn(I) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    if items.len() <= 1 {
        return items.into_iter().map(work).collect();
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
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

/// Where a walk puts the value of series `series` (index in the selector) at step `j` of
/// the steps it walks.
trait StepSink {
    fn put(&mut self, j: usize, series: usize, v: f64);
}

impl StepSink for Vec<StepValues> {
    #[inline]
    fn put(&mut self, j: usize, series: usize, v: f64) {
        self[j].push((series, v));
    }
}

/// Walks a part's series across the steps `ref_ts` (already offset) into step vectors.
fn slide_part(
    f: RangeFn,
    mut p: Part<'_, '_>,
    ref_ts: &[i64],
    range: i64,
    stop: &Stop,
) -> Result<PartOut> {
    let mut results: Vec<StepValues> = if p.bufs.len() == ref_ts.len() {
        std::mem::take(&mut p.bufs)
    } else {
        ref_ts
            .iter()
            .map(|_| Vec::with_capacity(p.series.len()))
            .collect()
    };
    let (totals, to_note) = walk_part(f, p, ref_ts, range, stop, &mut results)?;
    Ok(PartOut {
        results,
        totals,
        to_note,
    })
}

/// Walks a part's series across the steps `ref_ts` (already offset), each series' values
/// into `sink` in step order, series by series: the samples each step's windows held, and
/// the series (by index in the selector) that first produced a counter value.
fn walk_part(
    f: RangeFn,
    p: Part<'_, '_>,
    ref_ts: &[i64],
    range: i64,
    stop: &Stop,
    sink: &mut impl StepSink,
) -> Result<(Vec<usize>, Vec<usize>)> {
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
                    sink.put(j, p.offset + i, v);
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
                    sink.put(j, p.offset + i, v);
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
    Ok((totals, to_note))
}

/// Series walked between two looks at the query's deadline.
const CHECK_SERIES: usize = 256;
