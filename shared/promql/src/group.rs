//! Grouping for aggregations: which `by`/`without` group an input series falls in, worked
//! out once per series and kept across the steps of a query.

use std::collections::HashMap;
use std::sync::Arc;

use norn_model::Labels;
use promql_parser::parser::LabelModifier;

use crate::value::{Metric, is_schema_label};

/// What one aggregation node has learnt about its input series, kept across the steps of a
/// query: an input series' group does not change between steps, so it is worked out (hash
/// of the grouping labels, comparison with the groups seen so far) once per series instead
/// of once per sample per step.
#[derive(Debug, Default)]
pub(crate) struct GroupCache {
    /// Group id by the address of an input label set. The entry holds a reference, so the
    /// address cannot be reused by another label set while it is cached.
    by_input: HashMap<usize, (Metric, usize)>,
    /// Grouping labels of each group id (shared by every output sample of the group).
    labels: Vec<Metric>,
    /// Group ids by hash of their grouping labels; collisions settled by comparing labels.
    by_hash: HashMap<u64, Vec<usize>>,
    /// Per group id: the evaluation (`epoch`) that last saw it and its index in that
    /// evaluation's output, so each evaluation keeps first-seen order without a map.
    seen: Vec<(u64, usize)>,
    epoch: u64,
    /// Input address and group id by position in the previous evaluation's input: a
    /// selector yields its series in the same order at every step, so most samples find
    /// their group here without hashing.
    by_position: Vec<(usize, usize)>,
    /// Group id of each series of the selector an aggregation fused with a sliding range
    /// function reads (see [`Self::series_groups`]), by index in the selector.
    series_groups: Vec<usize>,
}

impl GroupCache {
    /// Starts an evaluation over `inputs` series: a new epoch for [`Self::output_index`].
    pub fn begin(&mut self, inputs: usize) {
        // Label sets made anew at every step (e.g. by label_replace) would only pile up.
        if self.by_input.len() > 4 * inputs + 4096 {
            self.clear();
        }
        self.epoch += 1;
    }

    /// Where group `g` sits in this evaluation's output: `Some` if an earlier input of this
    /// evaluation already fell in it, else `None`, recording `next` as its place.
    pub fn output_index(&mut self, g: usize, next: usize) -> Option<usize> {
        match self.seen[g] {
            (e, gi) if e == self.epoch => Some(gi),
            _ => {
                self.seen[g] = (self.epoch, next);
                None
            }
        }
    }

    /// The grouping labels of group `g`.
    pub fn labels(&self, g: usize) -> &Metric {
        &self.labels[g]
    }

    /// How many groups there are: every group id is below it.
    pub fn group_count(&self) -> usize {
        self.labels.len()
    }

    fn clear(&mut self) {
        self.by_input.clear();
        self.labels.clear();
        self.by_hash.clear();
        self.seen.clear();
        self.by_position.clear();
        self.series_groups.clear();
    }

    /// The group id of each of `series`, by index: worked out on the first call of an
    /// evaluation over the same series, then kept (a selector's series are the same at
    /// every step).
    pub fn series_groups(
        &mut self,
        series: &[crate::value::FetchedSeries],
        modifier: Option<&LabelModifier>,
    ) -> &[usize] {
        if self.series_groups.len() != series.len() {
            let groups = series
                .iter()
                .enumerate()
                .map(|(i, s)| self.group_of(i, &s.labels, modifier))
                .collect();
            self.series_groups = groups;
        }
        &self.series_groups
    }

    /// [`Self::series_groups`], taken out of the cache so that the caller can look up
    /// output places while it reads them; [`Self::put_series_groups`] puts them back.
    pub fn take_series_groups(
        &mut self,
        series: &[crate::value::FetchedSeries],
        modifier: Option<&LabelModifier>,
    ) -> Vec<usize> {
        self.series_groups(series, modifier);
        std::mem::take(&mut self.series_groups)
    }

    /// Gives back what [`Self::take_series_groups`] took.
    pub fn put_series_groups(&mut self, groups: Vec<usize>) {
        self.series_groups = groups;
    }

    /// The group id of the input at position `pos` of this evaluation.
    pub fn group_of(&mut self, pos: usize, m: &Metric, modifier: Option<&LabelModifier>) -> usize {
        let key = Arc::as_ptr(m) as usize;
        if let Some(&(k, g)) = self.by_position.get(pos)
            && k == key
        {
            return g;
        }
        let g = self.lookup(key, m, modifier);
        if pos < self.by_position.len() {
            self.by_position[pos] = (key, g);
        } else {
            self.by_position.push((key, g));
        }
        g
    }

    fn lookup(&mut self, key: usize, m: &Metric, modifier: Option<&LabelModifier>) -> usize {
        if let Some(&(_, g)) = self.by_input.get(&key) {
            return g;
        }
        let h = group_hash(m, modifier);
        let chain = self.by_hash.entry(h).or_default();
        let g = match chain
            .iter()
            .find(|&&g| in_group(&self.labels[g], m, modifier))
        {
            Some(&g) => g,
            None => {
                self.labels.push(Arc::new(group_labels(m, modifier)));
                self.seen.push((0, 0));
                chain.push(self.labels.len() - 1);
                self.labels.len() - 1
            }
        };
        self.by_input.insert(key, (Arc::clone(m), g));
        g
    }
}

/// The labels a sample is grouped by: only the `by` labels, or all but the `without`
/// labels and the metric name.
fn grouped<'a>(
    m: &'a Labels,
    modifier: Option<&'a LabelModifier>,
) -> impl Iterator<Item = &'a norn_model::Label> + 'a {
    m.iter().filter(move |l| match modifier {
        None => false,
        Some(LabelModifier::Include(by)) => by.labels.iter().any(|n| n == &l.name),
        Some(LabelModifier::Exclude(without)) => {
            !is_schema_label(&l.name) && !without.labels.iter().any(|n| n == &l.name)
        }
    })
}

fn group_hash(m: &Labels, modifier: Option<&LabelModifier>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    for l in grouped(m, modifier) {
        h.update(l.name.as_bytes());
        h.update(&[0xff]);
        h.update(l.value.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
}

/// Whether `m`'s grouping labels are exactly `group`.
fn in_group(group: &Labels, m: &Labels, modifier: Option<&LabelModifier>) -> bool {
    let mut it = grouped(m, modifier);
    group.iter().all(|g| it.next() == Some(g)) && it.next().is_none()
}

fn group_labels(m: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::empty(),
        Some(LabelModifier::Include(by)) => m.keep(&by.labels),
        Some(LabelModifier::Exclude(without)) => Labels::from_sorted(
            m.iter()
                .filter(|l| {
                    !is_schema_label(&l.name) && !without.labels.iter().any(|n| n == &l.name)
                })
                .cloned()
                .collect(),
        ),
    }
}
