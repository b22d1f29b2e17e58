//! The head through the `Queryable` interface the PromQL engine uses, across a restart.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use norn_model::{Labels, MatchType, Matcher, Queryable, Sample, WriteBatch};
use norn_tsdb::{AppendLimits, Head, HeadOptions, HeadQueryable};

/// The head's futures never wait, so polling once completes them.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("head futures never wait"),
    }
}

fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> (Labels, Vec<Sample>) {
    (
        Labels::from_pairs(pairs.iter().copied()),
        samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
    )
}

#[test]
fn queryable_reads_what_was_written_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let batch = WriteBatch::from_series(&[
        series(
            &[
                ("__name__", "http_requests_total"),
                ("code", "200"),
                ("job", "api"),
            ],
            &[(1000, 1.0), (16_000, 2.0)],
        ),
        series(
            &[
                ("__name__", "http_requests_total"),
                ("code", "500"),
                ("job", "api"),
            ],
            &[(1000, 0.0)],
        ),
        series(&[("__name__", "up"), ("job", "api")], &[(1000, 1.0)]),
    ]);
    {
        let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
        let out = head.append(&batch, &AppendLimits::default()).unwrap();
        assert_eq!(out.appended, 4);
    }
    let (head, stats) = Head::open(HeadOptions::new(dir.path())).unwrap();
    assert_eq!(stats.samples, 4);
    let q = HeadQueryable(Arc::new(head));

    let m = [
        Matcher::equal("__name__", "http_requests_total"),
        Matcher::new(MatchType::Regex, "code", "2..").unwrap(),
    ];
    let got = ready(q.select(0, 20_000, &m)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].samples,
        [Sample::new(1000, 1.0), Sample::new(16_000, 2.0)]
    );

    let names = ready(q.label_names(0, 20_000, &[])).unwrap();
    assert_eq!(names, ["__name__", "code", "job"]);
    let values = ready(q.label_values("code", 0, 20_000, &[Matcher::equal("job", "api")])).unwrap();
    assert_eq!(values, ["200", "500"]);
    let metrics = ready(q.label_values("__name__", 0, 20_000, &[])).unwrap();
    assert_eq!(metrics, ["http_requests_total", "up"]);
}
