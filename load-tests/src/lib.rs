//! Load generator, continuous correctness tester and benchmark harness for Norn.
//!
//! * [`encode`]: a hand-written remote-write 1.0 protobuf encoder with reused buffers;
//! * [`series`]: a deterministic node_exporter / kube-state-metrics-like series generator;
//! * [`write`]: the remote-write load (`norn-loadgen write`);
//! * [`query`]: the PromQL query mix (`norn-loadgen query`);
//! * [`continuous`]: the write-then-read-back checker (`norn-continuous-test`);
//! * [`promapi`], [`http`], [`stats`]: shared plumbing (durations on the command line are
//!   parsed by `norn_model::parse_duration`, the spelling Norn's own flags take).
//!
//! The same tools drive Norn, Prometheus and VictoriaMetrics: every URL is an option.

pub mod continuous;
pub mod encode;
pub mod http;
pub mod promapi;
pub mod query;
pub mod series;
pub mod stats;
pub mod write;

/// Parses a time given as unix seconds (`1700000000`, `1700000000.5`) or `now`, into ms.
pub fn parse_time_ms(s: &str) -> Result<i64, String> {
    if s == "now" {
        return Ok(now_ms());
    }
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("invalid time {s:?}: expected unix seconds or `now`"))?;
    if !secs.is_finite() {
        return Err(format!("invalid time {s:?}"));
    }
    Ok((secs * 1000.0).round() as i64)
}

pub use norn_model::now_ms;
