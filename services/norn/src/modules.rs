//! The services `--target` may name, in start order, and how each is built from the
//! configuration and the [`Wiring`].
//!
//! A new service is one crate with `Config` and `build(config, deps)`, plus one entry in
//! [`MODULES`] with its builder here. `all` runs every module in this table in one process;
//! any other list runs those modules as members of a cluster. Both go through the same
//! builders.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use norn_ingester::Ingester;
use norn_limits::Overrides;
use norn_model::{MergedProvider, Pusher, QueryableProvider};
use norn_query_frontend::queue::{Queue, QueueDownstream};
use norn_query_frontend::queue_service::{QueuedFrontend, Workers};
use norn_server::{Metrics, Service, TenantResolver};
use norn_storage::Bucket;
use norn_storegateway_client::Gateway;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::wiring::Wiring;

/// What every builder may use.
pub struct Context {
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub overrides: Arc<Overrides>,
    pub tenants: TenantResolver,
    pub bucket: Bucket,
    pub wiring: Arc<Wiring>,
    /// The bound gRPC listener's address, when this process serves gRPC.
    pub grpc_addr: Option<SocketAddr>,
    /// Cancelled when the process stops.
    pub stop: CancellationToken,
    /// The clients' TLS (the frontend client here; the ring clients are in the wiring).
    pub tls: Arc<crate::config::Tls>,
    /// The ingester, once built, when it runs in this process.
    pub local_ingester: Option<Arc<Ingester>>,
    /// The store-gateway's API, once built, when it runs in this process (`all`): the
    /// querier calls it through the same client code as a remote one.
    pub local_store_gateway: Option<Arc<dyn Gateway>>,
    /// Whether a query-frontend runs in this process: it then serves the query API and the
    /// querier's routes are only reachable through it.
    pub frontend_here: bool,
    /// The querier's routes, once built, when a query-frontend in this process calls them.
    pub local_querier: Option<axum::Router>,
    /// What the querier of this process reads (recent data, blocks), once built: the ruler
    /// queries the same sources.
    pub query_sources: Option<QuerySources>,
    /// Where the distributor of this process writes, once built: the ruler writes there too.
    pub local_pusher: Option<Arc<dyn Pusher>>,
}

/// The querier's two sources: the ingesters and the bucket's blocks.
#[derive(Clone)]
pub struct QuerySources {
    pub recent: Arc<dyn QueryableProvider>,
    pub blocks: Option<Arc<dyn QueryableProvider>>,
}

type Built<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Arc<dyn Service>>> + Send + 'a>>;

/// One service `--target` may name.
pub struct Module {
    pub name: &'static str,
    /// Serves a gRPC API in a cluster (its listener is bound before anything starts).
    pub serves_grpc: bool,
    pub build: for<'a> fn(&'a mut Context) -> Built<'a>,
}

/// Every service, in start order (a service starts after those it calls in one process).
pub const MODULES: &[Module] = &[
    Module {
        name: "ingester",
        serves_grpc: true,
        build: |c| Box::pin(ingester(c)),
    },
    Module {
        name: "distributor",
        serves_grpc: false,
        build: |c| Box::pin(distributor(c)),
    },
    Module {
        name: "store-gateway",
        serves_grpc: true,
        build: |c| Box::pin(store_gateway(c)),
    },
    Module {
        name: "querier",
        serves_grpc: false,
        build: |c| Box::pin(querier(c)),
    },
    Module {
        name: "query-frontend",
        serves_grpc: true,
        build: |c| Box::pin(query_frontend(c)),
    },
    Module {
        name: "compactor",
        serves_grpc: false,
        build: |c| Box::pin(compactor(c)),
    },
    Module {
        name: "ruler",
        serves_grpc: false,
        build: |c| Box::pin(ruler(c)),
    },
];

/// The modules a `--target` value names, in start order, and whether they run in one
/// process (`all`) or as cluster members.
pub fn resolve(target: &str) -> anyhow::Result<(Vec<&'static Module>, bool)> {
    let names: Vec<&str> = target
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let valid = || {
        std::iter::once("all")
            .chain(MODULES.iter().map(|m| m.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() {
        anyhow::bail!("--target is empty; use one of {}", valid());
    }
    for n in &names {
        if *n != "all" && !MODULES.iter().any(|m| m.name == *n) {
            anyhow::bail!(
                "unknown target {n:?}: use one of {} (comma-separated to run several)",
                valid()
            );
        }
    }
    let all = names.contains(&"all");
    if all && names.len() > 1 {
        anyhow::bail!("target `all` already runs every service; do not combine it with others");
    }
    let modules = MODULES
        .iter()
        .filter(|m| all || names.contains(&m.name))
        .collect();
    Ok((modules, all))
}

async fn ingester(c: &mut Context) -> anyhow::Result<Arc<dyn Service>> {
    let cfg = &c.cfg;
    let service = norn_ingester::build(
        norn_ingester::Config {
            tsdb: cfg.blocks_storage.tsdb.clone(),
            instance_limits: cfg.ingester.instance_limits.clone(),
            metadata_retain_period: cfg.ingester.metadata_retain_period,
        },
        norn_ingester::Deps {
            overrides: Arc::clone(&c.overrides),
            metrics: Arc::clone(&c.metrics),
            bucket: Some(c.bucket.clone()),
            ring: c.wiring.ingester_ring_membership(cfg, c.grpc_addr)?,
            stop: c.stop.clone(),
            grpc_limits: cfg.server.grpc_limits(),
        },
    )
    .await?;
    c.local_ingester = Some(Arc::clone(service.ingester()));
    Ok(service)
}

async fn distributor(c: &mut Context) -> anyhow::Result<Arc<dyn Service>> {
    let service = norn_distributor::build(
        c.cfg.distributor.clone(),
        norn_distributor::Deps {
            overrides: Arc::clone(&c.overrides),
            tenants: c.tenants,
            metrics: Arc::clone(&c.metrics),
            ingesters: c.wiring.distributor_ingesters(c.local_ingester.as_ref())?,
            kv: c.wiring.kv(),
        },
    )?;
    c.local_pusher = Some(service.0.pusher());
    Ok(service)
}

async fn querier(c: &mut Context) -> anyhow::Result<Arc<dyn Service>> {
    let (recent, metadata) = c.wiring.recent_data(c.local_ingester.as_ref())?;
    let blocks = c.wiring.store_gateway_blocks(
        &c.cfg,
        c.bucket.clone(),
        Arc::clone(&c.overrides),
        c.local_store_gateway.clone(),
        &c.metrics,
    )?;
    let blocks = blocks.context("no store-gateway to read blocks from")?;
    c.query_sources = Some(QuerySources {
        recent: Arc::clone(&recent),
        blocks: Some(Arc::clone(&blocks)),
    });
    let service = norn_querier::build(
        c.cfg.querier.clone(),
        norn_querier::Deps {
            overrides: Arc::clone(&c.overrides),
            tenants: c.tenants,
            metrics: Arc::clone(&c.metrics),
            recent,
            metadata,
            blocks: Some(blocks),
            max_body_size: c.cfg.frontend.max_body_size,
        },
    )
    .context("starting the querier")?;
    if !c.frontend_here {
        let address = &c.cfg.frontend_worker.frontend_address;
        if !address.is_empty() {
            // Pull queries from the frontend, answered by this querier's own routes.
            norn_query_frontend::worker::spawn_remote(
                norn_query_frontend::worker::RemoteWorkers {
                    frontend_address: address.clone(),
                    concurrency: c.cfg.querier.max_concurrent,
                    querier_id: querier_id(c),
                    tls: c.tls.frontend_client.clone(),
                    max_send_msg_size: c.cfg.frontend_worker.grpc_client_config.max_send_msg_size,
                },
                Arc::new(norn_query_frontend::RouterDownstream(service.routes())),
                c.stop.clone(),
            )?;
        }
        return Ok(service);
    }
    if !c.cfg.frontend_worker.frontend_address.is_empty() {
        tracing::warn!(
            "querier.frontend-address is ignored: the query-frontend runs in this process"
        );
    }
    // The frontend serves the query API's paths and calls these routes directly.
    c.local_querier = Some(service.routes());
    Ok(Arc::new(crate::wiring::BehindFrontend(service)))
}

async fn query_frontend(c: &mut Context) -> anyhow::Result<Arc<dyn Service>> {
    let cfg = &c.cfg;
    let f = &cfg.frontend;
    let local_querier = c.local_querier.take();
    // Longer than the querier's own timeout, so the querier reports a slow query.
    let querier_timeout = cfg.querier.timeout + std::time::Duration::from_secs(30);
    let queue = || -> anyhow::Result<Arc<Queue>> {
        let metrics = norn_query_frontend::queue_metrics::QueueMetrics::new(&c.metrics.registry)
            .context("registering the query-frontend's queue metrics")?;
        Ok(Queue::new(f.max_outstanding_per_tenant, metrics))
    };
    let stop = c.stop.child_token();
    let (downstream, queued): (Arc<dyn norn_query_frontend::Downstream>, _) = match local_querier {
        Some(routes) => {
            if !f.downstream_url.is_empty() {
                tracing::warn!(
                    url = %f.downstream_url,
                    "query-frontend.downstream-url is ignored: the querier runs in this process"
                );
            }
            // The querier's routes pull from the queue in this process: fairness holds
            // in the single binary too.
            let queue = queue()?;
            norn_query_frontend::worker::spawn_local(
                &queue,
                Arc::new(norn_query_frontend::RouterDownstream(routes)),
                cfg.querier.max_concurrent,
                stop.clone(),
            );
            (
                Arc::new(QueueDownstream::new(Arc::clone(&queue), querier_timeout)),
                Some((queue, Workers::Local)),
            )
        }
        None if !f.downstream_url.is_empty() => (
            Arc::new(norn_query_frontend::HttpDownstream::new(
                &f.downstream_url,
                querier_timeout,
            )?),
            None,
        ),
        None => {
            // Queriers connect with --querier.frontend-address and pull.
            let queue = queue()?;
            (
                Arc::new(QueueDownstream::new(Arc::clone(&queue), querier_timeout)),
                Some((
                    queue,
                    Workers::Remote {
                        answer_timeout: querier_timeout,
                        limits: cfg.server.grpc_limits(),
                    },
                )),
            )
        }
    };
    let results_cache = if f.cache_results {
        Some(
            norn_cache::build(&f.results_cache, "results-cache", &c.metrics.registry)
                .context("building the query-frontend's results cache")?,
        )
    } else {
        None
    };
    let service = norn_query_frontend::build(
        norn_query_frontend::Config {
            align_queries_with_step: f.align_queries_with_step,
            split_queries_by_interval: f.split_queries_by_interval,
            cache_results: f.cache_results,
            max_retries: f.max_retries,
            parallelize_shardable_queries: f.parallelize_shardable_queries,
            log_queries_longer_than: f.log_queries_longer_than,
            max_query_expression_size_bytes: cfg.querier.max_query_expression_size_bytes,
            max_query_expression_depth: cfg.querier.max_query_expression_depth,
        },
        norn_query_frontend::Deps {
            overrides: Arc::clone(&c.overrides),
            tenants: c.tenants,
            metrics: Arc::clone(&c.metrics),
            downstream,
            results_cache,
            max_body_size: cfg.frontend.max_body_size,
        },
    )
    .context("starting the query-frontend")?;
    Ok(match queued {
        Some((queue, workers)) => QueuedFrontend::wrap(service, queue, workers, stop),
        None => service,
    })
}

/// Names this querier in the frontend's logs: its HTTP port and process id.
fn querier_id(c: &Context) -> String {
    format!(
        "querier-{}-{}",
        c.cfg.server.http_listen_port,
        std::process::id()
    )
}

async fn store_gateway(c: &mut Context) -> anyhow::Result<Arc<dyn Service>> {
    let membership = c
        .wiring
        .store_gateway_ring_membership(&c.cfg, c.grpc_addr, &c.overrides)?;
    let ownership: Arc<dyn norn_store_gateway::BlockOwnership> = match &membership {
        Some(m) => Arc::new(RingOwnership(m.ownership.clone())),
        None => Arc::new(norn_store_gateway::OwnAll),
    };
    let b = &c.cfg.blocks_storage.bucket_store;
    let registry = &c.metrics.registry;
    let index_cache = norn_cache::build(&b.index_cache, "index-cache", registry)
        .context("building the store-gateway's index cache")?;
    let chunks_cache = norn_cache::build(&b.chunks_cache, "chunks-cache", registry)
        .context("building the store-gateway's chunks cache")?;
    let service = norn_store_gateway::build(
        norn_store_gateway::Config {
            sync_dir: b.sync_dir.clone(),
            sync_interval: b.sync_interval,
            max_concurrent: b.max_concurrent,
            max_concurrent_queue_timeout: b.max_concurrent_queue_timeout,
            max_inflight_fetch_bytes: b.max_inflight_fetch_bytes,
            block_sync_concurrency: b.block_sync_concurrency,
            ignore_blocks_within: b.ignore_blocks_within,
            ignore_deletion_mark_delay: b.ignore_deletion_mark_delay,
            index_header: norn_store_gateway::IndexHeaderConfig {
                lazy_loading_enabled: b.index_header.lazy_loading_enabled,
                lazy_loading_idle_timeout: b.index_header.lazy_loading_idle_timeout,
            },
        },
        norn_store_gateway::Deps {
            bucket: c.bucket.clone(),
            ownership,
            index_cache,
            chunks_cache,
            metrics: Arc::clone(&c.metrics),
            stop: c.stop.clone(),
            grpc_limits: c.cfg.server.grpc_limits(),
        },
    )
    .context("starting the store-gateway")?;
    if membership.is_none() {
        c.local_store_gateway = Some(norn_storegateway_client::InProcessGateway::of(
            service.api(),
        ));
    }
    Ok(match membership {
        Some(m) => crate::wiring::InRing::join(service, &m, c.stop.clone()).await?,
        None => service,
    })
}

/// The store-gateway ring's placement as the store-gateway's ownership rule.
struct RingOwnership(norn_ring::blocks::RingBlockOwnership);

impl norn_store_gateway::BlockOwnership for RingOwnership {
    fn owns(&self, tenant: &str, block_id: &str) -> bool {
        self.0.owns(tenant, block_id)
    }
}

async fn compactor(c: &mut Context) -> anyhow::Result<Arc<dyn Service>> {
    let cfg = &c.cfg;
    // In a cluster the compactors share the tenants through the compactor ring; in one
    // process the only compactor owns them all.
    let ring = match c.wiring.kv() {
        None => None,
        Some(memberlist) => {
            let r = &cfg.compactor.sharding_ring;
            let id = if r.instance_id.is_empty() {
                norn_ring::net::hostname()
            } else {
                r.instance_id.clone()
            };
            Some(norn_compactor::RingMembership {
                lifecycler: norn_ring::LifecyclerConfig {
                    id,
                    addr: format!(
                        "{}:{}",
                        memberlist.advertise_addr().ip(),
                        cfg.server.http_listen_port
                    ),
                    zone: String::new(),
                    num_tokens: norn_compactor::ring::NUM_TOKENS,
                    tokens_file_path: None,
                    heartbeat_period: r.heartbeat_period,
                },
                heartbeat_timeout: r.heartbeat_timeout,
                memberlist,
            })
        }
    };
    let service = norn_compactor::build(
        cfg.compactor.clone(),
        norn_compactor::Deps {
            overrides: Arc::clone(&c.overrides),
            metrics: Arc::clone(&c.metrics),
            bucket: c.bucket.clone(),
            ring,
            stop: c.stop.clone(),
            first_run_delay: norn_compactor::FIRST_RUN_DELAY,
        },
    )
    .await
    .context("starting the compactor")?;
    Ok(service)
}

async fn ruler(c: &mut Context) -> anyhow::Result<Arc<dyn Service>> {
    let cfg = Arc::clone(&c.cfg);
    let store: Arc<dyn norn_ruler::RuleStore> = if cfg.ruler_storage.is_local() {
        Arc::new(norn_ruler::LocalRuleStore::new(
            cfg.ruler_storage.local.directory.clone(),
        ))
    } else {
        Arc::new(norn_ruler::BucketRuleStore::new(c.bucket.clone()))
    };
    // With ruler.query_frontend.address rules query through the frontend: no read path of
    // their own (a `--target=ruler` process then watches neither the ingester ring for reads
    // nor the store-gateway ring).
    let queryable: Arc<dyn QueryableProvider> =
        if cfg.ruler.query_frontend.address.trim().is_empty() {
            // Rules read what the querier reads: the querier's sources when it runs here, else the
            // same wiring it would use (the ingester ring and the store-gateway ring).
            let sources = match c.query_sources.clone() {
                Some(s) => s,
                None => {
                    let (recent, _) = c.wiring.recent_data(c.local_ingester.as_ref())?;
                    let blocks = c.wiring.store_gateway_blocks(
                        &cfg,
                        c.bucket.clone(),
                        Arc::clone(&c.overrides),
                        c.local_store_gateway.clone(),
                        &c.metrics,
                    )?;
                    QuerySources { recent, blocks }
                }
            };
            let mut providers = vec![norn_querier::split::IngestersWithin::wrap(
                sources.recent,
                cfg.querier.query_ingesters_within,
            )];
            providers.extend(sources.blocks);
            Arc::new(MergedProvider(providers))
        } else {
            Arc::new(MergedProvider(Vec::new()))
        };
    // Rules write where the distributor writes: its pusher when it runs here, else the
    // ingester ring's replication.
    let pusher: Arc<dyn Pusher> = match c.local_pusher.clone() {
        Some(p) => p,
        None => match c.wiring.distributor_ingesters(c.local_ingester.as_ref())? {
            norn_distributor::Ingesters::InProcess(p) => p,
            norn_distributor::Ingesters::Replicated { ring, pool } => {
                Arc::new(norn_distributor::replication::ReplicatedPusher::new(
                    ring,
                    pool,
                    cfg.distributor.remote_timeout,
                    &c.metrics.registry,
                )?)
            }
        },
    };
    let ring = match c.wiring.kv() {
        None => None,
        Some(memberlist) => {
            let r = &cfg.ruler.ring;
            let id = if r.instance_id.is_empty() {
                norn_ring::net::hostname()
            } else {
                r.instance_id.clone()
            };
            Some(norn_ruler::RingMembership {
                lifecycler: norn_ring::LifecyclerConfig {
                    id,
                    addr: format!(
                        "{}:{}",
                        memberlist.advertise_addr().ip(),
                        cfg.server.http_listen_port
                    ),
                    zone: String::new(),
                    num_tokens: norn_ruler::ring::NUM_TOKENS,
                    tokens_file_path: None,
                    heartbeat_period: r.heartbeat_period,
                },
                heartbeat_timeout: r.heartbeat_timeout,
                memberlist,
            })
        }
    };
    let q = &cfg.querier;
    let service = norn_ruler::build(
        cfg.ruler.clone(),
        norn_ruler::Deps {
            overrides: Arc::clone(&c.overrides),
            tenants: c.tenants,
            metrics: Arc::clone(&c.metrics),
            store,
            queryable,
            pusher,
            engine: norn_promql::EngineOptions {
                lookback_delta_ms: q.lookback_delta.as_millis() as i64,
                max_samples: q.max_samples,
                timeout: q.timeout,
                max_query_bytes: q.max_query_expression_size_bytes,
                max_query_depth: q
                    .max_query_expression_depth
                    .min(norn_promql::MAX_QUERY_DEPTH_CEILING),
                idle_query_threads: RULER_IDLE_QUERY_THREADS,
            },
            ring,
            stop: c.stop.clone(),
        },
    )
    .await
    .context("starting the ruler")?;
    Ok(service)
}

/// Query threads the ruler keeps ready between evaluations (groups evaluate concurrently;
/// more threads start when more run at once).
const RULER_IDLE_QUERY_THREADS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn names(target: &str) -> (Vec<&'static str>, bool) {
        let (m, all) = resolve(target).unwrap();
        (m.iter().map(|m| m.name).collect(), all)
    }

    #[test]
    fn targets_resolve_in_start_order() {
        assert_eq!(
            names("all"),
            (
                vec![
                    "ingester",
                    "distributor",
                    "store-gateway",
                    "querier",
                    "query-frontend",
                    "compactor",
                    "ruler"
                ],
                true
            )
        );
        assert_eq!(
            names("querier, ingester"),
            (vec!["ingester", "querier"], false)
        );
        assert_eq!(names("distributor"), (vec!["distributor"], false));
        assert_eq!(names("compactor"), (vec!["compactor"], false));
        assert_eq!(names("ruler"), (vec!["ruler"], false));
        assert_eq!(
            names("query-frontend,querier"),
            (vec!["querier", "query-frontend"], false)
        );
        for bad in ["", " , ", "all,querier", "store_gateway"] {
            let Err(e) = resolve(bad) else {
                panic!("{bad:?} resolved");
            };
            let e = e.to_string();
            assert!(e.contains("target"), "{bad:?}: {e}");
        }
    }
}
