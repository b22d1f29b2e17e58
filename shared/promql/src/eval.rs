//! The step evaluator: computes an expression's value at one timestamp from series that the
//! engine fetched up front. Range queries call it once per step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use norn_model::{Labels, METRIC_NAME, is_stale_nan};
use promql_parser::parser::{Call, Expr, VectorSelector};

use crate::ast::{at_ms, call_key, dur_ms, matrix_arg, node_key, offset_ms};
use crate::chunk_walk::LatestWalk;
use crate::error::{PromqlError, Result, exec_err};
use crate::group::GroupCache;
use crate::guard::{CHECK_EVERY, Stop};
use crate::sliding::{Fusion, SlidingRangeFn, StepGroups, StepValues, Steps};
use crate::value::{FetchedSeries, MatrixVal, Metric, RSeries, Sample, Val, final_labels};

/// A map keyed by an expression node's address in the (pinned) AST ([`node_key`]). Range
/// queries look nodes up at every step, several times: hashed with SipHash that was a sixth
/// of a one-series range query's instructions. The keys are addresses the engine's own
/// allocations chose, not anything a client controls, so a multiplicative hash is enough.
pub(crate) type NodeMap<V> = rustc_hash::FxHashMap<usize, V>;

/// Fetched series per selector node.
pub(crate) type Fetched = NodeMap<Vec<FetchedSeries>>;

/// Where an instant-vector selector node's walk stands between steps (see
/// [`Evaluator::eval_vector_selector`]).
pub(crate) struct SelectorState<'a> {
    /// The reference time of the previous evaluation.
    prev_ref: i64,
    /// Per fetched series (as samples), the index of the first sample after `prev_ref`.
    /// Range queries move forward by one step, which is a few samples, cheaper to walk than
    /// to binary-search.
    cursors: Vec<usize>,
    /// Per fetched series, its walk when fetched as chunks (a range query's step selectors).
    walks: Vec<Option<LatestWalk<'a>>>,
}

impl Default for SelectorState<'_> {
    fn default() -> Self {
        Self {
            prev_ref: i64::MAX,
            cursors: Vec::new(),
            walks: Vec::new(),
        }
    }
}

/// Annotations collected while evaluating, rendered at the end.
#[derive(Debug, Default)]
pub(crate) struct Annotations {
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

/// Evaluation state of one query: the fetched series, query bounds, limits, and what the
/// evaluation has collected so far (annotations, subquery results).
pub(crate) struct Evaluator<'a> {
    pub data: &'a Fetched,
    pub query: &'a str,
    pub query_start: i64,
    pub query_end: i64,
    /// Resolution of a range query (0 for instant queries), for `step()`.
    pub query_step: i64,
    pub lookback: i64,
    pub max_samples: usize,
    /// The query's deadline and cancellation flag, looked at every
    /// [`crate::guard::CHECK_EVERY`] units of work.
    pub stop: Stop,
    /// Units of work (steps, windows, samples produced) left before the next look.
    pub work_left: u64,
    /// Samples the query holds now, in units of a fetched sample (see [`Self::hold`]).
    pub held: usize,
    /// The most [`Self::held`] reached (see [`crate::memory`]).
    pub peak_held: usize,
    /// How many subqueries enclose the expression being evaluated.
    pub subquery_depth: usize,
    pub range_mode: bool,
    pub annotations: Annotations,
    /// String literals that are not valid UTF-8 under PromQL's (Go's) byte semantics, e.g.
    /// `"\xff"`, mapped to their source text. The parser decodes such escapes to chars, so
    /// label names built from them are rejected by looking them up here.
    pub invalid_utf8: HashMap<String, String>,
    /// Inner results of each subquery node by timestamp. The value of the inner expression
    /// at an absolute time does not depend on the outer step, so consecutive outer steps
    /// (whose windows overlap) reuse them instead of re-evaluating.
    pub subquery_cache: NodeMap<BTreeMap<i64, Val>>,
    /// Per matrix selector node: the window start of the previous step and, per fetched
    /// series, the index of the first sample after it. Range queries move every window
    /// forward by one step, so the next start is found by stepping from there instead of a
    /// binary search over each series' whole sample array (which misses the cache).
    pub window_cursors: NodeMap<(i64, Vec<usize>)>,
    /// Emptied point buffers of range vectors already consumed, reused by the next window
    /// instead of an allocation per series per step.
    pub points_pool: Vec<Vec<(i64, f64)>>,
    /// Range-function calls of a range query evaluated across all steps at once, by call
    /// node address (see [`crate::sliding::plan_sliding`]).
    pub sliding: NodeMap<SlidingRangeFn<'a>>,
    /// Per instant-vector selector node, where its series stand between steps.
    pub selectors: NodeMap<SelectorState<'a>>,
    /// A step's vector the range loop has consumed, emptied, for the next step's selector
    /// (see [`Self::give_back_vector`]).
    pub spare_vector: Option<Vec<Sample>>,
    /// Per aggregation node, its input series' groups (see [`GroupCache`]).
    pub group_caches: NodeMap<GroupCache>,
}

impl<'a> Evaluator<'a> {
    /// Position `(1:col)` of the first occurrence of `needle` in the query, as Prometheus
    /// renders annotation positions (the AST carries no positions, so this is a best guess).
    pub fn pos(&self, needle: &str) -> String {
        let col = self
            .query
            .find(needle)
            .map(|i| self.query[..i].chars().count() + 1)
            .unwrap_or(1);
        format!("(1:{col})")
    }

    pub fn warn(&mut self, msg: String, needle: &str) {
        let s = format!("PromQL warning: {msg} {}", self.pos(needle));
        if !self.annotations.warnings.contains(&s) {
            self.annotations.warnings.push(s);
        }
    }

    pub fn info(&mut self, msg: String, needle: &str) {
        let s = format!("PromQL info: {msg} {}", self.pos(needle));
        if !self.annotations.infos.contains(&s) {
            self.annotations.infos.push(s);
        }
    }

    /// One unit of work done (a step, a series' window): fails once the query's deadline
    /// has passed or its caller went away. See [`Self::work`].
    #[inline]
    pub fn check_deadline(&mut self) -> Result<()> {
        self.work(1)
    }

    /// `units` of work done. Looks at the flag and the clock once per
    /// [`crate::guard::CHECK_EVERY`] units (and at the first), so hot loops can call it freely
    /// and a step over a million series is not one unit.
    #[inline]
    pub fn work(&mut self, units: usize) -> Result<()> {
        match self.work_left.checked_sub(units as u64) {
            Some(left) => {
                self.work_left = left;
                Ok(())
            }
            None => {
                self.work_left = CHECK_EVERY;
                self.stop.check()
            }
        }
    }

    /// Counts `units` more samples held (16 bytes each); fails once the query holds more
    /// than `max_samples` (lowered by a memory limit, see [`crate::memory`]). Everything a query keeps beyond one step goes through here:
    /// fetched samples, range-vector windows, subquery results and cache, range output.
    pub fn hold(&mut self, units: usize) -> Result<()> {
        self.held = self.held.saturating_add(units);
        self.peak_held = self.peak_held.max(self.held);
        if self.held > self.max_samples {
            Err(PromqlError::TooManySamples)
        } else {
            Ok(())
        }
    }

    /// Gives back what [`Self::hold`] counted, once it is freed.
    pub fn release(&mut self, units: usize) {
        self.held = self.held.saturating_sub(units);
    }

    /// The value of `e` at `t`; what it produces counts as work (see [`Self::work`]).
    pub fn eval(&mut self, e: &Expr, t: i64) -> Result<Val> {
        let v = self.eval_node(e, t)?;
        let produced = match &v {
            Val::Vector(vec) => vec.len(),
            Val::Matrix(m) => m.series.len(),
            Val::Scalar(_) | Val::Str(_) => 1,
        };
        self.work(produced)?;
        Ok(v)
    }

    fn eval_node(&mut self, e: &Expr, t: i64) -> Result<Val> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(vec) => Ok(Val::Vector(
                    vec.into_iter()
                        .map(|s| Sample {
                            metric: s.metric,
                            v: -s.v,
                            drop_name: true,
                        })
                        .collect(),
                )),
                other => exec_err(format!("unary minus on {}", other.type_name())),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.eval_vector_selector(vs, t, false)?)),
            Expr::MatrixSelector(ms) => {
                let range = dur_ms(&ms.range);
                self.eval_matrix_selector(&ms.vs, range, t).map(Val::Matrix)
            }
            Expr::Subquery(sq) => self.eval_subquery(sq, t).map(Val::Matrix),
            Expr::Binary(b) => self.eval_binary(b, t),
            Expr::Aggregate(a) => self.eval_aggregate(a, t),
            Expr::Call(c) => self.eval_call(c, t),
            Expr::Extension(_) => exec_err("extension expressions are not supported"),
        }
    }

    /// Evaluates an expression that must yield a scalar (function and aggregation params).
    pub fn eval_scalar(&mut self, e: &Expr, t: i64) -> Result<f64> {
        match self.eval(e, t)? {
            Val::Scalar(v) => Ok(v),
            other => exec_err(format!("expected scalar, got {}", other.type_name())),
        }
    }

    pub fn eval_string(&mut self, e: &Expr, t: i64) -> Result<String> {
        match self.eval(e, t)? {
            Val::Str(s) => Ok(s),
            other => exec_err(format!("expected string, got {}", other.type_name())),
        }
    }

    pub fn eval_vector(&mut self, e: &Expr, t: i64) -> Result<Vec<Sample>> {
        match self.eval(e, t)? {
            Val::Vector(v) => Ok(v),
            other => exec_err(format!(
                "expected instant vector, got {}",
                other.type_name()
            )),
        }
    }

    pub fn eval_matrix(&mut self, e: &Expr, t: i64) -> Result<MatrixVal> {
        match self.eval(e, t)? {
            Val::Matrix(m) => Ok(m),
            other => exec_err(format!("expected range vector, got {}", other.type_name())),
        }
    }

    /// The instant vector a selector yields at `t`: per series the newest sample within the
    /// lookback window, unless that sample is a stale marker. With `keep_ts` the value is the
    /// sample's own timestamp in seconds (what `timestamp()` needs).
    pub fn eval_vector_selector(
        &mut self,
        vs: &VectorSelector,
        t: i64,
        keep_ts: bool,
    ) -> Result<Vec<Sample>> {
        let ref_t = at_ms(&vs.at, self.query_start, self.query_end)
            .unwrap_or(t)
            .saturating_sub(offset_ms(&vs.offset));
        let data: &'a Fetched = self.data;
        let fetched: &'a [FetchedSeries] = data.get(&node_key(vs)).map_or(&[], Vec::as_slice);
        let mut out = self.spare_vector.take().unwrap_or_default();
        out.reserve(fetched.len());
        let lookback = self.lookback;
        // Looked up once and updated in place: this runs at every step of a range query.
        let state = self.selectors.entry(node_key(vs)).or_default();
        let forward = ref_t >= state.prev_ref && state.cursors.len() == fetched.len();
        if !forward {
            state.cursors.clear();
            state.cursors.resize(fetched.len(), 0);
        }
        state.prev_ref = ref_t;
        if state.walks.len() != fetched.len() {
            state.walks = fetched
                .iter()
                .map(|s| (!s.chunks.is_empty()).then(|| LatestWalk::new(&s.chunks)))
                .collect();
        }
        let mut failed = None;
        let SelectorState { cursors, walks, .. } = state;
        for ((s, cursor), walk) in fetched.iter().zip(cursors.iter_mut()).zip(walks.iter_mut()) {
            let last = match walk {
                Some(w) => match w.latest_at(ref_t) {
                    Ok(Some(last)) => last,
                    Ok(None) => continue,
                    Err(e) => {
                        failed = Some(PromqlError::Internal(format!(
                            "decoding the chunks of {}: {e}",
                            s.labels
                        )));
                        break;
                    }
                },
                None => {
                    let hi = if forward {
                        advance_past(&s.samples, *cursor, ref_t)
                    } else {
                        s.samples.partition_point(|x| x.t <= ref_t)
                    };
                    *cursor = hi;
                    if hi == 0 {
                        continue;
                    }
                    s.samples[hi - 1]
                }
            };
            if last.t <= ref_t.saturating_sub(lookback) || is_stale_nan(last.v) {
                continue;
            }
            let v = if keep_ts {
                last.t as f64 / 1000.0
            } else {
                last.v
            };
            out.push(Sample {
                metric: Arc::clone(&s.labels),
                v,
                drop_name: false,
            });
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    pub fn eval_matrix_selector(
        &mut self,
        vs: &VectorSelector,
        range: i64,
        t: i64,
    ) -> Result<MatrixVal> {
        let ref_t = at_ms(&vs.at, self.query_start, self.query_end)
            .unwrap_or(t)
            .saturating_sub(offset_ms(&vs.offset));
        let start = ref_t.saturating_sub(range);
        let data = self.data;
        let fetched: &[FetchedSeries] = data.get(&node_key(vs)).map_or(&[], Vec::as_slice);
        let (prev_start, mut cursors) = self
            .window_cursors
            .remove(&node_key(vs))
            .unwrap_or((i64::MAX, Vec::new()));
        let forward = start >= prev_start && cursors.len() == fetched.len();
        if !forward {
            cursors.clear();
            cursors.resize(fetched.len(), 0);
        }
        let mut series = Vec::new();
        let mut total = 0usize;
        for (s, cursor) in fetched.iter().zip(cursors.iter_mut()) {
            if let Err(e) = self.check_deadline() {
                self.window_cursors.insert(node_key(vs), (start, cursors));
                return Err(e);
            }
            let mut points = self.points_pool.pop().unwrap_or_default();
            points.clear();
            if s.chunks.is_empty() {
                let lo = if forward {
                    let mut lo = *cursor;
                    while lo < s.samples.len() && s.samples[lo].t <= start {
                        lo += 1;
                    }
                    lo
                } else {
                    s.samples.partition_point(|x| x.t <= start)
                };
                *cursor = lo;
                let mut hi = lo;
                while hi < s.samples.len() && s.samples[hi].t <= ref_t {
                    hi += 1;
                }
                points.extend(
                    s.samples[lo..hi]
                        .iter()
                        .filter(|x| !is_stale_nan(x.v))
                        .map(|x| (x.t, x.v)),
                );
            } else if let Err(e) = s.window_points(start, ref_t, &mut points) {
                // Fetched as chunks for the sliding walk, evaluated here only on its rare
                // fallback (a step it leaves to this path): decoded for this window alone.
                self.window_cursors.insert(node_key(vs), (start, cursors));
                return Err(PromqlError::Internal(format!(
                    "decoding the chunks of {}: {e}",
                    s.labels
                )));
            }
            if points.is_empty() {
                self.points_pool.push(points);
                continue;
            }
            total += points.len();
            if let Err(e) = self.hold(points.len()) {
                self.window_cursors.insert(node_key(vs), (start, cursors));
                return Err(e);
            }
            series.push(RSeries {
                metric: Arc::clone(&s.labels),
                points,
                drop_name: false,
            });
        }
        self.window_cursors.insert(node_key(vs), (start, cursors));
        // The window lives only until its caller has consumed it; its peak was counted.
        self.release(total);
        Ok(MatrixVal {
            series,
            range_start: start,
            range_end: ref_t,
        })
    }

    /// Hands a consumed step's vector back, so the next step's selector fills it instead of
    /// allocating one: a range query over a few series otherwise allocates once per step.
    pub fn give_back_vector(&mut self, mut v: Vec<Sample>) {
        v.clear();
        self.spare_vector = Some(v);
    }

    /// Hands the point buffers of a consumed range vector back for reuse.
    pub fn recycle(&mut self, m: MatrixVal) {
        // Bounded so one huge selector does not pin its memory for the rest of the query.
        const MAX_POOLED: usize = 1 << 16;
        for s in m.series {
            if self.points_pool.len() >= MAX_POOLED {
                break;
            }
            self.points_pool.push(s.points);
        }
    }
}

/// The index of the first sample after `t`, searching forward from `from` (whose samples
/// are all at or before `t`): a short walk for the usual few samples per step, a binary
/// search of the rest when the step skips many.
fn advance_past(samples: &[norn_model::Sample], from: usize, t: i64) -> usize {
    const WALK: usize = 8;
    let mut i = from;
    let walk_end = (from + WALK).min(samples.len());
    while i < walk_end {
        if samples[i].t > t {
            return i;
        }
        i += 1;
    }
    i + samples[i..].partition_point(|x| x.t <= t)
}

/// Whether two samples of a vector end up with the same labels.
pub(crate) fn has_duplicate_labelsets(vec: &[Sample], apply_drop: bool) -> bool {
    let mut seen = HashSet::with_capacity(vec.len());
    vec.iter().any(|s| {
        let l = if apply_drop {
            final_labels(&s.metric, s.drop_name)
        } else {
            Labels::clone(&s.metric)
        };
        !seen.insert(l)
    })
}

impl<'a> Evaluator<'a> {
    /// The "might not be a counter" info of `rate`/`increase` for one series.
    pub(crate) fn note_if_not_counter(&mut self, metric: &Metric) {
        if let Some(metric_name) = metric.get(METRIC_NAME)
            && !["_total", "_sum", "_count", "_bucket"]
                .iter()
                .any(|suf| metric_name.ends_with(suf))
        {
            let needle = metric_name.to_string();
            self.info(
                format!(
                    "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {metric_name:?}"
                ),
                &needle,
            );
        }
    }

    /// The value of call `c` at `t` if it was planned by [`crate::sliding::plan_sliding`] and `t` is one of
    /// the query's steps; `None` means "evaluate it the ordinary way".
    pub(crate) fn sliding_value(&mut self, c: &Call, t: i64) -> Result<Option<Vec<Sample>>> {
        let key = call_key(c);
        let Some(mut st) = self.sliding.remove(&key) else {
            return Ok(None);
        };
        let r = self
            .sliding_step(&mut st, c, t, None)
            .map(|ready| ready.and_then(|(idx, fetched)| st.take_step(idx, fetched)));
        self.sliding.insert(key, st);
        r
    }

    /// [`Self::sliding_value`] as bare values, (series index, value) in series order, with
    /// the selector's series they index: for an aggregation over the call, which needs no
    /// labelled sample per series per step.
    pub(crate) fn sliding_values(
        &mut self,
        c: &Call,
        t: i64,
    ) -> Result<Option<(StepValues, &'a [FetchedSeries])>> {
        let key = call_key(c);
        let Some(mut st) = self.sliding.remove(&key) else {
            return Ok(None);
        };
        let r = self.sliding_step(&mut st, c, t, None).map(|ready| {
            ready.and_then(|(idx, fetched)| st.take_values(idx).map(|v| (v, fetched)))
        });
        self.sliding.insert(key, st);
        r
    }

    /// The fetched series of the selector under sliding call `c` (none when it has none).
    pub(crate) fn sliding_selector_series(&self, c: &Call) -> &'a [FetchedSeries] {
        let data: &'a Fetched = self.data;
        matrix_arg(c)
            .and_then(|ms| data.get(&node_key(&ms.vs)))
            .map_or(&[], Vec::as_slice)
    }

    /// The groups of aggregation `fusion` over call `c` at step `t`, accumulated as the
    /// call's walk went (see [`SlidingRangeFn::slide_fused_chunk`]), or `None` where
    /// [`Self::sliding_values`] would give none.
    pub(crate) fn sliding_fused(
        &mut self,
        c: &Call,
        t: i64,
        fusion: &Fusion<'_>,
    ) -> Result<Option<StepGroups>> {
        let key = call_key(c);
        let Some(mut st) = self.sliding.remove(&key) else {
            return Ok(None);
        };
        let r = self
            .sliding_step(&mut st, c, t, Some(fusion))
            .map(|ready| ready.and_then(|(idx, _)| st.take_fused(idx)));
        self.sliding.insert(key, st);
        r
    }

    /// Hands back the buffer of a step's values taken with [`Self::sliding_values`].
    pub(crate) fn sliding_give_back(&mut self, c: &Call, values: StepValues) {
        if let Some(st) = self.sliding.get_mut(&call_key(c)) {
            st.give_back(values);
        }
    }

    /// Makes step `t` of call `c` ready in `st`, walking the next chunk of steps if needed:
    /// its step index and the selector's series, or `None` when `t` is not a step.
    fn sliding_step(
        &mut self,
        st: &mut SlidingRangeFn<'a>,
        c: &Call,
        t: i64,
        fusion: Option<&Fusion<'_>>,
    ) -> Result<Option<(usize, &'a [FetchedSeries])>> {
        let (start, end, step) = (self.query_start, self.query_end, self.query_step);
        if step <= 0 || t < start || t > end || (t - start) % step != 0 {
            return Ok(None);
        }
        let Some(ms) = matrix_arg(c) else {
            return Ok(None);
        };
        let idx = ((t - start) / step) as usize;
        let fetched = self.sliding_selector_series(c);
        let needs = match fusion {
            Some(_) => st.needs_fused_chunk(idx),
            None => st.needs_chunk(idx),
        };
        if needs {
            let steps = Steps {
                start,
                end,
                step,
                max_samples: self.max_samples,
            };
            let held = self.held;
            let to_note = match fusion {
                Some(fusion) => {
                    st.slide_fused_chunk(fetched, ms, steps, idx, held, &self.stop, fusion)?
                }
                None => st.slide_chunk(fetched, ms, steps, idx, held, &self.stop)?,
            };
            self.work(fetched.len())?;
            // A selector's series mostly share a few names: each name is looked at once.
            let mut last_name = None;
            for i in to_note {
                let name = fetched[i].labels.get(METRIC_NAME);
                if name.is_some() && name == last_name {
                    continue;
                }
                last_name = name;
                self.note_if_not_counter(&fetched[i].labels);
            }
        }
        Ok(Some((idx, fetched)))
    }
}
