//! The per-tenant fair queue between the frontend's pipeline and the queriers' workers.
//!
//! Why a queue and not a load balancer: a tenant's 30-day query split into thirty legs, or a
//! flood of dashboards, would otherwise take every querier while a quiet tenant's one query
//! waits behind them. Here each tenant has its own FIFO, and workers take from the tenants in
//! turn (round robin over the tenants that have work; a tenant that appears anew joins the
//! rotation at its end), so a quiet tenant waits for at most one request of each busy
//! tenant, however much they queued.
//!
//! Running requests are bounded too: while more than one tenant has queried within
//! [`RECENT_TENANT_WINDOW`], each may hold at most its fair share of the connected workers,
//! `workers / active tenants` (at least one). So a quiet tenant's query neither waits for one of
//! a flooding tenant's slow ones to finish (a worker is free for it) nor shares the queriers'
//! CPU with all of them: with "all workers but one" for the flood, the quiet tenant's one
//! query ran beside three flood queries on two cores and took ~5x its time alone; with the
//! fair share it runs beside two. A tenant alone uses every worker (the queue stays
//! work-conserving for a single tenant); with several, workers a quiet tenant leaves unused
//! stay idle until the window passes — the price of having one ready when it asks.
//!
//! Workers pull: a querier's worker (over gRPC, [`crate::frontend_grpc`]) or an in-process one
//! ([`crate::worker::spawn_local`]) asks [`Queue::next`] for work when it is free, so the
//! frontend never needs to know its queriers, and adding one adds capacity.
//!
//! Failure modes, each bounded:
//! * a tenant with `max_outstanding_per_tenant` requests waiting gets 429 for the next one,
//!   naming the limit; other tenants are not affected ([`QueueError::TooManyOutstanding`]);
//! * a request that waited (queued and running) longer than the querier's timeout plus slack
//!   answers 504 and leaves the queue ([`QueueDownstream`]); a caller that goes away (client
//!   disconnected, the pipeline gave up) takes its request out of the queue with it;
//! * a request whose querier vanished mid-flight is put back at the head of its tenant's
//!   queue, at most [`MAX_REQUEUES`] times; then it fails with a 5xx.
//!
//! Memory: per tenant at most `max_outstanding_per_tenant` requests wait, each bounded by the
//! query API's body limit; the number of tenants waiting is bounded by the HTTP connections
//! the server holds (one request each). Empty tenants are forgotten, with their metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::{HeaderValue, StatusCode};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::downstream::{Downstream, DownstreamError, DownstreamRequest, DownstreamResponse};
use crate::queue_metrics::QueueMetrics;

/// Times a request whose querier vanished is put back in the queue before it fails.
pub const MAX_REQUEUES: u32 = 3;

/// A tenant that queried within this window counts as active: while two or more are, each
/// may run requests on at most its fair share of the workers.
pub const RECENT_TENANT_WINDOW: Duration = Duration::from_secs(60);

/// The tenant's name in the queue when a request carries none (multi-tenancy off).
const NO_TENANT: &str = "anonymous";

/// What a worker gets back from the caller's side: the answer, or why there is none.
pub type Reply = Result<DownstreamResponse, DownstreamError>;

/// Why a request was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error(
        "too many outstanding requests for this tenant: {limit} are queued; the limit is max_outstanding_per_tenant (-query-frontend.max-outstanding-requests-per-tenant)"
    )]
    TooManyOutstanding { limit: usize },
    #[error("the query-frontend is shutting down")]
    Closed,
}

/// A request waiting in the queue or running on a worker. Dropping it unanswered tells the
/// caller the frontend stopped.
pub struct Pending {
    id: u64,
    tenant: Arc<str>,
    /// The request as the querier gets it.
    pub request: DownstreamRequest,
    enqueued: Instant,
    /// Times a worker's querier vanished with it.
    requeues: u32,
    /// Whether a worker has taken it before (its queue time is observed once).
    dispatched: bool,
    reply: oneshot::Sender<Reply>,
    /// Held while a worker runs the request: counts against its tenant's running requests.
    running: Option<RunningSlot>,
}

/// One running request of a tenant; released (and a waiting worker woken) when dropped.
struct RunningSlot {
    queue: Weak<Queue>,
    tenant: Arc<str>,
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        let Some(queue) = self.queue.upgrade() else {
            return;
        };
        {
            let mut s = queue.lock();
            if let Some(n) = s.running.get_mut(&self.tenant) {
                *n -= 1;
                if *n == 0 {
                    s.running.remove(&self.tenant);
                }
            }
        }
        // A worker may be waiting because this tenant was at its bound.
        queue.work.notify_one();
    }
}

impl Pending {
    /// The tenant the request is queued for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Whether the caller still waits for the answer.
    pub fn wanted(&self) -> bool {
        !self.reply.is_closed()
    }

    /// Resolves when the caller stops waiting for the answer: a worker running the request
    /// drops it then, so a client that hangs up does not leave its query burning CPU.
    pub async fn abandoned(&mut self) {
        self.reply.closed().await
    }

    /// Hands the answer to the caller (who may have gone: then it is dropped).
    pub fn answer(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

#[derive(Default)]
struct State {
    /// Each tenant's FIFO; a tenant is here only while it has requests waiting.
    tenants: HashMap<Arc<str>, VecDeque<Pending>>,
    /// The tenants with requests waiting, in the order they are served next.
    rotation: VecDeque<Arc<str>>,
    /// Requests running on workers, per tenant (tenants with none are absent).
    running: HashMap<Arc<str>, usize>,
    /// When each tenant last queued a request (pruned to [`RECENT_TENANT_WINDOW`]).
    last_seen: HashMap<Arc<str>, Instant>,
    last_pruned: Option<Instant>,
    closed: bool,
}

impl State {
    /// How many tenants queried within the window.
    fn active(&self, now: Instant) -> usize {
        self.last_seen
            .values()
            .filter(|t| now.duration_since(**t) < RECENT_TENANT_WINDOW)
            .count()
    }

    fn note_seen(&mut self, tenant: &Arc<str>, now: Instant) {
        self.last_seen.insert(Arc::clone(tenant), now);
        if self
            .last_pruned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_pruned = Some(now);
            self.last_seen
                .retain(|_, t| now.duration_since(*t) < RECENT_TENANT_WINDOW);
        }
    }
}

/// The queue (see the module doc).
pub struct Queue {
    me: Weak<Queue>,
    state: Mutex<State>,
    /// Woken once per request queued (and for every waiter on close).
    work: Notify,
    max_per_tenant: usize,
    next_id: AtomicU64,
    workers: AtomicU64,
    metrics: QueueMetrics,
}

impl Queue {
    /// Counts a request a worker dropped because its caller went away.
    pub fn abandoned_in_flight(&self) {
        self.metrics.discarded("cancelled");
    }

    /// `max_per_tenant` requests may wait per tenant (0 counts as 1).
    pub fn new(max_per_tenant: usize, metrics: QueueMetrics) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: Weak::clone(me),
            state: Mutex::new(State::default()),
            work: Notify::new(),
            max_per_tenant: max_per_tenant.max(1),
            next_id: AtomicU64::new(1),
            workers: AtomicU64::new(0),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves consistent queues (every change is one push or pop).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `request` for `tenant`; the ticket receives the answer, and dropping it takes
    /// the request out of the queue if no worker has it yet.
    pub fn enqueue(
        self: &Arc<Self>,
        tenant: &str,
        request: DownstreamRequest,
    ) -> Result<Ticket, QueueError> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        if s.closed {
            return Err(QueueError::Closed);
        }
        let key: Arc<str> = match s.tenants.get_key_value(tenant) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(tenant),
        };
        let queued = s.tenants.get(tenant).map_or(0, VecDeque::len);
        if queued >= self.max_per_tenant {
            drop(s);
            self.metrics.discarded("too_many_outstanding");
            return Err(QueueError::TooManyOutstanding {
                limit: self.max_per_tenant,
            });
        }
        let pending = Pending {
            id,
            tenant: Arc::clone(&key),
            request,
            enqueued: Instant::now(),
            requeues: 0,
            dispatched: false,
            reply: tx,
            running: None,
        };
        s.note_seen(&key, pending.enqueued);
        let q = s.tenants.entry(Arc::clone(&key)).or_default();
        q.push_back(pending);
        let len = q.len();
        if len == 1 {
            s.rotation.push_back(Arc::clone(&key));
        }
        self.metrics.set_length(&key, len);
        drop(s);
        self.work.notify_one();
        Ok(Ticket {
            queue: Arc::clone(self),
            tenant: key,
            id,
            rx: Some(rx),
        })
    }

    /// The next request in round-robin order over the tenants, waiting for one; `None` once
    /// the queue is closed. Cancel-safe: dropping the future takes nothing from the queue.
    pub async fn next(&self) -> Option<Pending> {
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            // Registered before looking, so a request queued in between wakes us.
            notified.as_mut().enable();
            match self.try_next() {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(QueueError::Closed) => return None,
                Err(_) => {}
            }
            notified.await;
        }
    }

    /// As [`Queue::next`] until `stop`; after it, only a request already waiting (so the
    /// requests queued when the process began to stop are still answered), else `None`.
    pub async fn next_until(&self, stop: &CancellationToken) -> Option<Pending> {
        if !stop.is_cancelled() {
            tokio::select! {
                p = self.next() => return p,
                _ = stop.cancelled() => {}
            }
        }
        self.try_next().ok().flatten()
    }

    /// The next request if one waits and its tenant may run another; `Err(Closed)` once
    /// closed.
    fn try_next(&self) -> Result<Option<Pending>, QueueError> {
        let mut s = self.lock();
        if s.closed {
            return Err(QueueError::Closed);
        }
        // With several tenants active, each may hold its fair share of the workers.
        let workers = self.workers() as usize;
        let active = s.active(Instant::now());
        let bound = (workers >= 2 && active >= 2).then(|| (workers / active).max(1));
        for _ in 0..s.rotation.len() {
            let Some(tenant) = s.rotation.pop_front() else {
                break;
            };
            if !s.tenants.contains_key(&tenant) {
                continue;
            }
            if let Some(bound) = bound
                && s.running.get(&tenant).copied().unwrap_or(0) >= bound
            {
                // At its bound: keeps its place for when one of its requests ends.
                s.rotation.push_back(tenant);
                continue;
            }
            let Some(q) = s.tenants.get_mut(&tenant) else {
                continue;
            };
            let Some(mut p) = q.pop_front() else {
                s.tenants.remove(&tenant);
                self.metrics.forget(&tenant);
                continue;
            };
            let left = q.len();
            if left == 0 {
                s.tenants.remove(&tenant);
            } else {
                // Served: to the end of the rotation.
                s.rotation.push_back(Arc::clone(&tenant));
            }
            // Metrics under the lock, so a tenant's length is never set from a stale count.
            if left == 0 {
                self.metrics.forget(&tenant);
            } else {
                self.metrics.set_length(&tenant, left);
            }
            *s.running.entry(Arc::clone(&tenant)).or_insert(0) += 1;
            p.running = Some(RunningSlot {
                queue: Weak::clone(&self.me),
                tenant: Arc::clone(&tenant),
            });
            if !p.dispatched {
                p.dispatched = true;
                self.metrics
                    .queue_duration
                    .observe(p.enqueued.elapsed().as_secs_f64());
            }
            return Ok(Some(p));
        }
        Ok(None)
    }

    /// Puts back a request a worker took but could not have answered: `ran` when it reached
    /// a querier (which then vanished), counted against [`MAX_REQUEUES`]; not when the
    /// worker's stream broke before sending it. It goes to the head of its tenant's queue.
    pub fn requeue(&self, mut p: Pending, ran: bool) {
        // Not running any more (released before the lock is taken below: the slot takes it).
        p.running = None;
        if !p.wanted() {
            self.metrics.discarded("cancelled");
            return;
        }
        if ran {
            p.requeues += 1;
            if p.requeues > MAX_REQUEUES {
                self.metrics.discarded("requeue_limit");
                let n = p.requeues - 1;
                p.answer(Err(DownstreamError::Transport(format!(
                    "the querier running this request went away {n} times"
                ))));
                return;
            }
            self.metrics.requeued.inc();
        }
        let mut s = self.lock();
        if s.closed {
            // Dropped unanswered: the caller hears the frontend stopped.
            return;
        }
        let tenant = Arc::clone(&p.tenant);
        let q = s.tenants.entry(Arc::clone(&tenant)).or_default();
        q.push_front(p);
        let len = q.len();
        if len == 1 {
            // Back first in line: it was its tenant's turn already.
            s.rotation.push_front(Arc::clone(&tenant));
        }
        self.metrics.set_length(&tenant, len);
        drop(s);
        self.work.notify_one();
    }

    /// Takes a request out of the queue, if no worker has it yet.
    fn remove(&self, tenant: &Arc<str>, id: u64) -> bool {
        let mut s = self.lock();
        let Some(q) = s.tenants.get_mut(tenant) else {
            return false;
        };
        let Some(i) = q.iter().position(|p| p.id == id) else {
            return false;
        };
        q.remove(i);
        let left = q.len();
        if left == 0 {
            s.tenants.remove(tenant);
            s.rotation.retain(|t| t != tenant);
        }
        if left == 0 {
            self.metrics.forget(tenant);
        } else {
            self.metrics.set_length(tenant, left);
        }
        true
    }

    /// Requests waiting for `tenant`.
    pub fn len(&self, tenant: &str) -> usize {
        self.lock().tenants.get(tenant).map_or(0, VecDeque::len)
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.lock().tenants.is_empty()
    }

    /// Stops the queue: waiting workers get `None`, waiting callers hear the frontend
    /// stopped, new requests are refused.
    pub fn close(&self) {
        {
            let mut s = self.lock();
            s.closed = true;
            s.rotation.clear();
            for (t, _) in s.tenants.drain() {
                self.metrics.forget(&t);
            }
        }
        self.work.notify_waiters();
    }

    /// Counts a connected worker for as long as the guard lives.
    pub fn worker_connected(self: &Arc<Self>) -> WorkerGuard {
        self.workers.fetch_add(1, Ordering::Relaxed);
        self.metrics.connected_workers.inc();
        WorkerGuard(Arc::clone(self))
    }

    /// Workers connected now (in-process ones included).
    pub fn workers(&self) -> u64 {
        self.workers.load(Ordering::Relaxed)
    }

    pub(crate) fn metrics(&self) -> &QueueMetrics {
        &self.metrics
    }
}

/// A connected worker (see [`Queue::worker_connected`]).
pub struct WorkerGuard(Arc<Queue>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connected_workers.dec();
    }
}

/// A queued request's claim on its answer.
pub struct Ticket {
    queue: Arc<Queue>,
    tenant: Arc<str>,
    id: u64,
    rx: Option<oneshot::Receiver<Reply>>,
}

impl Ticket {
    /// The answer; `Err(Closed)` when the frontend stopped before one came.
    pub async fn answer(&mut self) -> Result<Reply, QueueError> {
        match self.rx.as_mut() {
            Some(rx) => {
                let r = rx.await.map_err(|_| QueueError::Closed);
                self.rx = None;
                r
            }
            None => Err(QueueError::Closed),
        }
    }
}

impl Ticket {
    /// Gives up on the answer: takes the request out of the queue if no worker has it yet
    /// (a worker that has it finds nobody waiting). Whether it was still queued.
    fn withdraw(&mut self) -> bool {
        self.rx.take().is_some() && self.queue.remove(&self.tenant, self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Unanswered and still queued: nobody waits for it any more.
        if self.withdraw() {
            self.queue.metrics.discarded("cancelled");
        }
    }
}

/// The pipeline's end when queriers pull work: each request waits in the [`Queue`] for a
/// worker, at most `timeout` in all (then 504).
pub struct QueueDownstream {
    queue: Arc<Queue>,
    timeout: Duration,
}

impl QueueDownstream {
    /// `timeout` should exceed the querier's own query timeout, so a slow query is reported
    /// by the querier and only a request stuck in the queue gets the frontend's 504.
    pub fn new(queue: Arc<Queue>, timeout: Duration) -> Self {
        Self { queue, timeout }
    }
}

#[async_trait]
impl Downstream for QueueDownstream {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError> {
        let tenant = req
            .headers
            .get("x-scope-orgid")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .unwrap_or(NO_TENANT)
            .to_string();
        let mut ticket = match self.queue.enqueue(&tenant, req) {
            Ok(t) => t,
            Err(e @ QueueError::TooManyOutstanding { .. }) => {
                tracing::debug!(tenant, "query refused: queue full");
                return Ok(error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    &e.to_string(),
                ));
            }
            Err(e @ QueueError::Closed) => return Err(DownstreamError::Transport(e.to_string())),
        };
        match tokio::time::timeout(self.timeout, ticket.answer()).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => Err(DownstreamError::Transport(e.to_string())),
            Err(_) => {
                ticket.withdraw();
                self.queue.metrics().discarded("timeout");
                tracing::debug!(tenant, "query timed out in the query-frontend's queue");
                Ok(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    &format!(
                        "the query waited longer than {:?} in the query-frontend for a querier (queue and run time); the queriers are busy or gone",
                        self.timeout
                    ),
                ))
            }
        }
    }
}

/// A Prometheus API error answer made by the frontend itself.
pub(crate) fn error_response(
    status: StatusCode,
    error_type: &str,
    message: &str,
) -> DownstreamResponse {
    let body = serde_json::json!({
        "status": "error",
        "errorType": error_type,
        "error": message,
    });
    DownstreamResponse {
        status,
        content_type: Some(HeaderValue::from_static("application/json")),
        body: body.to_string().into(),
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
