//! The frontend's end of `norn.frontend.v1`: queriers connect and pull queries from the
//! [`Queue`].
//!
//! Each `Process` stream is one worker: the frontend waits for the next request in the queue,
//! sends it, and waits for the answer before taking another, so a querier never holds more
//! requests than it has workers. What can go wrong on a stream, and what happens:
//! * the querier goes away while idle (stream ends, connection reset): the worker is
//!   forgotten, nothing is lost;
//! * it goes away with a request (kill -9, network cut, frontend-side send fails): the
//!   request goes back to the head of its tenant's queue ([`Queue::requeue`], bounded) and
//!   another worker runs it;
//! * it answers nothing for longer than the querier's timeout plus slack: the request is
//!   answered with 504 and the stream closed (the querier reconnects); a silent host is also
//!   caught by the querier's HTTP/2 keepalive;
//! * the request's caller hangs up while a querier runs it: the stream is closed, which
//!   makes the querier drop the query (stopping its evaluation) and reconnect;
//! * the frontend stops: a worker finishes its request and what was queued already, then its
//!   stream ends; requests still queued after that are answered "shutting down".

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use futures::Stream;
use norn_proto::MessageLimits;
use norn_proto::frontend::v1 as pb;
use pb::client_to_frontend::Msg;
use pb::frontend_server::{Frontend, FrontendServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::downstream::{DownstreamRequest, DownstreamResponse};
use crate::queue::{Pending, Queue, error_response};

/// How long a new stream may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC service queriers connect to.
pub struct FrontendGrpc {
    queue: Arc<Queue>,
    /// Longest the frontend waits for a querier's answer.
    answer_timeout: Duration,
    stop: CancellationToken,
}

impl FrontendGrpc {
    pub fn new(queue: Arc<Queue>, answer_timeout: Duration, stop: CancellationToken) -> Self {
        Self {
            queue,
            answer_timeout,
            stop,
        }
    }

    /// The tonic service with the server's message bounds: `limits.max_recv` bounds the
    /// queriers' answers (`--server.grpc-max-recv-msg-size-bytes`).
    pub fn into_service(self, limits: MessageLimits) -> FrontendServer<Self> {
        FrontendServer::new(self)
            .max_decoding_message_size(limits.max_recv)
            .max_encoding_message_size(limits.max_send)
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::FrontendToClient, Status>> + Send>>;

#[tonic::async_trait]
impl Frontend for FrontendGrpc {
    type ProcessStream = Outbound;

    async fn process(
        &self,
        request: Request<Streaming<pb::ClientToFrontend>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(serve_worker(
            Arc::clone(&self.queue),
            inbound,
            tx,
            self.answer_timeout,
            self.stop.clone(),
        ));
        let out =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}

/// One querier worker's stream, until it breaks or the frontend stops.
async fn serve_worker(
    queue: Arc<Queue>,
    mut inbound: Streaming<pb::ClientToFrontend>,
    tx: mpsc::Sender<pb::FrontendToClient>,
    answer_timeout: Duration,
    stop: CancellationToken,
) {
    let querier = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(pb::ClientToFrontend {
            msg: Some(Msg::Hello(h)),
        }))) => h.querier_id,
        _ => {
            tracing::debug!("a querier's stream ended before it said hello");
            return;
        }
    };
    let _worker = queue.worker_connected();
    tracing::debug!(querier, "querier worker connected");
    loop {
        let next = tokio::select! {
            _ = tx.closed() => break,
            // Nothing is expected while idle: an end or error is the querier leaving.
            _ = inbound.message() => break,
            // Once stopping, what is queued already is still served, then the stream ends.
            p = queue.next_until(&stop) => p,
        };
        let Some(p) = next else { break };
        if !p.wanted() {
            // The caller left while it waited; it was already taken out or counted.
            continue;
        }
        match run_one(&queue, &mut inbound, &tx, p, answer_timeout).await {
            Ok(()) => {}
            Err(why) => {
                tracing::info!(querier, why, "querier worker's stream closed");
                break;
            }
        }
    }
    tracing::debug!(querier, "querier worker disconnected");
}

/// Sends one request on the stream and hands back the answer; `Err` when the stream is no
/// longer usable (the request has then been put back or answered).
async fn run_one(
    queue: &Queue,
    inbound: &mut Streaming<pb::ClientToFrontend>,
    tx: &mpsc::Sender<pb::FrontendToClient>,
    mut p: Pending,
    answer_timeout: Duration,
) -> Result<(), &'static str> {
    let msg = pb::FrontendToClient {
        request: Some(to_proto(&p.request)),
    };
    if tx.send(msg).await.is_err() {
        queue.requeue(p, false);
        return Err("send failed");
    }
    let answer = tokio::select! {
        m = inbound.message() => m,
        _ = tokio::time::sleep(answer_timeout) => {
            p.answer(Ok(timeout_response(answer_timeout)));
            return Err("no answer in time");
        }
        // Ending the stream is how the querier learns to drop the query; it reconnects.
        _ = p.abandoned() => {
            queue.abandoned_in_flight();
            return Err("the request's caller went away");
        }
    };
    match answer {
        Ok(Some(pb::ClientToFrontend {
            msg: Some(Msg::Response(r)),
        })) => {
            p.answer(Ok(from_proto(r)));
            Ok(())
        }
        Ok(Some(_)) => {
            queue.requeue(p, true);
            Err("unexpected message")
        }
        Ok(None) | Err(_) => {
            tracing::debug!(
                tenant = p.tenant(),
                "re-queuing a request: its querier went away"
            );
            queue.requeue(p, true);
            Err("stream broken")
        }
    }
}

fn timeout_response(after: Duration) -> DownstreamResponse {
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        &format!("the querier did not answer within {after:?}"),
    )
}

fn headers_to_proto(h: &HeaderMap) -> Vec<pb::Header> {
    h.iter()
        .map(|(k, v)| pb::Header {
            name: k.as_str().to_string(),
            value: bytes::Bytes::copy_from_slice(v.as_bytes()),
        })
        .collect()
}

fn headers_from_proto(h: Vec<pb::Header>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for pb::Header { name, value } in h {
        // A header that is not valid HTTP is dropped, never a panic.
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(name),
            HeaderValue::from_maybe_shared(value),
        ) {
            out.append(k, v);
        }
    }
    out
}

pub(crate) fn to_proto(r: &DownstreamRequest) -> pb::HttpRequest {
    pb::HttpRequest {
        method: r.method.as_str().to_string(),
        url: r.path_and_query.clone(),
        headers: headers_to_proto(&r.headers),
        body: r.body.clone(),
    }
}

/// The request a querier's worker received; `None` when it is not a valid HTTP request.
pub(crate) fn request_from_proto(r: pb::HttpRequest) -> Option<DownstreamRequest> {
    Some(DownstreamRequest {
        method: Method::from_bytes(r.method.as_bytes()).ok()?,
        path_and_query: r.url,
        headers: headers_from_proto(r.headers),
        body: r.body,
    })
}

pub(crate) fn response_to_proto(r: DownstreamResponse) -> pb::HttpResponse {
    let mut headers = HeaderMap::new();
    if let Some(ct) = r.content_type {
        headers.insert("content-type", ct);
    }
    pb::HttpResponse {
        status: u32::from(r.status.as_u16()),
        headers: headers_to_proto(&headers),
        body: r.body,
    }
}

fn from_proto(r: pb::HttpResponse) -> DownstreamResponse {
    let headers = headers_from_proto(r.headers);
    let status = u16::try_from(r.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    DownstreamResponse {
        status,
        content_type: headers.get("content-type").cloned(),
        body: r.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_survive_the_wire_shape() {
        let mut headers = HeaderMap::new();
        headers.insert("x-scope-orgid", HeaderValue::from_static("team-a"));
        let req = DownstreamRequest {
            method: Method::POST,
            path_and_query: "/prometheus/api/v1/query_range?x=1".into(),
            headers,
            body: "query=up".into(),
        };
        let back = request_from_proto(to_proto(&req)).unwrap();
        assert_eq!(back.method, Method::POST);
        assert_eq!(back.path_and_query, req.path_and_query);
        assert_eq!(back.headers.get("x-scope-orgid").unwrap(), "team-a");
        assert_eq!(back.body, req.body);

        let resp = DownstreamResponse {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: "{}".into(),
        };
        let back = from_proto(response_to_proto(resp));
        assert_eq!(back.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(back.content_type.unwrap(), "application/json");
    }

    #[test]
    fn hostile_wire_values_do_not_panic() {
        assert!(
            request_from_proto(pb::HttpRequest {
                method: "GE T".into(),
                ..Default::default()
            })
            .is_none()
        );
        let r = from_proto(pb::HttpResponse {
            status: 70_000,
            headers: vec![pb::Header {
                name: "bad header".into(),
                value: "\n".into(),
            }],
            body: Default::default(),
        });
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(r.content_type.is_none());
    }
}
