//! The two ways services reach each other: in one process (`--target=all`), or as a cluster
//! (any other target list) that finds its members through the gossiped ring and talks gRPC.
//!
//! A service never knows which: it gets its dependencies as `Arc<dyn …>` from here. In one
//! process the distributor's pusher and the querier's recent data are the local ingester;
//! in a cluster they are the ingester ring's replicas (`norn_ingester_client`), HA election
//! state lives in the gossiped key-value store, and the ingester registers itself in the
//! ring.
//!
//! Every address a cluster member binds or advertises comes from the flags; when they leave
//! it open, a member listening on loopback advertises `127.0.0.1` (`norn_ring::net`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use norn_distributor::Ingesters;
use norn_ingester::{Ingester, RingMembership};
use norn_ingester_client::{ClientConfig, IngesterClientPool, IngesterReadSet};
use norn_model::{MetadataReader, Pusher, QueryableProvider};
use norn_ring::{
    INGESTER_RING_KEY, LifecyclerConfig, Memberlist, MemberlistConfig, Ring, RingConfig,
};
use norn_server::periodic::Periodic;
use norn_server::{Metrics, Service};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often pooled ingester clients are health-checked.
const CLIENT_HEALTH_CHECK_PERIOD: Duration = Duration::from_secs(5);

/// How this process's services reach each other.
pub enum Wiring {
    /// `--target=all`: every service in this process, calling each other directly.
    InProcess,
    /// Any other target list: members of a cluster.
    Cluster(Cluster),
}

/// This process's membership in the cluster: the gossip, the ingester ring as it sees it, and
/// the pool of gRPC clients to ingesters.
pub struct Cluster {
    memberlist: Arc<Memberlist>,
    ingester_ring: Ring,
    ingester_clients: Arc<IngesterClientPool>,
}

impl Wiring {
    /// In-process for `all`; otherwise joins the gossip cluster and follows the ingester ring.
    pub async fn new(
        cfg: &Config,
        in_process: bool,
        metrics: &Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<Wiring> {
        if in_process {
            return Ok(Wiring::InProcess);
        }
        Ok(Wiring::Cluster(Cluster::join(cfg, metrics, stop).await?))
    }

    /// The ingester's place in the ring, reachable at `grpc_addr` (cluster only).
    pub fn ingester_ring_membership(
        &self,
        cfg: &Config,
        grpc_addr: Option<SocketAddr>,
    ) -> anyhow::Result<Option<RingMembership>> {
        let (Wiring::Cluster(c), Some(local)) = (self, grpc_addr) else {
            return Ok(None);
        };
        let r = &cfg.ingester.ring;
        let bind = norn_ring::net::parse_bind(&cfg.server.grpc_listen_address)?;
        let ip = if r.instance_addr.is_empty() {
            norn_ring::net::advertise_ip("", bind)?.to_string()
        } else {
            r.instance_addr.clone()
        };
        let port = if r.instance_port != 0 {
            r.instance_port
        } else {
            local.port()
        };
        let id = if r.instance_id.is_empty() {
            norn_ring::net::hostname()
        } else {
            r.instance_id.clone()
        };
        Ok(Some(RingMembership {
            memberlist: Arc::clone(&c.memberlist),
            lifecycler: LifecyclerConfig {
                id,
                addr: format!("{ip}:{port}"),
                zone: r.instance_availability_zone.clone(),
                num_tokens: r.num_tokens,
                tokens_file_path: (!r.tokens_file_path.is_empty())
                    .then(|| r.tokens_file_path.clone().into()),
                heartbeat_period: r.heartbeat_period,
            },
        }))
    }

    /// Where the distributor sends samples: the local ingester, or the ring's replicas.
    pub fn distributor_ingesters(
        &self,
        local: Option<&Arc<Ingester>>,
    ) -> anyhow::Result<Ingesters> {
        Ok(match self {
            Wiring::InProcess => Ingesters::InProcess(Arc::clone(
                local.context("in one process the distributor needs the ingester")?,
            ) as Arc<dyn Pusher>),
            Wiring::Cluster(c) => Ingesters::Replicated {
                ring: Arc::new(c.ingester_ring.clone()),
                pool: Arc::clone(&c.ingester_clients) as _,
            },
        })
    }

    /// The gossiped key-value store (cluster only).
    pub fn kv(&self) -> Option<Arc<Memberlist>> {
        match self {
            Wiring::InProcess => None,
            Wiring::Cluster(c) => Some(Arc::clone(&c.memberlist)),
        }
    }

    /// The querier's recent data and metadata: the local ingester, or the ring's read set.
    pub fn recent_data(
        &self,
        local: Option<&Arc<Ingester>>,
    ) -> anyhow::Result<(Arc<dyn QueryableProvider>, Arc<dyn MetadataReader>)> {
        Ok(match self {
            Wiring::InProcess => {
                let ing = local.context("in one process the querier needs the ingester")?;
                (
                    Arc::clone(ing) as Arc<dyn QueryableProvider>,
                    Arc::clone(ing) as Arc<dyn MetadataReader>,
                )
            }
            Wiring::Cluster(c) => {
                let set = Arc::new(IngesterReadSet::new(
                    c.ingester_ring.clone(),
                    Arc::clone(&c.ingester_clients),
                ));
                (
                    Arc::clone(&set) as Arc<dyn QueryableProvider>,
                    set as Arc<dyn MetadataReader>,
                )
            }
        })
    }

    /// `/ring` and `/memberlist` (cluster only).
    pub fn ring_pages(&self) -> Option<Arc<dyn Service>> {
        match self {
            Wiring::InProcess => None,
            Wiring::Cluster(c) => Some(Arc::new(RingPages(norn_ring::http::routes(
                c.ingester_ring.clone(),
                Arc::clone(&c.memberlist),
            )))),
        }
    }

    /// Leaves the gossip cluster (after every service stopped).
    pub async fn leave(&self) {
        if let Wiring::Cluster(c) = self {
            c.memberlist.leave().await;
        }
    }
}

impl Cluster {
    async fn join(
        cfg: &Config,
        metrics: &Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<Cluster> {
        let ml = &cfg.memberlist;
        let bind =
            norn_ring::net::parse_bind(ml.bind_addr.first().map(String::as_str).unwrap_or(""))?;
        let advertise = norn_ring::net::advertise_ip(&ml.advertise_addr, bind)?;
        let node_name = if ml.node_name.is_empty() {
            norn_ring::net::unique_node_name()
        } else {
            ml.node_name.clone()
        };
        let memberlist = Memberlist::start(
            MemberlistConfig {
                node_name,
                bind_addr: bind,
                bind_port: ml.bind_port,
                advertise_addr: Some(advertise),
                advertise_port: (ml.advertise_port != 0).then_some(ml.advertise_port),
                join_members: ml.join_members.clone(),
                gossip_interval: ml.gossip_interval,
                pull_push_interval: ml.pull_push_interval,
            },
            &metrics.registry,
        )
        .await
        .with_context(|| format!("starting gossip on {bind}:{}", ml.bind_port))?;
        tracing::info!(addr = %memberlist.local_addr(), join = ?ml.join_members, "memberlist started");

        let r = &cfg.ingester.ring;
        let ingester_ring = Ring::new(RingConfig {
            replication_factor: r.replication_factor,
            heartbeat_timeout: r.heartbeat_timeout,
            zone_awareness_enabled: r.zone_awareness_enabled,
        });
        let forget_after = (r.auto_forget_unhealthy_periods > 0)
            .then(|| r.heartbeat_timeout * r.auto_forget_unhealthy_periods);
        norn_ring::spawn_ring_watcher(
            Arc::clone(&memberlist),
            INGESTER_RING_KEY,
            ingester_ring.clone(),
            forget_after,
            &metrics.registry,
        )
        .context("registering ring metrics")?;
        let ingester_clients = IngesterClientPool::new(
            ClientConfig {
                connect_timeout: Duration::from_secs(2),
                request_timeout: cfg.distributor.remote_timeout,
                query_timeout: cfg.querier.timeout,
            },
            &metrics.registry,
        )
        .context("registering ingester client metrics")?;
        // Drop channels to ingesters that stopped answering, so a restarted one gets a fresh
        // connection.
        let pool = Arc::clone(&ingester_clients);
        Periodic::every(
            "ingester-client-health",
            CLIENT_HEALTH_CHECK_PERIOD,
            Duration::ZERO,
        )
        .spawn(stop, move || {
            let pool = Arc::clone(&pool);
            async move { pool.check_health_all().await }
        });
        Ok(Cluster {
            memberlist,
            ingester_ring,
            ingester_clients,
        })
    }
}

/// The ring pages as a service of the HTTP harness.
struct RingPages(axum::Router);

#[async_trait]
impl Service for RingPages {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn routes(&self) -> axum::Router {
        self.0.clone()
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn shutdown(&self, _: CancellationToken) {}
}
