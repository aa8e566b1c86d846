//! Rampart's HTTP service: axum routes, JSON types, OpenAPI, metrics and background workers. The only crate that
//! knows HTTP.
//!
//! For now the API is the operator's ledger API under `/v1`, protected by an operator bearer token until staff
//! accounts exist; plus `/healthz`, `/readyz`, `/metrics` and `/openapi.json`.

mod dto;
mod error;
mod handlers;
mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use rampart_core::{AssetRegistry, Clock};
use rampart_store::Store;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use dto::{
    AccountRequest, AccountView, AssetTotalsView, AssetView, BatchResults, ItemResult, LedgerCheck, TransferRequest,
    TransferView,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use handlers::ApiDoc;

/// The largest request body accepted: a full batch of transfers with room to spare.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long a request may take before it is answered 408.
pub const REQUEST_TIMEOUT_S: u64 = 30;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    assets: AssetRegistry,
    clock: Arc<dyn Clock>,
    operator_token: SecretString,
}

impl AppState {
    /// State over a migrated store.
    pub fn new(store: Store, assets: AssetRegistry, clock: Arc<dyn Clock>, operator_token: SecretString) -> AppState {
        AppState { inner: Arc::new(Inner { store, assets, clock, operator_token }) }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The asset registry.
    pub fn assets(&self) -> &AssetRegistry {
        &self.inner.assets
    }

    /// The time now, in nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        self.inner.clock.now_ns()
    }
}

/// The application's routes with every layer: request ids, tracing, metrics, timeouts, body limit, operator auth.
pub fn router(state: AppState) -> Router {
    let operator_api = Router::new()
        .route("/v1/assets", get(handlers::list_assets))
        .route("/v1/accounts", post(handlers::create_account))
        .route("/v1/accounts/batch", post(handlers::create_accounts))
        .route("/v1/accounts/{id}", get(handlers::get_account))
        .route("/v1/accounts/{id}/transfers", get(handlers::account_transfers))
        .route("/v1/transfers", post(handlers::create_transfer))
        .route("/v1/transfers/batch", post(handlers::create_transfers))
        .route("/v1/transfers/{id}", get(handlers::get_transfer))
        .route("/v1/ledger/check", get(handlers::check_ledger))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_operator));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(telemetry::render_metrics))
        .route("/openapi.json", get(handlers::openapi))
        .merge(operator_api)
        // A route layer runs after routing, so the metrics see the route template rather than the raw path.
        .route_layer(middleware::from_fn(telemetry::record_metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(REQUEST_TIMEOUT_S),
        ))
        // Outside the timeout, so that its bare 408 gets the error shape too.
        .layer(middleware::from_fn(error::ensure_error_shape))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(telemetry::request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Admits a request only with `Authorization: Bearer <operator token>`, compared in constant time.
async fn require_operator(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized("missing operator token: send Authorization: Bearer <token>"));
    };
    let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    let expected = state.inner.operator_token.expose_secret().as_bytes();
    if presented.is_empty() || !bool::from(presented.as_bytes().ct_eq(expected)) {
        tracing::warn!("operator request refused: invalid token");
        return Err(ApiError::unauthorized("invalid operator token"));
    }
    Ok(next.run(request).await)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    telemetry::install_metrics();
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Expires pending transfers whose timeout has passed, every `interval`, until `shutdown` resolves.
pub async fn run_expiry_worker(state: AppState, interval: Duration, shutdown: impl Future<Output = ()>) {
    /// Holds expired per database transaction, so that one sweep never holds locks for long.
    const EXPIRE_BATCH_MAX: u32 = 1000;
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        loop {
            match state.store().expire_pending(state.now_ns(), EXPIRE_BATCH_MAX).await {
                Ok(expired) => {
                    if !expired.is_empty() {
                        metrics::counter!("ledger_pending_expired_total").increment(expired.len() as u64);
                        tracing::info!(count = expired.len(), "expired pending transfers");
                    }
                    if expired.len() < EXPIRE_BATCH_MAX as usize {
                        break;
                    }
                }
                Err(e) => {
                    // The worker survives a database outage and tries again on the next tick.
                    tracing::error!(error = %e, "expiring pending transfers failed");
                    break;
                }
            }
        }
    }
}
