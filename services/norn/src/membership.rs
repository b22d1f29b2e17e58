//! Microservices mode: joining the gossip cluster, following the ingester ring, and an
//! ingester's life in it (JOINING → ACTIVE once its WAL is replayed → LEAVING on SIGTERM →
//! gone).
//!
//! Every address this module binds or advertises comes from the flags; when they leave it
//! open, a process listening on loopback advertises `127.0.0.1`, so a laptop cluster never
//! leaks the machine's own address into the ring.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use norn_distributor::Distributor;
use norn_distributor::ha_tracker::{MemoryReplicaStore, ReplicaStore};
use norn_distributor::replication::ReplicatedPusher;
use norn_ingester::Ingester;
use norn_ingester_client::{ClientConfig, IngesterClientPool};
use norn_limits::Overrides;
use norn_model::Pusher;
use norn_ring::{
    INGESTER_RING_KEY, InstanceState, Lifecycler, LifecyclerConfig, Memberlist, MemberlistConfig,
    Ring, RingConfig,
};
use norn_server::{Metrics, Service, TenantResolver};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClientPushers, GossipReplicaStore, IngestersProvider, RingWrite};
use crate::config::Config;

/// This process's membership in the cluster.
pub struct Cluster {
    memberlist: Arc<Memberlist>,
    ring: Ring,
    pool: Arc<IngesterClientPool>,
    lifecycler: Mutex<Option<Arc<Lifecycler>>>,
    stop: CancellationToken,
}

/// The ingester's gRPC server, stopped after HTTP has drained.
pub struct GrpcServer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            tracing::warn!("gRPC server did not stop within 10s");
        }
    }
}

/// Distinguishes two processes on one host (and a restart from its predecessor).
fn random_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "norn".to_string())
}

/// The address of the interface with the default route, found without sending anything (a
/// UDP "connect" only picks a route).
fn default_route_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// What to advertise for a listener on `bind`, unless `explicit` says.
fn advertise_ip(explicit: &str, bind: IpAddr) -> anyhow::Result<IpAddr> {
    if !explicit.is_empty() {
        return explicit
            .parse()
            .with_context(|| format!("advertise address {explicit:?} is not an IP address"));
    }
    Ok(if bind.is_loopback() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if !bind.is_unspecified() {
        bind
    } else {
        default_route_ip()
    })
}

fn parse_bind(addr: &str) -> anyhow::Result<IpAddr> {
    if addr.is_empty() {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    addr.parse()
        .with_context(|| format!("listen address {addr:?} is not an IP address"))
}

/// Binds the ingester's gRPC listener (before the ingester opens its directory, see `run`).
pub async fn bind_grpc(cfg: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let bind = parse_bind(&cfg.server.grpc_listen_address)?;
    tokio::net::TcpListener::bind(SocketAddr::new(bind, cfg.server.grpc_listen_port))
        .await
        .with_context(|| {
            format!(
                "binding gRPC listener on {bind}:{}",
                cfg.server.grpc_listen_port
            )
        })
}

impl Cluster {
    /// Joins the gossip cluster and starts following the ingester ring.
    pub async fn start(
        cfg: &Config,
        metrics: &Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<Cluster> {
        let ml = &cfg.memberlist;
        let bind = parse_bind(ml.bind_addr.first().map(String::as_str).unwrap_or(""))?;
        let advertise = advertise_ip(&ml.advertise_addr, bind)?;
        let node_name = if ml.node_name.is_empty() {
            format!("{}-{:08x}", hostname(), random_suffix())
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
        let ring = Ring::new(RingConfig {
            replication_factor: r.replication_factor,
            heartbeat_timeout: r.heartbeat_timeout,
            zone_awareness_enabled: r.zone_awareness_enabled,
        });
        let forget_after = (r.auto_forget_unhealthy_periods > 0)
            .then(|| r.heartbeat_timeout * r.auto_forget_unhealthy_periods);
        norn_ring::spawn_ring_watcher(
            Arc::clone(&memberlist),
            INGESTER_RING_KEY,
            ring.clone(),
            forget_after,
            &metrics.registry,
        )
        .context("registering ring metrics")?;
        let pool = IngesterClientPool::new(
            ClientConfig {
                connect_timeout: Duration::from_secs(2),
                request_timeout: cfg.distributor.remote_timeout,
                query_timeout: cfg.querier.timeout,
            },
            &metrics.registry,
        )
        .context("registering ingester client metrics")?;
        {
            // Drop channels to ingesters that stopped answering, so a restarted one gets a
            // fresh connection.
            let pool = Arc::clone(&pool);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => pool.check_health_all().await,
                    }
                }
            });
        }
        Ok(Cluster {
            memberlist,
            ring,
            pool,
            lifecycler: Mutex::new(None),
            stop,
        })
    }

    /// Serves the ingester's gRPC API and registers it in the ring: JOINING at once, ACTIVE
    /// when its WAL is replayed.
    pub async fn start_ingester(
        &self,
        cfg: &Config,
        ingester: Arc<Ingester>,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<GrpcServer> {
        let bind = parse_bind(&cfg.server.grpc_listen_address)?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "ingester gRPC server listening");
        let grpc_stop = CancellationToken::new();
        let grpc_metrics = norn_ingester::grpc::GrpcMetrics::new(ingester.registry())
            .context("registering ingester gRPC metrics")?;
        let task = {
            let ingester = Arc::clone(&ingester);
            let stop = grpc_stop.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    norn_ingester::grpc::serve(listener, ingester, grpc_metrics, async move {
                        stop.cancelled().await
                    })
                    .await
                {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            })
        };

        let r = &cfg.ingester.ring;
        let ip = if r.instance_addr.is_empty() {
            advertise_ip("", bind)?.to_string()
        } else {
            r.instance_addr.clone()
        };
        let port = if r.instance_port != 0 {
            r.instance_port
        } else {
            local.port()
        };
        let id = if r.instance_id.is_empty() {
            hostname()
        } else {
            r.instance_id.clone()
        };
        let lifecycler = Lifecycler::start(
            LifecyclerConfig {
                id: id.clone(),
                addr: format!("{ip}:{port}"),
                zone: r.instance_availability_zone.clone(),
                num_tokens: r.num_tokens,
                tokens_file_path: (!r.tokens_file_path.is_empty())
                    .then(|| r.tokens_file_path.clone().into()),
                heartbeat_period: r.heartbeat_period,
            },
            Arc::clone(&self.memberlist),
            INGESTER_RING_KEY,
        )
        .await
        .map_err(|e| anyhow::anyhow!("joining the ingester ring: {e}"))?;
        tracing::info!(id = %id, addr = %format!("{ip}:{port}"), "ingester registered in the ring (JOINING)");
        {
            let lifecycler = Arc::clone(&lifecycler);
            let stop = self.stop.clone();
            let service = norn_ingester::IngesterService(ingester);
            tokio::spawn(async move {
                loop {
                    if service.ready().is_ok() {
                        lifecycler.set_state(InstanceState::Active);
                        tracing::info!("WAL replayed; ingester ACTIVE in the ring");
                        return;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            });
        }
        *self.lifecycler.lock() = Some(lifecycler);
        Ok(GrpcServer {
            stop: grpc_stop,
            task,
        })
    }

    /// The distributor of this cluster: replication over the ring, HA state in gossip.
    pub fn distributor(
        &self,
        cfg: &Config,
        overrides: Arc<Overrides>,
        tenants: TenantResolver,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Arc<Distributor>> {
        let pusher = ReplicatedPusher::new(
            Arc::new(RingWrite(self.ring.clone())),
            Arc::new(ClientPushers(Arc::clone(&self.pool))),
            cfg.distributor.remote_timeout,
            &metrics.registry,
        )
        .context("registering replication metrics")?;
        let store: Arc<dyn ReplicaStore> = if cfg.distributor.ha_tracker.enable_ha_tracker {
            Arc::new(GossipReplicaStore(Arc::clone(&self.memberlist)))
        } else {
            Arc::new(MemoryReplicaStore::default())
        };
        Distributor::with_replica_store(
            cfg.distributor.clone(),
            overrides,
            Arc::new(pusher) as Arc<dyn Pusher>,
            tenants,
            Arc::clone(metrics),
            store,
        )
        .context("registering distributor metrics")
    }

    pub fn ingesters_provider(&self) -> IngestersProvider {
        IngestersProvider {
            ring: self.ring.clone(),
            pool: Arc::clone(&self.pool),
        }
    }

    /// `/ring` and `/memberlist`.
    pub fn ring_service(&self) -> Arc<dyn Service> {
        Arc::new(RingService {
            routes: norn_ring::http::routes(self.ring.clone(), Arc::clone(&self.memberlist)),
            lifecycler: self.lifecycler.lock().clone(),
        })
    }

    /// SIGTERM on an ingester: LEAVING in the ring (distributors pick the next instance for
    /// new writes), then refuse writes still on their way.
    pub async fn begin_leaving(&self, ingester: &Arc<Ingester>) {
        let lifecycler = self.lifecycler.lock().clone();
        if let Some(l) = lifecycler {
            l.set_state(InstanceState::Leaving);
            tracing::info!("ingester LEAVING the ring");
            // Let the state reach the distributors before writes are refused, so in-flight
            // pushes land on the replicas the ring now names.
            tokio::time::sleep(Duration::from_millis(500)).await;
            ingester.set_read_only(true);
        }
    }

    /// Leaves the ring (after the ingester flushed and closed) and the gossip cluster.
    pub async fn leave(self) {
        let lifecycler = self.lifecycler.lock().take();
        if let Some(l) = lifecycler {
            l.leave().await;
            tracing::info!("ingester left the ring");
        }
        self.memberlist.leave().await;
    }
}

/// The ring pages as a service of the HTTP harness; in an ingester also its readiness: ready
/// only while ACTIVE in the ring, as Mimir's ingester.
struct RingService {
    routes: axum::Router,
    lifecycler: Option<Arc<Lifecycler>>,
}

#[async_trait]
impl Service for RingService {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn routes(&self) -> axum::Router {
        self.routes.clone()
    }

    fn ready(&self) -> Result<(), String> {
        match &self.lifecycler {
            Some(l) if l.state() != InstanceState::Active => {
                Err(format!("ingester is {} in the ring", l.state().as_str()))
            }
            _ => Ok(()),
        }
    }

    async fn shutdown(&self) {}
}
