//! Staff actions on a stuck withdrawal transaction: send it again, or replace it by one paying a higher fee (the same
//! inputs and payments, less change). Each needs the `custody_ceremony` permission, a reason and the staff member's
//! current TOTP code, and is audited with the chain's answer.

use axum::Json;
use axum::extract::{Path, State};
use rampart_audit::Permission;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::principal::Principal;
use crate::withdrawals::{self, StuckOutcome};
use crate::withdrawals_api::{StaffDecision, staff_factor};

/// `POST /v1/withdrawals/{id}/rebroadcast`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebroadcastRequest {
    /// Why (1 to 500 characters).
    pub reason: String,
    /// The staff member's current TOTP code.
    pub totp_code: String,
}

/// `POST /v1/withdrawals/{id}/bump-fee`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BumpFeeRequest {
    /// The replacement's fee rate, in satoshis per virtual byte: at least enough to pay the original's fee and the
    /// replacement's own relay (BIP-125), at most 2,000.
    pub fee_rate_sat_vb: u64,
    /// Why (1 to 500 characters).
    pub reason: String,
    /// The staff member's current TOTP code.
    pub totp_code: String,
}

/// What the action did.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct StuckView {
    /// The withdrawal.
    pub withdrawal: String,
    /// The transaction that now pays it.
    pub txid: String,
    /// Its network fee, in satoshis (as a string).
    pub fee_sat: String,
    /// The chain's answer: `accepted`, `pending` (the chain was unreachable; the worker sends it), or why it refused.
    pub chain: String,
}

fn view(id: &str, o: StuckOutcome) -> StuckView {
    StuckView { withdrawal: id.to_owned(), txid: o.txid.to_string(), fee_sat: o.fee_sat.to_string(), chain: o.chain }
}

async fn checked(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: &str,
    reason: &str,
    totp_code: &str,
) -> Result<(rampart_store::WithdrawalRecord, String), ApiError> {
    state.authorize(principal, Permission::CustodyCeremony, action, &format!("withdrawal:{id}")).await?;
    let decision = StaffDecision { reason: reason.to_owned(), totp_code: totp_code.to_owned() };
    let reason = staff_factor(state, principal, &decision).await?;
    let w = state.store().withdrawal(id).await?.ok_or_else(|| ApiError::not_found(format!("no withdrawal {id}")))?;
    Ok((w, reason))
}

fn custody(state: &AppState) -> Result<&crate::custody::Custody, ApiError> {
    state.custody().ok_or_else(|| ApiError::not_found("custody is not configured"))
}

/// Sends the stored transaction of a broadcast withdrawal to the chain again (after a mempool dropped it, say).
#[utoipa::path(post, path = "/v1/withdrawals/{id}/rebroadcast", request_body = RebroadcastRequest,
    params(("id" = String, Path, description = "withdrawal id")), security(("bearer" = [])),
    responses((status = 200, body = StuckView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn rebroadcast(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RebroadcastRequest>,
) -> Result<Json<StuckView>, ApiError> {
    let (w, reason) =
        checked(&state, &principal, &id, "withdrawals.rebroadcast", &body.reason, &body.totp_code).await?;
    let outcome = withdrawals::rebroadcast_stuck(&state, custody(&state)?, &w, &principal.actor(), &reason).await?;
    Ok(Json(view(&id, outcome)))
}

/// Replaces the transaction of a broadcast withdrawal by one with the same inputs and payments and a higher fee
/// (replace-by-fee), signed by the hot key; the exchange pays the difference.
#[utoipa::path(post, path = "/v1/withdrawals/{id}/bump-fee", request_body = BumpFeeRequest,
    params(("id" = String, Path, description = "withdrawal id")), security(("bearer" = [])),
    responses((status = 200, body = StuckView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn bump_fee(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BumpFeeRequest>,
) -> Result<Json<StuckView>, ApiError> {
    let (w, reason) = checked(&state, &principal, &id, "withdrawals.bump_fee", &body.reason, &body.totp_code).await?;
    let outcome =
        withdrawals::bump_fee(&state, custody(&state)?, &w, body.fee_rate_sat_vb, &principal.actor(), &reason).await?;
    Ok(Json(view(&id, outcome)))
}
