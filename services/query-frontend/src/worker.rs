//! Querier workers: what takes requests out of the frontend's [`Queue`] and answers them.
//!
//! Two kinds, one loop shape (take a request, run it on the querier's routes, hand back the
//! answer, take the next):
//! * [`spawn_remote`] runs in a querier process with `--querier.frontend-address`: each of
//!   `--querier.max-concurrent` workers holds one `norn.frontend.v1` `Process` stream to the
//!   frontend over one shared HTTP/2 connection, and reconnects (with backoff) when it breaks
//!   or the frontend restarts. The querier dials out, so the frontend needs no list of
//!   queriers;
//! * [`spawn_local`] runs in the frontend's own process when a querier runs there too
//!   (`--target=all`): the same queue, pulled directly, so fairness holds in the single
//!   binary as well.
//!
//! A worker stops taking work when the process stops; the request it runs is finished first.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use norn_proto::MAX_MESSAGE_SIZE;
use norn_proto::frontend::v1 as pb;
use pb::frontend_client::FrontendClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::downstream::Downstream;
use crate::frontend_grpc::{request_from_proto, response_to_proto};
use crate::queue::{Queue, error_response};

/// First wait before reconnecting; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a querier's workers connect and how many run.
#[derive(Debug, Clone)]
pub struct RemoteWorkers {
    /// The frontend's gRPC address, `host:port`.
    pub frontend_address: String,
    /// Workers (streams) to run: the querier's `max_concurrent`.
    pub concurrency: usize,
    /// Names this querier in the frontend's logs.
    pub querier_id: String,
    /// TLS to the frontend (`--querier.frontend-client.tls-*`); plain text when `None`.
    pub tls: Option<Arc<norn_server::tls::ClientTls>>,
    /// Largest answer sent to the frontend
    /// (`--querier.frontend-client.grpc-max-send-msg-size`); a larger one is a 413.
    pub max_send_msg_size: usize,
}

/// Why the workers did not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("querier.frontend-address {0:?} is not a host:port: {1}")]
    Address(String, String),
}

/// Starts the querier's workers, which answer the frontend's requests with `querier` (the
/// querier's own routes) until `stop`.
pub fn spawn_remote(
    cfg: RemoteWorkers,
    querier: Arc<dyn Downstream>,
    stop: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, WorkerError> {
    let channel = Endpoint::from_shared(format!("http://{}", cfg.frontend_address))
        .map_err(|e| WorkerError::Address(cfg.frontend_address.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A frontend host that vanishes without a reset is noticed, and the streams redialled.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = norn_server::tls::client::connect_lazy(channel, cfg.tls.as_ref());
    tracing::info!(
        frontend = cfg.frontend_address,
        workers = cfg.concurrency,
        "querier workers pulling from the query-frontend"
    );
    Ok((0..cfg.concurrency.max(1))
        .map(|_| {
            let (channel, querier, stop, id) = (
                channel.clone(),
                Arc::clone(&querier),
                stop.clone(),
                cfg.querier_id.clone(),
            );
            tokio::spawn(remote_worker(
                channel,
                querier,
                stop,
                id,
                cfg.max_send_msg_size,
            ))
        })
        .collect())
}

async fn remote_worker(
    channel: Channel,
    querier: Arc<dyn Downstream>,
    stop: CancellationToken,
    querier_id: String,
    max_send: usize,
) {
    let mut backoff = MIN_BACKOFF;
    while !stop.is_cancelled() {
        match one_stream(&channel, querier.as_ref(), &stop, &querier_id, max_send).await {
            // Served at least one request: the frontend was there, start backoff afresh.
            Ok(true) => backoff = MIN_BACKOFF,
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "query-frontend stream failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One `Process` stream until it ends; whether it served anything.
async fn one_stream(
    channel: &Channel,
    querier: &dyn Downstream,
    stop: &CancellationToken,
    querier_id: &str,
    max_send: usize,
) -> Result<bool, tonic::Status> {
    let mut client = FrontendClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(max_send);
    let (tx, rx) = mpsc::channel(1);
    let hello = pb::ClientToFrontend {
        msg: Some(pb::client_to_frontend::Msg::Hello(pb::Hello {
            querier_id: querier_id.to_string(),
        })),
    };
    // The channel holds one message: this cannot wait.
    let _ = tx.send(hello).await;
    let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = tokio::select! {
        r = client.process(out) => r?.into_inner(),
        _ = stop.cancelled() => return Ok(false),
    };
    let mut served = false;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m?,
            _ = stop.cancelled() => return Ok(served),
        };
        let Some(pb::FrontendToClient { request: Some(req) }) = msg else {
            return Ok(served);
        };
        let resp = match request_from_proto(req) {
            // The frontend ends the stream when the request's caller hangs up; the call is
            // dropped then, which stops the query's evaluation.
            Some(r) => match tokio::select! {
                r = querier.call(r) => r,
                _ = inbound.message() => return Ok(served),
            } {
                Ok(resp) => resp,
                Err(e) => error_response(StatusCode::BAD_GATEWAY, "internal", &e.to_string()),
            },
            None => error_response(StatusCode::BAD_REQUEST, "bad_data", "not an HTTP request"),
        };
        let answer = sendable(response_to_proto(resp), max_send);
        if tx.send(answer).await.is_err() {
            return Ok(served);
        }
        served = true;
    }
}

/// The answer to the frontend, or a 413 in its place when the whole message would pass the
/// gRPC message bound `max`: gRPC would refuse to send it, the stream would break, and the
/// frontend would re-queue the request for another querier to evaluate again (Mimir's querier
/// checks the same way, and its frontend does not retry a 413).
fn sendable(resp: pb::HttpResponse, max: usize) -> pb::ClientToFrontend {
    use prost::Message;
    let wrap = |r| pb::ClientToFrontend {
        msg: Some(pb::client_to_frontend::Msg::Response(r)),
    };
    let answer = wrap(resp);
    let size = answer.encoded_len();
    if size <= max {
        return answer;
    }
    let msg = format!(
        "response larger than the max message size ({size} vs {max} bytes, \
         querier.frontend-client.grpc-max-send-msg-size): select fewer series, a shorter range \
         or a larger step, or aggregate"
    );
    wrap(response_to_proto(error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "execution",
        &msg,
    )))
}

/// Starts `concurrency` workers in this process, answering the queue's requests with
/// `querier` until the queue closes or `stop`.
pub fn spawn_local(
    queue: &Arc<Queue>,
    querier: Arc<dyn Downstream>,
    concurrency: usize,
    stop: CancellationToken,
) -> Vec<JoinHandle<()>> {
    (0..concurrency.max(1))
        .map(|_| {
            let (queue, querier, stop) = (Arc::clone(queue), Arc::clone(&querier), stop.clone());
            tokio::spawn(async move {
                let _worker = queue.worker_connected();
                while let Some(mut p) = queue.next_until(&stop).await {
                    if !p.wanted() {
                        continue;
                    }
                    // Dropping the call when the caller hangs up stops the query's evaluation.
                    let reply = tokio::select! {
                        r = querier.call(p.request.clone()) => r,
                        _ = p.abandoned() => {
                            queue.abandoned_in_flight();
                            continue;
                        }
                    };
                    p.answer(reply);
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: Vec<u8>) -> pb::HttpResponse {
        pb::HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn answered(m: pb::ClientToFrontend) -> pb::HttpResponse {
        match m.msg {
            Some(pb::client_to_frontend::Msg::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    /// An answer the gRPC stream could not carry (a 1M-series `rate` over an hour is ~200 MB
    /// of JSON) reaches the frontend as a 413 naming the bound, not as a broken stream that
    /// would re-queue the request to be evaluated again.
    #[test]
    fn an_answer_over_the_message_bound_becomes_a_413_naming_it() {
        let small = answered(sendable(
            response(b"{\"status\":\"success\"}".to_vec()),
            MAX_MESSAGE_SIZE,
        ));
        assert_eq!(small.status, 200);
        assert_eq!(&small.body[..], b"{\"status\":\"success\"}");

        let huge = answered(sendable(
            response(vec![b' '; MAX_MESSAGE_SIZE]),
            MAX_MESSAGE_SIZE,
        ));
        assert_eq!(huge.status, 413);
        let body: serde_json::Value = serde_json::from_slice(&huge.body).expect("JSON");
        assert_eq!(body["status"], "error");
        assert_eq!(body["errorType"], "execution");
        let msg = body["error"].as_str().expect("message");
        assert!(
            msg.contains("larger than the max message size")
                && msg.contains(&MAX_MESSAGE_SIZE.to_string())
                && msg.contains("querier.frontend-client.grpc-max-send-msg-size"),
            "{msg}"
        );
    }

    /// The bound is the configured one: the same answer passes a raised bound and is a 413
    /// under a lowered one.
    #[test]
    fn the_bound_is_the_configured_send_size() {
        let body = vec![b' '; 2 << 20];
        assert_eq!(
            answered(sendable(response(body.clone()), 4 << 20)).status,
            200
        );
        let refused = answered(sendable(response(body), 1 << 20));
        assert_eq!(refused.status, 413);
        let msg = String::from_utf8_lossy(&refused.body).into_owned();
        assert!(msg.contains(&(1usize << 20).to_string()), "{msg}");
    }
}
