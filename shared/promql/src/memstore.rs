//! An in-memory [`Queryable`]: series kept in a sorted map, for tests and for the ruler.

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;
use norn_model::{
    Labels, Matcher, Queryable, Sample, Series, ShardSelector, StorageError, matches_all,
};

/// Series held in memory, sorted by labels, each with time-ordered samples.
#[derive(Debug, Default)]
pub struct MemStore {
    series: RwLock<BTreeMap<Labels, Vec<Sample>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one sample; a sample at an existing timestamp replaces the old one, and an
    /// out-of-order sample is inserted in place, so callers need not sort.
    pub fn add_sample(&self, labels: &Labels, t: i64, v: f64) {
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        let samples = map.entry(labels.clone()).or_default();
        match samples.last() {
            Some(last) if last.t < t => samples.push(Sample::new(t, v)),
            None => samples.push(Sample::new(t, v)),
            Some(_) => match samples.binary_search_by_key(&t, |s| s.t) {
                Ok(i) => samples[i].v = v,
                Err(i) => samples.insert(i, Sample::new(t, v)),
            },
        }
    }

    /// Appends a batch of samples to one series.
    pub fn add_series(&self, labels: &Labels, samples: impl IntoIterator<Item = Sample>) {
        for s in samples {
            self.add_sample(labels, s.t, s.v);
        }
    }

    /// Drops every series.
    pub fn clear(&self) {
        self.series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.series.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn matching<'a>(
        map: &'a BTreeMap<Labels, Vec<Sample>>,
        start_ms: i64,
        end_ms: i64,
        matchers: &'a [Matcher],
    ) -> impl Iterator<Item = (&'a Labels, &'a [Sample])> + 'a {
        // A `__query_shard__` matcher keeps one shard's series, as every store does; a
        // malformed one matches nothing (the engine refuses it before it gets here).
        let (matchers, shard, ok) = match ShardSelector::split(matchers) {
            Ok((m, s)) => (m, s, true),
            Err(_) => (std::borrow::Cow::Borrowed(matchers), None, false),
        };
        map.iter().filter_map(move |(labels, samples)| {
            if !ok
                || !matches_all(&matchers, |n| labels.get(n))
                || shard.is_some_and(|s| !s.contains(labels))
            {
                return None;
            }
            let lo = samples.partition_point(|s| s.t < start_ms);
            let hi = samples.partition_point(|s| s.t <= end_ms);
            (lo < hi).then(|| (labels, &samples[lo..hi]))
        })
    }
}

#[async_trait]
impl Queryable for MemStore {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        Ok(Self::matching(&map, start_ms, end_ms, matchers)
            .map(|(labels, samples)| Series {
                labels: labels.clone(),
                samples: samples.to_vec(),
            })
            .collect())
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = Self::matching(&map, start_ms, end_ms, matchers)
            .flat_map(|(labels, _)| labels.iter().map(|l| l.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut values: Vec<String> = Self::matching(&map, start_ms, end_ms, matchers)
            .filter_map(|(labels, _)| labels.get(name).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::MatchType;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(f))
            .unwrap()
    }

    #[test]
    fn select_filters_by_matchers_and_time() {
        let s = MemStore::new();
        let a = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let b = Labels::from_pairs([("__name__", "up"), ("job", "b")]);
        s.add_series(
            &a,
            [
                Sample::new(0, 1.0),
                Sample::new(10, 2.0),
                Sample::new(20, 3.0),
            ],
        );
        s.add_series(&b, [Sample::new(30, 4.0)]);
        let m = [Matcher::equal("__name__", "up")];
        let got = block_on(s.select(5, 20, &m)).unwrap();
        assert_eq!(got.len(), 1, "series without samples in range are omitted");
        assert_eq!(
            got[0].samples,
            vec![Sample::new(10, 2.0), Sample::new(20, 3.0)]
        );
        let re = [Matcher::new(MatchType::Regex, "job", "a|b").unwrap()];
        assert_eq!(block_on(s.select(0, 100, &re)).unwrap().len(), 2);
        assert_eq!(
            block_on(s.label_values("job", 0, 100, &[])).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            block_on(s.label_names(0, 100, &[])).unwrap(),
            ["__name__", "job"]
        );
    }

    #[test]
    fn out_of_order_and_duplicate_samples() {
        let s = MemStore::new();
        let a = Labels::from_pairs([("x", "1")]);
        s.add_sample(&a, 10, 1.0);
        s.add_sample(&a, 5, 2.0);
        s.add_sample(&a, 10, 3.0);
        let got = block_on(s.select(0, 100, &[])).unwrap();
        assert_eq!(
            got[0].samples,
            vec![Sample::new(5, 2.0), Sample::new(10, 3.0)]
        );
    }
}
