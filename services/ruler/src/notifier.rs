//! The notifier: delivers the alerts that evaluation hands over ([`AlertSink`]) to every
//! configured Alertmanager's API v2 (`POST <url>/api/v2/alerts`), as Prometheus' notifier does
//! and as Mimir runs it: one queue and one sender per tenant.
//!
//! * **Never blocks evaluation.** [`AlertSink::send`] appends to the tenant's bounded queue
//!   (`notification_queue_capacity`) and returns. When the queue is full the *oldest* alerts are
//!   dropped and counted (`norn_ruler_notifications_dropped_total`): a firing alert is re-sent
//!   every resend delay anyway, so the newest state is the one worth keeping.
//! * **Tenants are isolated.** Each tenant has its own sender task, started at its first alert,
//!   so a tenant whose Alertmanager is slow (or whose rules flood its queue) only delays its own
//!   alerts. Every post carries `X-Scope-OrgID: <tenant>`, which Mimir's multi-tenant
//!   Alertmanager needs and a plain Alertmanager ignores.
//! * **Batches of at most [`MAX_BATCH_SIZE`] alerts** (Prometheus' `maxBatchSize`), posted to
//!   every Alertmanager at once, each post bounded by `notification_timeout`. A batch counts as
//!   delivered when at least one Alertmanager took it (a 2xx); when none did, its alerts are
//!   counted as dropped. Failures are counted per Alertmanager and logged at warn.
//! * **No retries.** As in Prometheus, a failed batch is not sent again: the rules re-send
//!   firing alerts every resend delay, and a resolved alert is re-sent for a while after it
//!   resolved, so the next evaluation repairs a lost post without a retry storm against an
//!   Alertmanager that is already struggling.
//! * **Idle senders are torn down.** A sender that had nothing to send for
//!   [`IDLE_TEARDOWN`] ends and removes its tenant's metric series, so tenants that stopped
//!   alerting (or moved to another ruler) do not keep a task and series forever.
//! * **Shutdown** ([`Notifier::stop`]) lets a post in flight finish (within its timeout), then
//!   posts what is still queued — one attempt, all of it within one more
//!   `notification_timeout` — and counts what could not be posted as dropped. So a stop takes at
//!   most about twice the timeout, whatever the Alertmanagers do.
//!
//! Counting follows Prometheus: `sent` counts every alert posted to an Alertmanager whether or
//! not it took it, `errors` the alerts of failed posts, so `errors / sent` per Alertmanager is
//! the failure ratio the runbook alerts on.
//!
//! Not supported (Prometheus/Mimir have them): Alertmanager service discovery (`dnssrv+`
//! URLs are refused at startup), API v1, TLS or auth settings other than credentials in the URL
//! (`http://user:pass@am`, sent as basic auth and left out of labels and logs), alert
//! relabelling and external labels.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use norn_model::{Labels, TenantId};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{NotifierMetrics, RulerMetrics};
use crate::outbound::{AlertSink, OutgoingAlert};

/// Most alerts in one post (Prometheus' `maxBatchSize`).
pub const MAX_BATCH_SIZE: usize = 64;

/// How long a tenant's sender waits for alerts before it ends (and its series go). Longer than
/// any sensible resend delay, so a tenant with a firing alert keeps its sender.
pub const IDLE_TEARDOWN: Duration = Duration::from_secs(15 * 60);

/// Why the notifier could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("invalid ruler notifier configuration: {0}")]
    Config(String),
    #[error("building the Alertmanager HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the notifier must be created inside a tokio runtime")]
    NoRuntime,
}

pub type Result<T, E = NotifierError> = std::result::Result<T, E>;

/// The notifier's settings other than its Alertmanagers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Alerts queued per tenant; beyond it the oldest are dropped.
    pub queue_capacity: usize,
    /// Timeout of one post to one Alertmanager.
    pub timeout: Duration,
    /// How long an idle sender lives ([`IDLE_TEARDOWN`]; tests shorten it).
    pub idle_teardown: Duration,
    /// TLS of `https://` Alertmanagers (`--ruler.alertmanager-client.tls-*`): CA, client
    /// certificate. `None`: the system CA bundle and no client certificate.
    pub tls: Option<rustls::ClientConfig>,
}

/// Queues, batches and posts tenants' alerts to Alertmanager. Cheap to share (`Arc`).
pub struct Notifier {
    shared: Arc<Shared>,
}

/// One Alertmanager: the URL posted to, which is also its `alertmanager` metric label (as
/// Prometheus labels it).
struct Alertmanager {
    url: reqwest::Url,
    label: String,
}

struct Shared {
    alertmanagers: Vec<Alertmanager>,
    client: reqwest::Client,
    options: Options,
    metrics: Arc<RulerMetrics>,
    /// Where senders run: `send` may be called from any thread.
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
    /// Lock order: this map, then a queue's alerts. `send` pushes while holding the map, so a
    /// sender retiring (which removes itself under the map lock, after checking its queue is
    /// empty) can never strand an alert pushed concurrently.
    tenants: Mutex<HashMap<TenantId, Sender>>,
}

/// A tenant's queue and the task that empties it.
struct Sender {
    queue: Arc<TenantQueue>,
    task: Option<JoinHandle<()>>,
}

struct TenantQueue {
    tenant: TenantId,
    alerts: Mutex<VecDeque<OutgoingAlert>>,
    /// Signalled on every push; `Notify` keeps one permit, so a push while the sender is busy
    /// is seen when it next waits.
    more: Notify,
}

impl Notifier {
    /// The notifier of the ruler's configuration, or `None` when no Alertmanager is configured
    /// (`ruler.alertmanager-url` empty: notifications are off). Must be called inside the tokio
    /// runtime the senders are to run on. Starts no task until a tenant's first alert.
    pub fn new(config: &Config, metrics: Arc<RulerMetrics>) -> Result<Option<Arc<Notifier>>> {
        let urls = config.alertmanager_urls().map_err(NotifierError::Config)?;
        if urls.is_empty() {
            return Ok(None);
        }
        if config.notification_queue_capacity == 0 || config.notification_timeout.is_zero() {
            return Err(NotifierError::Config(
                "ruler.notification-queue-capacity and ruler.notification-timeout must be greater than 0"
                    .into(),
            ));
        }
        let tls = config
            .alertmanager_client
            .rustls_config(&[b"http/1.1"])
            .map_err(|e| NotifierError::Config(format!("ruler.alertmanager_client: {e}")))?;
        let options = Options {
            queue_capacity: config.notification_queue_capacity,
            timeout: config.notification_timeout,
            idle_teardown: IDLE_TEARDOWN,
            tls,
        };
        Self::start(urls, options, metrics).map(Some)
    }

    /// A notifier posting to `alertmanagers` (base URLs, a path prefix allowed).
    pub fn start(
        alertmanagers: Vec<reqwest::Url>,
        options: Options,
        metrics: Arc<RulerMetrics>,
    ) -> Result<Arc<Notifier>> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| NotifierError::NoRuntime)?;
        // No proxy from the environment: as Prometheus, which uses one only when configured;
        // an HTTP_PROXY meant for other traffic must not swallow alerts.
        let mut client = reqwest::Client::builder()
            .user_agent(concat!("norn-ruler/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if let Some(tls) = options.tls.clone() {
            client = client.use_preconfigured_tls(tls);
        }
        let client = client.build()?;
        let alertmanagers = alertmanagers
            .into_iter()
            .map(|base| {
                let url = api_url(base);
                Alertmanager {
                    label: without_credentials(&url),
                    url,
                }
            })
            .collect();
        Ok(Arc::new(Notifier {
            shared: Arc::new(Shared {
                alertmanagers,
                client,
                options,
                metrics,
                runtime,
                stop: CancellationToken::new(),
                tenants: Mutex::new(HashMap::new()),
            }),
        }))
    }

    /// The URLs alerts are posted to (`…/api/v2/alerts`), as the metrics label them.
    pub fn alertmanagers(&self) -> Vec<String> {
        self.shared
            .alertmanagers
            .iter()
            .map(|a| a.label.clone())
            .collect()
    }

    /// Whether [`Notifier::stop`] was called (alerts sent from then on are dropped).
    pub fn stopping(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// Tenants with a running sender.
    pub fn tenants(&self) -> usize {
        self.shared.tenants.lock().len()
    }

    /// Stops every sender: a post in flight finishes (within its timeout), then what is queued
    /// is posted once, within one more timeout; what is left is counted as dropped. Alerts sent
    /// after this are dropped and counted. Returns when every sender has ended.
    pub async fn stop(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            // Cancelled under the map lock, which `send` checks under: an alert is either
            // queued before the senders see the stop (and so drained) or refused.
            let mut tenants = self.shared.tenants.lock();
            self.shared.stop.cancel();
            tenants.values_mut().filter_map(|s| s.task.take()).collect()
        };
        // The senders bound themselves; this only guards against a post that ignores its
        // timeout (it cannot, but a stop must end).
        let deadline =
            tokio::time::Instant::now() + self.shared.options.timeout * 2 + Duration::from_secs(1);
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Notifier {
    /// Senders hold the shared state, not the notifier: without this, a notifier dropped
    /// unstopped would leave its senders running until they are idle.
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl AlertSink for Notifier {
    fn send(&self, tenant: &TenantId, alerts: Vec<OutgoingAlert>) {
        if alerts.is_empty() {
            return;
        }
        let shared = &self.shared;
        let metrics = &shared.metrics.notifications;
        let mut tenants = shared.tenants.lock();
        if shared.stop.is_cancelled() {
            metrics
                .dropped
                .with_label_values(&[tenant.as_str()])
                .inc_by(alerts.len() as u64);
            return;
        }
        let sender = tenants
            .entry(tenant.clone())
            .or_insert_with(|| Shared::start_sender(shared, tenant));
        sender
            .queue
            .push(alerts, shared.options.queue_capacity, metrics);
        sender.queue.more.notify_one();
    }
}

impl Shared {
    fn start_sender(self: &Arc<Self>, tenant: &TenantId) -> Sender {
        let metrics = &self.metrics.notifications;
        let t = tenant.as_str();
        metrics
            .queue_capacity
            .with_label_values(&[t])
            .set(self.options.queue_capacity as i64);
        metrics
            .alertmanagers_discovered
            .with_label_values(&[t])
            .set(self.alertmanagers.len() as i64);
        metrics.queue_length.with_label_values(&[t]).set(0);
        let queue = Arc::new(TenantQueue {
            tenant: tenant.clone(),
            alerts: Mutex::new(VecDeque::new()),
            more: Notify::new(),
        });
        let task = self.runtime.spawn(Arc::clone(self).run(Arc::clone(&queue)));
        Sender {
            queue,
            task: Some(task),
        }
    }

    /// One tenant's sender: waits for alerts, posts them in batches until the queue is empty,
    /// ends when idle or stopped.
    async fn run(self: Arc<Self>, queue: Arc<TenantQueue>) {
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = queue.more.notified() => {}
                _ = tokio::time::sleep(self.options.idle_teardown) => {
                    if self.retire(&queue) {
                        return;
                    }
                    continue;
                }
            }
            // A stop between batches leaves the rest to the bounded drain below.
            while !self.stop.is_cancelled() {
                let batch = queue.next_batch(&self.metrics.notifications);
                if batch.is_empty() {
                    break;
                }
                self.send_all(&queue.tenant, &batch).await;
            }
        }
        self.drain(&queue).await;
    }

    /// At stop: one attempt at what is queued, bounded by one timeout overall.
    async fn drain(&self, queue: &TenantQueue) {
        let metrics = &self.metrics.notifications;
        let _ = tokio::time::timeout(self.options.timeout, async {
            loop {
                let batch = queue.next_batch(metrics);
                if batch.is_empty() {
                    break;
                }
                self.send_all(&queue.tenant, &batch).await;
            }
        })
        .await;
        let left = {
            let mut alerts = queue.alerts.lock();
            let n = alerts.len();
            alerts.clear();
            n
        };
        let t = queue.tenant.as_str();
        metrics.queue_length.with_label_values(&[t]).set(0);
        if left > 0 {
            metrics.dropped.with_label_values(&[t]).inc_by(left as u64);
            tracing::warn!(tenant = t, count = left, "alerts not sent before shutdown");
        }
    }

    /// Removes an idle sender and its tenant's series, unless alerts arrived meanwhile.
    fn retire(&self, queue: &Arc<TenantQueue>) -> bool {
        let mut tenants = self.tenants.lock();
        if !queue.alerts.lock().is_empty() || self.stop.is_cancelled() {
            return false;
        }
        if let Some(s) = tenants.get(&queue.tenant)
            && Arc::ptr_eq(&s.queue, queue)
        {
            tenants.remove(&queue.tenant);
        }
        let labels: Vec<String> = self.alertmanagers.iter().map(|a| a.label.clone()).collect();
        self.metrics
            .notifications
            .remove_tenant(queue.tenant.as_str(), &labels);
        tracing::debug!(tenant = queue.tenant.as_str(), "idle alert sender ended");
        true
    }

    /// Posts one batch to every Alertmanager at once; counts it dropped if none took it.
    async fn send_all(&self, tenant: &TenantId, batch: &[OutgoingAlert]) {
        let metrics = &self.metrics.notifications;
        let t = tenant.as_str();
        let n = batch.len() as u64;
        let body = match encode(batch) {
            Ok(b) => b,
            Err(e) => {
                // Serialising strings cannot fail; if it ever does, say so and move on.
                tracing::warn!(tenant = t, error = %e, "encoding alerts failed");
                metrics.dropped.with_label_values(&[t]).inc_by(n);
                return;
            }
        };
        let posts = self.alertmanagers.iter().map(|am| {
            let body = body.clone();
            async move {
                let begin = Instant::now();
                let result = self.post(am, tenant, body).await;
                let labels = [t, am.label.as_str()];
                metrics
                    .latency
                    .with_label_values(&labels)
                    .observe(begin.elapsed().as_secs_f64());
                metrics.sent.with_label_values(&labels).inc_by(n);
                match result {
                    Ok(()) => true,
                    Err(e) => {
                        metrics.errors.with_label_values(&labels).inc_by(n);
                        tracing::warn!(
                            tenant = t,
                            alertmanager = %am.label,
                            count = n,
                            error = %e,
                            "sending alerts to Alertmanager failed"
                        );
                        false
                    }
                }
            }
        });
        let delivered = futures::future::join_all(posts)
            .await
            .into_iter()
            .any(|ok| ok);
        if !delivered {
            metrics.dropped.with_label_values(&[t]).inc_by(n);
        }
    }

    async fn post(&self, am: &Alertmanager, tenant: &TenantId, body: Bytes) -> Result<(), String> {
        let resp = self
            .client
            .post(am.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Scope-OrgID", tenant.as_str())
            .timeout(self.options.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // Alertmanager says why in the body (a bad label, an unknown tenant); keep it short.
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(256).collect();
        Err(format!("bad response status {status}: {}", text.trim()))
    }
}

impl TenantQueue {
    /// Appends, dropping the oldest alerts beyond `capacity` (Prometheus' order: the oldest of
    /// an oversized hand-over first, then the oldest queued).
    fn push(&self, mut alerts: Vec<OutgoingAlert>, capacity: usize, metrics: &NotifierMetrics) {
        let mut dropped = 0;
        if alerts.len() > capacity {
            dropped += alerts.len() - capacity;
            alerts.drain(..alerts.len() - capacity);
        }
        let mut queue = self.alerts.lock();
        let overflow = (queue.len() + alerts.len()).saturating_sub(capacity);
        if overflow > 0 {
            dropped += overflow;
            queue.drain(..overflow);
        }
        queue.extend(alerts);
        let t = self.tenant.as_str();
        metrics
            .queue_length
            .with_label_values(&[t])
            .set(queue.len() as i64);
        if dropped > 0 {
            metrics
                .dropped
                .with_label_values(&[t])
                .inc_by(dropped as u64);
            tracing::warn!(
                tenant = t,
                count = dropped,
                "alert notification queue full, oldest alerts dropped"
            );
        }
    }

    fn next_batch(&self, metrics: &NotifierMetrics) -> Vec<OutgoingAlert> {
        let mut queue = self.alerts.lock();
        let n = queue.len().min(MAX_BATCH_SIZE);
        let batch: Vec<OutgoingAlert> = queue.drain(..n).collect();
        metrics
            .queue_length
            .with_label_values(&[self.tenant.as_str()])
            .set(queue.len() as i64);
        batch
    }
}

/// `<base>/api/v2/alerts`, keeping the base's path prefix (`http://mimir/alertmanager`).
fn api_url(mut base: reqwest::Url) -> reqwest::Url {
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    base.set_path(&path);
    base
}

/// The URL as metrics and logs show it: credentials (`http://user:pass@am`, which reqwest
/// sends as basic auth) left out.
fn without_credentials(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    // Only fails for URLs that cannot have credentials, which then have none.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// reqwest's error with its causes ("error sending request: … : connection refused"), which
/// its `Display` alone leaves out.
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_timeout() && !s.contains("timed out") {
        s.push_str(" (timed out)");
    }
    s
}

/// Alertmanager API v2 `postableAlert`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert<'a> {
    labels: LabelMap<'a>,
    annotations: LabelMap<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    #[serde(rename = "generatorURL", skip_serializing_if = "str::is_empty")]
    generator_url: &'a str,
}

/// Labels as a JSON object (Alertmanager's `LabelSet`).
struct LabelMap<'a>(&'a Labels);

impl Serialize for LabelMap<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|l| (&l.name, &l.value)))
    }
}

/// Unix ms as RFC 3339 in UTC (`2026-12-05T21:20:00.123Z`); `None` for 0 (unset), which
/// Alertmanager fills in itself (`startsAt`: now; `endsAt`: now + its resolve timeout).
fn rfc3339(ms: i64) -> Option<String> {
    if ms == 0 {
        return None;
    }
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The JSON body of one post.
fn encode(batch: &[OutgoingAlert]) -> serde_json::Result<Bytes> {
    let alerts: Vec<PostableAlert<'_>> = batch
        .iter()
        .map(|a| PostableAlert {
            labels: LabelMap(&a.labels),
            annotations: LabelMap(&a.annotations),
            starts_at: rfc3339(a.starts_at_ms),
            ends_at: rfc3339(a.ends_at_ms),
            generator_url: &a.generator_url,
        })
        .collect();
    serde_json::to_vec(&alerts).map(Bytes::from)
}

#[cfg(test)]
#[path = "notifier_tests.rs"]
mod tests;
