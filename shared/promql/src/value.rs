//! The public result types of a query and the engine's internal per-step values.

use std::sync::Arc;

use norn_model::{Label, Labels, METRIC_NAME, Sample as ModelSample, Series};

/// Label sets are shared between steps and values; cloning one is a reference count bump.
pub(crate) type Metric = Arc<Labels>;

/// A series fetched from storage for one selector.
#[derive(Debug, Clone)]
pub(crate) struct FetchedSeries {
    pub labels: Metric,
    pub samples: Vec<ModelSample>,
}

/// Labels that describe the metric rather than the series; they go together with the name
/// when a function or operator changes what the value means.
pub(crate) const SCHEMA_LABELS: [&str; 3] = [METRIC_NAME, "__type__", "__unit__"];

/// Whether `name` is one of the labels dropped with the metric name.
pub(crate) fn is_schema_label(name: &str) -> bool {
    SCHEMA_LABELS.contains(&name)
}

/// One element of an instant vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// A query result value, shaped like Prometheus' `resultType`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar { t: i64, v: f64 },
    String { t: i64, v: String },
    Vector(Vec<VectorSample>),
    Matrix(Vec<Series>),
}

/// What a query returns: the value plus Prometheus-style annotations, already rendered as
/// `PromQL warning: ... (line:col)` / `PromQL info: ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub value: Value,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
    pub stats: QueryStats,
}

/// What a query cost, from the engine's own accounting (see [`crate::memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Samples fetched from storage.
    pub samples_fetched: usize,
    /// The most samples the query held at once (fetched samples, windows, subquery results,
    /// output), Prometheus' `max_samples` measure.
    pub peak_samples: usize,
    /// The most bytes the query held at once, estimated: the peak samples × 16 plus the
    /// fetched series' label sets.
    pub estimated_peak_bytes: u64,
}

/// One element of an instant vector during evaluation. `drop_name` implements Prometheus 3's
/// delayed name removal: the name stays visible to `label_replace` & co. until the end.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub metric: Metric,
    pub v: f64,
    pub drop_name: bool,
}

/// One series of a range vector during evaluation (points in time order).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RSeries {
    pub metric: Metric,
    pub points: Vec<(i64, f64)>,
    pub drop_name: bool,
}

/// A range vector plus the window it was cut from; rate-like functions extrapolate to the
/// window's edges.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MatrixVal {
    pub series: Vec<RSeries>,
    /// Exclusive lower bound of the window (ms).
    pub range_start: i64,
    /// Inclusive upper bound of the window (ms).
    pub range_end: i64,
}

/// The value of an expression at one evaluation step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Scalar(f64),
    Str(String),
    Vector(Vec<Sample>),
    Matrix(MatrixVal),
}

impl Val {
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Str(_) => "string",
            Val::Vector(_) => "instant vector",
            Val::Matrix(_) => "range vector",
        }
    }
}

/// Removes the name and the schema labels that travel with it.
pub(crate) fn drop_schema_labels(l: &Labels) -> Labels {
    if !l.iter().any(|x| SCHEMA_LABELS.contains(&x.name.as_str())) {
        return l.clone();
    }
    Labels::from_sorted(
        l.iter()
            .filter(|x| !SCHEMA_LABELS.contains(&x.name.as_str()))
            .cloned()
            .collect::<Vec<Label>>(),
    )
}

/// The final labels of a sample once delayed name removal is applied.
pub(crate) fn final_labels(metric: &Labels, drop_name: bool) -> Labels {
    if drop_name {
        drop_schema_labels(metric)
    } else {
        metric.clone()
    }
}
