//! A WAL segment of arbitrary bytes, replayed the way an ingester restarts: the bytes are
//! written as segment 00000000 of a head directory and `Head::open` replays it (framing,
//! snappy, record decoding, series and samples into the head, repair of a damaged tail),
//! then reads what it replayed. One temporary directory per process, rewritten per input, and
//! one set of head metrics per process (registering a head's metrics took a tenth of each
//! execution; an ingester registers them once per tenant, not per replay).
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use norn_model::Matcher;
use norn_tsdb::{FsyncPolicy, Head, HeadOptions, TsdbMetrics};

fn base() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("head");
        (t, p)
    })
    .1
}

fn metrics() -> Arc<TsdbMetrics> {
    static METRICS: OnceLock<Arc<TsdbMetrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| Arc::new(TsdbMetrics::unregistered()))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let dir = base();
    let _ = std::fs::remove_dir_all(dir);
    let wal = dir.join("wal");
    std::fs::create_dir_all(&wal).expect("create wal dir");
    std::fs::write(wal.join("00000000"), data).expect("write segment");
    let mut opts = HeadOptions::new(dir);
    opts.fsync = FsyncPolicy::Never;
    opts.metrics = metrics();
    opts.wal_segment_size = 64 << 10;
    if let Ok((head, _stats)) = Head::open(opts) {
        let all = [Matcher::new(norn_model::MatchType::Regex, "__name__", ".*").expect("regex")];
        let _ = head.select(i64::MIN, i64::MAX, &all);
    }
});
