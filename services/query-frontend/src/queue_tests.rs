//! The queue's rules without a network: round robin over tenants, FIFO within one, the
//! per-tenant limit, cancellation, re-queuing, closing.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use prometheus::Registry;

use super::*;
use crate::downstream::{Downstream, DownstreamRequest, DownstreamResponse};

fn queue(limit: usize) -> Arc<Queue> {
    Queue::new(limit, QueueMetrics::new(&Registry::new()).unwrap())
}

fn req(tenant: &str, n: usize) -> DownstreamRequest {
    let mut headers = HeaderMap::new();
    headers.insert("x-scope-orgid", HeaderValue::from_str(tenant).unwrap());
    DownstreamRequest {
        method: Method::GET,
        path_and_query: format!("/q/{tenant}/{n}"),
        headers,
        body: Default::default(),
    }
}

/// Takes what waits now, in order, as `tenant/n` names.
fn drain(q: &Queue) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(p)) = q.try_next() {
        out.push(
            p.request
                .path_and_query
                .trim_start_matches("/q/")
                .to_string(),
        );
    }
    out
}

#[test]
fn tenants_take_turns_and_each_is_fifo() {
    let q = queue(100);
    let mut tickets = Vec::new();
    for n in 0..3 {
        tickets.push(q.enqueue("a", req("a", n)).unwrap());
    }
    tickets.push(q.enqueue("b", req("b", 0)).unwrap());
    tickets.push(q.enqueue("b", req("b", 1)).unwrap());
    tickets.push(q.enqueue("c", req("c", 0)).unwrap());
    assert_eq!(
        drain(&q),
        ["a/0", "b/0", "c/0", "a/1", "b/1", "a/2"],
        "one request per tenant in turn, each tenant's in arrival order"
    );
    assert!(q.is_empty());
}

#[test]
fn a_new_tenant_joins_at_the_end_of_the_rotation() {
    let q = queue(100);
    let _t: Vec<_> = (0..3)
        .flat_map(|n| {
            [
                q.enqueue("a", req("a", n)).unwrap(),
                q.enqueue("b", req("b", n)).unwrap(),
            ]
        })
        .collect();
    let first = q.try_next().unwrap().unwrap();
    assert_eq!(first.request.path_and_query, "/q/a/0");
    // c, arriving now, comes after every tenant already waiting: b, then a.
    let _c = q.enqueue("c", req("c", 0)).unwrap();
    assert_eq!(drain(&q), ["b/0", "a/1", "c/0", "b/1", "a/2", "b/2"]);
}

#[test]
fn the_limit_is_per_tenant_and_frees_as_requests_leave() {
    let q = queue(2);
    let _a0 = q.enqueue("a", req("a", 0)).unwrap();
    let _a1 = q.enqueue("a", req("a", 1)).unwrap();
    let err = q.enqueue("a", req("a", 2)).err().unwrap();
    assert_eq!(err, QueueError::TooManyOutstanding { limit: 2 });
    assert!(
        err.to_string()
            .contains("-query-frontend.max-outstanding-requests-per-tenant"),
        "{err}"
    );
    // Another tenant is not affected.
    let _b0 = q.enqueue("b", req("b", 0)).unwrap();
    // A request taken by a worker no longer counts.
    let taken = q.try_next().unwrap().unwrap();
    assert_eq!(taken.tenant(), "a");
    let _a2 = q.enqueue("a", req("a", 2)).unwrap();
    assert_eq!(q.len("a"), 2);
    assert_eq!(
        q.metrics
            .discarded
            .with_label_values(&["too_many_outstanding"])
            .get(),
        1
    );
}

#[test]
fn a_dropped_ticket_leaves_the_queue() {
    let q = queue(10);
    let a0 = q.enqueue("a", req("a", 0)).unwrap();
    let _a1 = q.enqueue("a", req("a", 1)).unwrap();
    let b0 = q.enqueue("b", req("b", 0)).unwrap();
    drop(a0);
    drop(b0);
    assert_eq!(q.len("a"), 1);
    assert_eq!(q.len("b"), 0);
    assert_eq!(
        q.metrics.discarded.with_label_values(&["cancelled"]).get(),
        2
    );
    assert_eq!(drain(&q), ["a/1"]);
    // The emptied tenant's gauge is gone, not left at zero.
    assert!(
        q.metrics
            .queue_length
            .get_metric_with_label_values(&["b"])
            .map(|g| g.get())
            .unwrap_or(0)
            == 0
    );
}

#[tokio::test]
async fn a_requeued_request_goes_first_and_fails_after_the_limit() {
    let q = queue(10);
    let mut t0 = q.enqueue("a", req("a", 0)).unwrap();
    let _t1 = q.enqueue("a", req("a", 1)).unwrap();
    for round in 0..MAX_REQUEUES {
        let p = q.try_next().unwrap().unwrap();
        assert_eq!(p.request.path_and_query, "/q/a/0", "round {round}");
        q.requeue(p, true);
    }
    assert_eq!(q.metrics.requeued.get(), u64::from(MAX_REQUEUES));
    let p = q.try_next().unwrap().unwrap();
    q.requeue(p, true);
    let answer = t0.answer().await.unwrap();
    assert!(answer.is_err(), "gave up after {MAX_REQUEUES} re-queues");
    assert_eq!(drain(&q), ["a/1"]);
    // One that never reached a querier does not count.
    let _t2 = q.enqueue("a", req("a", 2)).unwrap();
    for _ in 0..MAX_REQUEUES + 2 {
        let p = q.try_next().unwrap().unwrap();
        q.requeue(p, false);
    }
    assert_eq!(q.len("a"), 1);
}

#[tokio::test]
async fn a_waiting_worker_wakes_for_new_work_and_for_close() {
    let q = queue(10);
    let worker = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.next().await.map(|p| p.request.path_and_query.clone()) })
    };
    tokio::task::yield_now().await;
    let _t = q.enqueue("a", req("a", 0)).unwrap();
    assert_eq!(worker.await.unwrap().as_deref(), Some("/q/a/0"));

    let idle = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.next().await.is_none() })
    };
    tokio::task::yield_now().await;
    q.close();
    assert!(idle.await.unwrap(), "closing wakes idle workers with None");
    assert_eq!(q.enqueue("a", req("a", 1)).err(), Some(QueueError::Closed));
}

#[tokio::test]
async fn closing_answers_waiting_callers() {
    let q = queue(10);
    let mut t = q.enqueue("a", req("a", 0)).unwrap();
    q.close();
    assert_eq!(t.answer().await.err(), Some(QueueError::Closed));
}

/// A querier in the test: answers each request with its path.
struct Echo;

#[async_trait::async_trait]
impl Downstream for Echo {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError> {
        Ok(DownstreamResponse {
            status: StatusCode::OK,
            content_type: None,
            body: req.path_and_query.into(),
        })
    }
}

#[tokio::test]
async fn the_downstream_answers_through_local_workers_and_refuses_beyond_the_limit() {
    let q = queue(1);
    let d = QueueDownstream::new(Arc::clone(&q), Duration::from_secs(30));
    // No worker yet: the first request waits, the second of the same tenant is refused.
    let first = {
        let d = QueueDownstream::new(Arc::clone(&q), Duration::from_secs(30));
        tokio::spawn(async move { d.call(req("a", 0)).await })
    };
    while q.len("a") == 0 {
        tokio::task::yield_now().await;
    }
    let refused = d.call(req("a", 1)).await.unwrap();
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        String::from_utf8_lossy(&refused.body).contains("max_outstanding_per_tenant"),
        "{:?}",
        refused.body
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let workers = crate::worker::spawn_local(&q, Arc::new(Echo), 2, stop.clone());
    assert_eq!(first.await.unwrap().unwrap().body, "/q/a/0");
    assert_eq!(d.call(req("b", 7)).await.unwrap().body, "/q/b/7");
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(q.workers(), 0);
}

#[tokio::test]
async fn a_request_nobody_takes_answers_504_and_leaves_the_queue() {
    let q = queue(10);
    let d = QueueDownstream::new(Arc::clone(&q), Duration::from_millis(50));
    let r = d.call(req("a", 0)).await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(String::from_utf8_lossy(&r.body).contains("\"errorType\":\"timeout\""));
    assert_eq!(q.len("a"), 0);
    assert_eq!(q.metrics.discarded.with_label_values(&["timeout"]).get(), 1);
    assert_eq!(
        q.metrics.discarded.with_label_values(&["cancelled"]).get(),
        0
    );
}

#[test]
fn with_several_tenants_active_each_holds_at_most_its_fair_share() {
    let q = queue(100);
    let _workers: Vec<_> = (0..4).map(|_| q.worker_connected()).collect();
    // b queried a moment ago (and got its answer).
    let _tb = q.enqueue("b", req("b", 0)).unwrap();
    drop(q.try_next().unwrap().unwrap());
    let _ta: Vec<_> = (0..5)
        .map(|n| q.enqueue("a", req("a", n)).unwrap())
        .collect();
    let a0 = q.try_next().unwrap().unwrap();
    let a1 = q.try_next().unwrap().unwrap();
    assert_eq!(
        (
            a0.request.path_and_query.as_str(),
            a1.request.path_and_query.as_str()
        ),
        ("/q/a/0", "/q/a/1")
    );
    // a holds its share, two of the four workers: the others wait for someone else.
    assert!(q.try_next().unwrap().is_none());
    let _tb1 = q.enqueue("b", req("b", 1)).unwrap();
    assert_eq!(
        q.try_next().unwrap().unwrap().request.path_and_query,
        "/q/b/1"
    );
    // One of a's requests ends: a may run another.
    drop(a0);
    assert_eq!(
        q.try_next().unwrap().unwrap().request.path_and_query,
        "/q/a/2"
    );
    // Put back (its querier vanished): it no longer counts as running.
    q.requeue(a1, true);
    assert_eq!(
        q.try_next().unwrap().unwrap().request.path_and_query,
        "/q/a/1"
    );
}

#[test]
fn the_share_shrinks_as_more_tenants_are_active() {
    let q = queue(100);
    let _workers: Vec<_> = (0..4).map(|_| q.worker_connected()).collect();
    // b and c queried a moment ago: three tenants active, 4 / 3 = one worker each.
    for t in ["b", "c"] {
        let _t = q.enqueue(t, req(t, 0)).unwrap();
        drop(q.try_next().unwrap().unwrap());
    }
    let _ta: Vec<_> = (0..3)
        .map(|n| q.enqueue("a", req("a", n)).unwrap())
        .collect();
    let a0 = q.try_next().unwrap().unwrap();
    assert!(q.try_next().unwrap().is_none(), "a holds its one worker");
    let _tc = q.enqueue("c", req("c", 1)).unwrap();
    let _tb = q.enqueue("b", req("b", 1)).unwrap();
    let c1 = q.try_next().unwrap().unwrap();
    let b1 = q.try_next().unwrap().unwrap();
    assert_eq!(
        (
            c1.request.path_and_query.as_str(),
            b1.request.path_and_query.as_str()
        ),
        ("/q/c/1", "/q/b/1")
    );
    drop(a0);
    assert_eq!(
        q.try_next().unwrap().unwrap().request.path_and_query,
        "/q/a/1"
    );
}

#[test]
fn a_tenant_alone_uses_every_worker() {
    let q = queue(100);
    let _workers: Vec<_> = (0..3).map(|_| q.worker_connected()).collect();
    let _ta: Vec<_> = (0..4)
        .map(|n| q.enqueue("a", req("a", n)).unwrap())
        .collect();
    let running: Vec<_> = (0..3).map(|_| q.try_next().unwrap().unwrap()).collect();
    assert_eq!(running.len(), 3);
    assert_eq!(q.len("a"), 1);
}
