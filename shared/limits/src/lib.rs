//! Per-tenant limits.
//!
//! [`Limits`] holds every limit with Mimir's defaults and Mimir's YAML names (the `limits:`
//! block of the config file). [`Overrides`] answers "what are tenant T's limits": the
//! defaults, overlaid with the tenant's entry from the runtime config file
//! (`--runtime-config.file`, Mimir's format `overrides: {tenant: {key: value}}`), which is
//! re-read periodically so operators change limits without a restart. A tenant entry only
//! lists what differs; every other key keeps the default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use norn_model::duration::serde_duration;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// Errors loading limits or overrides.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("reading runtime config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing runtime config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

pub type Result<T, E = LimitsError> = std::result::Result<T, E>;

/// Every per-tenant limit. Field names are Mimir's YAML keys; defaults are Mimir's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Samples per second a tenant may push (token bucket refill rate).
    pub ingestion_rate: f64,
    /// Token bucket size: how many samples a tenant may push at once.
    pub ingestion_burst_size: usize,
    /// Whether series must carry a valid `__name__`.
    pub enforce_metric_name: bool,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub max_label_names_per_series: usize,
    /// How far in the future a sample's timestamp may be.
    #[serde(with = "serde_duration")]
    pub creation_grace_period: Duration,
    /// How far in the past a sample may be (0 = no relative limit; samples before the Unix
    /// epoch are refused whatever this says).
    #[serde(with = "serde_duration")]
    pub past_grace_period: Duration,
    /// In-memory series per tenant across the cluster (0 = unlimited).
    pub max_global_series_per_user: usize,
    /// In-memory series per metric name per tenant (0 = unlimited).
    pub max_global_series_per_metric: usize,
    /// Longest metric name, help or unit accepted in remote-write metadata.
    pub max_metadata_length: usize,
    /// Metadata entries (metric family, type, help, unit) an ingester keeps per tenant
    /// (0 = unlimited). Mimir's default is unlimited; Norn's is not, so metadata cannot grow
    /// an ingester's memory without bound.
    pub max_global_metadata_per_user: usize,
    /// Metadata entries an ingester keeps per metric family per tenant (0 = unlimited).
    pub max_global_metadata_per_metric: usize,
    /// Longest range a query may cover (0 = unlimited); the query-frontend refuses a longer
    /// range query before splitting it, and the querier any longer query it is sent.
    #[serde(with = "serde_duration")]
    pub max_total_query_length: Duration,
    /// Longest range a range query may cover as it reaches the query-frontend (0 = unlimited);
    /// Cortex's and earlier Mimir's `max_query_length`.
    #[serde(with = "serde_duration")]
    pub max_query_length: Duration,
    /// How far back a query may read (0 = unlimited): the query-frontend moves an older
    /// start up to `now - max_query_lookback`, and answers a query wholly older with no data.
    #[serde(with = "serde_duration")]
    pub max_query_lookback: Duration,
    /// Split legs of one query the query-frontend runs at once (at least 1).
    pub max_query_parallelism: usize,
    /// The most recent part of a range query the query-frontend never caches: samples may
    /// still arrive for it.
    #[serde(with = "serde_duration")]
    pub max_cache_freshness: Duration,
    /// Shards a shardable query is split into by the query-frontend when
    /// `parallelize_shardable_queries` is on (0 or 1: not sharded).
    pub query_sharding_total_shards: usize,
    /// Series one query may fetch (0 = unlimited).
    pub max_fetched_series_per_query: usize,
    /// Bytes one query may hold in the querier's engine, as it estimates them (0 =
    /// unlimited): fetched samples, windows, subquery results and output at 16 bytes a
    /// sample, plus the fetched series' labels.
    pub max_estimated_memory_consumption_per_query: u64,
    /// Chunks one query may fetch from the store-gateways (0 = unlimited).
    pub max_fetched_chunks_per_query: usize,
    /// Bytes of chunks one query may fetch from the store-gateways (0 = unlimited).
    pub max_fetched_chunk_bytes_per_query: usize,
    /// Store-gateways a tenant's blocks are spread over (shuffle sharding; 0 = all of them).
    pub store_gateway_tenant_shard_size: usize,
    /// Deduplicate HA Prometheus pairs for this tenant (needs the HA tracker enabled).
    pub accept_ha_samples: bool,
    /// Label naming the HA cluster a sample comes from.
    pub ha_cluster_label: String,
    /// Label naming the replica within the HA cluster; removed before storing.
    pub ha_replica_label: String,
    /// HA clusters tracked per tenant (0 = unlimited); a request from a new cluster beyond it
    /// gets a 400.
    pub ha_max_clusters: usize,
    /// The compactor marks for deletion the tenant's blocks wholly older than this
    /// (0 = keep forever).
    #[serde(with = "serde_duration")]
    pub compactor_blocks_retention_period: Duration,
    /// Shards the compactor splits each of the tenant's time ranges into (0 = no split).
    pub compactor_split_and_merge_shards: usize,
    /// Groups the first-level blocks of a range are split in, one split job each.
    pub compactor_split_groups: usize,
    /// Partial blocks (no `meta.json`) idle longer than this are deleted (0 = never).
    #[serde(with = "serde_duration")]
    pub compactor_partial_block_deletion_delay: Duration,
    /// Most rule groups the tenant may store (0 = unlimited).
    pub ruler_max_rule_groups_per_tenant: usize,
    /// Most rules one of the tenant's rule groups may hold (0 = unlimited).
    pub ruler_max_rules_per_rule_group: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ingestion_rate: 10_000.0,
            ingestion_burst_size: 200_000,
            enforce_metric_name: true,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_label_names_per_series: 30,
            creation_grace_period: Duration::from_secs(600),
            past_grace_period: Duration::ZERO,
            max_global_series_per_user: 150_000,
            max_global_series_per_metric: 0,
            max_metadata_length: 1024,
            max_global_metadata_per_user: 20_000,
            max_global_metadata_per_metric: 10,
            max_total_query_length: Duration::ZERO,
            max_query_length: Duration::ZERO,
            max_query_lookback: Duration::ZERO,
            max_query_parallelism: 14,
            max_cache_freshness: Duration::from_secs(600),
            query_sharding_total_shards: 16,
            max_fetched_series_per_query: 0,
            max_estimated_memory_consumption_per_query: 0,
            max_fetched_chunks_per_query: 2_000_000,
            max_fetched_chunk_bytes_per_query: 0,
            store_gateway_tenant_shard_size: 0,
            accept_ha_samples: false,
            ha_cluster_label: "cluster".to_string(),
            ha_replica_label: "__replica__".to_string(),
            ha_max_clusters: 100,
            compactor_blocks_retention_period: Duration::ZERO,
            compactor_split_and_merge_shards: 0,
            compactor_split_groups: 1,
            compactor_partial_block_deletion_delay: Duration::from_secs(24 * 3600),
            ruler_max_rule_groups_per_tenant: 70,
            ruler_max_rules_per_rule_group: 20,
        }
    }
}

impl Limits {
    /// The part of the limits the shared series and sample checks use.
    pub fn validation(&self) -> norn_model::ValidationLimits {
        norn_model::ValidationLimits {
            enforce_metric_name: self.enforce_metric_name,
            max_label_name_length: self.max_label_name_length,
            max_label_value_length: self.max_label_value_length,
            max_label_names_per_series: self.max_label_names_per_series,
            creation_grace_period: self.creation_grace_period,
            past_grace_period: self.past_grace_period,
        }
    }
}

/// The runtime config file's shape (Mimir's): per-tenant partial limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeConfig {
    #[serde(default)]
    overrides: HashMap<String, serde_yaml::Value>,
}

/// Default limits plus per-tenant overrides, safe to share and to reload while in use.
#[derive(Debug)]
pub struct Overrides {
    defaults: Arc<Limits>,
    path: Option<PathBuf>,
    tenants: RwLock<HashMap<String, Arc<Limits>>>,
}

impl Overrides {
    /// Limits for everyone, no overrides file.
    pub fn new(defaults: Limits) -> Self {
        Self {
            defaults: Arc::new(defaults),
            path: None,
            tenants: RwLock::default(),
        }
    }

    /// Defaults plus the overrides file at `path`, loaded now. A missing or invalid file at
    /// start-up is an error (the operator asked for it); later reload failures keep the last
    /// good overrides.
    pub fn with_file(defaults: Limits, path: &Path) -> Result<Self> {
        let o = Self {
            defaults: Arc::new(defaults),
            path: Some(path.to_path_buf()),
            tenants: RwLock::default(),
        };
        o.reload()?;
        Ok(o)
    }

    /// Builds overrides from YAML text (tests and the config-validation endpoint).
    pub fn from_yaml(defaults: Limits, yaml: &str) -> Result<Self> {
        let o = Self::new(defaults);
        let tenants = o.parse(yaml, Path::new("<inline>"))?;
        *o.tenants.write() = tenants;
        Ok(o)
    }

    /// The limits that apply to `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Arc<Limits> {
        self.tenants
            .read()
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&self.defaults))
    }

    /// The limits of a read over several tenants (tenant federation): the first member's,
    /// with every query bound the smallest any member sets, so federating never lets a
    /// tenant read more, further back or wider than its own limits allow. One tenant is
    /// [`for_tenant`](Self::for_tenant).
    pub fn for_tenants<'a>(&self, tenants: impl IntoIterator<Item = &'a str>) -> Arc<Limits> {
        let all: Vec<Arc<Limits>> = tenants.into_iter().map(|t| self.for_tenant(t)).collect();
        let Some((first, rest)) = all.split_first() else {
            return Arc::clone(&self.defaults);
        };
        if rest.is_empty() {
            return Arc::clone(first);
        }
        let mut merged = Limits::clone(first);
        for l in rest {
            smallest(&mut merged.max_total_query_length, l.max_total_query_length);
            smallest(&mut merged.max_query_length, l.max_query_length);
            smallest(&mut merged.max_query_lookback, l.max_query_lookback);
            // Freshness is the other way round: the longest keeps every member's fresh data
            // out of the cache.
            merged.max_cache_freshness = merged.max_cache_freshness.max(l.max_cache_freshness);
            smallest(
                &mut merged.max_fetched_series_per_query,
                l.max_fetched_series_per_query,
            );
            smallest(
                &mut merged.max_fetched_chunks_per_query,
                l.max_fetched_chunks_per_query,
            );
            smallest(
                &mut merged.max_estimated_memory_consumption_per_query,
                l.max_estimated_memory_consumption_per_query,
            );
            smallest(
                &mut merged.max_fetched_chunk_bytes_per_query,
                l.max_fetched_chunk_bytes_per_query,
            );
            merged.max_query_parallelism =
                merged.max_query_parallelism.min(l.max_query_parallelism);
            merged.query_sharding_total_shards = merged
                .query_sharding_total_shards
                .min(l.query_sharding_total_shards);
        }
        Arc::new(merged)
    }

    pub fn defaults(&self) -> &Limits {
        &self.defaults
    }

    /// Re-reads the overrides file, if any. Returns whether anything changed.
    pub fn reload(&self) -> Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(path).map_err(|source| LimitsError::Io {
            path: path.clone(),
            source,
        })?;
        let tenants = self.parse(&text, path)?;
        let mut cur = self.tenants.write();
        let changed = *cur != tenants;
        if changed {
            tracing::info!(path = %path.display(), tenants = tenants.len(), "loaded runtime overrides");
            *cur = tenants;
        }
        Ok(changed)
    }

    /// The runtime config file, if one is configured.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn parse(&self, text: &str, path: &Path) -> Result<HashMap<String, Arc<Limits>>> {
        let perr = |message: String| LimitsError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let rc: RuntimeConfig = if text.trim().is_empty() {
            RuntimeConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| perr(e.to_string()))?
        };
        let base = serde_yaml::to_value(&*self.defaults).map_err(|e| perr(e.to_string()))?;
        let mut out = HashMap::new();
        for (tenant, partial) in rc.overrides {
            let mut merged = base.clone();
            match (&mut merged, partial) {
                (serde_yaml::Value::Mapping(m), serde_yaml::Value::Mapping(p)) => {
                    for (k, v) in p {
                        if !m.contains_key(&k) {
                            return Err(perr(format!(
                                "tenant {tenant}: unknown limit {}",
                                serde_yaml::to_string(&k).unwrap_or_default().trim()
                            )));
                        }
                        m.insert(k, v);
                    }
                }
                (_, serde_yaml::Value::Null) => {}
                _ => {
                    return Err(perr(format!(
                        "tenant {tenant}: overrides must be a mapping"
                    )));
                }
            }
            let limits: Limits = serde_yaml::from_value(merged)
                .map_err(|e| perr(format!("tenant {tenant}: {e}")))?;
            out.insert(tenant, Arc::new(limits));
        }
        Ok(out)
    }
}

/// Keeps in `current` the smaller non-zero bound of the two (zero is "no limit").
fn smallest<T: Copy + Ord + Default>(current: &mut T, other: T) {
    let zero = T::default();
    if other != zero && (*current == zero || other < *current) {
        *current = other;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_entry_overrides_only_what_it_names() {
        let o = Overrides::from_yaml(
            Limits::default(),
            "overrides:\n  t1:\n    ingestion_rate: 5\n    creation_grace_period: 1m\n",
        )
        .unwrap();
        let t1 = o.for_tenant("t1");
        assert_eq!(t1.ingestion_rate, 5.0);
        assert_eq!(t1.creation_grace_period, Duration::from_secs(60));
        assert_eq!(t1.max_label_names_per_series, 30);
        assert_eq!(o.for_tenant("other").ingestion_rate, 10_000.0);
    }

    #[test]
    fn a_federated_read_gets_every_members_tightest_query_bound() {
        let o = Overrides::from_yaml(
            Limits::default(),
            "overrides:\n  a:\n    max_query_lookback: 7d\n    max_fetched_series_per_query: 100\n    max_query_parallelism: 4\n  b:\n    max_query_lookback: 30d\n    max_total_query_length: 2d\n    ingestion_rate: 5\n",
        )
        .unwrap();
        let l = o.for_tenants(["a", "b"]);
        assert_eq!(l.max_query_lookback, Duration::from_secs(7 * 86_400));
        assert_eq!(l.max_total_query_length, Duration::from_secs(2 * 86_400));
        assert_eq!(l.max_fetched_series_per_query, 100);
        assert_eq!(l.max_query_parallelism, 4);
        // The same the other way round.
        assert_eq!(
            o.for_tenants(["b", "a"]).max_query_lookback,
            l.max_query_lookback
        );
        // One tenant is that tenant's limits, none the defaults.
        assert_eq!(o.for_tenants(["b"]).ingestion_rate, 5.0);
        assert_eq!(*o.for_tenants([]), Limits::default());
    }

    #[test]
    fn compactor_limits_use_mimirs_keys() {
        let o = Overrides::from_yaml(
            Limits::default(),
            "overrides:\n  t1:\n    compactor_blocks_retention_period: 30d\n    compactor_split_and_merge_shards: 4\n    compactor_split_groups: 2\n    compactor_partial_block_deletion_delay: 0s\n",
        )
        .unwrap();
        let t1 = o.for_tenant("t1");
        assert_eq!(
            t1.compactor_blocks_retention_period,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(t1.compactor_split_and_merge_shards, 4);
        assert_eq!(t1.compactor_split_groups, 2);
        assert_eq!(t1.compactor_partial_block_deletion_delay, Duration::ZERO);
        let other = o.for_tenant("t2");
        assert_eq!(other.compactor_blocks_retention_period, Duration::ZERO);
        assert_eq!(
            other.compactor_partial_block_deletion_delay,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn validation_limits_follow_the_tenant() {
        let o = Overrides::from_yaml(
            Limits::default(),
            "overrides:\n  t1:\n    past_grace_period: 1h\n    max_label_value_length: 7\n",
        )
        .unwrap();
        let v = o.for_tenant("t1").validation();
        assert_eq!(v.past_grace_period, Duration::from_secs(3600));
        assert_eq!(v.max_label_value_length, 7);
        assert_eq!(
            o.for_tenant("other").validation(),
            norn_model::ValidationLimits::default(),
            "Norn's default limits are Mimir's validation defaults"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Overrides::from_yaml(Limits::default(), "overrides:\n  t1:\n    bogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = Overrides::from_yaml(Limits::default(), "nope: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn reload_picks_up_changes_and_keeps_last_good_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.yaml");
        std::fs::write(&path, "overrides:\n  a:\n    ingestion_rate: 1\n").unwrap();
        let o = Overrides::with_file(Limits::default(), &path).unwrap();
        assert_eq!(o.for_tenant("a").ingestion_rate, 1.0);
        std::fs::write(&path, "overrides:\n  a:\n    ingestion_rate: 2\n").unwrap();
        assert!(o.reload().unwrap());
        assert_eq!(o.for_tenant("a").ingestion_rate, 2.0);
        std::fs::write(&path, "overrides: [").unwrap();
        assert!(o.reload().is_err());
        assert_eq!(o.for_tenant("a").ingestion_rate, 2.0);
    }
}
