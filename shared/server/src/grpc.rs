//! The process's gRPC server: every service's gRPC API on `server.grpc-listen-port`.
//!
//! Services add themselves through [`crate::Service::grpc_services`]; the server runs until
//! told to stop, after HTTP has drained, so a distributor's last pushes still reach an
//! ingester that is leaving.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::tls::listen::{ServerTls, grpc_incoming};

/// How long [`GrpcServer::stop`] waits for in-flight calls.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running gRPC server.
pub struct GrpcServer {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl GrpcServer {
    /// Serves `routes` on `listener` (already bound, so a port clash fails before anything
    /// starts).
    pub fn start(listener: TcpListener, routes: tonic::service::Routes) -> GrpcServer {
        Self::start_with_tls(listener, routes, None)
    }

    /// [`GrpcServer::start`], over TLS when `tls` is given (connections are accepted and
    /// handshaken by [`crate::tls::listen::grpc_incoming`], with the current certificates).
    pub fn start_with_tls(
        listener: TcpListener,
        routes: tonic::service::Routes,
        tls: Option<ServerTls>,
    ) -> GrpcServer {
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let accept_stop = stop.clone();
        let task = tokio::spawn(async move {
            let server = tonic::transport::Server::builder().add_routes(routes);
            let shutdown = async move { signal.cancelled().await };
            let result = match tls {
                None => {
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    server
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
                Some(tls) => {
                    server
                        .serve_with_incoming_shutdown(
                            grpc_incoming(listener, tls, accept_stop),
                            shutdown,
                        )
                        .await
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        GrpcServer { stop, task }
    }

    /// Stops accepting calls and waits (at most [`STOP_TIMEOUT`]) for those in flight.
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_TIMEOUT, self.task).await.is_err() {
            tracing::warn!("gRPC server did not stop within {STOP_TIMEOUT:?}");
        }
    }
}
