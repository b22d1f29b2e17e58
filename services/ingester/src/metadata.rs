//! Metric metadata (type, help and unit of a metric family) that remote write carries, kept
//! per tenant for `GET /api/v1/metadata`.
//!
//! Bounded three ways, as in Mimir: at most `max_global_metadata_per_user` entries per
//! tenant and `max_global_metadata_per_metric` per family (new entries beyond are refused and
//! counted in `norn_discarded_metadata_total`, never evicting what is there), and entries not
//! re-sent for `metadata_retain_period` expire (Prometheus re-sends metadata every minute,
//! so a live family never expires). Expired entries are dropped on the next write or read
//! once a purge is due, so an idle tenant costs no background work.
//!
//! A family's entries live in a hash map, so re-sending one is a lookup, not a scan; a read
//! walks the families once, in name order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use norn_model::MetricMetadata;
use parking_lot::Mutex;

/// Reason label for entries refused over `max_global_metadata_per_user`.
pub const PER_USER_LIMIT: &str = "per_user_metadata_limit";
/// Reason label for entries refused over `max_global_metadata_per_metric`.
pub const PER_METRIC_LIMIT: &str = "per_metric_metadata_limit";

/// The limits of one tenant's store (0 = unlimited).
#[derive(Debug, Clone, Copy)]
pub struct MetadataLimits {
    pub per_user: usize,
    pub per_metric: usize,
}

/// What [`MetadataStore::add`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetadataAdded {
    /// New entries stored.
    pub stored: usize,
    /// Entries already there, whose expiry was pushed back.
    pub refreshed: usize,
    pub refused_per_user: usize,
    pub refused_per_metric: usize,
}

#[derive(Default)]
struct Inner {
    /// family name → entry → last time it was sent (ms).
    families: BTreeMap<String, HashMap<MetricMetadata, i64>>,
    total: usize,
    last_purge_ms: i64,
}

/// One tenant's metadata.
pub struct MetadataStore {
    retain_ms: i64,
    inner: Mutex<Inner>,
}

impl MetadataStore {
    /// A store whose entries expire `retain` after they were last sent (zero: never).
    pub fn new(retain: Duration) -> Self {
        Self {
            retain_ms: i64::try_from(retain.as_millis()).unwrap_or(i64::MAX),
            inner: Mutex::default(),
        }
    }

    /// Stores `entries` seen at `now_ms`, within `limits`.
    pub fn add(
        &self,
        entries: &[MetricMetadata],
        limits: MetadataLimits,
        now_ms: i64,
    ) -> MetadataAdded {
        let mut out = MetadataAdded::default();
        if entries.is_empty() {
            return out;
        }
        let mut inner = self.inner.lock();
        self.purge_if_due(&mut inner, now_ms);
        let Inner {
            families, total, ..
        } = &mut *inner;
        for m in entries {
            if let Some(fam) = families.get_mut(&m.metric_family_name) {
                if let Some(seen) = fam.get_mut(m) {
                    *seen = now_ms;
                    out.refreshed += 1;
                    continue;
                }
                if limits.per_metric > 0 && fam.len() >= limits.per_metric {
                    out.refused_per_metric += 1;
                    continue;
                }
            }
            if limits.per_user > 0 && *total >= limits.per_user {
                out.refused_per_user += 1;
                continue;
            }
            families
                .entry(m.metric_family_name.clone())
                .or_default()
                .insert(m.clone(), now_ms);
            *total += 1;
            out.stored += 1;
        }
        out
    }

    /// Metadata of every family (or of `metric` only), at most `limit` families (0 = all),
    /// families in name order, entries of a family by help, unit and type.
    pub fn read(&self, metric: Option<&str>, limit: usize, now_ms: i64) -> Vec<MetricMetadata> {
        let mut inner = self.inner.lock();
        self.purge_if_due(&mut inner, now_ms);
        let live = |seen: i64| self.retain_ms == 0 || now_ms.saturating_sub(seen) <= self.retain_ms;
        let mut out = Vec::new();
        let mut emit = |fam: &HashMap<MetricMetadata, i64>| {
            let start = out.len();
            out.extend(
                fam.iter()
                    .filter(|(_, s)| live(**s))
                    .map(|(m, _)| m.clone()),
            );
            out[start..].sort_by(|a, b| {
                (&a.help, &a.unit, a.metric_type.as_str()).cmp(&(
                    &b.help,
                    &b.unit,
                    b.metric_type.as_str(),
                ))
            });
            out.len() > start
        };
        match metric {
            Some(name) => {
                if let Some(fam) = inner.families.get(name) {
                    emit(fam);
                }
            }
            None => {
                let mut families = 0;
                for fam in inner.families.values() {
                    if limit > 0 && families >= limit {
                        break;
                    }
                    if emit(fam) {
                        families += 1;
                    }
                }
            }
        }
        out
    }

    /// Entries held (expired ones included until the next purge).
    pub fn len(&self) -> usize {
        self.inner.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries not sent for the retain period; returns how many.
    pub fn purge(&self, now_ms: i64) -> usize {
        let mut inner = self.inner.lock();
        Self::purge_locked(&mut inner, self.retain_ms, now_ms)
    }

    /// Purges at most once per tenth of the retain period (a purge walks every entry).
    fn purge_if_due(&self, inner: &mut Inner, now_ms: i64) {
        if self.retain_ms > 0 && now_ms.saturating_sub(inner.last_purge_ms) >= self.retain_ms / 10 {
            Self::purge_locked(inner, self.retain_ms, now_ms);
        }
    }

    fn purge_locked(inner: &mut Inner, retain_ms: i64, now_ms: i64) -> usize {
        inner.last_purge_ms = now_ms;
        if retain_ms == 0 {
            return 0;
        }
        let mut dropped = 0;
        inner.families.retain(|_, fam| {
            let before = fam.len();
            fam.retain(|_, seen| now_ms.saturating_sub(*seen) <= retain_ms);
            dropped += before - fam.len();
            !fam.is_empty()
        });
        inner.total -= dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::MetricType;

    fn md(name: &str, help: &str) -> MetricMetadata {
        MetricMetadata {
            metric_family_name: name.into(),
            metric_type: MetricType::Counter,
            help: help.into(),
            unit: String::new(),
        }
    }

    const UNLIMITED: MetadataLimits = MetadataLimits {
        per_user: 0,
        per_metric: 0,
    };

    #[test]
    fn per_user_and_per_metric_limits_refuse_new_entries_only() {
        let s = MetadataStore::new(Duration::from_secs(600));
        let limits = MetadataLimits {
            per_user: 3,
            per_metric: 2,
        };
        let added = s.add(
            &[md("a", "1"), md("a", "2"), md("a", "3"), md("b", "1")],
            limits,
            0,
        );
        assert_eq!(
            added,
            MetadataAdded {
                stored: 3,
                refused_per_metric: 1,
                ..Default::default()
            }
        );
        let added = s.add(&[md("c", "1"), md("a", "1")], limits, 1);
        assert_eq!(added.refused_per_user, 1);
        assert_eq!(
            added.refreshed, 1,
            "re-sending a stored entry is not refused"
        );
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.read(None, 0, 2),
            [md("a", "1"), md("a", "2"), md("b", "1")]
        );
    }

    #[test]
    fn entries_expire_unless_resent() {
        let s = MetadataStore::new(Duration::from_secs(600));
        s.add(&[md("a", "1"), md("b", "1")], UNLIMITED, 0);
        s.add(&[md("a", "1")], UNLIMITED, 500_000);
        // b was last sent at 0: gone after 10 minutes, a lives on.
        assert_eq!(s.read(None, 0, 700_000), [md("a", "1")]);
        assert_eq!(s.len(), 1, "the read purged it");
        assert_eq!(s.purge(2_000_000), 1);
        assert!(s.is_empty());
        // Expired entries free their slot under the per-user limit.
        let limits = MetadataLimits {
            per_user: 1,
            per_metric: 0,
        };
        assert_eq!(s.add(&[md("c", "1")], limits, 2_000_000).stored, 1);
        assert_eq!(
            s.add(&[md("d", "1")], limits, 2_000_001).refused_per_user,
            1
        );
        assert_eq!(s.add(&[md("d", "1")], limits, 3_000_000).stored, 1);
    }

    #[test]
    fn reads_filter_and_limit_families() {
        let s = MetadataStore::new(Duration::ZERO);
        s.add(
            &[md("b", "2"), md("b", "1"), md("a", "1"), md("c", "1")],
            UNLIMITED,
            0,
        );
        assert_eq!(s.read(Some("b"), 0, i64::MAX), [md("b", "1"), md("b", "2")]);
        assert_eq!(
            s.read(None, 2, i64::MAX),
            [md("a", "1"), md("b", "1"), md("b", "2")]
        );
        assert!(s.read(Some("zzz"), 0, 0).is_empty());
    }

    /// 200k families (the quadratic case took 13 minutes to read).
    #[test]
    fn a_large_store_reads_whole() {
        let s = MetadataStore::new(Duration::from_secs(600));
        let entries: Vec<MetricMetadata> =
            (0..200_000).map(|i| md(&format!("m{i:06}"), "h")).collect();
        assert_eq!(s.add(&entries, UNLIMITED, 0).stored, 200_000);
        let all = s.read(None, 0, 1);
        assert_eq!(all.len(), 200_000);
        assert!(
            all.windows(2)
                .all(|w| w[0].metric_family_name < w[1].metric_family_name)
        );
    }
}
