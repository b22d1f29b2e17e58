//! Memberlist: cluster membership by SWIM gossip (foca) plus the gossiped [`KvState`].
//!
//! One port, two protocols, as in Mimir/hashicorp memberlist:
//! - UDP carries foca's SWIM packets (probes, membership gossip) and small KV deltas. The first
//!   byte of each datagram says which.
//! - TCP carries what may not fit a datagram: full-state push/pull (on join and every
//!   `pull_push_interval` with a random member, so a node that restarted or missed deltas
//!   converges) and deltas too large for UDP.
//!
//! KV changes spread by direct sends rather than foca's piggybacked custom broadcasts: the writer
//! sends its change to every live member, and a node that learns something new (from a delta or
//! a push/pull) forwards just that to a few random members. A change thus reaches a small
//! cluster in one round trip and still spreads when the writer's member list is incomplete;
//! periodic push/pull repairs the rest.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use foca::{
    AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec,
};
use parking_lot::Mutex;
use prometheus::Registry;
use rand::SeedableRng;
use rand::seq::IteratorRandom;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::desc::random_seed;
use crate::gossip_key::{GossipKey, OVERHEAD};
use crate::kv::{Entry, KvState};
use norn_model::now_ms;

mod frame;
mod metrics;

use frame::{read_frame, write_frame};
use metrics::MemberlistMetrics;

/// Port used for a join member given without one (hashicorp memberlist's default).
pub const DEFAULT_PORT: u16 = 7946;

/// Largest KV delta sent by UDP; bigger ones go by TCP. Below the common 1500-byte MTU so a
/// delta is never fragmented.
const MAX_UDP_DELTA: usize = 1400;
/// Nodes a receiver forwards a new delta to.
const FORWARD_FANOUT: usize = 3;
/// How long tombstones are kept before garbage collection: long enough for every node to have
/// seen them through push/pull.
const TOMBSTONE_RETENTION_MS: i64 = 10 * 60 * 1000;
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

const UDP_FOCA: u8 = 0;
const UDP_DELTA: u8 = 1;
const TCP_PUSH_PULL: u8 = 1;
const TCP_DELTA: u8 = 2;

/// Memberlist settings.
#[derive(Clone, Debug)]
pub struct MemberlistConfig {
    /// Unique node name (usually the hostname).
    pub node_name: String,
    /// Address to bind UDP and TCP to.
    pub bind_addr: IpAddr,
    /// Port to bind; 0 picks a free one.
    pub bind_port: u16,
    /// Address other nodes reach us at; defaults to `bind_addr`.
    pub advertise_addr: Option<IpAddr>,
    /// Port other nodes reach us at; defaults to the bound port.
    pub advertise_port: Option<u16>,
    /// Seeds as `host:port`; DNS names are allowed and a bare host gets port 7946.
    pub join_members: Vec<String>,
    /// How often membership gossip is sent.
    pub gossip_interval: Duration,
    /// How often the full state is exchanged with a random member.
    pub pull_push_interval: Duration,
    /// Seals every packet and frame; a node without it (or with another) cannot join.
    pub encryption_key: Option<Arc<GossipKey>>,
}

impl Default for MemberlistConfig {
    fn default() -> Self {
        Self {
            node_name: "norn".to_string(),
            bind_addr: IpAddr::from([0, 0, 0, 0]),
            bind_port: DEFAULT_PORT,
            advertise_addr: None,
            advertise_port: None,
            join_members: Vec::new(),
            gossip_interval: Duration::from_millis(200),
            pull_push_interval: Duration::from_secs(30),
            encryption_key: None,
        }
    }
}

/// Memberlist errors.
#[derive(Debug, thiserror::Error)]
pub enum MemberlistError {
    /// Binding the UDP or TCP socket failed.
    #[error("memberlist: binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Registering metrics failed (usually: registered twice on one registry).
    #[error("memberlist: registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Result alias for memberlist operations.
pub type Result<T, E = MemberlistError> = std::result::Result<T, E>;

/// One member as shown on `/memberlist`.
#[derive(Clone, Debug, Serialize)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// Advertised gossip address.
    pub addr: String,
    /// `"alive"`, `"suspect"` or `"down"`.
    pub state: String,
}

/// A foca identity: the name for humans, the advertised address for the wire, and a generation
/// (start time) so a node restarted under the same name and address supersedes its old self.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct NodeId {
    name: String,
    addr: SocketAddr,
    generation: u64,
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    /// Called by foca when the cluster declared us down: come back as a newer generation.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

type FocaT = Foca<NodeId, PostcardCodec, rand_foca::rngs::SmallRng, NoCustomBroadcast>;

struct Shared {
    config: MemberlistConfig,
    local_addr: SocketAddr,
    advertise: SocketAddr,
    foca: Mutex<FocaT>,
    udp: UdpSocket,
    kv: Mutex<KvState>,
    version: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    stopped: AtomicBool,
    metrics: MemberlistMetrics,
    rt: tokio::runtime::Handle,
}

/// A memberlist node. Background tasks stop on [`Memberlist::leave`] or when it is dropped
/// (then without announcing: the others find out by failed probes).
pub struct Memberlist {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Memberlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memberlist")
            .field("name", &self.shared.config.node_name)
            .field("addr", &self.shared.local_addr)
            .finish()
    }
}

impl Memberlist {
    /// Binds UDP (foca SWIM: probes, gossip) and TCP (full-state push/pull) on the same port;
    /// joins the seeds, retrying in the background every second until one answers, so start
    /// order does not matter.
    pub async fn start(config: MemberlistConfig, registry: &Registry) -> Result<Arc<Memberlist>> {
        let metrics = MemberlistMetrics::new(registry)?;
        let (udp, tcp) = bind(config.bind_addr, config.bind_port).await?;
        let local_addr = udp.local_addr().map_err(|source| MemberlistError::Bind {
            addr: SocketAddr::new(config.bind_addr, config.bind_port),
            source,
        })?;
        let advertise = SocketAddr::new(
            config.advertise_addr.unwrap_or(config.bind_addr),
            config.advertise_port.unwrap_or(local_addr.port()),
        );
        if advertise.ip().is_unspecified() {
            warn!(%advertise, "memberlist: advertising an unspecified address; set advertise_addr so peers can reach this node");
        }
        let identity = NodeId {
            name: config.node_name.clone(),
            addr: advertise,
            generation: now_ms() as u64,
        };
        let mut foca_config = foca::Config::new_lan(NonZeroU32::new(16).expect("non-zero"));
        if let Some(p) = foca_config.periodic_gossip.as_mut()
            && !config.gossip_interval.is_zero()
        {
            p.frequency = config.gossip_interval;
        }
        // Forget down members after a while so a long-running cluster does not accumulate
        // every pod that ever existed; long enough for /memberlist to show who went down.
        foca_config.remove_down_after = Some(Duration::from_secs(15 * 60));
        // One byte of every datagram is our protocol tag; sealing adds OVERHEAD bytes, still
        // under a 1500-byte MTU.
        const { assert!(1400 + OVERHEAD < 1500) };
        foca_config.max_packet_size = NonZeroUsize::new(1399).expect("non-zero");
        let foca = Foca::new(
            identity,
            foca_config,
            <rand_foca::rngs::SmallRng as rand_foca::SeedableRng>::seed_from_u64(random_seed()),
            PostcardCodec,
        );
        let shared = Arc::new(Shared {
            config,
            local_addr,
            advertise,
            foca: Mutex::new(foca),
            udp,
            kv: Mutex::new(KvState::default()),
            version: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            stopped: AtomicBool::new(false),
            metrics,
            rt: tokio::runtime::Handle::current(),
        });
        shared.metrics.members.set(1);
        info!(name = %shared.config.node_name, addr = %local_addr, advertise = %advertise, "memberlist started");
        tokio::spawn(Arc::clone(&shared).udp_loop());
        tokio::spawn(Arc::clone(&shared).tcp_loop(tcp));
        tokio::spawn(Arc::clone(&shared).join_loop());
        tokio::spawn(Arc::clone(&shared).push_pull_loop());
        Ok(Arc::new(Memberlist { shared }))
    }

    /// The bound address (with the real port when `bind_port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The address other nodes reach this one at.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.shared.advertise
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    /// Local write: merged into the local state and spread to the cluster (sent to every live
    /// member; receivers forward what is new to them).
    pub fn put(&self, key: &str, subkey: &str, entry: Entry) {
        let s = &self.shared;
        if !s.kv.lock().merge_entry(key, subkey, &entry) {
            return;
        }
        s.changed();
        let delta = KvState::from_entries([(key.to_string(), subkey.to_string(), entry)]);
        let targets = s.live_addrs();
        s.send_delta(&delta, targets);
    }

    /// The entries of `key`, tombstones included (callers skip them; they need them to tell a
    /// deletion from an absence).
    pub fn get(&self, key: &str) -> BTreeMap<String, Entry> {
        self.shared.kv.lock().get(key)
    }

    /// One entry of `key` (tombstones included), without copying the others: the HA tracker
    /// asks on every push.
    pub fn get_entry(&self, key: &str, subkey: &str) -> Option<Entry> {
        self.shared
            .kv
            .lock()
            .keys
            .get(key)
            .and_then(|m| m.get(subkey))
            .cloned()
    }

    /// Live (non-tombstone) entries of `key` whose subkey starts with `prefix`.
    pub fn count_live(&self, key: &str, prefix: &str) -> usize {
        self.shared.kv.lock().keys.get(key).map_or(0, |m| {
            m.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(_, e)| !e.tombstone)
                .count()
        })
    }

    /// A copy of the whole state.
    pub fn state(&self) -> KvState {
        self.shared.kv.lock().clone()
    }

    /// Bumps whenever any key changes, locally or by gossip.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// Becomes `true` when the memberlist stops (leave or drop).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }

    /// This node and every member foca knows (alive, suspect or down), one per name: the newest
    /// generation wins, so a restarted node shows once.
    pub fn members(&self) -> Vec<MemberInfo> {
        let foca = self.shared.foca.lock();
        let me = foca.identity().clone();
        let mut by_name: HashMap<String, (u64, MemberInfo)> = HashMap::new();
        let stopped = self.shared.stopped.load(Ordering::Relaxed);
        by_name.insert(
            me.name.clone(),
            (
                me.generation,
                MemberInfo {
                    name: me.name.clone(),
                    addr: me.addr.to_string(),
                    state: if stopped { "down" } else { "alive" }.to_string(),
                },
            ),
        );
        for m in foca.iter_membership_state() {
            let id = m.id();
            let state = match m.state() {
                foca::State::Alive => "alive",
                foca::State::Suspect => "suspect",
                foca::State::Down => "down",
            };
            let info = MemberInfo {
                name: id.name.clone(),
                addr: id.addr.to_string(),
                state: state.to_string(),
            };
            match by_name.get(&id.name) {
                Some((generation, _)) if *generation >= id.generation => {}
                _ => {
                    by_name.insert(id.name.clone(), (id.generation, info));
                }
            }
        }
        let mut out: Vec<MemberInfo> = by_name.into_values().map(|(_, m)| m).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Announce leave to the cluster and stop background tasks.
    pub async fn leave(&self) {
        let s = &self.shared;
        if s.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        s.with_foca(|foca, rt| foca.leave_cluster(rt));
        info!(name = %s.config.node_name, "memberlist left the cluster");
        // Give the leave datagrams a moment to go out before the sockets close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.shutdown.send_replace(true);
    }
}

impl Drop for Memberlist {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.shutdown.send_replace(true);
    }
}

async fn bind(ip: IpAddr, port: u16) -> Result<(UdpSocket, TcpListener)> {
    // With port 0 the UDP port is picked first and TCP must get the same one; another process
    // may hold it for TCP, so try a few times.
    let mut last = None;
    for _ in 0..if port == 0 { 20 } else { 1 } {
        let addr = SocketAddr::new(ip, port);
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| MemberlistError::Bind { addr, source })?;
        let bound = udp
            .local_addr()
            .map_err(|source| MemberlistError::Bind { addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(MemberlistError::Bind {
                    addr: bound,
                    source,
                })
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

async fn resolve(seed: &str) -> Vec<SocketAddr> {
    let with_port = if seed.parse::<SocketAddr>().is_ok() || has_port(seed) {
        seed.to_string()
    } else {
        format!("{seed}:{DEFAULT_PORT}")
    };
    match tokio::net::lookup_host(&with_port).await {
        Ok(addrs) => addrs.collect(),
        Err(err) => {
            debug!(seed, %err, "memberlist: cannot resolve join member");
            Vec::new()
        }
    }
}

fn has_port(seed: &str) -> bool {
    // "host:port" but not a bare IPv6 address.
    match seed.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

fn invalid(err: postcard::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, err)
}

impl Shared {
    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) || *self.shutdown.borrow()
    }

    /// Run `f` on foca with a fresh runtime, then carry out what foca asked for (sends, timers,
    /// notifications) outside the lock.
    fn with_foca<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut FocaT, &mut AccumulatingRuntime<NodeId>) -> Result<R, foca::Error>,
    ) -> Option<R> {
        let mut rt = AccumulatingRuntime::new();
        let result = {
            let mut foca = self.foca.lock();
            f(&mut foca, &mut rt)
        };
        self.drain(rt);
        match result {
            Ok(r) => Some(r),
            Err(err) => {
                debug!(%err, "memberlist: foca");
                None
            }
        }
    }

    fn drain(self: &Arc<Self>, mut rt: AccumulatingRuntime<NodeId>) {
        while let Some((to, data)) = rt.to_send() {
            let mut buf = Vec::with_capacity(data.len() + 1);
            buf.push(UDP_FOCA);
            buf.extend_from_slice(&data);
            self.send_udp(to.addr, &buf);
        }
        while let Some((after, timer)) = rt.to_schedule() {
            // Weak: some foca timers are long (removing down members), and a sleeping timer
            // must not keep a stopped node's sockets open.
            let weak = Arc::downgrade(self);
            self.rt.spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(shared) = weak.upgrade()
                    && !shared.is_stopped()
                {
                    shared.with_foca(|foca, rt| foca.handle_timer(timer, rt));
                }
            });
        }
        let mut membership_changed = false;
        while let Some(n) = rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    debug!(member = %id.name, addr = %id.addr, "memberlist: member up");
                    membership_changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    info!(member = %id.name, addr = %id.addr, "memberlist: member down");
                    membership_changed = true;
                }
                OwnedNotification::Rename(old, new) => {
                    debug!(old = %old.name, new = %new.name, "memberlist: member renamed");
                    membership_changed = true;
                }
                OwnedNotification::Rejoin(id) => {
                    info!(
                        generation = id.generation,
                        "memberlist: rejoined with a new identity"
                    );
                }
                OwnedNotification::Defunct => {
                    warn!("memberlist: declared down by the cluster");
                }
                _ => {}
            }
        }
        if membership_changed {
            let n = self.foca.lock().num_members();
            self.metrics.members.set(n as i64 + 1);
        }
    }

    fn send_udp(&self, to: SocketAddr, buf: &[u8]) {
        let sealed;
        let buf = match &self.config.encryption_key {
            None => buf,
            Some(key) => match key.seal(buf) {
                Some(s) => {
                    sealed = s;
                    sealed.as_slice()
                }
                None => {
                    warn!("memberlist: the system RNG failed; datagram not sent");
                    return;
                }
            },
        };
        // try_send_to never blocks the caller (often under a lock); a full socket buffer loses
        // the datagram, which SWIM and push/pull tolerate.
        match self.udp.try_send_to(buf, to) {
            Ok(_) => self.metrics.sent.inc(),
            Err(err) => debug!(%to, %err, "memberlist: udp send"),
        }
    }

    fn live_addrs(&self) -> Vec<SocketAddr> {
        self.foca
            .lock()
            .iter_members()
            .map(|m| m.id().addr)
            .collect()
    }

    /// The state changed: wake watchers and refresh the per-key gauge.
    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
        let counts = self.kv.lock().live_counts();
        for (key, n) in counts {
            self.metrics
                .kv_entries
                .with_label_values(&[&key])
                .set(n as i64);
        }
    }

    fn send_delta(self: &Arc<Self>, delta: &KvState, targets: Vec<SocketAddr>) {
        if targets.is_empty() || self.is_stopped() {
            return;
        }
        let payload = match postcard::to_allocvec(delta) {
            Ok(p) => p,
            Err(err) => {
                warn!(%err, "memberlist: encoding delta");
                return;
            }
        };
        if payload.len() < MAX_UDP_DELTA {
            let mut buf = Vec::with_capacity(payload.len() + 1);
            buf.push(UDP_DELTA);
            buf.extend_from_slice(&payload);
            for to in targets {
                self.send_udp(to, &buf);
            }
            return;
        }
        let payload = Arc::new(payload);
        for to in targets {
            let shared = Arc::clone(self);
            let payload = Arc::clone(&payload);
            self.rt.spawn(async move {
                let res = tokio::time::timeout(TCP_TIMEOUT, async {
                    let mut stream = TcpStream::connect(to).await?;
                    let key = shared.config.encryption_key.as_deref();
                    write_frame(&mut stream, key, TCP_DELTA, &payload).await
                })
                .await;
                match res {
                    Ok(Ok(())) => shared.metrics.sent.inc(),
                    Ok(Err(err)) => debug!(%to, %err, "memberlist: tcp delta"),
                    Err(_) => debug!(%to, "memberlist: tcp delta timed out"),
                }
            });
        }
    }

    /// Merge a state received from a peer; forward what was new to a few random members so it
    /// spreads even when the writer did not know every member.
    fn apply_remote(self: &Arc<Self>, state: &KvState) {
        if self.is_stopped() {
            return;
        }
        let changed = self.kv.lock().merge(state);
        if changed.is_empty() {
            return;
        }
        self.changed();
        let targets = {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(random_seed());
            self.live_addrs()
                .into_iter()
                .choose_multiple(&mut rng, FORWARD_FANOUT)
        };
        self.send_delta(&KvState::from_entries(changed), targets);
    }

    async fn udp_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = self.udp.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(err) => {
                        debug!(%err, "memberlist: udp recv");
                        continue;
                    }
                },
            };
            if n == 0 || self.is_stopped() {
                continue;
            }
            self.metrics.received.inc();
            let opened;
            let packet = match &self.config.encryption_key {
                None => &buf[..n],
                Some(key) => match key.open(&buf[..n]) {
                    Some(p) if !p.is_empty() => {
                        opened = p;
                        opened.as_slice()
                    }
                    _ => {
                        self.metrics.auth_failures.inc();
                        debug!(%from, "memberlist: dropped a datagram not sealed with our key");
                        continue;
                    }
                },
            };
            match packet[0] {
                UDP_FOCA => {
                    let data = &packet[1..];
                    self.with_foca(|foca, rt| foca.handle_data(data, rt));
                }
                UDP_DELTA => match postcard::from_bytes::<KvState>(&packet[1..]) {
                    Ok(state) => self.apply_remote(&state),
                    Err(err) => debug!(%from, %err, "memberlist: bad delta"),
                },
                other => debug!(%from, tag = other, "memberlist: unknown datagram"),
            }
        }
    }

    async fn tcp_loop(self: Arc<Self>, listener: TcpListener) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let (stream, from) = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = listener.accept() => match r {
                    Ok(r) => r,
                    Err(err) => {
                        debug!(%err, "memberlist: tcp accept");
                        continue;
                    }
                },
            };
            let shared = Arc::clone(&self);
            tokio::spawn(async move {
                match tokio::time::timeout(TCP_TIMEOUT, shared.serve_tcp(stream)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => debug!(%from, %err, "memberlist: tcp"),
                    Err(_) => debug!(%from, "memberlist: tcp timed out"),
                }
            });
        }
    }

    async fn serve_tcp(self: &Arc<Self>, mut stream: TcpStream) -> std::io::Result<()> {
        let key = self.config.encryption_key.as_deref();
        let (kind, payload) = match read_frame(&mut stream, key).await {
            Ok(f) => f,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    self.metrics.auth_failures.inc();
                }
                return Err(e);
            }
        };
        self.metrics.received.inc();
        let remote: KvState = postcard::from_bytes(&payload).map_err(invalid)?;
        match kind {
            TCP_PUSH_PULL => {
                // Reply with our state as it was, so the peer gets what it lacked; its own
                // entries come back to it as no-ops.
                let ours = postcard::to_allocvec(&*self.kv.lock()).map_err(invalid)?;
                write_frame(&mut stream, key, TCP_PUSH_PULL, &ours).await?;
                self.metrics.sent.inc();
                // What was new to us is forwarded like a delta: a joiner's own entries reach
                // the rest of the cluster now rather than at the next periodic push/pull.
                self.apply_remote(&remote);
            }
            TCP_DELTA => self.apply_remote(&remote),
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown frame type {other}"),
                ));
            }
        }
        Ok(())
    }

    /// Exchange full states with `to`.
    async fn push_pull(self: &Arc<Self>, to: SocketAddr) -> std::io::Result<()> {
        let ours = postcard::to_allocvec(&*self.kv.lock()).map_err(invalid)?;
        let theirs = tokio::time::timeout(TCP_TIMEOUT, async {
            let key = self.config.encryption_key.as_deref();
            let mut stream = TcpStream::connect(to).await?;
            write_frame(&mut stream, key, TCP_PUSH_PULL, &ours).await?;
            self.metrics.sent.inc();
            let (_, payload) = match read_frame(&mut stream, key).await {
                Ok(f) => f,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        self.metrics.auth_failures.inc();
                    }
                    return Err(e);
                }
            };
            self.metrics.received.inc();
            Ok::<_, std::io::Error>(payload)
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "push/pull timed out"))??;
        let theirs: KvState = postcard::from_bytes(&theirs).map_err(invalid)?;
        self.apply_remote(&theirs);
        Ok(())
    }

    async fn join_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        if self.config.join_members.is_empty() {
            return;
        }
        let mut pulled = false;
        loop {
            let mut seeds = Vec::new();
            for seed in &self.config.join_members {
                seeds.extend(resolve(seed).await);
            }
            let resolved_any = !seeds.is_empty();
            seeds.retain(|a| *a != self.advertise && *a != self.local_addr);
            if resolved_any && seeds.is_empty() {
                // We are the only seed: nothing to join, the others will join us.
                return;
            }
            if !pulled {
                for &seed in &seeds {
                    match self.push_pull(seed).await {
                        Ok(()) => {
                            pulled = true;
                            break;
                        }
                        Err(err) => debug!(%seed, %err, "memberlist: join push/pull"),
                    }
                }
            }
            let connected = self.foca.lock().num_members() > 0;
            if !connected {
                for &seed in &seeds {
                    // foca accepts an announce addressed to any identity with its address, so
                    // the seed's name and generation need not be known.
                    let dst = NodeId {
                        name: String::new(),
                        addr: seed,
                        generation: 0,
                    };
                    self.with_foca(|foca, rt| foca.announce(dst, rt));
                }
            }
            if connected && pulled {
                info!(name = %self.config.node_name, "memberlist joined the cluster");
                return;
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn push_pull_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        // A zero interval would make tokio panic; treat it as "as often as reasonable".
        let period = self
            .config
            .pull_push_interval
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            self.kv.lock().gc(now_ms() - TOMBSTONE_RETENTION_MS);
            let target = {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(random_seed());
                self.live_addrs().into_iter().choose(&mut rng)
            };
            if let Some(to) = target
                && let Err(err) = self.push_pull(to).await
            {
                debug!(%to, %err, "memberlist: periodic push/pull");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_get_the_default_port() {
        assert!(has_port("127.0.0.1:7000"));
        assert!(has_port("ingester-0.ingester:7946"));
        assert!(has_port("[::1]:7000"));
        assert!(!has_port("ingester-0.ingester"));
        assert!(!has_port("::1"));
    }
}
