//! The ingester's operator endpoints: Mimir's `POST /ingester/flush` and
//! `POST /ingester/shutdown`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use norn_model::TenantId;
use norn_server::HttpError;

use crate::Ingester;

/// The routes, over `ingester`.
pub(crate) fn routes(ingester: Arc<Ingester>) -> axum::Router {
    axum::Router::new()
        .route("/ingester/flush", axum::routing::post(flush_handler))
        .route("/ingester/shutdown", axum::routing::post(shutdown_handler))
        .with_state(ingester)
}

/// Query parameters of `/ingester/flush`: `tenant` (repeatable; default every tenant) and
/// `wait` (`true`: answer once everything is cut and shipped; otherwise answer at once).
fn flush_params(query: Option<&str>) -> Result<(Option<Vec<TenantId>>, bool, bool), HttpError> {
    let mut tenants = Vec::new();
    let mut wait = false;
    let mut force = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "tenant" => tenants.push(
                TenantId::new(v).map_err(|e| HttpError::bad_data(format!("tenant {v:?}: {e}")))?,
            ),
            "wait" => {
                wait = v.parse().map_err(|_| {
                    HttpError::bad_data(format!("wait must be true or false, got {v:?}"))
                })?
            }
            "force" => {
                force = v.parse().map_err(|_| {
                    HttpError::bad_data(format!("force must be true or false, got {v:?}"))
                })?
            }
            _ => {}
        }
    }
    Ok(((!tenants.is_empty()).then_some(tenants), wait, force))
}

async fn flush_handler(
    axum::extract::State(ing): axum::extract::State<Arc<Ingester>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (tenants, wait, force) = match flush_params(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !ing.ready.load(Ordering::SeqCst) {
        return HttpError::new(
            norn_model::ErrorKind::Unavailable,
            "ingester is starting: WAL replay in progress",
        )
        .into_response();
    }
    if let Err(e) = ing.admit_flush_request(force) {
        return e.into_response();
    }
    let job = {
        let ing = Arc::clone(&ing);
        async move { ing.flush(tenants.as_deref()).await }
    };
    if wait {
        match job.await {
            Ok(()) => axum::http::StatusCode::NO_CONTENT.into_response(),
            Err(e) => HttpError::new(e.kind(), e.to_string()).into_response(),
        }
    } else {
        tokio::spawn(async move {
            if let Err(e) = job.await {
                tracing::error!(error = %e, "flush failed");
            }
        });
        axum::http::StatusCode::NO_CONTENT.into_response()
    }
}

/// Mimir's `/ingester/shutdown`: cut and ship everything, then stop taking writes.
async fn shutdown_handler(
    axum::extract::State(ing): axum::extract::State<Arc<Ingester>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(e) = ing.flush(None).await {
        return HttpError::new(e.kind(), e.to_string()).into_response();
    }
    let i = Arc::clone(&ing);
    let _ = tokio::task::spawn_blocking(move || i.close()).await;
    tracing::info!("ingester flushed and stopped by /ingester/shutdown");
    axum::http::StatusCode::NO_CONTENT.into_response()
}
