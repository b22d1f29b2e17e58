//! The frontend with its queue: what the process needs beyond the query API when queriers
//! pull work — the `norn.frontend.v1` gRPC service (when queriers connect from other
//! processes), readiness, and closing the queue at shutdown.
//!
//! A decorator around the built frontend ([`crate::build`]), so the query pipeline knows
//! nothing of how its requests reach a querier: the queue is one more [`crate::Downstream`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use norn_proto::MessageLimits;
use norn_server::Service;
use tokio_util::sync::CancellationToken;

use crate::frontend_grpc::FrontendGrpc;
use crate::queue::Queue;

/// How the queue's workers reach it.
pub enum Workers {
    /// Queriers in other processes connect over gRPC; `answer_timeout` bounds how long a
    /// stream may hold a request unanswered, `limits` the messages of the gRPC service.
    Remote {
        answer_timeout: Duration,
        limits: MessageLimits,
    },
    /// Workers in this process (started with [`crate::worker::spawn_local`]).
    Local,
}

/// The frontend service, its queue and the way workers reach it.
pub struct QueuedFrontend {
    inner: Arc<dyn Service>,
    queue: Arc<Queue>,
    workers: Workers,
    /// Ends the workers' streams (after what is queued is served).
    stop: CancellationToken,
}

impl QueuedFrontend {
    /// `stop` is cancelled when the process begins to stop.
    pub fn wrap(
        inner: Arc<dyn Service>,
        queue: Arc<Queue>,
        workers: Workers,
        stop: CancellationToken,
    ) -> Arc<dyn Service> {
        Arc::new(Self {
            inner,
            queue,
            workers,
            stop,
        })
    }
}

#[async_trait]
impl Service for QueuedFrontend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn routes(&self) -> Router {
        self.inner.routes()
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        self.inner.grpc_services(routes);
        if let Workers::Remote {
            answer_timeout,
            limits,
        } = self.workers
        {
            routes.add_service(
                FrontendGrpc::new(Arc::clone(&self.queue), answer_timeout, self.stop.clone())
                    .into_service(limits),
            );
        }
    }

    /// Not ready until a querier's worker is connected: a load balancer should not send
    /// queries that could only wait (Mimir's frontend says the same).
    fn ready(&self) -> Result<(), String> {
        self.inner.ready()?;
        if self.queue.workers() == 0 {
            return Err(
                "no querier is connected to the query-frontend (queriers connect with --querier.frontend-address)"
                    .into(),
            );
        }
        Ok(())
    }

    async fn stopping(&self) {
        self.inner.stopping().await;
    }

    async fn shutdown(&self, abandon: CancellationToken) {
        self.stop.cancel();
        self.queue.close();
        self.inner.shutdown(abandon).await;
    }
}
