//! The query engine: parses, works out which series every selector needs over which time
//! range, fetches them from the [`Queryable`] up front, then evaluates step by step off the
//! async reactor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_model::{Queryable, Sample as ModelSample, Series};
use promql_parser::parser::{self, Expr};

use crate::ast::invalid_utf8_literals;
use crate::error::{PromqlError, Result};
use crate::eval::{Evaluator, Fetched};
use crate::guard::Stop;
use crate::memory::MemoryLimit;
use crate::threads::QueryThreads;
use crate::value::{
    Metric, QueryResult, QueryStats, SCHEMA_LABELS, Sample, Val, Value, VectorSample, final_labels,
};
use plan::{fetch_plan, parse_and_plan, parse_cached, parsed_recently, plan_if_cached_and_shallow};

/// Engine limits and defaults.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for the newest sample.
    pub lookback_delta_ms: i64,
    /// Most samples a query may hold in memory at once: fetched samples, range-vector
    /// windows, subquery results and their cache, and the output of a range query, counted
    /// in units of a fetched sample's 16 bytes.
    pub max_samples: usize,
    /// Longest a query may run; a request can only shorten it.
    pub timeout: Duration,
    /// Longest query text accepted, in bytes (0 = no limit).
    pub max_query_bytes: usize,
    /// Deepest nesting of a query expression accepted (see [`crate::nesting_depth`]); at most
    /// [`crate::MAX_QUERY_DEPTH_CEILING`].
    pub max_query_depth: usize,
    /// Query threads kept waiting for the next query between queries (the querier keeps its
    /// `max_concurrent`); more start when more queries run at once.
    pub idle_query_threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lookback_delta_ms: 300_000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            max_query_bytes: crate::guard::DEFAULT_MAX_QUERY_BYTES,
            max_query_depth: crate::guard::DEFAULT_MAX_QUERY_DEPTH,
            idle_query_threads: crate::threads::DEFAULT_IDLE_QUERY_THREADS,
        }
    }
}

/// Evaluates PromQL over any [`Queryable`]. Cheap to share (clones share the query threads);
/// holds no per-query state.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    opts: EngineOptions,
    /// The threads queries run on; counts the queries running, including those still
    /// winding down after their caller left.
    threads: QueryThreads,
}

/// Which series a selector needs: the storage matchers (one set per `or` alternative) and
/// the inclusive time range covering every evaluation of the node.
struct SelectorNeed {
    matchers: Vec<Vec<norn_model::Matcher>>,
    mint: i64,
    maxt: i64,
    /// An instant vector selector read at one time only (an instant query, or `@`): each
    /// series' newest sample in the range is all it needs.
    last_only: bool,
    /// Read only by a range function sliding across a range query's steps: fetched as the
    /// encoded chunks the store holds, decoded series by series as the steps advance.
    chunked: bool,
}

/// What the query thread hands the async side once it has parsed and planned: the selectors
/// to fetch, keyed by node address in the AST the thread keeps.
type Plan = Vec<(usize, SelectorNeed)>;

/// What a caller adds to one query.
#[derive(Default)]
pub struct QueryContext {
    /// The query's deadline, from now; the engine's timeout applies when it is shorter or
    /// this is unset.
    pub timeout: Option<Duration>,
    /// Dropped when the query's thread ends rather than when the caller stops waiting: the
    /// querier hands its concurrency slot here, so a slot frees only once the evaluation
    /// has actually stopped.
    pub keep_alive: Option<Box<dyn Send>>,
    /// Most bytes the query may hold, as the engine estimates them (0 = no limit): the
    /// tenant's `max_estimated_memory_consumption_per_query`. See [`crate::memory`].
    pub max_estimated_memory_bytes: u64,
}

impl QueryContext {
    /// A context with a deadline of `timeout` from now.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            ..Default::default()
        }
    }
}

/// Where a query runs: instant or range, over which times.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: i64,
    end: i64,
    step: i64,
    range: bool,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Self {
        Self {
            threads: QueryThreads::new(opts.idle_query_threads),
            opts,
        }
    }

    /// Queries on query threads (parsing or evaluating) now: a cancelled or timed-out
    /// query counts until its thread has noticed and stopped. Idle threads do not count.
    pub fn query_threads(&self) -> usize {
        self.threads.busy()
    }

    /// Query threads this engine has started, idle ones included.
    #[cfg(test)]
    pub(crate) fn query_threads_started(&self) -> u64 {
        self.threads.started()
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Evaluates `query` at one instant.
    pub async fn instant_query(
        &self,
        q: &dyn Queryable,
        query: &str,
        time_ms: i64,
    ) -> Result<QueryResult> {
        self.instant_query_within(q, query, time_ms, QueryContext::default())
            .await
    }

    /// [`Self::instant_query`] with the caller's deadline and keep-alive.
    pub async fn instant_query_within(
        &self,
        q: &dyn Queryable,
        query: &str,
        time_ms: i64,
        ctx: QueryContext,
    ) -> Result<QueryResult> {
        let span = Span {
            start: time_ms,
            end: time_ms,
            step: 0,
            range: false,
        };
        self.run(q, query, span, ctx).await
    }

    /// Evaluates `query` at every step from `start_ms` to `end_ms`; the result is a matrix
    /// sorted by labels.
    pub async fn range_query(
        &self,
        q: &dyn Queryable,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult> {
        self.range_query_within(q, query, start_ms, end_ms, step_ms, QueryContext::default())
            .await
    }

    /// [`Self::range_query`] with the caller's deadline and keep-alive.
    pub async fn range_query_within(
        &self,
        q: &dyn Queryable,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        ctx: QueryContext,
    ) -> Result<QueryResult> {
        if step_ms <= 0 {
            return Err(PromqlError::Parse(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end_ms < start_ms {
            return Err(PromqlError::Parse(
                "end timestamp must not be before start time".into(),
            ));
        }
        let span = Span {
            start: start_ms,
            end: end_ms,
            step: step_ms,
            range: true,
        };
        self.run(q, query, span, ctx).await
    }

    /// Runs `f` on a query thread (the stack sized for the deepest query allowed, off the
    /// async reactor), for work on a query's text outside the engine, such as locating a
    /// parse error by parsing prefixes of the query.
    pub async fn on_query_thread<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.threads.run(move || {
            let _ = tx.send(f());
        })?;
        rx.await
            .map_err(|_| PromqlError::Internal("the query thread ended without an answer".into()))
    }

    /// Checks that `query` parses, under the same text limits as a query. A text in the parse
    /// cache is answered here, with no thread hand-off: a query-frontend checks every query
    /// before queueing it, and a dashboard sends the same texts at every refresh. Any other
    /// text is parsed on a query thread and cached, so the querier's own parse of it (in the
    /// same process) is a hit.
    pub async fn check_query(&self, query: &str) -> Result<()> {
        crate::guard::check_query_text(
            query,
            self.opts.max_query_bytes,
            self.opts.max_query_depth,
        )?;
        if parsed_recently(query) {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let query = query.to_string();
        self.threads.run(move || {
            let _ = tx.send(parse_cached(&query).map(drop));
        })?;
        rx.await
            .map_err(|_| PromqlError::Internal("the query thread ended without an answer".into()))?
    }

    /// Parses `query` and renders it in Prometheus' canonical layout (`format_query`), under
    /// the same text limits and on the same kind of thread as a query.
    pub async fn format_query(&self, query: &str) -> Result<String> {
        crate::guard::check_query_text(
            query,
            self.opts.max_query_bytes,
            self.opts.max_query_depth,
        )?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let query = query.to_string();
        self.threads.run(move || {
            let r = parser::parse(&query)
                .map(|e| e.prettify())
                .map_err(PromqlError::Parse);
            let _ = tx.send(r);
        })?;
        rx.await
            .map_err(|_| PromqlError::Internal("the query thread ended without an answer".into()))?
    }

    /// Runs one query: the text check here; parsing, planning and evaluation on a query
    /// thread (see [`crate::guard`]); fetching here, between the two, since storage is async.
    /// A shallow query found in the parse cache is planned here too, and only evaluated on
    /// a thread, or here when it is small ([`evaluates_in_place`]). Dropping the returned
    /// future cancels the evaluation.
    async fn run(
        &self,
        q: &dyn Queryable,
        query: &str,
        span: Span,
        ctx: QueryContext,
    ) -> Result<QueryResult> {
        let depth = crate::guard::checked_depth(
            query,
            self.opts.max_query_bytes,
            self.opts.max_query_depth,
        )?;
        let now = Instant::now();
        let timeout = ctx
            .timeout
            .map_or(self.opts.timeout, |t| t.min(self.opts.timeout));
        let keep_alive = ctx.keep_alive;
        let memory = MemoryLimit::new(ctx.max_estimated_memory_bytes, self.opts.max_samples);
        // A timeout too large to represent means "no timeout" in practice.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(10 * 365 * 86_400));
        let stop = Stop::new(deadline);
        let _cancel = stop.cancel_on_drop();
        let opts = self.opts.clone();
        let ended = || PromqlError::Internal("the query thread ended without an answer".into());
        // A shallow query parsed recently is planned here: its plan is a clone from the parse
        // cache and a walk of a few levels, microseconds, with no recursion a runtime thread's
        // stack could not take. That saves the query thread's round trip to hand the plan
        // back: two cross-thread wake-ups of a small query's four, each a wait for a core on
        // a busy machine.
        if let Some(planned) =
            plan_if_cached_and_shallow(query, depth, span, opts.lookback_delta_ms)
        {
            let (expr, plan) = planned?;
            let fetched = fetch_plan(q, &plan, memory, deadline).await?;
            if evaluates_in_place(query, depth, span, &fetched) {
                let _keep_alive = keep_alive;
                let (data, held) = fetched;
                // A panic ends the query as it would end its thread, not the caller's task.
                return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    evaluate(&expr, &data, query, &opts, stop.clone(), held, span, memory)
                }))
                .map_err(|_| ended())?;
            }
            let (result_tx, result_rx) = tokio::sync::oneshot::channel::<Result<QueryResult>>();
            let text = query.to_string();
            let thread_stop = stop.clone();
            self.threads.run(move || {
                let _keep_alive = keep_alive;
                let (data, held) = fetched;
                let r = evaluate(&expr, &data, &text, &opts, thread_stop, held, span, memory);
                answer_then_free(data, r, result_tx);
            })?;
            return result_rx.await.map_err(|_| ended())?;
        }
        let (plan_tx, plan_rx) = tokio::sync::oneshot::channel::<Result<Plan>>();
        let (data_tx, data_rx) = tokio::sync::oneshot::channel::<(Fetched, usize)>();
        let (result_tx, result_rx) = tokio::sync::oneshot::channel::<Result<QueryResult>>();
        let text = query.to_string();
        let thread_stop = stop.clone();
        self.threads.run(move || {
            // Released when this thread ends, however it ends.
            let _keep_alive = keep_alive;
            // Boxed so that node addresses stay put; owned by this thread to the end, so even
            // its (recursive) drop runs on the large stack.
            let expr = match parse_and_plan(&text, span, opts.lookback_delta_ms) {
                Ok((expr, plan)) => {
                    if plan_tx.send(Ok(plan)).is_err() {
                        return;
                    }
                    expr
                }
                Err(e) => {
                    let _ = plan_tx.send(Err(e));
                    return;
                }
            };
            // The sender is dropped when the query was abandoned while fetching.
            let Ok((data, held)) = data_rx.blocking_recv() else {
                return;
            };
            let r = evaluate(&expr, &data, &text, &opts, thread_stop, held, span, memory);
            answer_then_free(data, r, result_tx);
        })?;
        let plan = plan_rx.await.map_err(|_| ended())??;
        let fetched = fetch_plan(q, &plan, memory, deadline).await?;
        if data_tx.send(fetched).is_err() {
            return Err(ended());
        }
        result_rx.await.map_err(|_| ended())?
    }
}

/// Fetched series beyond which a query's data is freed after its answer is handed over.
const FREE_AFTER_ANSWER_SERIES: usize = 16_384;

/// Hands a query thread's answer to the caller and frees the query's fetched data, in the
/// order that costs the caller least. Small data is freed first: freed after, it raced the
/// caller's next query for the allocator's arena lock (glibc), which made a 6,600-series
/// `topk` 1.8x slower one query after another. Big data is freed after: a million series'
/// labels and chunks are millions of frees, about a sixth of an instant `sum by (rate)` over
/// 320,000 series, which the caller then no longer waits for.
fn answer_then_free(
    data: Fetched,
    r: Result<QueryResult>,
    result_tx: tokio::sync::oneshot::Sender<Result<QueryResult>>,
) {
    let series: usize = data.values().map(Vec::len).sum();
    if series > FREE_AFTER_ANSWER_SERIES {
        let _ = result_tx.send(r);
        drop(data);
    } else {
        drop(data);
        let _ = result_tx.send(r);
    }
}

/// Most samples, and most series × steps, a query may hold to be evaluated on the calling
/// task instead of a query thread (see [`evaluates_in_place`]).
const IN_PLACE_MAX_SAMPLES: usize = 4096;
const IN_PLACE_MAX_SERIES_STEPS: usize = 16_384;
/// Deepest nesting evaluated in place: the evaluator recurses once a level, on the caller's
/// stack then.
const IN_PLACE_MAX_DEPTH: usize = 6;

/// Whether a caller-planned query is small enough to evaluate on the calling task: a few
/// thousand samples and series × steps, no subquery (whose inner steps the fetched data does
/// not bound) and shallow nesting. That is tens of microseconds, less than the two cross-thread
/// wake-ups of handing it to a query thread and back, which on a busy machine each wait for a
/// core. The text check for a subquery is conservative: any `:` between `[` and `]` (a label
/// value's too) keeps the query on a thread.
fn evaluates_in_place(query: &str, depth: usize, span: Span, fetched: &(Fetched, usize)) -> bool {
    let (data, held) = fetched;
    if *held > IN_PLACE_MAX_SAMPLES || depth > IN_PLACE_MAX_DEPTH {
        return false;
    }
    let steps = if span.range && span.step > 0 {
        usize::try_from((span.end - span.start) / span.step)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    } else {
        1
    };
    let series: usize = data.values().map(Vec::len).sum();
    if series.saturating_add(1).saturating_mul(steps) > IN_PLACE_MAX_SERIES_STEPS {
        return false;
    }
    let mut in_brackets = false;
    for c in query.bytes() {
        match c {
            b'[' => in_brackets = true,
            b']' => in_brackets = false,
            b':' if in_brackets => return false,
            _ => {}
        }
    }
    true
}

/// Evaluates a parsed query over the fetched series; runs on the query thread (or the
/// caller's task, for a small query: [`evaluates_in_place`]). `held` is the
/// number of samples fetched, the start of the query's sample count; `memory` is the query's
/// memory limit, which the fetched series' labels count against too.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    expr: &Expr,
    data: &Fetched,
    query: &str,
    opts: &EngineOptions,
    stop: Stop,
    held: usize,
    span: Span,
    memory: MemoryLimit,
) -> Result<QueryResult> {
    let labels: u64 = data
        .values()
        .flatten()
        .map(|s| crate::memory::label_bytes(&s.labels))
        .sum();
    let memory = memory.with_labels(labels);
    if memory.labels_over() {
        return Err(memory.exceeded());
    }
    if held > memory.sample_cap() {
        return Err(memory.explain(PromqlError::TooManySamples));
    }
    evaluate_within(expr, data, query, opts, stop, held, span, memory)
        .map_err(|e| memory.explain(e))
}

#[allow(clippy::too_many_arguments)]
fn evaluate_within(
    expr: &Expr,
    data: &Fetched,
    query: &str,
    opts: &EngineOptions,
    stop: Stop,
    held: usize,
    span: Span,
    memory: MemoryLimit,
) -> Result<QueryResult> {
    let Span {
        start,
        end,
        step,
        range,
    } = span;
    let mut ev = Evaluator {
        data,
        query,
        query_start: start,
        query_end: end,
        query_step: step,
        lookback: opts.lookback_delta_ms,
        max_samples: memory.sample_cap(),
        stop,
        work_left: 0,
        held,
        peak_held: held,
        subquery_depth: 0,
        range_mode: range,
        annotations: Default::default(),
        invalid_utf8: invalid_utf8_literals(query),
        subquery_cache: Default::default(),
        window_cursors: Default::default(),
        points_pool: Vec::new(),
        sliding: Default::default(),
        selectors: Default::default(),
        spare_vector: None,
        group_caches: Default::default(),
    };
    if range && step > 0 {
        crate::sliding::plan_sliding(expr, &mut ev.sliding);
    }
    let value = if !range {
        match ev.eval(expr, start)? {
            Val::Scalar(v) => Value::Scalar { t: start, v },
            Val::Str(v) => Value::String { t: start, v },
            Val::Vector(vec) => Value::Vector(finish_vector(vec, start)?),
            Val::Matrix(m) => {
                let mut out: Vec<Series> = m
                    .series
                    .into_iter()
                    .map(|s| Series {
                        labels: final_labels(&s.metric, s.drop_name),
                        samples: s
                            .points
                            .into_iter()
                            .map(|(t, v)| ModelSample::new(t, v))
                            .collect(),
                    })
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                for w in out.windows(2) {
                    if w[0].labels == w[1].labels {
                        return Err(PromqlError::Execution(
                            "vector cannot contain metrics with the same labelset".into(),
                        ));
                    }
                }
                Value::Matrix(out)
            }
        }
    } else {
        // Output series in a vector, found through a hash index of their final labels.
        let mut series: Vec<(Metric, Vec<ModelSample>)> = Vec::new();
        let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
        // The output series of each input label set (by address and whether the name goes),
        // so final labels are built and hashed once per series, not once per step. The
        // entry holds a reference, so the address cannot be reused by another label set.
        let mut by_input: HashMap<(usize, bool), (Metric, usize)> = HashMap::new();
        // The same by position in the previous step's vector: the elements of a vector mostly
        // come in the same order at every step, so most are found here without hashing.
        let mut by_position: Vec<((usize, bool), usize)> = Vec::new();
        // Per output series: the last step that wrote to it, to catch two elements of one
        // step ending up with the same labels.
        let mut last_step: Vec<usize> = Vec::new();
        let mut slots: Vec<usize> = Vec::new();
        let scalar_metric = Metric::default();
        let mut t = start;
        let mut step_no = 0usize;
        while t <= end {
            ev.check_deadline()?;
            step_no += 1;
            let vec = match ev.eval(expr, t)? {
                Val::Scalar(v) => vec![Sample {
                    metric: Arc::clone(&scalar_metric),
                    v,
                    drop_name: false,
                }],
                Val::Vector(vec) => vec,
                other => {
                    return Err(PromqlError::Execution(format!(
                        "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                        other.type_name()
                    )));
                }
            };
            // Label sets made anew at every step (e.g. by label_replace) would only pile up.
            if by_input.len() > 4 * (series.len() + vec.len()) + 4096 {
                by_input.clear();
                by_position.clear();
            }
            slots.clear();
            for (pos, s) in vec.iter().enumerate() {
                let key = (Arc::as_ptr(&s.metric) as usize, s.drop_name);
                let hint = by_position
                    .get(pos)
                    .and_then(|&(k, i)| (k == key).then_some(i));
                let cached = hint.or_else(|| by_input.get(&key).map(|&(_, i)| i));
                let i = match cached {
                    Some(i) => i,
                    None => {
                        let metric = final_metric(&s.metric, s.drop_name);
                        let chain = index.entry(metric.stable_hash()).or_default();
                        let i = match chain.iter().find(|&&i| same_labels(&series[i].0, &metric)) {
                            Some(&i) => i,
                            None => {
                                chain.push(series.len());
                                series.push((metric, Vec::new()));
                                last_step.push(0);
                                series.len() - 1
                            }
                        };
                        by_input.insert(key, (Arc::clone(&s.metric), i));
                        i
                    }
                };
                if hint.is_none() {
                    if pos < by_position.len() {
                        by_position[pos] = (key, i);
                    } else {
                        by_position.push((key, i));
                    }
                }
                if last_step[i] == step_no {
                    return Err(PromqlError::Execution(
                        "vector cannot contain metrics with the same labelset".into(),
                    ));
                }
                last_step[i] = step_no;
                slots.push(i);
            }
            // The output is held until the query ends.
            ev.hold(vec.len())?;
            for (&i, s) in slots.iter().zip(&vec) {
                series[i].1.push(ModelSample::new(t, s.v));
            }
            ev.give_back_vector(vec);
            t = match t.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        let mut out: Vec<Series> = series
            .into_iter()
            .map(|(m, samples)| Series {
                labels: Arc::unwrap_or_clone(m),
                samples,
            })
            .collect();
        out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        Value::Matrix(out)
    };
    let peak_samples = ev.peak_held.max(ev.held);
    Ok(QueryResult {
        value,
        warnings: ev.annotations.warnings,
        infos: ev.annotations.infos,
        stats: QueryStats {
            samples_fetched: held,
            peak_samples,
            estimated_peak_bytes: memory.estimate(peak_samples),
        },
    })
}

/// One finished element of a step: final labels, their hash and the value.
struct StepSample {
    metric: Metric,
    hash: u64,
    v: f64,
}

fn same_labels(a: &Metric, b: &Metric) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// A sample's final labels once delayed name removal is applied; shares `m` when they are
/// the same.
fn final_metric(m: &Metric, drop_name: bool) -> Metric {
    if drop_name && m.iter().any(|l| SCHEMA_LABELS.contains(&l.name.as_str())) {
        Arc::new(final_labels(m, true))
    } else {
        Arc::clone(m)
    }
}

/// Applies delayed name removal and rejects a step whose elements became indistinguishable.
/// Each label set is hashed once (xxh3); collisions are settled by comparing labels.
fn finish_step(vec: Vec<Sample>) -> Result<Vec<StepSample>> {
    let out: Vec<StepSample> = vec
        .into_iter()
        .map(|s| {
            let metric = final_metric(&s.metric, s.drop_name);
            StepSample {
                hash: metric.stable_hash(),
                metric,
                v: s.v,
            }
        })
        .collect();
    if out.len() > 1 {
        // Sorting hashes finds candidate duplicates without allocating per element.
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_unstable_by_key(|&i| out[i].hash);
        for run in order.chunk_by(|&a, &b| out[a].hash == out[b].hash) {
            for (k, &a) in run.iter().enumerate() {
                if run[k + 1..]
                    .iter()
                    .any(|&b| same_labels(&out[a].metric, &out[b].metric))
                {
                    return Err(PromqlError::Execution(
                        "vector cannot contain metrics with the same labelset".into(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

fn finish_vector(vec: Vec<Sample>, t: i64) -> Result<Vec<VectorSample>> {
    Ok(finish_step(vec)?
        .into_iter()
        .map(|s| VectorSample {
            labels: Arc::unwrap_or_clone(s.metric),
            t,
            v: s.v,
        })
        .collect())
}

/// Shared handle type callers commonly hold.
pub type SharedEngine = Arc<Engine>;

#[cfg(test)]
mod bounds_tests;
mod plan;
#[cfg(test)]
mod tests;
