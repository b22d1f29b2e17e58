//! The step evaluator: computes an expression's value at one timestamp from series that the
//! engine fetched up front. Range queries call it once per step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use norn_model::{Labels, METRIC_NAME, is_stale_nan};
use promql_parser::label::Matchers;
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};

use crate::error::{PromqlError, Result, exec_err};
use crate::guard::{CHECK_EVERY, Stop};
use crate::value::{FetchedSeries, MatrixVal, RSeries, SCHEMA_LABELS, Sample, Val, final_labels};

/// Fetched series per selector node, keyed by the node's address in the (pinned) AST.
pub(crate) type Fetched = HashMap<usize, Vec<FetchedSeries>>;

/// Address of a selector node; the AST is boxed and never mutated while a query runs.
pub(crate) fn node_key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

/// Milliseconds of an offset modifier (negative offsets look ahead).
pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

pub(crate) fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The fixed evaluation time an `@` modifier pins a node to, if any.
pub(crate) fn at_ms(at: &Option<AtModifier>, start: i64, end: i64) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(start),
        Some(AtModifier::End) => Some(end),
        Some(AtModifier::At(st)) => Some(match st.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => dur_ms(&d),
            Err(e) => -dur_ms(&e.duration()),
        }),
    }
}

/// Default resolution of a subquery without an explicit step (Prometheus' test setting and
/// the usual global evaluation interval).
pub(crate) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

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
    pub subquery_cache: HashMap<usize, BTreeMap<i64, Val>>,
    /// Per matrix selector node: the window start of the previous step and, per fetched
    /// series, the index of the first sample after it. Range queries move every window
    /// forward by one step, so the next start is found by stepping from there instead of a
    /// binary search over each series' whole sample array (which misses the cache).
    pub window_cursors: HashMap<usize, (i64, Vec<usize>)>,
    /// Emptied point buffers of range vectors already consumed, reused by the next window
    /// instead of an allocation per series per step.
    pub points_pool: Vec<Vec<(i64, f64)>>,
    /// Range-function calls of a range query evaluated across all steps at once, by call
    /// node address (see [`crate::range_fn::plan_sliding`]).
    pub sliding: HashMap<usize, crate::range_fn::SlidingRangeFn>,
    /// Per instant-vector selector node: the reference time of the previous evaluation and,
    /// per fetched series, the index of the first sample after it. Range queries move
    /// forward by one step, which is a few samples, cheaper to walk than to binary-search.
    pub selector_cursors: HashMap<usize, (i64, Vec<usize>)>,
    /// Per aggregation node, its input series' groups (see [`crate::aggregate::GroupCache`]).
    pub group_caches: HashMap<usize, crate::aggregate::GroupCache>,
}

impl Evaluator<'_> {
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
    /// than `max_samples`. Everything a query keeps beyond one step goes through here:
    /// fetched samples, range-vector windows, subquery results and cache, range output.
    pub fn hold(&mut self, units: usize) -> Result<()> {
        self.held = self.held.saturating_add(units);
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
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.eval_vector_selector(vs, t, false))),
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
    ) -> Vec<Sample> {
        let ref_t = at_ms(&vs.at, self.query_start, self.query_end)
            .unwrap_or(t)
            .saturating_sub(offset_ms(&vs.offset));
        let data = self.data;
        let fetched: &[FetchedSeries] = data.get(&node_key(vs)).map_or(&[], Vec::as_slice);
        let (prev_ref, mut cursors) = self
            .selector_cursors
            .remove(&node_key(vs))
            .unwrap_or((i64::MAX, Vec::new()));
        let forward = ref_t >= prev_ref && cursors.len() == fetched.len();
        if !forward {
            cursors.clear();
            cursors.resize(fetched.len(), 0);
        }
        let mut out = Vec::new();
        for (s, cursor) in fetched.iter().zip(cursors.iter_mut()) {
            let hi = if forward {
                advance_past(&s.samples, *cursor, ref_t)
            } else {
                s.samples.partition_point(|x| x.t <= ref_t)
            };
            *cursor = hi;
            if hi == 0 {
                continue;
            }
            let last = s.samples[hi - 1];
            if last.t <= ref_t.saturating_sub(self.lookback) || is_stale_nan(last.v) {
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
        self.selector_cursors.insert(node_key(vs), (ref_t, cursors));
        out
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
            if lo == hi {
                continue;
            }
            let mut points = self.points_pool.pop().unwrap_or_default();
            points.clear();
            points.extend(
                s.samples[lo..hi]
                    .iter()
                    .filter(|x| !is_stale_nan(x.v))
                    .map(|x| (x.t, x.v)),
            );
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

/// Whether `name` is one of the labels dropped with the metric name.
pub(crate) fn is_schema_label(name: &str) -> bool {
    SCHEMA_LABELS.contains(&name)
}

/// Converts a selector's matchers (plus its name) into storage matchers, one set per `or`
/// alternative.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Vec<norn_model::Matcher>>> {
    let groups: Vec<&Vec<promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![&vs.matchers.matchers]
    } else {
        vs.matchers.or_matchers.iter().collect()
    };
    let mut out = Vec::new();
    for g in groups {
        let mut ms = Vec::new();
        for m in g {
            ms.push(convert_matcher(m)?);
        }
        if let Some(name) = &vs.name
            && !ms
                .iter()
                .any(|m: &norn_model::Matcher| m.name == METRIC_NAME)
        {
            ms.push(norn_model::Matcher::equal(METRIC_NAME, name.clone()));
        }
        out.push(ms);
    }
    Ok(out)
}

fn convert_matcher(m: &promql_parser::label::Matcher) -> Result<norn_model::Matcher> {
    use norn_model::MatchType;
    use promql_parser::label::MatchOp;
    let kind = match m.op {
        MatchOp::Equal => MatchType::Equal,
        MatchOp::NotEqual => MatchType::NotEqual,
        MatchOp::Re(_) => MatchType::Regex,
        MatchOp::NotRe(_) => MatchType::NotRegex,
    };
    norn_model::Matcher::new(kind, m.name.clone(), m.value.clone())
        .map_err(|e| PromqlError::Parse(e.to_string()))
}

/// Equality matchers of a selector, for `absent()`'s output labels.
pub(crate) fn absent_labels(matchers: &Matchers) -> Labels {
    use promql_parser::label::MatchOp;
    let mut l = Labels::empty();
    let mut has: HashSet<&str> = HashSet::new();
    for m in &matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if matches!(m.op, MatchOp::Equal) && !has.contains(m.name.as_str()) {
            l.set(&m.name, &m.value);
            has.insert(&m.name);
        } else {
            l.remove(&m.name);
        }
    }
    l
}

/// Finds the string literals of `query` whose escapes make them invalid UTF-8 when decoded
/// as bytes (Go semantics), keyed by how promql-parser decodes them (each `\xHH` or octal
/// escape becomes the char U+00HH).
pub(crate) fn invalid_utf8_literals(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let q = chars[i];
        if q != '"' && q != '\'' {
            i += 1;
            continue;
        }
        i += 1;
        let start = i;
        let mut bytes: Vec<u8> = Vec::new();
        let mut parser_view = String::new();
        let mut has_byte_escape = false;
        while i < chars.len() && chars[i] != q {
            let c = chars[i];
            if c == '\\' && i + 1 < chars.len() {
                let e = chars[i + 1];
                let digits: String = if e == 'x' {
                    chars.iter().skip(i + 2).take(2).collect()
                } else {
                    chars.iter().skip(i + 1).take(3).collect()
                };
                let radix = if e == 'x' { 16 } else { 8 };
                let byte = (e == 'x' || e.is_digit(8))
                    .then(|| u8::from_str_radix(&digits, radix).ok())
                    .flatten()
                    .filter(|_| digits.len() == if e == 'x' { 2 } else { 3 });
                if let Some(b) = byte {
                    bytes.push(b);
                    parser_view.push(char::from(b));
                    has_byte_escape |= b >= 0x80;
                    i += 4;
                    continue;
                }
                // Other escapes decode to valid UTF-8 either way.
                let decoded = match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                };
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(decoded.encode_utf8(&mut buf).as_bytes());
                parser_view.push(decoded);
                i += 2;
                continue;
            }
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            parser_view.push(c);
            i += 1;
        }
        if has_byte_escape && std::str::from_utf8(&bytes).is_err() {
            out.insert(
                parser_view,
                chars[start..i.min(chars.len())].iter().collect(),
            );
        }
        i += 1;
    }
    out
}
