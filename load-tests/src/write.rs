//! The remote-write load: workers that generate, encode and push series to a receiver.
//!
//! Each tenant's series are split into `concurrency` contiguous shards, one worker (task) per
//! shard, one request in flight per worker. A series therefore only ever travels through one
//! worker, so its samples arrive in timestamp order even with many requests in parallel — the
//! spec requires it and receivers without out-of-order support reject the rest.
//!
//! Two modes:
//! * **backfill**: intervals `0..n` with timestamps ending at `end`, sent as fast as possible (or
//!   at `--rate`), optionally several consecutive samples per series in one request;
//! * **live**: interval `k` is sent when the wall clock reaches `start + k · interval`, like a
//!   Prometheus scraping every interval.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::encode::{Sample, WriteRequestEncoder};
use crate::http::{USER_AGENT, classify_error, retryable};
use crate::series::Generator;
use crate::stats::{ErrorCounts, format_errors};

/// What to send and how.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// Remote-write endpoint, e.g. `http://127.0.0.1:8080/api/v1/push`.
    pub url: String,
    /// Tenants (`X-Scope-OrgID`); each gets the full series set. Empty: no header.
    pub tenants: Vec<String>,
    /// Intervals to send (backfill: all of them; live: until done or deadline).
    pub intervals: u64,
    /// Samples per request (upper bound).
    pub samples_per_request: usize,
    /// Consecutive intervals of one series per request (backfill only; 1 in live mode).
    pub samples_per_series: usize,
    /// Workers per tenant.
    pub concurrency: usize,
    /// Target samples/s over all workers; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Live (real-time) mode.
    pub live: bool,
    /// Hard bound on wall time.
    pub max_duration: Option<Duration>,
    /// Progress line period; `None` = quiet.
    pub progress_every: Option<Duration>,
    /// Retries of a retryable failure (5xx, 429, transport) before the request counts as lost.
    pub retries: u32,
}

/// Totals of a run.
#[derive(Debug, Clone, Default)]
pub struct WriteSummary {
    /// Samples acknowledged with 2xx.
    pub samples_sent: u64,
    /// Samples in requests that finally failed.
    pub samples_failed: u64,
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// Failed attempts by status code or transport failure class.
    pub errors: ErrorCounts,
    /// Wall time.
    pub elapsed: Duration,
    /// True when the deadline stopped the run before every interval was sent.
    pub truncated: bool,
}

impl WriteSummary {
    /// Acknowledged samples per second.
    pub fn samples_per_second(&self) -> f64 {
        self.samples_sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary as a JSON object (for scripts such as `load-tests/bench`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "samples_sent": self.samples_sent,
            "samples_failed": self.samples_failed,
            "requests": self.requests,
            "errors": self.errors,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "samples_per_second": self.samples_per_second(),
            "truncated": self.truncated,
        })
    }
}

impl std::fmt::Display for WriteSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "samples sent: {}  failed: {}  requests: {}  errors: {}  elapsed: {:.2}s  samples/s: {:.0}{}",
            self.samples_sent,
            self.samples_failed,
            self.requests,
            format_errors(&self.errors),
            self.elapsed.as_secs_f64(),
            self.samples_per_second(),
            if self.truncated {
                "  (stopped by --duration before the last interval)"
            } else {
                ""
            }
        )
    }
}

#[derive(Default)]
struct Counters {
    samples_sent: AtomicU64,
    samples_failed: AtomicU64,
    requests: AtomicU64,
    errors: Mutex<ErrorCounts>,
    truncated: AtomicBool,
}

impl Counters {
    fn error(&self, key: &str) -> u64 {
        // Poisoning only happens if a thread panicked while holding the lock; the map is still
        // usable for counting.
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let n = errors.entry(key.to_string()).or_default();
        *n += 1;
        *n
    }

    fn errors(&self) -> ErrorCounts {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Runs the write load to completion (or to `max_duration`) and returns the totals.
pub async fn run(
    client: reqwest::Client,
    generator: Arc<Generator>,
    cfg: WriteConfig,
) -> WriteSummary {
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = cfg.max_duration.map(|d| started + d);
    let tenants: Vec<Option<String>> = if cfg.tenants.is_empty() {
        vec![None]
    } else {
        cfg.tenants.iter().cloned().map(Some).collect()
    };
    let concurrency = cfg.concurrency.max(1);
    let workers_total = tenants.len() * concurrency;
    let series = generator.config().series;

    let mut handles = Vec::with_capacity(workers_total);
    for tenant in &tenants {
        for w in 0..concurrency {
            let lo = series * w / concurrency;
            let hi = series * (w + 1) / concurrency;
            if lo == hi {
                continue;
            }
            let worker = Worker {
                client: client.clone(),
                generator: Arc::clone(&generator),
                cfg: cfg.clone(),
                tenant: tenant.clone(),
                slots: lo..hi,
                counters: Arc::clone(&counters),
                started,
                deadline,
                rate: cfg.rate.map(|r| r / workers_total as f64),
            };
            handles.push(tokio::spawn(worker.run()));
        }
    }

    let progress = cfg.progress_every.map(|every| {
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut last = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let sent = counters.samples_sent.load(Ordering::Relaxed);
                let rate = (sent - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
                last = (now, sent);
                eprintln!(
                    "[{:>7.1}s] samples {:>12}  {:>10.0} samples/s  requests {:>9}  errors: {}",
                    (now - started).as_secs_f64(),
                    sent,
                    rate,
                    counters.requests.load(Ordering::Relaxed),
                    format_errors(&counters.errors())
                );
            }
        })
    });

    for h in handles {
        if let Err(e) = h.await {
            // A panicking worker is a bug in this tool; report it but keep the other figures.
            tracing::error!(error = %e, "write worker failed");
            counters.error("worker_panic");
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    WriteSummary {
        samples_sent: counters.samples_sent.load(Ordering::Relaxed),
        samples_failed: counters.samples_failed.load(Ordering::Relaxed),
        requests: counters.requests.load(Ordering::Relaxed),
        errors: counters.errors(),
        elapsed: started.elapsed(),
        truncated: counters.truncated.load(Ordering::Relaxed),
    }
}

struct Worker {
    client: reqwest::Client,
    generator: Arc<Generator>,
    cfg: WriteConfig,
    tenant: Option<String>,
    slots: std::ops::Range<usize>,
    counters: Arc<Counters>,
    started: Instant,
    deadline: Option<Instant>,
    /// This worker's share of the target rate.
    rate: Option<f64>,
}

impl Worker {
    async fn run(self) {
        let g = &*self.generator;
        let per_series = if self.cfg.live {
            1
        } else {
            self.cfg.samples_per_series.max(1)
        };
        let series_per_request = (self.cfg.samples_per_request / per_series).max(1);
        let interval = Duration::from_millis(g.config().interval_ms.max(1) as u64);
        // Encoded label blocks, one per slot, with the generation they were encoded for; only
        // churned series are re-encoded.
        let mut labels: Vec<(u64, Vec<u8>)> = self
            .slots
            .clone()
            .map(|s| (0, g.encoded_labels(s, 0)))
            .collect();
        let mut enc = WriteRequestEncoder::new();
        let mut samples: Vec<Sample> = Vec::with_capacity(per_series);
        let mut sent_here: u64 = 0;

        let mut k = 0;
        while k < self.cfg.intervals {
            let block_end = (k + per_series as u64).min(self.cfg.intervals);
            if self.cfg.live {
                let due = self.started + interval * k as u32;
                if self.past_deadline(due) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            for chunk_lo in (0..labels.len()).step_by(series_per_request) {
                if self.past_deadline(Instant::now()) {
                    self.counters.truncated.store(true, Ordering::Relaxed);
                    return;
                }
                let chunk_hi = (chunk_lo + series_per_request).min(labels.len());
                enc.clear();
                for (i, cached) in labels.iter_mut().enumerate().take(chunk_hi).skip(chunk_lo) {
                    let slot = self.slots.start + i;
                    // Group the block's intervals by generation: a series replaced mid-block
                    // becomes a new TimeSeries entry with its new labels.
                    let mut j = k;
                    while j < block_end {
                        let generation = g.generation(slot, j);
                        if generation != cached.0 {
                            *cached = (generation, g.encoded_labels(slot, generation));
                        }
                        samples.clear();
                        while j < block_end && g.generation(slot, j) == generation {
                            samples.push(Sample {
                                value: g.value(slot, generation, j),
                                timestamp_ms: g.timestamp_ms(j),
                            });
                            j += 1;
                        }
                        enc.push_series(&cached.1, &samples);
                    }
                }
                let n = enc.samples() as u64;
                match enc.compress() {
                    Ok(body) => self.send(body, n).await,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot compress request");
                        self.counters.error("encode");
                        continue;
                    }
                }
                sent_here += n;
                self.pace(sent_here).await;
            }
            k = block_end;
        }
        if self.cfg.live && k < self.cfg.intervals {
            self.counters.truncated.store(true, Ordering::Relaxed);
        }
    }

    fn past_deadline(&self, t: Instant) -> bool {
        self.deadline.is_some_and(|d| t >= d)
    }

    /// Sleeps while this worker is ahead of its share of `--rate`.
    async fn pace(&self, sent: u64) {
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(sent as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
    }

    /// Sends one request, retrying retryable failures with exponential backoff.
    async fn send(&self, body: &[u8], samples: u64) {
        let mut backoff = Duration::from_millis(30);
        for attempt in 0..=self.cfg.retries {
            let mut req = self
                .client
                .post(&self.cfg.url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .header("User-Agent", USER_AGENT)
                .body(body.to_vec());
            if let Some(t) = &self.tenant {
                req = req.header("X-Scope-OrgID", t);
            }
            if attempt > 0 {
                req = req.header("Retry-Attempt", attempt.to_string());
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let retry = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.counters
                        .samples_sent
                        .fetch_add(samples, Ordering::Relaxed);
                    return;
                }
                Ok(resp) => {
                    let status = resp.status();
                    let seen = self.counters.error(status.as_str());
                    if seen <= 3 {
                        // The first few bodies of each status say why; after that they only add noise.
                        let text = resp.text().await.unwrap_or_default();
                        tracing::warn!(status = status.as_u16(), body = %text.trim(), url = %self.cfg.url, "remote write rejected");
                    }
                    retryable(status)
                }
                Err(e) => {
                    let class = classify_error(&e);
                    if self.counters.error(class) <= 3 {
                        tracing::warn!(error = %e, url = %self.cfg.url, "remote write failed");
                    }
                    true
                }
            };
            if !retry || attempt == self.cfg.retries || self.past_deadline(Instant::now() + backoff)
            {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.counters
            .samples_failed
            .fetch_add(samples, Ordering::Relaxed);
    }
}
