//! Matchers to series refs over a block index (spec §7), split into a plan and its
//! resolution so the lists can come from anywhere: the mapped index file of a local block,
//! or ranged reads of the bucket's index file in the store-gateway (which fetches every list
//! the plan names in one coalesced round).
//!
//! Matchers that cannot match the empty string intersect (each is the union of the lists of
//! the values it accepts); the others subtract the series whose value fails them (a series
//! without the label has the value `""`, which passes); a plan with only subtracting
//! matchers starts from the all-postings list. This is Prometheus' `PostingsForMatchers`.

use norn_model::{MatchType, Matcher};

/// Which postings lists (by offset in the index) a set of matchers needs, and how they
/// combine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostingsPlan {
    /// One entry per intersecting matcher: the union of these lists.
    pub intersect: Vec<Vec<u64>>,
    /// One entry per subtracting matcher: the union of these lists is removed.
    pub subtract: Vec<Vec<u64>>,
    /// The all-postings list's offset when no matcher intersects.
    pub all: Option<u64>,
}

impl PostingsPlan {
    /// Plans `matchers` over an index whose postings offset table answers `values(name)`
    /// (sorted values with their lists' offsets) and whose all-postings list is at
    /// `all_postings`.
    pub fn new<'a>(
        matchers: &[Matcher],
        values: impl Fn(&str) -> &'a [(String, u64)],
        all_postings: u64,
    ) -> Self {
        let mut plan = Self::default();
        for m in matchers {
            let vals = values(&m.name);
            if m.matches_empty() {
                plan.subtract.push(
                    vals.iter()
                        .filter(|(v, _)| !m.matches(v))
                        .map(|(_, off)| *off)
                        .collect(),
                );
                continue;
            }
            let offsets: Vec<u64> = match (m.kind, m.set_matches()) {
                (MatchType::Equal, _) => lookup(vals, &m.value).into_iter().collect(),
                // `a|b|c`: look the literals up instead of running the regex on every value.
                (MatchType::Regex, Some(set)) => {
                    set.iter().filter_map(|v| lookup(vals, v)).collect()
                }
                _ => vals
                    .iter()
                    .filter(|(v, _)| m.matches(v))
                    .map(|(_, o)| *o)
                    .collect(),
            };
            plan.intersect.push(offsets);
        }
        if plan.intersect.is_empty() {
            plan.all = Some(all_postings);
        }
        plan
    }

    /// True when the answer is empty whatever the lists hold (a matcher that intersects
    /// accepts no value present in the block).
    pub fn is_empty(&self) -> bool {
        self.intersect.iter().any(Vec::is_empty)
    }

    /// Every list offset the plan reads, sorted and unique (none when [`Self::is_empty`]).
    pub fn offsets(&self) -> Vec<u64> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<u64> = self
            .intersect
            .iter()
            .chain(&self.subtract)
            .flatten()
            .copied()
            .chain(self.all)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Series refs, ascending, given every list [`Self::offsets`] names; `list(off)` returns
    /// `None` for a list it was not given (a caller bug, reported as an error message).
    pub fn resolve<'l>(&self, list: impl Fn(u64) -> Option<&'l [u32]>) -> Result<Vec<u32>, String> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let get = |off: u64| list(off).ok_or_else(|| format!("postings list at {off} not read"));
        let union = |offs: &[u64]| -> Result<Vec<u32>, String> {
            let mut out = Vec::new();
            for &off in offs {
                out.extend_from_slice(get(off)?);
            }
            if offs.len() > 1 {
                out.sort_unstable();
                out.dedup();
            }
            Ok(out)
        };
        let mut result: Option<Vec<u32>> = None;
        for offs in &self.intersect {
            let l = union(offs)?;
            result = Some(match result {
                None => l,
                Some(p) => intersect(&p, &l),
            });
            if result.as_ref().is_some_and(Vec::is_empty) {
                return Ok(Vec::new());
            }
        }
        let mut result = match (result, self.all) {
            (Some(r), _) => r,
            (None, Some(all)) => get(all)?.to_vec(),
            (None, None) => Vec::new(),
        };
        for offs in &self.subtract {
            result = subtract(&result, &union(offs)?);
        }
        Ok(result)
    }
}

fn lookup(vals: &[(String, u64)], v: &str) -> Option<u64> {
    vals.binary_search_by(|(x, _)| x.as_str().cmp(v))
        .ok()
        .map(|i| vals[i].1)
}

/// Sorted intersection of two ascending lists.
pub fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// `a` without the elements of `b` (both ascending).
pub fn subtract(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut j = 0;
    let mut out = Vec::with_capacity(a.len());
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn set_operations() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[3, 4, 7, 9]), [3, 7]);
        assert_eq!(subtract(&[1, 3, 5, 7], &[3, 4, 7, 9]), [1, 5]);
        assert_eq!(subtract(&[1, 3], &[]), [1, 3]);
        assert!(intersect(&[], &[1]).is_empty());
    }

    #[test]
    fn plan_and_resolve() {
        // job=a: {1,2}, job=b: {3}, env=prod: {1,3}; all: {1,2,3,4}.
        let job = vec![("a".to_string(), 10), ("b".to_string(), 20)];
        let env = vec![("prod".to_string(), 30)];
        let lists: HashMap<u64, Vec<u32>> = [
            (10, vec![1, 2]),
            (20, vec![3]),
            (30, vec![1, 3]),
            (0, vec![1, 2, 3, 4]),
        ]
        .into();
        let values = |n: &str| -> &[(String, u64)] {
            match n {
                "job" => &job,
                "env" => &env,
                _ => &[],
            }
        };
        let run = |ms: Vec<Matcher>| {
            let p = PostingsPlan::new(&ms, values, 0);
            p.resolve(|o| lists.get(&o).map(Vec::as_slice)).unwrap()
        };
        assert_eq!(run(vec![Matcher::equal("job", "a")]), [1, 2]);
        assert_eq!(
            run(vec![
                Matcher::equal("job", "a"),
                Matcher::equal("env", "prod")
            ]),
            [1]
        );
        assert_eq!(
            run(vec![
                Matcher::new(MatchType::NotEqual, "env", "prod").unwrap()
            ]),
            [2, 4]
        );
        assert_eq!(
            run(vec![Matcher::new(MatchType::Regex, "job", "a|b").unwrap()]),
            [1, 2, 3]
        );
        let p = PostingsPlan::new(&[Matcher::equal("job", "zzz")], values, 0);
        assert!(p.is_empty() && p.offsets().is_empty());
        assert_eq!(p.resolve(|_| None).unwrap(), Vec::<u32>::new());
        let p = PostingsPlan::new(&[Matcher::equal("job", "a")], values, 0);
        assert!(p.resolve(|_| None).is_err());
    }
}
