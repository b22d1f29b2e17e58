//! What a query needs and how it is fetched: parsing (through a cache of recent texts),
//! the plan of which series every selector needs over which time range, and the fetch of
//! that plan from the [`Queryable`] within the query's budget and deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use norn_model::{Labels, Matcher, Queryable, SampleBudget};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr, VectorSelector};

use super::{Plan, SelectorNeed, Span};
use crate::ast::{
    DEFAULT_SUBQUERY_STEP_MS, at_ms, call_key, dur_ms, node_key, offset_ms, selector_matchers,
};
use crate::error::{PromqlError, Result};
use crate::eval::Fetched;
use crate::memory::MemoryLimit;
use crate::value::FetchedSeries;

/// Fetches what `plan` says within the query's sample budget and deadline: the data, and the
/// units it holds (decoded samples, and chunk bytes / 16).
pub(super) async fn fetch_plan(
    q: &dyn Queryable,
    plan: &Plan,
    memory: MemoryLimit,
    deadline: Instant,
) -> Result<(Fetched, usize)> {
    let fetch = async {
        let mut data = Fetched::with_capacity_and_hasher(plan.len(), Default::default());
        let budget = SampleBudget::new(memory.sample_cap());
        // Chunks are held encoded (a regular scrape takes 1-2 bytes a sample, not 16): they
        // count by their bytes once fetched, and may hold 8 times the samples the query may
        // hold decoded while they are read.
        let chunk_budget = SampleBudget::new(memory.sample_cap().saturating_mul(8));
        let mut chunk_bytes = 0usize;
        for (key, need) in plan {
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
    tokio::time::timeout_at(deadline.into(), fetch)
        .await
        .map_err(|_| PromqlError::Timeout)?
        .map_err(|e| memory.explain(e))
}

/// Nesting (as [`crate::guard::nesting_depth`] bounds it) up to which a query may be planned
/// on the caller's thread: a runtime thread has a 2 MiB stack, and planning takes far less
/// than a kilobyte of it per level.
const CALLER_PLAN_MAX_DEPTH: usize = 16;

/// The parsed expression and plan of `query` (`depth`: its nesting, from the text check) when
/// it is in the parse cache and shallow, worked out on the calling thread; `None` sends the
/// query to a query thread to be parsed.
pub(super) fn plan_if_cached_and_shallow(
    query: &str,
    depth: usize,
    span: Span,
    lookback: i64,
) -> Option<Result<(Box<Expr>, Plan)>> {
    if query.len() > PARSED_MAX_QUERY_LEN || depth > CALLER_PLAN_MAX_DEPTH {
        return None;
    }
    let expr = PARSED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(query)
        .cloned()?;
    Some(plan_expr(Box::new(expr), span, lookback))
}

/// Whether `query` is in the parse cache: it parsed, recently.
pub(super) fn parsed_recently(query: &str) -> bool {
    query.len() <= PARSED_MAX_QUERY_LEN
        && PARSED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(query)
}

/// Queries parsed recently, by text. Dashboards send the same texts at every refresh, and
/// parsing compiles each regex matcher (tens of microseconds each, more than a small query's
/// evaluation). Bounded in entries (cleared when full) and in query length.
static PARSED: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Expr>>> =
    std::sync::LazyLock::new(Default::default);
const PARSED_MAX_ENTRIES: usize = 512;
const PARSED_MAX_QUERY_LEN: usize = 8192;

/// Parses `query`, from [`PARSED`] when it was parsed recently. Errors are not cached.
pub(super) fn parse_cached(query: &str) -> Result<Expr> {
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

pub(super) fn parse_and_plan(query: &str, span: Span, lookback: i64) -> Result<(Box<Expr>, Plan)> {
    plan_expr(Box::new(parse_cached(query)?), span, lookback)
}

/// Works out what `expr` needs fetched (keyed by its selectors' addresses, so the box must
/// not be rebuilt after).
fn plan_expr(expr: Box<Expr>, span: Span, lookback: i64) -> Result<(Box<Expr>, Plan)> {
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
