//! The process' metric registry and the request-latency histogram every route reports to.
//!
//! Every component's metrics follow one idiom: a struct built from the registry,
//! `FooMetrics::new(&Registry) -> prometheus::Result<Self>`, which creates and registers each
//! metric once; the component holds (or shares) that struct and never registers anything
//! later or globally. A failed registration is a wiring bug (two components, or one built
//! twice, on one registry) and surfaces as an error at startup. Names are
//! `norn_<component>_<what>_<unit>`; the process-wide ones here keep their older names
//! (`norn_request_duration_seconds`, `norn_discarded_*_total`), which dashboards use.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The registry `/metrics` serves, plus the metrics the harness itself records.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub request_duration: HistogramVec,
    /// Samples refused anywhere on the write path, by tenant and reason. One counter for the
    /// whole process because the distributor and the ingester both refuse samples.
    pub discarded_samples: IntCounterVec,
    /// Metadata entries refused anywhere on the write path, by tenant and reason (the
    /// distributor: too long, rate limited; the ingester: per-user and per-metric limits).
    pub discarded_metadata: IntCounterVec,
    /// HTTP connections open now.
    pub http_open_connections: IntGauge,
    /// HTTP connections closed by the server's idle or header timeout, by `kind`.
    pub http_connection_timeouts: IntCounterVec,
}

impl Metrics {
    /// A fresh registry with the harness' metrics on it.
    pub fn new() -> Arc<Self> {
        Self::with_registry(Registry::new())
            .expect("a fresh registry holds none of the harness' metrics yet")
    }

    /// The harness' metrics, registered on `registry`, which `/metrics` then serves.
    pub fn with_registry(registry: Registry) -> prometheus::Result<Arc<Self>> {
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_request_duration_seconds",
                "Time spent serving HTTP requests, by route, method and status code.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["method", "route", "status_code"],
        )?;
        let discarded_samples = IntCounterVec::new(
            Opts::new(
                "norn_discarded_samples_total",
                "Samples refused, by tenant and reason.",
            ),
            &["tenant", "reason"],
        )?;
        let discarded_metadata = IntCounterVec::new(
            Opts::new(
                "norn_discarded_metadata_total",
                "Metadata entries refused, by tenant and reason.",
            ),
            &["tenant", "reason"],
        )?;
        let http_open_connections = IntGauge::new(
            "norn_http_open_connections",
            "HTTP connections open now (bounded by -server.http-conn-limit when set).",
        )?;
        let http_connection_timeouts = IntCounterVec::new(
            Opts::new(
                "norn_http_connection_timeouts_total",
                "HTTP connections the server closed because they were idle too long (kind=idle) or sent their headers too slowly (kind=header).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(discarded_samples.clone()))?;
        registry.register(Box::new(discarded_metadata.clone()))?;
        registry.register(Box::new(http_open_connections.clone()))?;
        registry.register(Box::new(http_connection_timeouts.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(ProcessCollector::new()?))?;
        Ok(Arc::new(Self {
            registry,
            request_duration,
            discarded_samples,
            discarded_metadata,
            http_open_connections,
            http_connection_timeouts,
        }))
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` and
/// `process_start_time_seconds`, read from /proc (the prometheus crate's own collector needs
/// a feature that pulls in more dependencies than these four numbers are worth).
#[cfg(target_os = "linux")]
struct ProcessCollector {
    descs: Vec<prometheus::core::Desc>,
    cpu: prometheus::Counter,
    rss: prometheus::Gauge,
    fds: prometheus::Gauge,
    start: prometheus::Gauge,
}

#[cfg(target_os = "linux")]
impl ProcessCollector {
    fn new() -> prometheus::Result<Self> {
        let cpu = prometheus::Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )?;
        let rss = prometheus::Gauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let fds = prometheus::Gauge::new("process_open_fds", "Number of open file descriptors.")?;
        let start = prometheus::Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )?;
        start.set(norn_model::now_ms() as f64 / 1000.0);
        let descs = [cpu.desc(), rss.desc(), fds.desc(), start.desc()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        Ok(Self {
            descs,
            cpu,
            rss,
            fds,
            start,
        })
    }
}

#[cfg(target_os = "linux")]
use prometheus::core::Collector;

#[cfg(target_os = "linux")]
impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let ticks = 100.0; // USER_HZ on Linux
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; utime and stime are 14th and 15th.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() > 13 {
                    let total =
                        f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
                    let secs = total / ticks;
                    let cur = self.cpu.get();
                    if secs > cur {
                        self.cpu.inc_by(secs - cur);
                    }
                }
            }
        }
        if let Some(kb) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
        {
            self.rss.set(kb * 1024.0);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as f64);
        }
        let mut out = Vec::new();
        out.extend(self.cpu.collect());
        out.extend(self.rss.collect());
        out.extend(self.fds.collect());
        out.extend(self.start.collect());
        out
    }
}
