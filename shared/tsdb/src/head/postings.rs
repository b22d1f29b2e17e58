//! The head's inverted index: label name → value → sorted series ids, and selection by
//! label matchers with Prometheus' semantics (spec §7).
//!
//! Matchers that cannot match the empty string select (their postings are intersected);
//! matchers that do match it (`a=""`, `a!="x"`, `a!~"x"`, `a=~"x|"`) can only exclude, so
//! the series whose value fails them are subtracted, starting from all series when nothing
//! selects. Set regexes (`a|b|c`) look their values up directly.

use hashbrown::HashMap;
use norn_model::{MatchType, Matcher};

use super::symbols::SymbolTable;

/// A sorted list of series ids. Ids are handed out in increasing order, so inserting is
/// nearly always a push.
#[derive(Debug, Default, Clone)]
pub(crate) struct PostingList(Vec<u32>);

impl PostingList {
    fn insert(&mut self, id: u32) {
        match self.0.last() {
            None => self.0.push(id),
            Some(&last) if last < id => self.0.push(id),
            _ => {
                if let Err(i) = self.0.binary_search(&id) {
                    self.0.insert(i, id);
                }
            }
        }
    }

    pub(crate) fn as_slice(&self) -> &[u32] {
        &self.0
    }

    fn heap_size(&self) -> usize {
        self.0.capacity() * 4
    }
}

#[derive(Default)]
pub(crate) struct MemPostings {
    all: PostingList,
    /// name symbol → value symbol → series.
    names: HashMap<u32, HashMap<u32, PostingList>>,
}

impl MemPostings {
    /// Adds series `id` with `labels` (flattened name/value symbol pairs).
    pub(crate) fn add(&mut self, id: u32, labels: &[u32]) {
        self.all.insert(id);
        for pair in labels.chunks_exact(2) {
            self.names
                .entry(pair[0])
                .or_default()
                .entry(pair[1])
                .or_default()
                .insert(id);
        }
    }

    /// Removes series (head truncation): `removed` holds each series' id and flattened
    /// label symbols. One pass per touched list, so removing most of a large head stays
    /// linear rather than a `Vec::remove` per id.
    pub(crate) fn remove_all(&mut self, removed: &[(u32, Box<[u32]>)]) {
        if removed.is_empty() {
            return;
        }
        let ids: hashbrown::HashSet<u32> = removed.iter().map(|(id, _)| *id).collect();
        self.all.0.retain(|id| !ids.contains(id));
        let mut touched: hashbrown::HashSet<(u32, u32)> = hashbrown::HashSet::new();
        for (_, labels) in removed {
            for pair in labels.chunks_exact(2) {
                touched.insert((pair[0], pair[1]));
            }
        }
        for (name, value) in touched {
            let Some(values) = self.names.get_mut(&name) else {
                continue;
            };
            if let Some(list) = values.get_mut(&value) {
                list.0.retain(|id| !ids.contains(id));
                if list.0.is_empty() {
                    values.remove(&value);
                }
            }
            if values.is_empty() {
                self.names.remove(&name);
            }
        }
    }

    /// Label name symbols that have at least one series.
    pub(crate) fn names(&self) -> impl Iterator<Item = u32> + '_ {
        self.names.keys().copied()
    }

    /// Value symbols of name symbol `name`.
    pub(crate) fn values(&self, name: u32) -> impl Iterator<Item = u32> + '_ {
        self.names
            .get(&name)
            .into_iter()
            .flat_map(|v| v.keys().copied())
    }

    fn list(&self, name: u32, value: u32) -> &[u32] {
        self.names
            .get(&name)
            .and_then(|v| v.get(&value))
            .map_or(&[][..], PostingList::as_slice)
    }

    /// Series ids (ascending) matching every matcher; all series for no matchers.
    pub(crate) fn select(&self, symbols: &SymbolTable, matchers: &[Matcher]) -> Vec<u32> {
        let mut positives: Vec<Vec<u32>> = Vec::new();
        let mut negatives: Vec<Vec<u32>> = Vec::new();
        for m in matchers {
            let name = symbols.lookup(&m.name);
            if m.matches_empty() {
                // Only series that carry the label with a failing value are excluded.
                let Some(name) = name else { continue };
                let failing = match m.kind {
                    MatchType::NotEqual => self.lookup_values(symbols, name, [m.value.as_str()]),
                    _ => self.scan_values(symbols, name, |v| !m.matches(v)),
                };
                if !failing.is_empty() {
                    negatives.push(failing);
                }
            } else {
                let Some(name) = name else { return Vec::new() };
                let matching = match m.kind {
                    MatchType::Equal => self.lookup_values(symbols, name, [m.value.as_str()]),
                    MatchType::Regex => match m.set_matches() {
                        Some(set) => {
                            self.lookup_values(symbols, name, set.iter().map(String::as_str))
                        }
                        None => self.scan_values(symbols, name, |v| m.matches(v)),
                    },
                    _ => self.scan_values(symbols, name, |v| m.matches(v)),
                };
                if matching.is_empty() {
                    return Vec::new();
                }
                positives.push(matching);
            }
        }
        let mut result = if positives.is_empty() {
            self.all.as_slice().to_vec()
        } else {
            positives.sort_by_key(Vec::len);
            let mut it = positives.into_iter();
            let first = it.next().unwrap_or_default();
            it.fold(first, |acc, p| intersect(&acc, &p))
        };
        for n in &negatives {
            if result.is_empty() {
                break;
            }
            result = subtract(&result, n);
        }
        result
    }

    fn lookup_values<'a>(
        &self,
        symbols: &SymbolTable,
        name: u32,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Vec<u32> {
        let lists: Vec<&[u32]> = values
            .into_iter()
            .filter_map(|v| symbols.lookup(v))
            .map(|v| self.list(name, v))
            .filter(|l| !l.is_empty())
            .collect();
        union(lists)
    }

    fn scan_values(
        &self,
        symbols: &SymbolTable,
        name: u32,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<u32> {
        let Some(values) = self.names.get(&name) else {
            return Vec::new();
        };
        let lists: Vec<&[u32]> = values
            .iter()
            .filter(|(v, _)| keep(symbols.get(**v)))
            .map(|(_, l)| l.as_slice())
            .collect();
        union(lists)
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_size(&self) -> usize {
        let mut n = self.all.heap_size() + self.names.capacity() * 40;
        for values in self.names.values() {
            n += values.capacity() * 32;
            n += values.values().map(PostingList::heap_size).sum::<usize>();
        }
        n
    }
}

fn union(lists: Vec<&[u32]>) -> Vec<u32> {
    match lists.len() {
        0 => Vec::new(),
        1 => lists[0].to_vec(),
        _ => {
            let mut out: Vec<u32> = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
            for l in lists {
                out.extend_from_slice(l);
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

/// Intersection of two ascending lists.
pub(crate) fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    // Galloping through the larger list pays off when the sizes differ a lot.
    if small.len() * 16 < large.len() {
        let mut lo = 0;
        for &x in small {
            match large[lo..].binary_search(&x) {
                Ok(i) => {
                    out.push(x);
                    lo += i + 1;
                }
                Err(i) => lo += i,
            }
        }
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while i < small.len() && j < large.len() {
        match small[i].cmp(&large[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(small[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// `a` without the elements of `b` (both ascending).
pub(crate) fn subtract(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            continue;
        }
        out.push(x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::Labels;

    fn index(series: &[&[(&str, &str)]]) -> (SymbolTable, MemPostings, Vec<Labels>) {
        let syms = SymbolTable::new();
        let mut p = MemPostings::default();
        let mut all = Vec::new();
        for (id, s) in series.iter().enumerate() {
            let labels = Labels::from_pairs(s.iter().copied());
            let flat: Vec<u32> = labels
                .iter()
                .flat_map(|l| [syms.intern(&l.name), syms.intern(&l.value)])
                .collect();
            p.add(id as u32, &flat);
            all.push(labels);
        }
        (syms, p, all)
    }

    #[test]
    fn matchers_agree_with_brute_force() {
        let series: &[&[(&str, &str)]] = &[
            &[("__name__", "up"), ("job", "a"), ("env", "prod")],
            &[("__name__", "up"), ("job", "b")],
            &[("__name__", "up"), ("job", "c"), ("env", "dev")],
            &[("__name__", "down"), ("job", "a"), ("env", "")],
            &[("__name__", "down"), ("x", "1")],
        ];
        let (syms, p, all) = index(series);
        let cases: Vec<Vec<Matcher>> = vec![
            vec![Matcher::equal("__name__", "up")],
            vec![Matcher::equal("env", "")],
            vec![Matcher::new(MatchType::NotEqual, "env", "prod").unwrap()],
            vec![Matcher::new(MatchType::NotEqual, "env", "").unwrap()],
            vec![Matcher::new(MatchType::Regex, "job", "a|b").unwrap()],
            vec![Matcher::new(MatchType::Regex, "job", "a|").unwrap()],
            vec![Matcher::new(MatchType::Regex, "env", ".*").unwrap()],
            vec![Matcher::new(MatchType::Regex, "env", ".+").unwrap()],
            vec![Matcher::new(MatchType::NotRegex, "job", "a|c").unwrap()],
            vec![Matcher::new(MatchType::NotRegex, "nope", ".*").unwrap()],
            vec![Matcher::equal("nope", "")],
            vec![Matcher::equal("nope", "x")],
            vec![
                Matcher::equal("__name__", "up"),
                Matcher::new(MatchType::NotEqual, "job", "b").unwrap(),
                Matcher::new(MatchType::Regex, "env", "p.*|").unwrap(),
            ],
            vec![],
        ];
        for ms in cases {
            let want: Vec<u32> = all
                .iter()
                .enumerate()
                .filter(|(_, l)| norn_model::matches_all(&ms, |n| l.get(n)))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(p.select(&syms, &ms), want, "{ms:?}");
        }
    }

    #[test]
    fn set_operations() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[3, 4, 5]), [3, 5]);
        let big: Vec<u32> = (0..1000).collect();
        assert_eq!(intersect(&[5, 500, 2000], &big), [5, 500]);
        assert_eq!(subtract(&[1, 2, 3, 4], &[2, 4, 6]), [1, 3]);
        let mut l = PostingList::default();
        for id in [1, 5, 3, 5, 9] {
            l.insert(id);
        }
        assert_eq!(l.as_slice(), [1, 3, 5, 9]);
    }
}
