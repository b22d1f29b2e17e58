//! The query engine: parses, works out which series every selector needs over which time
//! range, fetches them from the [`Queryable`] up front, then evaluates step by step off the
//! async reactor.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_model::{Labels, Matcher, Queryable, Sample as ModelSample, SampleBudget, Series};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr, VectorSelector};

use crate::ast::{
    DEFAULT_SUBQUERY_STEP_MS, at_ms, call_key, dur_ms, invalid_utf8_literals, node_key, offset_ms,
    selector_matchers,
};
use crate::error::{PromqlError, Result};
use crate::eval::{Evaluator, Fetched};
use crate::guard::Stop;
use crate::memory::MemoryLimit;
use crate::threads::QueryThreads;
use crate::value::{
    FetchedSeries, Metric, QueryResult, QueryStats, SCHEMA_LABELS, Sample, Val, Value,
    VectorSample, final_labels,
};

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
    /// Dropping the returned future cancels the evaluation.
    async fn run(
        &self,
        q: &dyn Queryable,
        query: &str,
        span: Span,
        ctx: QueryContext,
    ) -> Result<QueryResult> {
        crate::guard::check_query_text(
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
        let (plan_tx, plan_rx) = tokio::sync::oneshot::channel::<Result<Plan>>();
        let (data_tx, data_rx) = tokio::sync::oneshot::channel::<(Fetched, usize)>();
        let (result_tx, result_rx) = tokio::sync::oneshot::channel::<Result<QueryResult>>();
        let opts = self.opts.clone();
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
            let _ = result_tx.send(r);
        })?;
        let ended = || PromqlError::Internal("the query thread ended without an answer".into());
        let plan = plan_rx.await.map_err(|_| ended())??;
        let fetch = async {
            let mut data: Fetched = HashMap::with_capacity(plan.len());
            let budget = SampleBudget::new(memory.sample_cap());
            // Chunks are held encoded (a regular scrape takes 1-2 bytes a sample, not 16):
            // they count by their bytes once fetched, and may hold 8 times the samples the
            // query may hold decoded while they are read.
            let chunk_budget = SampleBudget::new(memory.sample_cap().saturating_mul(8));
            let mut chunk_bytes = 0usize;
            for (key, need) in &plan {
                let got = if need.chunked {
                    let got = fetch_selector(q, need, &chunk_budget).await?;
                    chunk_bytes += got.iter().map(FetchedSeries::chunk_bytes).sum::<usize>();
                    got
                } else {
                    fetch_selector(q, need, &budget).await?
                };
                data.insert(*key, got);
            }
            let held = budget
                .used()
                .saturating_add(chunk_bytes.div_ceil(crate::memory::BYTES_PER_SAMPLE as usize));
            Ok::<_, PromqlError>((data, held))
        };
        let fetched = tokio::time::timeout_at(deadline.into(), fetch)
            .await
            .map_err(|_| PromqlError::Timeout)?
            .map_err(|e| memory.explain(e))?;
        if data_tx.send(fetched).is_err() {
            return Err(ended());
        }
        result_rx.await.map_err(|_| ended())?
    }
}

/// Parses `query` and works out what to fetch; runs on the query thread.
/// Queries parsed recently, by text. Dashboards send the same texts at every refresh, and
/// parsing compiles each regex matcher (tens of microseconds each, more than a small query's
/// evaluation). Bounded in entries (cleared when full) and in query length.
static PARSED: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Expr>>> =
    std::sync::LazyLock::new(Default::default);
const PARSED_MAX_ENTRIES: usize = 512;
const PARSED_MAX_QUERY_LEN: usize = 8192;

/// Parses `query`, from [`PARSED`] when it was parsed recently. Errors are not cached.
fn parse_cached(query: &str) -> Result<Expr> {
    let cache = || PARSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(expr) = cache().get(query) {
        return Ok(expr.clone());
    }
    let expr = parser::parse(query).map_err(PromqlError::Parse)?;
    if query.len() <= PARSED_MAX_QUERY_LEN {
        let mut cache = cache();
        if cache.len() >= PARSED_MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(query.to_owned(), expr.clone());
    }
    Ok(expr)
}

fn parse_and_plan(query: &str, span: Span, lookback: i64) -> Result<(Box<Expr>, Plan)> {
    let expr = Box::new(parse_cached(query)?);
    if span.range {
        let vt = expr.value_type();
        if vt != ValueType::Scalar && vt != ValueType::Vector {
            return Err(PromqlError::Parse(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                type_display(vt)
            )));
        }
    }
    let mut needs: HashMap<usize, SelectorNeed> = HashMap::new();
    plan(
        &expr, span.start, span.end, span.start, span.end, lookback, &mut needs,
    )?;
    if span.range && span.step > 0 {
        let mut chunked = crate::sliding::sliding_selectors(&expr);
        crate::chunk_walk::step_selectors(&expr, &mut chunked);
        for key in chunked {
            // A selector pinned by `@` reads one sample per series: cheaper decoded.
            if let Some(need) = needs.get_mut(&key).filter(|n| !n.last_only) {
                need.chunked = true;
            }
        }
    }
    Ok((expr, needs.into_iter().collect()))
}

fn type_display(vt: ValueType) -> &'static str {
    match vt {
        ValueType::Scalar => "scalar",
        ValueType::String => "string",
        ValueType::Vector => "instant vector",
        ValueType::Matrix => "range vector",
    }
}

/// One select of a selector within the query's sample budget: decoded samples, or the
/// encoded chunks for a selector planned as `chunked`.
async fn select(
    q: &dyn Queryable,
    need: &SelectorNeed,
    matchers: &[Matcher],
    budget: &SampleBudget,
) -> Result<Vec<FetchedSeries>> {
    // A malformed `__query_shard__` matcher is the query's fault: refused here, once, as
    // bad data (400), before any source is asked.
    norn_model::ShardSelector::split(matchers).map_err(norn_model::StorageError::from)?;
    let (mint, maxt) = (need.mint, need.maxt);
    let got = if need.chunked {
        q.select_chunks_within(mint, maxt, matchers, budget)
            .await
            .map(|got| got.into_iter().map(FetchedSeries::from).collect())
    } else if need.last_only {
        q.select_last_within(mint, maxt, matchers, budget)
            .await
            .map(|got| got.into_iter().map(FetchedSeries::from).collect())
    } else {
        q.select_within(mint, maxt, matchers, budget)
            .await
            .map(|got| got.into_iter().map(FetchedSeries::from).collect())
    };
    match got {
        Err(_) if budget.exhausted() => Err(PromqlError::TooManySamples),
        other => other.map_err(PromqlError::from),
    }
}

/// Fetches one selector's series within the query's sample budget: the sources charge it
/// series by series as they read and stop once it is spent, so a query over too many samples
/// fails having loaded about its limit, not the whole answer (a million series × an hour was
/// 4 GB before the count came).
async fn fetch_selector(
    q: &dyn Queryable,
    need: &SelectorNeed,
    budget: &SampleBudget,
) -> Result<Vec<FetchedSeries>> {
    if need.matchers.len() == 1 {
        return select(q, need, &need.matchers[0], budget).await;
    }
    // `or` alternatives: union by labels, the first alternative's series winning.
    let mut merged: BTreeMap<Arc<Labels>, FetchedSeries> = BTreeMap::new();
    for ms in &need.matchers {
        for s in select(q, need, ms, budget).await? {
            merged.entry(Arc::clone(&s.labels)).or_insert(s);
        }
    }
    Ok(merged.into_values().collect())
}

/// Records, for every selector under `e`, the time range it must be fetched for when `e`
/// is evaluated at times within `[s, e_t]`.
fn plan(
    e: &Expr,
    s: i64,
    e_t: i64,
    qstart: i64,
    qend: i64,
    lookback: i64,
    needs: &mut HashMap<usize, SelectorNeed>,
) -> Result<()> {
    let mut add = |vs: &VectorSelector, window: i64, instant: bool| -> Result<()> {
        let (lo, hi) = match at_ms(&vs.at, qstart, qend) {
            Some(a) => (a, a),
            None => (s, e_t),
        };
        let last_only = instant && lo == hi;
        let off = offset_ms(&vs.offset);
        let mint = lo.saturating_sub(off).saturating_sub(window);
        let maxt = hi.saturating_sub(off);
        match needs.get_mut(&node_key(vs)) {
            Some(n) => {
                n.mint = n.mint.min(mint);
                n.maxt = n.maxt.max(maxt);
                n.last_only = false;
            }
            None => {
                needs.insert(
                    node_key(vs),
                    SelectorNeed {
                        matchers: selector_matchers(vs)?,
                        mint,
                        maxt,
                        last_only,
                        chunked: false,
                    },
                );
            }
        }
        Ok(())
    };
    match e {
        Expr::VectorSelector(vs) => add(vs, lookback, true),
        Expr::MatrixSelector(ms) => add(&ms.vs, dur_ms(&ms.range), false),
        Expr::Subquery(sq) => {
            let (lo, hi) = match at_ms(&sq.at, qstart, qend) {
                Some(a) => (a, a),
                None => (s, e_t),
            };
            let off = offset_ms(&sq.offset);
            let range = dur_ms(&sq.range);
            let step = sq
                .step
                .as_ref()
                .map(dur_ms)
                .filter(|x| *x > 0)
                .unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
            plan(
                &sq.expr,
                lo.saturating_sub(off)
                    .saturating_sub(range)
                    .saturating_sub(step),
                hi.saturating_sub(off),
                qstart,
                qend,
                lookback,
                needs,
            )
        }
        Expr::Paren(p) => plan(&p.expr, s, e_t, qstart, qend, lookback, needs),
        Expr::Unary(u) => plan(&u.expr, s, e_t, qstart, qend, lookback, needs),
        Expr::Binary(b) => {
            plan(&b.lhs, s, e_t, qstart, qend, lookback, needs)?;
            plan(&b.rhs, s, e_t, qstart, qend, lookback, needs)
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                plan(p, s, e_t, qstart, qend, lookback, needs)?;
            }
            plan(&a.expr, s, e_t, qstart, qend, lookback, needs)
        }
        Expr::Call(c) if c.func.name == "info" => {
            // The info series are read at the base expression's reference times, so they
            // are fetched over the union of that expression's windows, keyed by the call.
            let Some(base) = c.args.args.first() else {
                return Ok(());
            };
            let mut inner: HashMap<usize, SelectorNeed> = HashMap::new();
            plan(base, s, e_t, qstart, qend, lookback, &mut inner)?;
            let mint = inner
                .values()
                .map(|n| n.mint)
                .min()
                .unwrap_or(s)
                .saturating_sub(lookback);
            let maxt = inner.values().map(|n| n.maxt).max().unwrap_or(e_t);
            for (k, n) in inner {
                match needs.get_mut(&k) {
                    Some(e) => {
                        e.mint = e.mint.min(n.mint);
                        e.maxt = e.maxt.max(n.maxt);
                        e.last_only = false;
                    }
                    None => {
                        needs.insert(k, n);
                    }
                }
            }
            let matchers = crate::info::info_matchers(c)?;
            needs.insert(
                call_key(c),
                SelectorNeed {
                    matchers,
                    mint,
                    maxt,
                    last_only: false,
                    chunked: false,
                },
            );
            Ok(())
        }
        Expr::Call(c) => {
            for a in &c.args.args {
                plan(a, s, e_t, qstart, qend, lookback, needs)?;
            }
            Ok(())
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Ok(()),
    }
}

/// Evaluates a parsed query over the fetched series; runs on the query thread. `held` is the
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
        subquery_cache: HashMap::new(),
        window_cursors: HashMap::new(),
        points_pool: Vec::new(),
        sliding: HashMap::new(),
        selector_cursors: HashMap::new(),
        selector_walks: HashMap::new(),
        group_caches: HashMap::new(),
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
#[cfg(test)]
mod tests;
