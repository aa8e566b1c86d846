//! Rampart's HTTP service: axum routes, JSON types, OpenAPI, metrics and background workers. The only crate that
//! knows HTTP.
//!
//! The API under `/v1`: the seal (`/v1/sys`), staff sign-in, enrolment and four-eyes role changes (`/v1/staff`), the
//! ledger (`/v1/accounts`, `/v1/transfers`) and the audit log (`/v1/audit`). Every route but the seal, sign-in and
//! enrolment needs a staff session (or, in development mode only, the root token) and a permission of the caller's
//! roles; every refusal is audited. Plus `/healthz`, `/readyz`, `/metrics` and `/openapi.json`.

mod audit_api;
pub mod compliance;
mod compliance_api;
pub mod custody;
pub mod custody_api;
mod customer_api;
mod dto;
mod error;
pub mod geofence;
mod group;
mod handlers;
mod identity;
mod outbox;
mod passkeys;
mod principal;
pub mod reserves;
pub mod risk;
mod staff_api;
mod telemetry;
mod vault;
pub mod withdrawals;
mod withdrawals_api;
mod withdrawals_stuck;
pub mod writer;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post, put};
use rampart_core::{AssetRegistry, Clock};
use rampart_store::Store;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use customer_api::{CUSTOMER_ACCOUNT_CODE, customer_ledger_account, mask_email, normalise_email};
pub use dto::{
    AccountRequest, AccountView, AssetTotalsView, AssetView, BatchResults, ItemResult, LedgerCheck, TransferRequest,
    TransferView,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use handlers::ApiDoc;
pub use identity::{IdentityConfig, RateLimiter, Scope, StepUp, client_ip, rfc3339, withdrawal_gate};
pub use outbox::{deliver_outbox_once, run_outbox_worker};
pub use principal::{CHECKPOINT_EVERY, Principal};
pub use vault::{SealStatus, VaultState};

/// The largest request body accepted: a full batch of transfers with room to spare.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The largest sanctions-list import (the SDN list's CSV files are about 3.5 MB today).
pub const IMPORT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The largest KYC submission (documents base64-encoded).
pub const KYC_BYTES_MAX: usize = 48 * 1024 * 1024;

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
    vault: RwLock<VaultState>,
    /// Development mode only: a token with every permission, like Vault's dev root token.
    dev_root_token: Option<SecretString>,
    identity: IdentityConfig,
    webauthn: Option<rampart_webauthn::Relying>,
    rate_limiter: RateLimiter,
    custody: Option<Arc<custody::Custody>>,
    risk: Option<Arc<risk::Risk>>,
    geofencing: Option<Arc<geofence::Geofencing>>,
    compliance: Arc<compliance::Compliance>,
    withdrawals: Arc<withdrawals::Withdrawals>,
    /// Scored risk events waiting to be logged together.
    risk_log: group::GroupCommit<risk::RiskLog>,
    /// Signed API requests waiting to be admitted together.
    admissions: group::GroupCommit<identity::Admissions>,
    /// The API keys this process has verified requests of.
    api_keys: identity::KnownKeys,
    /// Proof of reserves: the configuration and the last tree built.
    reserves: reserves::Reserves,
    /// The thread the busiest group-commit writers run on, if any.
    writer: Option<writer::WriterThread>,
}

impl AppState {
    /// State over a migrated store, with the seal as it stands.
    pub fn new(
        store: Store,
        assets: AssetRegistry,
        clock: Arc<dyn Clock>,
        vault: VaultState,
        dev_root_token: Option<SecretString>,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                assets,
                clock,
                vault: RwLock::new(vault),
                dev_root_token,
                identity: IdentityConfig::default(),
                webauthn: None,
                rate_limiter: RateLimiter::default(),
                custody: None,
                risk: None,
                geofencing: None,
                compliance: Arc::new(compliance::Compliance::new(compliance::ComplianceConfig::default())),
                withdrawals: Arc::new(withdrawals::Withdrawals::new(withdrawals::WithdrawalsConfig::default())),
                risk_log: group::GroupCommit::default(),
                admissions: group::GroupCommit::default(),
                api_keys: identity::KnownKeys::default(),
                reserves: reserves::Reserves::new(reserves::ReservesConfig::default()),
                writer: None,
            }),
        }
    }

    /// The same state with this identity configuration; WebAuthn is set up for its relying party. Call before the
    /// state is shared.
    pub fn with_identity(mut self, identity: IdentityConfig) -> Result<AppState, String> {
        identity.validate()?;
        let webauthn = rampart_webauthn::Relying::new(&identity.webauthn_rp_id, "Rampart", &identity.webauthn_origin)
            .map_err(|e| e.to_string())?;
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.identity = identity;
        inner.webauthn = Some(webauthn);
        Ok(self)
    }

    /// The same state with the risk engine scoring sign-ins, security changes and API requests. Call before the
    /// state is shared.
    /// Proof of reserves under this configuration (the exchange's name, the smallest tree).
    pub fn with_reserves(mut self, config: reserves::ReservesConfig) -> Result<AppState, String> {
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.reserves = reserves::Reserves::new(config);
        Ok(self)
    }

    pub fn with_risk(mut self, risk: Arc<risk::Risk>) -> Result<AppState, String> {
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.risk = Some(risk);
        Ok(self)
    }

    /// The same state refusing sign-up and sign-in from the jurisdictions `geofencing` blocks, and locating clients
    /// with its address ranges. Call before the state is shared.
    pub fn with_geofencing(mut self, geofencing: Arc<geofence::Geofencing>) -> Result<AppState, String> {
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.geofencing = Some(geofencing);
        Ok(self)
    }

    /// The same state with this compliance set-up (configuration, KYC provider). Call before the state is shared.
    pub fn with_compliance(mut self, compliance: compliance::Compliance) -> Result<AppState, String> {
        compliance.config().kyc_limits.validate()?;
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.compliance = Arc::new(compliance);
        Ok(self)
    }

    /// Compliance: the lists in force, the configuration, the KYC provider.
    pub fn compliance(&self) -> &compliance::Compliance {
        &self.inner.compliance
    }

    /// Geofencing, when configured.
    pub fn geofencing(&self) -> Option<&Arc<geofence::Geofencing>> {
        self.inner.geofencing.as_ref()
    }

    /// The risk engine, when it runs.
    pub fn risk(&self) -> Option<&Arc<risk::Risk>> {
        self.inner.risk.as_ref()
    }

    /// The same state with custody running on `custody`'s chain. Call before the state is shared.
    pub fn with_custody(mut self, custody: Arc<custody::Custody>) -> Result<AppState, String> {
        custody.config.policy.validate().map_err(|e| e.to_string())?;
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.custody = Some(custody);
        Ok(self)
    }

    /// Custody, when configured.
    pub fn custody(&self) -> Option<&custody::Custody> {
        self.inner.custody.as_deref()
    }

    /// Custody's shared handle, when configured (for workers).
    pub fn custody_handle(&self) -> Option<Arc<custody::Custody>> {
        self.inner.custody.clone()
    }

    /// How customer identity behaves.
    pub fn identity(&self) -> &IdentityConfig {
        &self.inner.identity
    }

    /// The WebAuthn relying party, when configured.
    pub fn webauthn(&self) -> Option<&rampart_webauthn::Relying> {
        self.inner.webauthn.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The same state with the busiest group-commit writers on `writer`, a thread of their own (PostgreSQL). Call
    /// before the state is shared.
    pub fn with_writer_thread(mut self, writer: writer::WriterThread) -> Result<AppState, String> {
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.writer = Some(writer);
        Ok(self)
    }

    /// The writer thread, if the state has one.
    pub(crate) fn writer_thread(&self) -> Option<&writer::WriterThread> {
        self.inner.writer.as_ref()
    }

    /// The store of the group-commit writers that run on the writer thread: its own connections when there is one.
    pub(crate) fn writer_store(&self) -> &Store {
        self.writer_thread().map_or(&self.inner.store, writer::WriterThread::store)
    }

    /// The same state with this withdrawals configuration. Call before the state is shared.
    pub fn with_withdrawals(mut self, config: withdrawals::WithdrawalsConfig) -> Result<AppState, String> {
        let inner = Arc::get_mut(&mut self.inner).ok_or("the state is already shared")?;
        inner.withdrawals = Arc::new(withdrawals::Withdrawals::new(config));
        Ok(self)
    }

    /// Withdrawals: configuration and the policy in force.
    pub fn withdrawals(&self) -> &withdrawals::Withdrawals {
        &self.inner.withdrawals
    }

    /// Proof of reserves.
    pub fn reserves(&self) -> &reserves::Reserves {
        &self.inner.reserves
    }

    pub(crate) fn risk_log(&self) -> &group::GroupCommit<risk::RiskLog> {
        &self.inner.risk_log
    }

    pub(crate) fn admissions(&self) -> &group::GroupCommit<identity::Admissions> {
        &self.inner.admissions
    }

    pub(crate) fn api_keys(&self) -> &identity::KnownKeys {
        &self.inner.api_keys
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

/// The application's routes with every layer: request ids, tracing, metrics, timeouts, body limit, authentication.
pub fn router(state: AppState) -> Router {
    let signed_in = Router::new()
        .route("/v1/assets", get(handlers::list_assets))
        .route("/v1/accounts", post(handlers::create_account))
        .route("/v1/accounts/batch", post(handlers::create_accounts))
        .route("/v1/accounts/{id}", get(handlers::get_account))
        .route("/v1/accounts/{id}/transfers", get(handlers::account_transfers))
        .route("/v1/transfers", post(handlers::create_transfer))
        .route("/v1/transfers/batch", post(handlers::create_transfers))
        .route("/v1/transfers/{id}", get(handlers::get_transfer))
        .route("/v1/ledger/check", get(handlers::check_ledger))
        .route("/v1/staff", get(staff_api::list_staff).post(staff_api::create_staff))
        .route("/v1/staff/sign-out", post(staff_api::sign_out))
        .route("/v1/staff/{id}/role-requests", post(staff_api::request_role_change))
        .route("/v1/staff/{id}/disable", post(staff_api::disable_staff))
        .route("/v1/staff/role-requests", get(staff_api::pending_role_requests))
        .route("/v1/staff/role-requests/{id}/approve", post(staff_api::approve_role_request))
        .route("/v1/staff/role-requests/{id}/reject", post(staff_api::reject_role_request))
        .route("/v1/audit/entries", get(audit_api::entries))
        .route("/v1/reserves", post(reserves::create_snapshot))
        .route("/v1/reserves/{snapshot}/attestations", post(reserves::reopen_attestations))
        .route("/v1/reserves/{snapshot}/leaves", get(reserves::snapshot_leaves))
        .route("/v1/reserves/{snapshot}/proofs/{customer}", get(reserves::customer_reserves_proof))
        .route("/v1/audit/verify", get(audit_api::verify))
        .route("/v1/sys/keys/rotate", post(audit_api::rotate_keys))
        .route("/v1/sys/keys/rewrap", post(audit_api::rewrap_keys))
        .route("/v1/staff/webauthn/register/options", post(passkeys::staff_register_options))
        .route("/v1/staff/webauthn/register", post(passkeys::staff_register))
        .route("/v1/support/customers/{id}/recover", post(customer_api::support_recover))
        .route("/v1/custody/status", get(custody_api::status))
        .route("/v1/custody/custodians", get(custody_api::list_custodians).post(custody_api::register_custodian))
        .route("/v1/custody/custodians/{id}/activate", post(custody_api::activate_custodian))
        .route("/v1/custody/ceremonies", get(custody_api::list_ceremonies).post(custody_api::create_ceremony))
        .route("/v1/custody/ceremonies/{id}", get(custody_api::get_ceremony))
        .route("/v1/custody/ceremonies/{id}/messages", post(custody_api::post_message))
        .route("/v1/custody/refills", get(custody_api::list_refills).post(custody_api::propose_refill))
        .route("/v1/custody/refills/{id}/approve", post(custody_api::approve_refill))
        .route("/v1/risk/cases", get(risk::cases))
        .route("/v1/risk/cases/{id}", get(risk::case))
        .route("/v1/risk/cases/{id}/assign", post(risk::assign))
        .route("/v1/risk/cases/{id}/notes", post(risk::note))
        .route("/v1/risk/cases/{id}/resolve", post(risk::resolve))
        .route("/v1/risk/rules", get(risk::rules))
        .route("/v1/risk/rules/reload", post(risk::reload))
        .route("/v1/risk/events", get(risk::events))
        .route("/v1/compliance/lists/ofac", post(compliance_api::import).layer(DefaultBodyLimit::max(IMPORT_BYTES_MAX)))
        .route("/v1/compliance/lists", get(compliance_api::lists))
        .route("/v1/compliance/screen", post(compliance_api::screen))
        .route("/v1/compliance/addresses", get(compliance_api::addresses).post(compliance_api::add_address))
        .route("/v1/compliance/addresses/screen", post(compliance_api::screen_address))
        .route("/v1/compliance/addresses/{id}", delete(compliance_api::remove_address))
        .route("/v1/compliance/cases", get(compliance_api::cases))
        .route("/v1/compliance/cases/{id}", get(compliance_api::case))
        .route("/v1/compliance/cases/{id}/assign", post(compliance_api::assign))
        .route("/v1/compliance/cases/{id}/notes", post(compliance_api::note))
        .route("/v1/compliance/cases/{id}/resolve", post(compliance_api::resolve))
        .route("/v1/compliance/kyc", get(compliance_api::kyc_queue))
        .route("/v1/compliance/kyc/{id}", get(compliance_api::kyc_submission))
        .route("/v1/compliance/kyc/{id}/decide", post(compliance_api::decide_kyc))
        .route("/v1/compliance/kyc/documents/{id}", get(compliance_api::kyc_document))
        .route("/v1/compliance/travel-rule", get(compliance_api::travel_rule).post(compliance_api::record_travel_rule))
        .route("/v1/compliance/reviews", get(compliance_api::reviews).post(compliance_api::open_review))
        .route("/v1/compliance/reviews/{id}/decide", post(compliance_api::decide_review))
        .route("/v1/withdrawals", get(withdrawals_api::queue))
        .route("/v1/withdrawals/policies", get(withdrawals_api::policies).post(withdrawals_api::propose_policy))
        .route("/v1/withdrawals/policies/{version}/decide", post(withdrawals_api::decide_policy))
        .route("/v1/withdrawals/customers/{id}/group", put(withdrawals_api::set_group))
        .route("/v1/withdrawals/{id}", get(withdrawals_api::staff_one))
        .route("/v1/withdrawals/{id}/approve", post(withdrawals_api::approve))
        .route("/v1/withdrawals/{id}/reject", post(withdrawals_api::reject))
        .route("/v1/withdrawals/{id}/rebroadcast", post(withdrawals_stuck::rebroadcast))
        .route("/v1/withdrawals/{id}/bump-fee", post(withdrawals_stuck::bump_fee))
        .route("/v1/dev/chain/mine", post(custody_api::dev_mine))
        .route("/v1/dev/chain/faucet", post(custody_api::dev_faucet))
        .route("/v1/dev/chain/reorg", post(custody_api::dev_reorg))
        .route_layer(middleware::from_fn_with_state(state.clone(), principal::authenticate));
    let customer = Router::new()
        .route("/v1/me", get(customer_api::me))
        .route("/v1/me/balances", get(customer_api::balances))
        .route("/v1/me/step-up", post(customer_api::step_up))
        .route("/v1/me/password", post(customer_api::change_password))
        .route("/v1/me/anti-phishing-code", put(customer_api::set_anti_phishing_code))
        .route("/v1/me/totp", post(customer_api::start_totp).delete(customer_api::remove_totp))
        .route("/v1/me/totp/confirm", post(customer_api::confirm_totp))
        .route("/v1/me/backup-codes", post(customer_api::new_backup_codes))
        .route("/v1/me/email", post(customer_api::change_email))
        .route("/v1/me/devices", get(customer_api::devices))
        .route("/v1/me/devices/{id}", delete(customer_api::revoke_device))
        .route("/v1/me/sessions", get(customer_api::sessions))
        .route("/v1/me/sessions/{id}", delete(customer_api::revoke_session))
        .route("/v1/me/sign-out", post(customer_api::sign_out))
        .route("/v1/me/notifications", get(customer_api::notifications))
        .route("/v1/me/withdrawal-status", get(customer_api::withdrawal_status))
        .route("/v1/me/api-keys", get(customer_api::api_keys).post(customer_api::create_api_key))
        .route("/v1/me/api-keys/{id}", delete(customer_api::revoke_api_key))
        .route("/v1/me/webauthn", get(passkeys::list))
        .route("/v1/me/webauthn/options", post(passkeys::step_up_options))
        .route("/v1/me/webauthn/register/options", post(passkeys::register_options))
        .route("/v1/me/webauthn/register", post(passkeys::register))
        .route("/v1/me/webauthn/{id}", delete(passkeys::remove))
        .route("/v1/me/deposit-address", get(custody_api::get_deposit_address).post(custody_api::new_deposit_address))
        .route("/v1/me/deposits", get(custody_api::deposits))
        .route(
            "/v1/me/kyc",
            get(compliance_api::my_kyc).post(compliance_api::submit_kyc).layer(DefaultBodyLimit::max(KYC_BYTES_MAX)),
        )
        .route("/v1/me/destinations/screen", post(compliance_api::check_destination))
        .route("/v1/me/withdrawals", get(withdrawals_api::mine).post(withdrawals_api::request))
        .route("/v1/me/withdrawals/{id}", get(withdrawals_api::one))
        .route("/v1/me/withdrawals/{id}/cancel", post(withdrawals_api::cancel))
        .route("/v1/me/whitelist", get(withdrawals_api::whitelist).post(withdrawals_api::add_address))
        .route("/v1/me/whitelist/{id}", delete(withdrawals_api::remove_address))
        .route("/v1/me/whitelist-only", put(withdrawals_api::set_whitelist_only))
        .route("/v1/reserves/{snapshot}/proof", get(reserves::my_reserves_proof))
        .route_layer(middleware::from_fn_with_state(state.clone(), identity::authenticate_customer));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(telemetry::render_metrics))
        .route("/openapi.json", get(handlers::openapi))
        .route("/v1/sys/seal-status", get(vault::seal_status))
        .route("/v1/sys/unseal", post(vault::unseal))
        .route("/v1/staff/sign-in", post(staff_api::sign_in))
        .route("/v1/staff/enrol", post(staff_api::enrol))
        .route("/v1/staff/enrol/confirm", post(staff_api::confirm_enrolment))
        .route("/v1/staff/sign-in/webauthn/options", post(passkeys::staff_sign_in_options))
        .route("/v1/staff/sign-in/webauthn", post(passkeys::staff_sign_in))
        .route("/v1/customers/sign-up", post(customer_api::sign_up))
        .route("/v1/customers/sign-up/totp", post(customer_api::enrol_totp))
        .route("/v1/customers/verify-email", post(customer_api::verify_email))
        .route("/v1/customers/devices/confirm", post(customer_api::confirm_device))
        .route("/v1/customers/email/confirm", post(customer_api::confirm_email_change))
        .route("/v1/customers/whitelist/confirm", post(withdrawals_api::confirm_address))
        .route("/v1/customers/sign-in", post(customer_api::sign_in))
        .route("/v1/customers/sign-in/verify", post(customer_api::verify_sign_in))
        .route("/v1/customers/sign-in/webauthn/options", post(passkeys::sign_in_options))
        .route("/v1/customers/recovery/start", post(customer_api::start_recovery))
        .route("/v1/customers/recovery/finish", post(customer_api::finish_recovery))
        .route("/reserves/verify", get(reserves::verifier_page))
        .route("/reserves/verify.js", get(reserves::verifier_script))
        .route("/v1/reserves", get(reserves::list_snapshots))
        .route("/v1/reserves/{snapshot}", get(reserves::get_snapshot))
        .route("/v1/reserves/{snapshot}/report", get(reserves::snapshot_report))
        .route("/v1/reserves/{snapshot}/publication", get(reserves::snapshot_publication))
        .merge(signed_in)
        .merge(customer)
        // A route layer runs after routing, so the metrics see the route template rather than the raw path.
        .route_layer(middleware::from_fn(telemetry::record_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), identity::rate_limit))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(REQUEST_TIMEOUT_S),
        ))
        // Answers carry session tokens, enrolment codes and TOTP secrets: no cache may keep any answer.
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ))
        // Outside the timeout, so that its bare 408 gets the error shape too.
        .layer(middleware::from_fn(error::ensure_error_shape))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(telemetry::request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    telemetry::install_metrics();
    axum::serve(listener, router(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Expires pending transfers whose timeout has passed, and purges expired tickets and API signatures, every
/// `interval`, until `shutdown` resolves.
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
        // Spent one-time tickets and request signatures past their window are only clutter: sweep them too.
        match state.store().purge_expired_auth(state.now_ns()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged expired tickets and signatures"),
            Err(e) => tracing::error!(error = %e, "purging expired tickets failed"),
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

/// Signs an audit checkpoint at the head every `interval` if entries were appended since the last one (the
/// "every T seconds" half of the checkpoint policy), until `shutdown` resolves. Does nothing while sealed.
pub async fn run_checkpoint_worker(state: AppState, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let Ok(keyring) = state.keyring() else { continue };
        match state.store().checkpoint_audit_head(&state.auditor(&keyring), state.now_ns()).await {
            Ok(Some(seq)) => tracing::debug!(seq, "signed an audit checkpoint"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "signing an audit checkpoint failed"),
        }
    }
}
