//! The flags of the per-tenant limits' defaults. The YAML struct is [`norn_limits::Limits`]
//! (`limits` in YAML, and each tenant's entry in the runtime overrides file).
//!
//! The flag names are Mimir's, which place limits under the component that enforces them
//! (`distributor.ingestion-rate-limit`, `ingester.max-global-series-per-user`, …): what they
//! have in common is that they set a default every tenant can override.

use super::flags::{Deferred, set, set_duration};

/// The flags of `limits`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Limits (defaults of every tenant)")]
pub struct LimitsFlags {
    /// Default samples/s per tenant.
    #[arg(
        long = "distributor.ingestion-rate-limit",
        env = "NORN_DISTRIBUTOR_INGESTION_RATE_LIMIT"
    )]
    pub ingestion_rate: Option<f64>,
    /// Default token-bucket burst per tenant.
    #[arg(
        long = "distributor.ingestion-burst-size",
        env = "NORN_DISTRIBUTOR_INGESTION_BURST_SIZE"
    )]
    pub ingestion_burst_size: Option<usize>,
    /// Default in-memory series per tenant (0 = unlimited).
    #[arg(
        long = "ingester.max-global-series-per-user",
        env = "NORN_INGESTER_MAX_GLOBAL_SERIES_PER_USER"
    )]
    pub max_global_series_per_user: Option<usize>,
    /// Default in-memory series per metric per tenant (0 = unlimited).
    #[arg(
        long = "ingester.max-global-series-per-metric",
        env = "NORN_INGESTER_MAX_GLOBAL_SERIES_PER_METRIC"
    )]
    pub max_global_series_per_metric: Option<usize>,
    /// Default metric metadata entries kept per tenant (0 = unlimited).
    #[arg(
        long = "ingester.max-global-metadata-per-user",
        env = "NORN_INGESTER_MAX_GLOBAL_METADATA_PER_USER"
    )]
    pub max_global_metadata_per_user: Option<usize>,
    /// Default metric metadata entries kept per metric family per tenant (0 = unlimited).
    #[arg(
        long = "ingester.max-global-metadata-per-metric",
        env = "NORN_INGESTER_MAX_GLOBAL_METADATA_PER_METRIC"
    )]
    pub max_global_metadata_per_metric: Option<usize>,
    /// Default of how far in the future a sample's timestamp may be.
    #[arg(
        long = "validation.create-grace-period",
        env = "NORN_VALIDATION_CREATE_GRACE_PERIOD"
    )]
    pub creation_grace_period: Option<Deferred>,
    /// Default of how far in the past a sample's timestamp may be (0: only before 1970 is refused).
    #[arg(
        long = "validation.past-grace-period",
        env = "NORN_VALIDATION_PAST_GRACE_PERIOD"
    )]
    pub past_grace_period: Option<Deferred>,
    /// Default for every tenant's `accept_ha_samples` limit (Mimir's flag name).
    #[arg(
        long = "distributor.ha-tracker.enable-for-all-users",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_ENABLE_FOR_ALL_USERS",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub accept_ha_samples: Option<bool>,
    /// Label naming an HA cluster (default `cluster`).
    #[arg(
        long = "distributor.ha-tracker.cluster",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_CLUSTER"
    )]
    pub ha_cluster_label: Option<String>,
    /// Label naming the replica in an HA cluster (default `__replica__`).
    #[arg(
        long = "distributor.ha-tracker.replica",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_REPLICA"
    )]
    pub ha_replica_label: Option<String>,
    /// Default series one query may fetch (0 = unlimited).
    #[arg(
        long = "querier.max-fetched-series-per-query",
        env = "NORN_QUERIER_MAX_FETCHED_SERIES_PER_QUERY"
    )]
    pub max_fetched_series_per_query: Option<usize>,
    /// Default bytes one query may hold in the engine, as it estimates them: samples at 16 bytes plus labels (0 = unlimited).
    #[arg(
        long = "querier.max-estimated-memory-consumption-per-query",
        env = "NORN_QUERIER_MAX_ESTIMATED_MEMORY_CONSUMPTION_PER_QUERY"
    )]
    pub max_estimated_memory_consumption_per_query: Option<u64>,
    /// Default chunks one query may fetch from the store-gateways (0 = unlimited).
    #[arg(
        long = "querier.max-fetched-chunks-per-query",
        env = "NORN_QUERIER_MAX_FETCHED_CHUNKS_PER_QUERY"
    )]
    pub max_fetched_chunks_per_query: Option<usize>,
    /// Default chunk bytes one query may fetch from the store-gateways (0 = unlimited).
    #[arg(
        long = "querier.max-fetched-chunk-bytes-per-query",
        env = "NORN_QUERIER_MAX_FETCHED_CHUNK_BYTES_PER_QUERY"
    )]
    pub max_fetched_chunk_bytes_per_query: Option<usize>,
    /// Default store-gateways per tenant for shuffle sharding (0 = all).
    #[arg(
        long = "store-gateway.tenant-shard-size",
        env = "NORN_STORE_GATEWAY_TENANT_SHARD_SIZE"
    )]
    pub store_gateway_tenant_shard_size: Option<usize>,
    /// HA clusters per tenant (0 = unlimited).
    #[arg(
        long = "distributor.ha-tracker.max-clusters",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_MAX_CLUSTERS"
    )]
    pub ha_max_clusters: Option<usize>,
    /// Default longest range of a query, checked before splitting (0 = unlimited).
    #[arg(
        long = "query-frontend.max-total-query-length",
        env = "NORN_QUERY_FRONTEND_MAX_TOTAL_QUERY_LENGTH"
    )]
    pub max_total_query_length: Option<Deferred>,
    /// Default longest range of a range query reaching the query-frontend (0 = unlimited).
    #[arg(long = "store.max-query-length", env = "NORN_STORE_MAX_QUERY_LENGTH")]
    pub max_query_length: Option<Deferred>,
    /// Default of how far back a query may read (0 = unlimited); older starts are moved up.
    #[arg(
        long = "querier.max-query-lookback",
        env = "NORN_QUERIER_MAX_QUERY_LOOKBACK"
    )]
    pub max_query_lookback: Option<Deferred>,
    /// Default split legs of one query run at once by the query-frontend.
    #[arg(
        long = "querier.max-query-parallelism",
        env = "NORN_QUERIER_MAX_QUERY_PARALLELISM"
    )]
    pub max_query_parallelism: Option<usize>,
    /// Default most recent part of a range query never cached.
    #[arg(
        long = "query-frontend.max-cache-freshness",
        env = "NORN_QUERY_FRONTEND_MAX_CACHE_FRESHNESS"
    )]
    pub max_cache_freshness: Option<Deferred>,
    /// Default shards a shardable query is split into (0 or 1 = none).
    #[arg(
        long = "query-frontend.query-sharding-total-shards",
        env = "NORN_QUERY_FRONTEND_QUERY_SHARDING_TOTAL_SHARDS"
    )]
    pub query_sharding_total_shards: Option<usize>,
}

impl LimitsFlags {
    pub fn apply(&self, c: &mut norn_limits::Limits) -> anyhow::Result<()> {
        set(&mut c.ingestion_rate, &self.ingestion_rate);
        set(&mut c.ingestion_burst_size, &self.ingestion_burst_size);
        set(
            &mut c.max_global_series_per_user,
            &self.max_global_series_per_user,
        );
        set(
            &mut c.max_global_series_per_metric,
            &self.max_global_series_per_metric,
        );
        set(
            &mut c.max_global_metadata_per_user,
            &self.max_global_metadata_per_user,
        );
        set(
            &mut c.max_global_metadata_per_metric,
            &self.max_global_metadata_per_metric,
        );
        set_duration(&mut c.creation_grace_period, &self.creation_grace_period)?;
        set_duration(&mut c.past_grace_period, &self.past_grace_period)?;
        set(&mut c.accept_ha_samples, &self.accept_ha_samples);
        set(&mut c.ha_cluster_label, &self.ha_cluster_label);
        set(&mut c.ha_replica_label, &self.ha_replica_label);
        set(&mut c.ha_max_clusters, &self.ha_max_clusters);
        set(
            &mut c.max_fetched_series_per_query,
            &self.max_fetched_series_per_query,
        );
        set(
            &mut c.max_estimated_memory_consumption_per_query,
            &self.max_estimated_memory_consumption_per_query,
        );
        set(
            &mut c.max_fetched_chunks_per_query,
            &self.max_fetched_chunks_per_query,
        );
        set(
            &mut c.max_fetched_chunk_bytes_per_query,
            &self.max_fetched_chunk_bytes_per_query,
        );
        set(
            &mut c.store_gateway_tenant_shard_size,
            &self.store_gateway_tenant_shard_size,
        );
        set_duration(&mut c.max_total_query_length, &self.max_total_query_length)?;
        set_duration(&mut c.max_query_length, &self.max_query_length)?;
        set_duration(&mut c.max_query_lookback, &self.max_query_lookback)?;
        set(&mut c.max_query_parallelism, &self.max_query_parallelism);
        set_duration(&mut c.max_cache_freshness, &self.max_cache_freshness)?;
        set(
            &mut c.query_sharding_total_shards,
            &self.query_sharding_total_shards,
        );
        Ok(())
    }
}
