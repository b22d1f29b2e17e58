//! The two ways services reach each other: in one process (`--target=all`), or as a cluster
//! (any other target list) that finds its members through the gossiped ring and talks gRPC.
//!
//! A service never knows which: it gets its dependencies as `Arc<dyn …>` from here. In one
//! process the distributor's pusher and the querier's recent data are the local ingester;
//! in a cluster they are the ingester ring's replicas (`norn_ingester_client`), HA election
//! state lives in the gossiped key-value store, and the ingester registers itself in the
//! ring. The querier's bucket blocks come from the store-gateway of this process, or from the
//! store-gateway ring's members (`norn_storegateway_client`), where each store-gateway
//! registers itself and loads the blocks the ring gives it.
//!
//! Every address a cluster member binds or advertises comes from the flags; when they leave
//! it open, a member listening on loopback advertises `127.0.0.1` (`norn_ring::net`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use norn_distributor::Ingesters;
use norn_ingester::{Ingester, RingMembership};
use norn_ingester_client::{ClientConfig, IngesterClientPool, IngesterReadSet};
use norn_limits::Overrides;
use norn_model::{MetadataReader, Pusher, QueryableProvider};
use norn_ring::{
    BlocksSharding, INGESTER_RING_KEY, InstanceState, Lifecycler, LifecyclerConfig, Memberlist,
    MemberlistConfig, Ring, RingBlockOwnership, RingConfig, STORE_GATEWAY_RING_KEY,
};
use norn_server::periodic::Periodic;
use norn_server::{Metrics, Service};
use norn_storage::Bucket;
use norn_storegateway_client::{
    ClientConfig as GatewayClientConfig, Gateway, GatewayClientPool, Gateways, StoreGatewayProvider,
};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, STORE_GATEWAY_NUM_TOKENS, StoreGatewayRingConfig};

/// How often pooled ingester and store-gateway clients are health-checked.
const CLIENT_HEALTH_CHECK_PERIOD: Duration = Duration::from_secs(5);

/// How often a JOINING store-gateway checks whether its first sync is done.
const STORE_GATEWAY_READY_POLL: Duration = Duration::from_millis(500);

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
    store_gateway_ring: Ring,
    store_gateway_clients: Arc<GatewayClientPool>,
}

/// A store-gateway's place in the store-gateway ring (cluster only).
pub struct StoreGatewayMembership {
    pub memberlist: Arc<Memberlist>,
    pub lifecycler: LifecyclerConfig,
    /// Which blocks this instance loads: the ring's placement for its id.
    pub ownership: RingBlockOwnership,
}

/// The address an instance advertises in a ring: the flags', else derived from the gRPC
/// listener (`norn_ring::net`).
fn advertised(
    cfg: &Config,
    instance_addr: &str,
    instance_port: u16,
    local: SocketAddr,
) -> anyhow::Result<String> {
    let bind = norn_ring::net::parse_bind(&cfg.server.grpc_listen_address)?;
    let ip = if instance_addr.is_empty() {
        norn_ring::net::advertise_ip("", bind)?.to_string()
    } else {
        instance_addr.to_string()
    };
    let port = if instance_port != 0 {
        instance_port
    } else {
        local.port()
    };
    Ok(format!("{ip}:{port}"))
}

impl Wiring {
    /// In-process for `all`; otherwise joins the gossip cluster and follows the ingester ring.
    pub async fn new(
        cfg: &Config,
        in_process: bool,
        metrics: &Arc<Metrics>,
        tls: &crate::config::Tls,
        stop: CancellationToken,
    ) -> anyhow::Result<Wiring> {
        if in_process {
            return Ok(Wiring::InProcess);
        }
        Ok(Wiring::Cluster(
            Cluster::join(cfg, metrics, tls, stop).await?,
        ))
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
        let addr = advertised(cfg, &r.instance_addr, r.instance_port, local)?;
        let id = if r.instance_id.is_empty() {
            norn_ring::net::hostname()
        } else {
            r.instance_id.clone()
        };
        Ok(Some(RingMembership {
            memberlist: Arc::clone(&c.memberlist),
            lifecycler: LifecyclerConfig {
                id,
                addr,
                zone: r.instance_availability_zone.clone(),
                num_tokens: r.num_tokens,
                tokens_file_path: (!r.tokens_file_path.is_empty())
                    .then(|| r.tokens_file_path.clone().into()),
                heartbeat_period: r.heartbeat_period,
            },
        }))
    }

    /// The store-gateway's place in its ring, reachable at `grpc_addr` (cluster only);
    /// tenants' shard sizes come from `overrides`.
    pub fn store_gateway_ring_membership(
        &self,
        cfg: &Config,
        grpc_addr: Option<SocketAddr>,
        overrides: &Arc<Overrides>,
    ) -> anyhow::Result<Option<StoreGatewayMembership>> {
        let (Wiring::Cluster(c), Some(local)) = (self, grpc_addr) else {
            return Ok(None);
        };
        let r = &cfg.store_gateway.sharding_ring;
        let id = if r.instance_id.is_empty() {
            norn_ring::net::hostname()
        } else {
            r.instance_id.clone()
        };
        let overrides = Arc::clone(overrides);
        Ok(Some(StoreGatewayMembership {
            memberlist: Arc::clone(&c.memberlist),
            lifecycler: LifecyclerConfig {
                id: id.clone(),
                addr: advertised(cfg, &r.instance_addr, r.instance_port, local)?,
                zone: r.instance_availability_zone.clone(),
                num_tokens: STORE_GATEWAY_NUM_TOKENS,
                tokens_file_path: (!r.tokens_file_path.is_empty())
                    .then(|| r.tokens_file_path.clone().into()),
                heartbeat_period: r.heartbeat_period,
            },
            ownership: RingBlockOwnership::new(
                BlocksSharding::new(c.store_gateway_ring.clone()),
                id,
                Arc::new(move |tenant: &str| {
                    overrides.for_tenant(tenant).store_gateway_tenant_shard_size
                }),
            ),
        }))
    }

    /// The querier's bucket blocks: the store-gateway of this process (`local`, `all`), or the
    /// store-gateway ring's members. `None` in one process without a local store-gateway.
    pub fn store_gateway_blocks(
        &self,
        cfg: &Config,
        bucket: Bucket,
        overrides: Arc<Overrides>,
        local: Option<Arc<dyn Gateway>>,
        metrics: &Metrics,
    ) -> anyhow::Result<Option<Arc<dyn QueryableProvider>>> {
        let gateways = match (self, local) {
            (Wiring::InProcess, Some(g)) => Gateways::InProcess(g),
            (Wiring::InProcess, None) => return Ok(None),
            (Wiring::Cluster(c), _) => Gateways::Ring {
                sharding: BlocksSharding::new(c.store_gateway_ring.clone()),
                pool: Arc::clone(&c.store_gateway_clients),
            },
        };
        let provider = StoreGatewayProvider::new(
            norn_storegateway_client::Config {
                query_store_after: cfg.querier.query_store_after,
                index_refresh: cfg.blocks_storage.bucket_store.sync_interval,
                ignore_deletion_marks_delay: cfg
                    .blocks_storage
                    .bucket_store
                    .ignore_deletion_mark_delay,
                upload_grace: cfg.blocks_storage.bucket_store.sync_interval * 3,
            },
            bucket,
            gateways,
            overrides,
            &metrics.registry,
        )
        .context("registering the querier's store-gateway metrics")?;
        Ok(Some(Arc::new(provider)))
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

    /// `/ring`, `/store-gateway/ring` and `/memberlist` (cluster only).
    pub fn ring_pages(&self) -> Option<Arc<dyn Service>> {
        match self {
            Wiring::InProcess => None,
            Wiring::Cluster(c) => Some(Arc::new(RingPages(
                norn_ring::http::routes(c.ingester_ring.clone(), Arc::clone(&c.memberlist)).merge(
                    norn_ring::http::ring_page_at(
                        c.store_gateway_ring.clone(),
                        Arc::clone(&c.memberlist),
                        STORE_GATEWAY_RING_KEY,
                        "/store-gateway/ring",
                    ),
                ),
            ))),
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
        tls: &crate::config::Tls,
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
        let encryption_key = (!ml.encryption_key_path.is_empty())
            .then(|| norn_ring::GossipKey::from_file(Path::new(&ml.encryption_key_path)))
            .transpose()?;
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
                encryption_key: encryption_key.map(Arc::new),
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
                tls: tls.ingester_client.clone(),
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
        .spawn(stop.clone(), move || {
            let pool = Arc::clone(&pool);
            async move { pool.check_health_all().await }
        });
        let (store_gateway_ring, store_gateway_clients) =
            follow_store_gateways(cfg, &memberlist, metrics, tls, stop)?;
        Ok(Cluster {
            memberlist,
            ingester_ring,
            ingester_clients,
            store_gateway_ring,
            store_gateway_clients,
        })
    }
}

/// The store-gateway ring as this member sees it, and the client pool to its members.
fn follow_store_gateways(
    cfg: &Config,
    memberlist: &Arc<Memberlist>,
    metrics: &Arc<Metrics>,
    tls: &crate::config::Tls,
    stop: CancellationToken,
) -> anyhow::Result<(Ring, Arc<GatewayClientPool>)> {
    let r: &StoreGatewayRingConfig = &cfg.store_gateway.sharding_ring;
    let ring = Ring::new(RingConfig {
        replication_factor: r.replication_factor,
        heartbeat_timeout: r.heartbeat_timeout,
        zone_awareness_enabled: false,
    });
    let forget_after = r
        .auto_forget_enabled
        .then(|| r.heartbeat_timeout * StoreGatewayRingConfig::AUTO_FORGET_PERIODS);
    norn_ring::spawn_ring_watcher(
        Arc::clone(memberlist),
        STORE_GATEWAY_RING_KEY,
        ring.clone(),
        forget_after,
        &metrics.registry,
    )
    .context("registering store-gateway ring metrics")?;
    let pool = GatewayClientPool::new(
        GatewayClientConfig {
            query_timeout: cfg.querier.timeout,
            tls: tls.store_gateway_client.clone(),
            ..GatewayClientConfig::default()
        },
        &metrics.registry,
    )
    .context("registering store-gateway client metrics")?;
    let checked = Arc::clone(&pool);
    Periodic::every(
        "store-gateway-client-health",
        CLIENT_HEALTH_CHECK_PERIOD,
        Duration::ZERO,
    )
    .spawn(stop, move || {
        let pool = Arc::clone(&checked);
        async move { pool.check_health_all().await }
    });
    Ok((ring, pool))
}

/// A store-gateway as a ring member: registered JOINING (it loads the blocks the ring gives
/// it while the querier still asks the previous owners), ACTIVE once the service is ready (its
/// first sync is done), LEAVING when the process stops, and gone from the ring after it shut
/// down.
pub struct InRing {
    inner: Arc<dyn Service>,
    lifecycler: Arc<Lifecycler>,
}

impl InRing {
    /// Registers `membership` and wraps `service`; must run inside the Tokio runtime.
    pub async fn join(
        service: Arc<dyn Service>,
        membership: &StoreGatewayMembership,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<dyn Service>> {
        let lifecycler = Lifecycler::start(
            membership.lifecycler.clone(),
            Arc::clone(&membership.memberlist),
            STORE_GATEWAY_RING_KEY,
        )
        .await
        .context("joining the store-gateway ring")?;
        let weak_service = Arc::downgrade(&service);
        let lc = Arc::clone(&lifecycler);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(STORE_GATEWAY_READY_POLL) => {}
                }
                let Some(service) = weak_service.upgrade() else {
                    return;
                };
                if lc.state() != InstanceState::Joining {
                    return;
                }
                if service.ready().is_ok() {
                    lc.set_state(InstanceState::Active);
                    tracing::info!("store-gateway ACTIVE in the ring");
                    return;
                }
            }
        });
        Ok(Arc::new(InRing {
            inner: service,
            lifecycler,
        }))
    }
}

#[async_trait]
impl Service for InRing {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn routes(&self) -> axum::Router {
        self.inner.routes()
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        self.inner.grpc_services(routes);
    }

    fn ready(&self) -> Result<(), String> {
        self.inner.ready()?;
        // Queriers ask only ACTIVE members for blocks: until this instance is ACTIVE, a
        // probe that sees it ready would route traffic (or a rollout) past an instance that
        // no query reaches yet.
        match self.lifecycler.state() {
            InstanceState::Joining => {
                Err("store-gateway: synced, still JOINING the store-gateway ring".into())
            }
            _ => Ok(()),
        }
    }

    async fn stopping(&self) {
        // Still serves reads while LEAVING; the querier moves to the other replicas.
        self.lifecycler.set_state(InstanceState::Leaving);
        self.inner.stopping().await;
    }

    async fn shutdown(&self, abandon: CancellationToken) {
        self.inner.shutdown(abandon).await;
        self.lifecycler.leave().await;
    }
}

/// The querier when a query-frontend runs in the same process: the frontend serves the query
/// API's paths and calls the querier's routes itself, so they are not mounted (two services
/// cannot serve one path); everything else about the querier is unchanged.
pub struct BehindFrontend(pub Arc<dyn Service>);

#[async_trait]
impl Service for BehindFrontend {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn ready(&self) -> Result<(), String> {
        self.0.ready()
    }

    async fn stopping(&self) {
        self.0.stopping().await;
    }

    async fn shutdown(&self, abandon: CancellationToken) {
        self.0.shutdown(abandon).await;
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use norn_ring::lifecycler::decode_instances;

    use super::*;

    /// A service that becomes ready when told to.
    struct Fake(AtomicBool);

    #[async_trait]
    impl Service for Fake {
        fn name(&self) -> &'static str {
            "store-gateway"
        }
        fn ready(&self) -> Result<(), String> {
            if self.0.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("syncing".into())
            }
        }
        async fn shutdown(&self, _: CancellationToken) {}
    }

    fn state(ml: &Memberlist) -> Option<InstanceState> {
        decode_instances(&ml.get(STORE_GATEWAY_RING_KEY))
            .into_iter()
            .find(|i| i.id == "sg-1")
            .map(|i| i.state)
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// JOINING until the service is ready (its first sync), then ACTIVE; LEAVING when the
    /// process stops; out of the ring after shutdown.
    #[tokio::test]
    async fn a_store_gateway_joins_activates_and_leaves() {
        let ml = Memberlist::start(
            MemberlistConfig {
                node_name: "sg".into(),
                bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                bind_port: 0,
                advertise_addr: None,
                advertise_port: None,
                join_members: vec![],
                gossip_interval: Duration::from_millis(200),
                pull_push_interval: Duration::from_secs(30),
                encryption_key: None,
            },
            &Metrics::new().registry,
        )
        .await
        .unwrap();
        let membership = StoreGatewayMembership {
            memberlist: Arc::clone(&ml),
            lifecycler: LifecyclerConfig {
                id: "sg-1".into(),
                addr: "127.0.0.1:9095".into(),
                zone: String::new(),
                num_tokens: STORE_GATEWAY_NUM_TOKENS,
                tokens_file_path: None,
                heartbeat_period: Duration::from_millis(100),
            },
            ownership: RingBlockOwnership::new(
                BlocksSharding::new(Ring::new(RingConfig::default())),
                "sg-1",
                Arc::new(|_: &str| 0),
            ),
        };
        let fake = Arc::new(Fake(AtomicBool::new(false)));
        let stop = CancellationToken::new();
        let service = InRing::join(
            Arc::clone(&fake) as Arc<dyn Service>,
            &membership,
            stop.clone(),
        )
        .await
        .unwrap();
        assert_eq!(state(&ml), Some(InstanceState::Joining));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(state(&ml), Some(InstanceState::Joining), "not ready yet");
        fake.0.store(true, Ordering::Relaxed);
        eventually("ACTIVE", || state(&ml) == Some(InstanceState::Active)).await;
        service.stopping().await;
        assert_eq!(state(&ml), Some(InstanceState::Leaving));
        service.shutdown(CancellationToken::new()).await;
        assert_eq!(state(&ml), None, "tombstoned");
        stop.cancel();
        ml.leave().await;
    }
}
