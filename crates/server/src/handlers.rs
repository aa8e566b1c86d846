//! Route handlers and the OpenAPI document generated from them.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rampart_audit::Permission;
use rampart_core::{AccountId, TransferId};
use rampart_ledger::{CreateAccountResult, CreateTransferResult};
use rampart_store::AuditedBy;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::AppState;
use crate::dto::{
    AccountRequest, AccountView, AssetTotalsView, AssetView, BatchResults, ItemResult, LedgerCheck, TransferRequest,
    TransferView,
};
use crate::error::{ApiError, ErrorBody};
use crate::principal::Principal;

/// The OpenAPI 3 document of the API, generated from the handlers and types below.
#[derive(OpenApi)]
#[openapi(
    info(title = "Rampart", description = "The security core of a digital-asset exchange."),
    paths(
        healthz, readyz, list_assets, create_account, create_accounts, get_account, account_transfers,
        create_transfer, create_transfers, get_transfer, check_ledger,
        crate::vault::seal_status, crate::vault::unseal,
        crate::staff_api::sign_in, crate::staff_api::sign_out, crate::staff_api::enrol,
        crate::staff_api::confirm_enrolment, crate::staff_api::list_staff, crate::staff_api::create_staff,
        crate::staff_api::request_role_change, crate::staff_api::pending_role_requests, crate::staff_api::disable_staff,
        crate::staff_api::approve_role_request, crate::staff_api::reject_role_request,
        crate::audit_api::entries, crate::audit_api::verify, crate::audit_api::rotate_keys,
        crate::audit_api::rewrap_keys,
        crate::customer_api::sign_up, crate::customer_api::enrol_totp, crate::customer_api::verify_email,
        crate::customer_api::confirm_device, crate::customer_api::sign_in, crate::customer_api::verify_sign_in,
        crate::customer_api::me, crate::customer_api::balances, crate::customer_api::step_up,
        crate::customer_api::change_password, crate::customer_api::set_anti_phishing_code,
        crate::customer_api::start_totp, crate::customer_api::confirm_totp, crate::customer_api::remove_totp,
        crate::customer_api::new_backup_codes, crate::customer_api::change_email,
        crate::customer_api::confirm_email_change, crate::customer_api::devices, crate::customer_api::revoke_device,
        crate::customer_api::sessions, crate::customer_api::revoke_session, crate::customer_api::sign_out,
        crate::customer_api::notifications, crate::customer_api::withdrawal_status,
        crate::customer_api::create_api_key, crate::customer_api::api_keys, crate::customer_api::revoke_api_key,
        crate::customer_api::start_recovery, crate::customer_api::finish_recovery,
        crate::customer_api::support_recover, crate::passkeys::sign_in_options, crate::passkeys::step_up_options,
        crate::passkeys::register_options, crate::passkeys::register, crate::passkeys::list, crate::passkeys::remove,
        crate::passkeys::staff_register_options, crate::passkeys::staff_register,
        crate::passkeys::staff_sign_in_options, crate::passkeys::staff_sign_in,
        crate::custody_api::status, crate::custody_api::list_custodians, crate::custody_api::register_custodian,
        crate::custody_api::activate_custodian, crate::custody_api::list_ceremonies, crate::custody_api::create_ceremony,
        crate::custody_api::get_ceremony, crate::custody_api::post_message, crate::custody_api::list_refills,
        crate::custody_api::propose_refill, crate::custody_api::approve_refill, crate::custody_api::get_deposit_address,
        crate::custody_api::new_deposit_address, crate::custody_api::deposits, crate::custody_api::dev_mine,
        crate::custody_api::dev_faucet, crate::custody_api::dev_reorg,
        crate::risk::cases, crate::risk::case, crate::risk::assign, crate::risk::note, crate::risk::resolve,
        crate::risk::rules, crate::risk::reload, crate::risk::events,
        crate::compliance_api::import, crate::compliance_api::lists, crate::compliance_api::screen,
        crate::compliance_api::addresses, crate::compliance_api::add_address, crate::compliance_api::remove_address,
        crate::compliance_api::screen_address, crate::compliance_api::check_destination, crate::compliance_api::cases,
        crate::compliance_api::case, crate::compliance_api::assign, crate::compliance_api::note,
        crate::compliance_api::resolve, crate::compliance_api::submit_kyc, crate::compliance_api::my_kyc,
        crate::compliance_api::kyc_queue, crate::compliance_api::kyc_submission, crate::compliance_api::kyc_document,
        crate::compliance_api::decide_kyc, crate::compliance_api::record_travel_rule,
        crate::compliance_api::travel_rule, crate::compliance_api::open_review, crate::compliance_api::reviews,
        crate::compliance_api::decide_review,
        crate::withdrawals_api::request, crate::withdrawals_api::mine, crate::withdrawals_api::one,
        crate::withdrawals_api::cancel, crate::withdrawals_api::whitelist, crate::withdrawals_api::add_address,
        crate::withdrawals_api::confirm_address, crate::withdrawals_api::remove_address,
        crate::withdrawals_api::set_whitelist_only, crate::withdrawals_api::queue, crate::withdrawals_api::staff_one,
        crate::withdrawals_api::approve, crate::withdrawals_api::reject, crate::withdrawals_api::policies,
        crate::withdrawals_api::propose_policy, crate::withdrawals_api::decide_policy, crate::withdrawals_api::set_group,
        crate::withdrawals_stuck::rebroadcast, crate::withdrawals_stuck::bump_fee, crate::telemetry::render_metrics,
        crate::reserves::create_snapshot, crate::reserves::list_snapshots, crate::reserves::get_snapshot, crate::reserves::my_reserves_proof,
        crate::reserves::customer_reserves_proof, crate::reserves::snapshot_leaves, crate::reserves::verifier_page,
        crate::reserves::verifier_script, crate::reserves::reopen_attestations, crate::reserves::snapshot_report,
        crate::reserves::snapshot_publication,
        openapi
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "withdrawals", description = "Customers' withdrawals and address whitelists; the staff queue, \
            approvals and the four-eyes withdrawal policy."),
        (name = "reserves", description = "Proof of reserves: liabilities snapshots (a Merkle sum tree of every \
            customer's balances), customers' inclusion proofs and auditors' leaf files (docs/reserves-spec.md)."),
        (name = "compliance", description = "Sanctions lists and screening, address lists, compliance cases, KYC, \
            the Travel Rule and the three-level review of large transfers.")
    ),
    modifiers(&OperatorToken)
)]
pub struct ApiDoc;

struct OperatorToken;

impl utoipa::Modify for OperatorToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // A customer's session works only with the token of the device it was created on; an API key signs each
        // request (HMAC-SHA256 over method, path with query, body and the timestamp) in three headers.
        for (name, header, what) in [
            ("device", "x-rampart-device", "the device token a customer session is bound to"),
            ("api_key", "x-rampart-key", "an API key's id (rak_…)"),
            ("api_timestamp", "x-rampart-timestamp", "the signing time in milliseconds since the Unix epoch"),
            ("api_signature", "x-rampart-sign", "HMAC-SHA256 of method, path and query, body and timestamp, hex"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(header, what))),
            );
        }
    }
}

/// JSON extraction whose rejections use the API's error shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await.map_err(|e: JsonRejection| ApiError::from(e))?;
        Ok(ApiJson(value))
    }
}

fn path_id<T>(path: Result<Path<String>, PathRejection>) -> Result<T, ApiError>
where
    T: std::str::FromStr<Err = rampart_core::IdParseError>,
{
    let Path(raw) = path.map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
    raw.parse().map_err(|e| ApiError::bad_request("invalid_id", format!("id \"{}\": {e}", raw.escape_debug())))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "the database does not answer", body = ErrorBody)
))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the database does not answer")
    })?;
    Ok(Json(serde_json::json!({"status": "ready", "backend": state.store().backend().as_str()})))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json",
    responses((status = 200, description = "the OpenAPI 3 document", body = serde_json::Value)))]
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The configured assets.
#[utoipa::path(get, path = "/v1/assets", security(("bearer" = [])),
    responses((status = 200, body = Vec<AssetView>), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_assets(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<AssetView>>, ApiError> {
    state.authorize(&principal, Permission::LedgerRead, "ledger.assets.read", "ledger").await?;
    Ok(Json(
        state
            .assets()
            .iter()
            .map(|a| AssetView {
                code: a.code.to_string(),
                decimals: a.decimals,
                chain: a.chain.clone(),
                confirmations: a.confirmations,
            })
            .collect(),
    ))
}

/// Creates one account. `201` when created, `200` when an identical account exists (a safe retry), `409` when an
/// account with this id exists with other fields, `422` for any other refusal.
#[utoipa::path(post, path = "/v1/accounts", request_body = AccountRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = AccountView), (status = 200, body = AccountView, description = "exists"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ))]
pub(crate) async fn create_account(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<AccountRequest>,
) -> Result<Response, ApiError> {
    state.authorize(&principal, Permission::LedgerWrite, "ledger.accounts.create", "ledger").await?;
    let account = request.parse(state.assets(), "")?;
    let keyring = state.keyring()?;
    let actor = principal.actor();
    let by = AuditedBy::new(state.auditor(&keyring), &actor);
    let result = state.store().create_accounts_audited(&[account], state.now_ns(), &by).await?[0];
    metrics::counter!("ledger_accounts_total", "result" => result.as_str()).increment(1);
    let status = match result {
        CreateAccountResult::Ok => StatusCode::CREATED,
        CreateAccountResult::Exists => StatusCode::OK,
        refused => return Err(refusal(refused.as_str(), &format!("account {}", account.id))),
    };
    let stored = state.store().account(account.id).await?.ok_or_else(|| ApiError::not_found("account vanished"))?;
    Ok((status, Json(AccountView::of(&stored, state.assets()))).into_response())
}

fn refusal(code: &'static str, what: &str) -> ApiError {
    let status =
        if code == "exists_with_different_fields" { StatusCode::CONFLICT } else { StatusCode::UNPROCESSABLE_ENTITY };
    ApiError::new(status, code, format!("{what} refused: {}", code.replace('_', " ")))
}

/// Creates a batch of accounts in one transaction; one result per item.
#[utoipa::path(post, path = "/v1/accounts/batch", request_body = Vec<AccountRequest>,
    security(("bearer" = [])),
    responses((status = 200, body = BatchResults), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn create_accounts(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(requests): ApiJson<Vec<AccountRequest>>,
) -> Result<Json<BatchResults>, ApiError> {
    state.authorize(&principal, Permission::LedgerWrite, "ledger.accounts.create", "ledger").await?;
    let batch = requests
        .iter()
        .enumerate()
        .map(|(i, r)| r.parse(state.assets(), &format!("accounts[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let keyring = state.keyring()?;
    let actor = principal.actor();
    let by = AuditedBy::new(state.auditor(&keyring), &actor);
    let results = state.store().create_accounts_audited(&batch, state.now_ns(), &by).await?;
    let results = batch
        .iter()
        .zip(results)
        .enumerate()
        .map(|(index, (a, r))| {
            metrics::counter!("ledger_accounts_total", "result" => r.as_str()).increment(1);
            ItemResult { index, id: a.id.to_string(), result: r.as_str().to_owned() }
        })
        .collect();
    Ok(Json(BatchResults { results }))
}

/// An account and its balances.
#[utoipa::path(get, path = "/v1/accounts/{id}", params(("id" = String, Path, description = "account id")),
    security(("bearer" = [])),
    responses((status = 200, body = AccountView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_account(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AccountView>, ApiError> {
    state.authorize(&principal, Permission::LedgerRead, "ledger.accounts.read", "ledger").await?;
    let id: AccountId = path_id(path)?;
    let account = state.store().account(id).await?.ok_or_else(|| ApiError::not_found(format!("no account {id}")))?;
    Ok(Json(AccountView::of(&account, state.assets())))
}

/// Query of `GET /v1/accounts/{id}/transfers`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// How many transfers, newest first (1 to 1000, default 100).
    limit: Option<u32>,
}

/// The most recent transfers of an account, newest first.
#[utoipa::path(get, path = "/v1/accounts/{id}/transfers",
    params(("id" = String, Path, description = "account id"), HistoryQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<TransferView>), (status = 400, body = ErrorBody)))]
pub(crate) async fn account_transfers(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<TransferView>>, ApiError> {
    /// The most transfers one page returns.
    const HISTORY_LIMIT_MAX: u32 = 1000;
    state.authorize(&principal, Permission::LedgerRead, "ledger.transfers.read", "ledger").await?;
    let id: AccountId = path_id(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be 1 to {HISTORY_LIMIT_MAX}")));
    }
    let transfers = state.store().account_transfers(id, limit).await?;
    Ok(Json(transfers.iter().map(|t| TransferView::of(t, None, state.assets())).collect()))
}

/// Creates one transfer, or posts or voids a pending one. `201` when applied, `200` when an identical transfer
/// exists (a safe retry), `409` when a transfer with this id exists with other fields, `422` with the ledger's result
/// code (`exceeds_credits`, `pending_transfer_expired`, …) for any other refusal.
#[utoipa::path(post, path = "/v1/transfers", request_body = TransferRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = TransferView), (status = 200, body = TransferView, description = "exists"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ))]
pub(crate) async fn create_transfer(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<TransferRequest>,
) -> Result<Response, ApiError> {
    state.authorize(&principal, Permission::LedgerWrite, "ledger.transfers.create", "ledger").await?;
    let transfer = request.parse(state.assets(), "")?;
    let keyring = state.keyring()?;
    let actor = principal.actor();
    let by = AuditedBy::new(state.auditor(&keyring), &actor);
    let result = state.store().create_transfers_audited(&[transfer], state.now_ns(), &by).await?[0];
    metrics::counter!("ledger_transfers_total", "result" => result.as_str()).increment(1);
    let status = match result {
        CreateTransferResult::Ok => StatusCode::CREATED,
        CreateTransferResult::Exists => StatusCode::OK,
        refused => return Err(refusal(refused.as_str(), &format!("transfer {}", transfer.id))),
    };
    let stored = state.store().transfer(transfer.id).await?.ok_or_else(|| ApiError::not_found("transfer vanished"))?;
    Ok((status, Json(TransferView::of(&stored.transfer, stored.pending, state.assets()))).into_response())
}

/// Creates a batch of transfers in one transaction, in order; linked chains succeed or fail together. One result
/// per item. Any malformed item refuses the whole batch with `400` and writes nothing.
#[utoipa::path(post, path = "/v1/transfers/batch", request_body = Vec<TransferRequest>,
    security(("bearer" = [])),
    responses((status = 200, body = BatchResults), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn create_transfers(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(requests): ApiJson<Vec<TransferRequest>>,
) -> Result<Json<BatchResults>, ApiError> {
    state.authorize(&principal, Permission::LedgerWrite, "ledger.transfers.create", "ledger").await?;
    let batch = requests
        .iter()
        .enumerate()
        .map(|(i, r)| r.parse(state.assets(), &format!("transfers[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let keyring = state.keyring()?;
    let actor = principal.actor();
    let by = AuditedBy::new(state.auditor(&keyring), &actor);
    let results = state.store().create_transfers_audited(&batch, state.now_ns(), &by).await?;
    let results = batch
        .iter()
        .zip(results)
        .enumerate()
        .map(|(index, (t, r))| {
            metrics::counter!("ledger_transfers_total", "result" => r.as_str()).increment(1);
            ItemResult { index, id: t.id.to_string(), result: r.as_str().to_owned() }
        })
        .collect();
    Ok(Json(BatchResults { results }))
}

/// A transfer and, if pending, its state.
#[utoipa::path(get, path = "/v1/transfers/{id}", params(("id" = String, Path, description = "transfer id")),
    security(("bearer" = [])),
    responses((status = 200, body = TransferView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_transfer(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    state.authorize(&principal, Permission::LedgerRead, "ledger.transfers.read", "ledger").await?;
    let id: TransferId = path_id(path)?;
    let stored = state.store().transfer(id).await?.ok_or_else(|| ApiError::not_found(format!("no transfer {id}")))?;
    Ok(Json(TransferView::of(&stored.transfer, stored.pending, state.assets())))
}

/// Checks the whole ledger from one snapshot: Σ debits = Σ credits per asset, every account within its flags, every
/// pending balance equal to its live holds.
#[utoipa::path(get, path = "/v1/ledger/check", security(("bearer" = [])),
    responses((status = 200, body = LedgerCheck)))]
pub(crate) async fn check_ledger(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<LedgerCheck>, ApiError> {
    state.authorize(&principal, Permission::LedgerRead, "ledger.check", "ledger").await?;
    let report = state.store().verify_ledger().await?;
    if let Some(v) = &report.violation {
        tracing::error!(violation = ?v, "LEDGER INVARIANT BROKEN");
    }
    Ok(Json(LedgerCheck {
        balanced: report.violation.is_none(),
        accounts: report.accounts,
        pending: report.pending,
        assets: report.totals.iter().map(|(code, t)| AssetTotalsView::of(*code, t, state.assets())).collect(),
        violation: report.violation.map(|v| format!("{v:?}")),
    }))
}
