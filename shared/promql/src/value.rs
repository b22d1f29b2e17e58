//! The public result types of a query and the engine's internal per-step values.

use std::sync::Arc;

use norn_model::{EncodedChunk, Label, Labels, METRIC_NAME, Sample as ModelSample, Series};

/// Label sets are shared between steps and values; cloning one is a reference count bump.
pub(crate) type Metric = Arc<Labels>;

/// A series fetched from storage for one selector: decoded samples, or, for a selector read
/// only by a range function sliding across a range query's steps, the encoded chunks the
/// store held (`samples` then empty), decoded series by series as the steps advance.
#[derive(Debug, Clone)]
pub(crate) struct FetchedSeries {
    pub labels: Metric,
    pub samples: Vec<ModelSample>,
    pub chunks: Vec<EncodedChunk>,
}

impl From<Series> for FetchedSeries {
    fn from(s: Series) -> Self {
        Self {
            labels: Arc::new(s.labels),
            samples: s.samples,
            chunks: Vec::new(),
        }
    }
}

impl From<norn_model::ChunkSeries> for FetchedSeries {
    fn from(s: norn_model::ChunkSeries) -> Self {
        Self {
            labels: Arc::new(s.labels),
            samples: Vec::new(),
            chunks: s.chunks,
        }
    }
}

impl FetchedSeries {
    /// The clean (stale markers dropped) samples in `(after, upto]`, decoded from the
    /// chunks when the series holds chunks, appended to `out` as points.
    pub fn window_points(
        &self,
        after: i64,
        upto: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> std::result::Result<(), String> {
        let mut scratch = Vec::new();
        let samples: &[ModelSample] = if self.chunks.is_empty() {
            &self.samples
        } else {
            let lo = after.saturating_add(1);
            for c in self
                .chunks
                .iter()
                .filter(|c| c.max_t >= lo && c.min_t <= upto)
            {
                c.decode_into(lo, upto, &mut scratch)?;
            }
            &scratch
        };
        let lo = samples.partition_point(|x| x.t <= after);
        let hi = samples.partition_point(|x| x.t <= upto);
        out.extend(
            samples[lo..hi.max(lo)]
                .iter()
                .filter(|x| !norn_model::is_stale_nan(x.v))
                .map(|x| (x.t, x.v)),
        );
        Ok(())
    }

    /// Bytes of encoded chunks the series holds.
    pub fn chunk_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.data.len()).sum()
    }
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
