//! Withdrawal routes: customers ask, follow and cancel withdrawals and keep their address whitelist; staff work the
//! queue (approve or reject with a second factor) and change the policy by four eyes.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use rampart_audit::{Outcome, Permission};
use rampart_auth::BearerSecret;
use rampart_compliance::travel;
use rampart_notify::Notification;
use rampart_risk::Outcome as RiskOutcome;
use rampart_store::{
    Advanced, Approved, Changes, Effects, NewTicket, NewWithdrawal, PolicyDecided, PolicyRecord, QueueItem, Requested,
    Then, WhitelistEntry, WithdrawalRecord,
};
use rampart_withdrawal::{ApprovalRefused, Policy, Requirement, State as WState};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::compliance::AddressVerdict;
use crate::customer_api::{EMAIL_LINK_S, customer_ledger_account, link, lock_until, ticket_customer};
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::identity::{Customer, Scope, StepUp, Via, customer_record, notice, rfc3339, withdrawal_gate};
use crate::principal::Principal;
use crate::withdrawals::{self, RiskFinding, Screening, internal, masked, request_hash};

const NS: u64 = 1_000_000_000;
/// A risk challenge is answered by a second factor proven this recently.
const CHALLENGE_WINDOW_S: u64 = 60;
const KEY_CHARS_MAX: usize = 64;
const LABEL_CHARS_MAX: usize = 64;
const REASON_CHARS_MAX: usize = 500;

/// A withdrawal as its customer and staff see it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WithdrawalView {
    /// Id.
    pub id: String,
    /// Asset.
    pub asset: String,
    /// Amount, decimal.
    pub amount: String,
    /// The network fee held with it (the most it costs), decimal.
    pub fee_held: String,
    /// Its share of the network fee once paid, decimal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_fee: Option<String>,
    /// The value in US dollars when asked, decimal.
    pub usd: String,
    /// Destination.
    pub address: String,
    /// State.
    pub state: String,
    /// Why it was refused, failed, is waiting or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The transaction that pays it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txid: Option<String>,
    /// The idempotency key.
    pub idempotency_key: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// When a wait ends it (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

fn usd_text(micro: i64) -> String {
    let m = micro.max(0);
    format!("{}.{:02}", m / 1_000_000, (m % 1_000_000) / 10_000)
}

async fn view(state: &AppState, w: &WithdrawalRecord) -> Result<WithdrawalView, ApiError> {
    let asset = state.assets().lookup(&w.asset).map_err(internal)?;
    let fmt = |units: &str| -> String {
        units.parse::<u128>().map(|u| asset.format_amount(rampart_core::Amount::new(u))).unwrap_or_default()
    };
    let txid = match w.custody_tx {
        Some(id) => state.store().custody_tx(id).await?.map(|t| {
            use bitcoin::hashes::Hash;
            bitcoin::Txid::from_slice(&t.txid).map(|t| t.to_string()).unwrap_or_default()
        }),
        None => None,
    };
    Ok(WithdrawalView {
        id: w.id.clone(),
        asset: w.asset.clone(),
        amount: fmt(&w.amount),
        fee_held: fmt(&w.fee_held),
        network_fee: w.network_fee.map(|f| fmt(&f.to_string())),
        usd: usd_text(w.usd_micro),
        address: w.address.clone(),
        state: w.state.clone(),
        reason: w.reason.clone(),
        txid,
        idempotency_key: w.idempotency_key.clone(),
        created_at: rfc3339(u64::try_from(w.created_at).unwrap_or(0)),
        updated_at: rfc3339(u64::try_from(w.updated_at).unwrap_or(0)),
        expires_at: w.expires_at.map(|e| rfc3339(u64::try_from(e).unwrap_or(0))),
    })
}

/// A withdrawal request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    /// The asset's code.
    pub asset: String,
    /// The amount, decimal in the asset's unit.
    pub amount: String,
    /// The destination address, on the asset's chain and network.
    pub address: String,
    /// The client's key for this request (or the `Idempotency-Key` header): a retry with the same key and the same
    /// request answers the withdrawal made the first time.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The Travel Rule's data, required at or above its threshold: `originator` and `beneficiary`, each with
    /// `name`, `account` and optional `institution` and `details`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub travel_rule: Option<travel::TravelRule>,
}

fn idempotency_key(headers: &HeaderMap, body: Option<&str>) -> Result<String, ApiError> {
    let header = headers.get("idempotency-key").map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    let key = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::bad_request(
                "idempotency_key_mismatch",
                "the Idempotency-Key header and the body's idempotency_key differ",
            ));
        }
        (Some(k), _) => k,
        (None, Some(b)) => b.to_owned(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "idempotency_key_required",
                "a withdrawal needs an idempotency key (the Idempotency-Key header or idempotency_key)",
            ));
        }
    };
    if key.is_empty()
        || key.len() > KEY_CHARS_MAX
        || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("an idempotency key is 1 to {KEY_CHARS_MAX} letters, digits, '-' or '_'"),
        ));
    }
    Ok(key)
}

/// Parses a destination for the custody chain's network; answers it in canonical form.
fn parse_address(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let network = crate::custody::network_of(state)?;
    raw.trim()
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
        .ok()
        .and_then(|a| a.require_network(network).ok())
        .map(|a| a.to_string())
        .ok_or_else(|| ApiError::bad_request("invalid_address", format!("not a valid {network} address")))
}

fn custody_asset(state: &AppState, code: &str) -> Result<rampart_core::Asset, ApiError> {
    let custody = state.custody().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "withdrawals_unavailable", "custody is not configured")
    })?;
    let asset = state.assets().lookup(code).map_err(|e| ApiError::bad_request("unknown_asset", e.to_string()))?.clone();
    if asset.code.as_str() != custody.config.asset {
        return Err(ApiError::bad_request(
            "unsupported_asset",
            format!("withdrawals of {} are not supported here", asset.code),
        ));
    }
    Ok(asset)
}

/// What the gates found.
struct Gated {
    entry: Option<WhitelistEntry>,
    whitelisted_for_s: Option<u64>,
    usd: u64,
    fee_held: u128,
    screening: Screening,
    finding: RiskFinding,
    travel_rule: Option<travel::TravelRule>,
    frozen_ok: bool,
    /// The request's risk event when the engine allowed it: logged by the recording transaction.
    risk_event: Option<rampart_store::RiskEventRecord>,
}

/// The gates of a new withdrawal, in order: the account (lock, status), the whitelist, the KYC limits, the
/// balance, sanctions and address lists, the Travel Rule's data, the risk engine.
#[allow(clippy::too_many_arguments)]
async fn gates(
    state: &AppState,
    customer: &Customer,
    body: &WithdrawalRequest,
    asset: &rampart_core::Asset,
    amount: u128,
    address: &str,
    step_up: Option<&StepUp>,
    now: u64,
) -> Result<Gated, ApiError> {
    let config = &state.withdrawals().config;
    let customer_id = customer.record.id;
    withdrawal_gate(&customer.record, now)?;
    // What the gates read about the customer, in one round trip: the whitelist entry and mode, the KYC level, and
    // the sums for the limits (day, month) and for the policy's windows.
    let (day_start, month_start) = withdrawals::start_of_day_and_month(now);
    let windows = state.withdrawals().policy().windows();
    let mut since = vec![day_start, month_start];
    since.extend(windows.iter().map(|w| now.saturating_sub(w * NS)));
    let ask = rampart_store::PositionAsk {
        customer_id,
        asset: asset.code.to_string(),
        address: address.to_owned(),
        account: customer_ledger_account(customer_id, asset.code.as_str()),
        since_ns: since,
    };
    let position = crate::group::GroupCommit::<withdrawals::Positions>::submit(state, ask)
        .await?
        .ok_or_else(|| ApiError::unauthorized("no such customer"))?;

    // The whitelist.
    let entry = position.whitelist;
    let whitelisted_for_s = match &entry {
        Some(e) if e.state == "active" => {
            let usable = u64::try_from(e.usable_at.unwrap_or(0)).unwrap_or(0);
            if usable > now {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "address_cooling_off",
                    format!("this whitelisted address can be used from {} ({usable})", rfc3339(usable)),
                ));
            }
            Some((now - u64::try_from(e.confirmed_at.unwrap_or(0)).unwrap_or(0)) / NS)
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "address_unconfirmed",
                "this address waits for the confirmation link emailed when it was added",
            ));
        }
        None => None,
    };
    let api_key = matches!(customer.via, Via::ApiKey { .. });
    if whitelisted_for_s.is_none() && (api_key || position.whitelist_only) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "address_not_whitelisted",
            if api_key {
                "an API key may withdraw only to a whitelisted address"
            } else {
                "this account withdraws only to whitelisted addresses"
            },
        ));
    }

    // The KYC limits (checked again under the account's lock when the request is recorded).
    let usd = state.withdrawals().usd_micro(asset, amount).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_price",
            format!("no USD price is configured for {}", asset.code),
        )
    })?;
    let limits = state.compliance().config().kyc_limits;
    let level = position.kyc_level;
    let kyc = rampart_compliance::kyc::Level::from_number(level).unwrap_or(rampart_compliance::kyc::Level::Zero);
    limits.check(kyc, position.usd_since[0], position.usd_since[1], usd).map_err(over_limit)?;
    // The balance (read with the position), checked before the gates with side effects (a request far above it
    // must not make the risk engine freeze the account); the hold in the recording transaction is what decides.
    let fee_held = config.fee_held.get(asset.code.as_str()).copied().unwrap_or(0);
    if position.available.is_none_or(|available| available < amount + fee_held) {
        return Err(insufficient_funds());
    }

    // Sanctions and the exchange's address lists.
    let mut address_note = "clear".to_owned();
    let mut forced_high = false;
    match state.compliance().screen_address(address) {
        AddressVerdict::Clear => {}
        AddressVerdict::Review(listing) => {
            address_note = format!("risk list {}: {}", listing.source, listing.reason);
            forced_high = true;
        }
        AddressVerdict::Refuse(listing) => {
            return Err(crate::compliance_api::refuse_destination(
                state,
                customer,
                address,
                asset.code.as_str(),
                &listing,
            )
            .await?);
        }
    }
    // The Travel Rule's data, at or above its threshold.
    let travel_rule = if travel::required(usd, state.compliance().config().travel_rule_usd) {
        let data = body.travel_rule.as_ref().ok_or_else(|| {
            ApiError::bad_request(
                "travel_rule_required",
                "a withdrawal of this value carries the Travel Rule's originator and beneficiary (travel_rule)",
            )
        })?;
        data.validate().map_err(|e| ApiError::bad_request(e.code, e.message))?;
        Some(data.clone())
    } else {
        None
    };

    // The risk engine.
    let device = customer.session().ok().map(|s| s.device_id);
    let event = crate::risk::event(
        state,
        customer_id,
        customer.ip,
        device,
        customer.country,
        rampart_risk::EventKind::Withdrawal { amount_micro_usd: usd, destination: address.to_owned() },
    );
    // An event the engine allows is logged by the recording transaction (one commit fewer on the common path);
    // any other is logged before the decision is acted on.
    let (assessed, risk_event) = match crate::risk::score(state, customer_id, event)? {
        None => (crate::risk::allowed(), None),
        Some(scored) if scored.outcome() == RiskOutcome::Allow => {
            let record = scored.record.clone();
            (crate::risk::act(state, scored).await?, Some(record))
        }
        Some(scored) => {
            crate::group::GroupCommit::<crate::risk::RiskLog>::submit(state, scored.record.clone()).await?;
            (crate::risk::act(state, scored).await?, None)
        }
    };
    match assessed.decision.outcome {
        RiskOutcome::Block => return Err(crate::risk::refusal(&assessed).expect("a block refuses")),
        RiskOutcome::Challenge => {
            let fresh = step_up.is_some_and(|p| now.saturating_sub(p.proven_at_ns()) <= CHALLENGE_WINDOW_S * NS);
            if !fresh {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "step_up_required",
                    format!(
                        "this withdrawal needs a second factor proven in the last {CHALLENGE_WINDOW_S} s: POST \
                         /v1/me/step-up, then send the same request again with the same idempotency key"
                    ),
                ));
            }
        }
        _ => {}
    }

    // What the gates found, for the policy now and for staff later. The windows sum earlier withdrawals.
    let window_usd = windows.iter().copied().zip(position.usd_since[2..].iter().copied()).collect();
    let bands = state.withdrawals().policy().risk_bands;
    let screening = Screening {
        kyc_level: level,
        group: position.group.clone(),
        window_usd,
        whitelisted_for_s,
        risk_score: if forced_high { assessed.decision.score.max(bands.high) } else { assessed.decision.score },
        address: address_note,
        ..Screening::default()
    };
    let finding = RiskFinding {
        outcome: assessed.decision.outcome,
        score: assessed.decision.score,
        reasons: assessed.decision.enforced().map(|r| r.rule.to_string()).collect(),
        case: assessed.case,
    };
    Ok(Gated {
        entry,
        whitelisted_for_s,
        usd,
        fee_held,
        screening,
        finding,
        travel_rule,
        // A freeze the risk engine just decided froze the account: the request is still recorded, so that the
        // reviewer who releases the account releases the withdrawal with it.
        frozen_ok: assessed.decision.outcome == RiskOutcome::Freeze,
        risk_event,
    })
}

/// `POST /v1/me/withdrawals`: asks for a withdrawal. In a session it needs a second factor proven within the
/// step-up window; with an API key, the `withdraw` scope (and the key's mandatory IP allow-list). The gates run in
/// order: the account (lock, status), the whitelist, the KYC limits, sanctions and address lists, the risk engine;
/// then the request is recorded with its funds held, and the compliance review and the policy decide where it goes.
#[utoipa::path(post, path = "/v1/me/withdrawals", tag = "withdrawals", request_body = WithdrawalRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "the idempotency key, instead of the body's")),
    security(("bearer" = [], "device" = []), ("api_key" = [], "api_timestamp" = [], "api_signature" = [])),
    responses(
        (status = 201, description = "recorded, its funds held", body = WithdrawalView),
        (status = 200, description = "the withdrawal this idempotency key made", body = WithdrawalView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "a gate refused: step-up, scope, lock, whitelist, limits, destination, risk",
            body = ErrorBody),
        (status = 409, description = "insufficient_funds or idempotency_key_reused", body = ErrorBody),
        (status = 503, description = "custody or a USD price is not configured", body = ErrorBody)
    ))]
pub(crate) async fn request(
    State(state): State<AppState>,
    customer: Customer,
    headers: HeaderMap,
    ApiJson(body): ApiJson<WithdrawalRequest>,
) -> Result<(StatusCode, Json<WithdrawalView>), ApiError> {
    let step_up = match &customer.via {
        Via::Session(_) => Some(StepUp::check(&state, &customer)?),
        Via::ApiKey { .. } => {
            customer.require(Scope::Withdraw)?;
            None
        }
    };
    let key = idempotency_key(&headers, body.idempotency_key.as_deref())?;
    let asset = custody_asset(&state, &body.asset)?;
    withdrawals::ensure_policy(&state).await?;
    let amount =
        asset.parse_amount(&body.amount).map_err(|e| ApiError::bad_request("invalid_amount", e.to_string()))?.units();
    let config = &state.withdrawals().config;
    let min = config.min_amount.get(asset.code.as_str()).copied().unwrap_or(1);
    if amount < min {
        return Err(ApiError::bad_request(
            "below_minimum",
            format!(
                "the smallest withdrawal of {} is {}",
                asset.code,
                asset.format_amount(rampart_core::Amount::new(min))
            ),
        ));
    }
    let address = parse_address(&state, &body.address)?;
    let hash = request_hash(asset.code.as_str(), amount, &address);
    let customer_id = customer.record.id;
    let store = state.store();
    let now = state.now_ns();
    // A retry answers the withdrawal it made even where a gate would now refuse it (its own hold took the
    // balance): the key is looked up when a gate refuses; otherwise the recording transaction finds it.
    let gated = gates(&state, &customer, &body, &asset, amount, &address, step_up.as_ref(), now).await;
    let Gated { entry, whitelisted_for_s, usd, fee_held, screening, finding, travel_rule, frozen_ok, risk_event } =
        match gated {
            Ok(g) => g,
            Err(refusal) => {
                if let Some(existing) = store.customer_withdrawal_by_key(customer_id, &key).await? {
                    return answer_existing(&state, existing, hash).await;
                }
                return Err(refusal);
            }
        };
    // The allowed risk events (the signed request's, the withdrawal's) ride in the recording transaction; on any
    // way out before it has committed, they are logged on their own (a restart replays them).
    let risk_events: Vec<_> = customer.risk.take().into_iter().chain(risk_event).collect();
    let mut unlogged = crate::risk::Unlogged::new(&state, crate::risk::PendingRisk::holding(risk_events.clone()));
    let mut screening = screening;
    let api_key = matches!(customer.via, Via::ApiKey { .. });
    // Recorded, with the funds held, in one transaction.
    state.withdrawals().ensure_accounts(&state, asset.code.as_str()).await?;
    let id: u128 = loop {
        let v = u128::from_be_bytes(rand::random());
        if v != 0 {
            break v;
        }
    };
    let id_text = format!("{id:032x}");
    let keyring = state.keyring()?;
    let record = customer_record(
        &state,
        &customer.actor(),
        "withdrawal.requested",
        customer_id,
        Outcome::Success,
        &[
            ("withdrawal", id_text.clone()),
            ("asset", asset.code.to_string()),
            ("amount", asset.format_amount(rampart_core::Amount::new(amount))),
            ("address", address.clone()),
            ("usd_micros", usd.to_string()),
            ("step_up_at", step_up.as_ref().map(|p| p.proven_at_ns().to_string()).unwrap_or_else(|| "api_key".into())),
        ],
    );
    let effects = Effects::audit(record).notify(notice(
        &keyring,
        Notification::WithdrawalRequested {
            asset: asset.code,
            amount: asset.format_amount(rampart_core::Amount::new(amount)),
            destination_masked: masked(&address),
        },
        None,
    ));
    let mut effects = effects;
    let actor = customer.actor();
    // When nothing waits for people, the policy decides now and the first moves are made in the recording
    // transaction; otherwise the request is recorded first and screened after (a review is opened for it).
    let provisional = WithdrawalRecord {
        id: id_text.clone(),
        customer_id,
        idempotency_key: key.clone(),
        request_hash: hash.to_vec(),
        asset: asset.code.to_string(),
        amount: amount.to_string(),
        fee_held: fee_held.to_string(),
        usd_micro: i64::try_from(usd).unwrap_or(i64::MAX),
        address: address.clone(),
        whitelist_id: None,
        initiator: if api_key { "api_key" } else { "session" }.to_owned(),
        actor: actor.clone(),
        state: WState::Requested.as_str().to_owned(),
        screening: "{}".into(),
        risk_score: 0,
        risk_case: None,
        review_id: None,
        policy_version: None,
        policy_rule: None,
        requirement: None,
        reason: None,
        custody_tx: None,
        network_fee: None,
        created_at: i64::try_from(now).unwrap_or(i64::MAX),
        updated_at: i64::try_from(now).unwrap_or(i64::MAX),
        expires_at: None,
    };
    let at_once = withdrawals::decidable_at_once(&state, usd, finding.outcome);
    // A request that waits is recorded with its gates' findings, which a restart screens it on if it dies first.
    let recorded_screening = if at_once {
        None
    } else {
        let mut findings = screening.clone();
        findings.risk_outcome = finding.outcome.name().to_owned();
        findings.risk_reasons = finding.reasons.clone();
        findings.risk_case = finding.case;
        Some(serde_json::to_string(&findings).map_err(internal)?)
    };
    let plan = if at_once {
        screening.risk_outcome = finding.outcome.name().to_owned();
        screening.risk_reasons = finding.reasons.clone();
        let base = withdrawals::Planned {
            path: vec![WState::Screened],
            risk_score: Some(i64::from(screening.risk_score)),
            ..withdrawals::Planned::default()
        };
        let plan = withdrawals::plan_by_policy(&state, &provisional, screening.clone(), base)?;
        let (more, ledger) =
            withdrawals::move_effects(&state, &keyring, &provisional, &plan.path, &actor, &plan.reason)?;
        effects.records.extend(more.records);
        effects.notices.extend(more.notices);
        Some((plan, ledger))
    } else {
        None
    };
    let then = plan.map(|(plan, ledger)| Then {
        path: plan.path,
        actor: actor.clone(),
        reason: plan.reason,
        screening: (!plan.screening.is_empty()).then_some(plan.screening),
        risk_score: plan.risk_score,
        risk_case: plan.risk_case,
        review_id: plan.review_id,
        policy_version: plan.policy_version,
        policy_rule: plan.policy_rule,
        requirement: plan.requirement,
        expires_at_ns: plan.expires_at_ns,
        ledger,
    });
    let new = NewWithdrawal {
        id: id_text,
        customer_id,
        idempotency_key: key,
        request_hash: hash,
        asset: asset.code.to_string(),
        amount,
        fee_held,
        usd_micro: usd,
        address,
        whitelist_id: entry.as_ref().filter(|_| whitelisted_for_s.is_some()).map(|e| e.id),
        initiator: if api_key { "api_key" } else { "session" },
        actor: actor.clone(),
        clearing: Some(withdrawals::new_clearing_account(customer_id, asset.code)),
        hold: withdrawals::hold(id, customer_id, asset.code, amount + fee_held),
        then,
        // A decision made now on the policy's windows holds only if no withdrawal of the customer is recorded
        // before this one: the recording transaction checks the sums again under the customer's lock.
        windows: if at_once {
            screening.window_usd.iter().map(|&(window_s, used)| (now.saturating_sub(window_s * NS), used)).collect()
        } else {
            Vec::new()
        },
        screening: recorded_screening,
        frozen_ok,
        effects,
        risk_events,
    };
    let recorded = withdrawals::record(&state, new).await?;
    unlogged.logged();
    let w = match recorded {
        Requested::Recorded(w) => w,
        Requested::Existing(w) => return answer_existing(&state, w, hash).await,
        Requested::KeyReused => return Err(key_reused()),
        Requested::Stale => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_withdrawal",
                "another withdrawal of this account was recorded while the policy decided this one: send the same \
                 request again (with the same idempotency key)",
            ));
        }
        Requested::NotActive => {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "account_not_active", "the account is locked or frozen"));
        }
        Requested::Locked { until_ns, reason } => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "security_lock",
                format!("withdrawals are suspended until {} ({until_ns}) after a recent {reason}", rfc3339(until_ns)),
            ));
        }
        Requested::OverLimit(e) => return Err(over_limit(e)),
        Requested::Ledger(result) => {
            return Err(match result {
                rampart_ledger::CreateTransferResult::ExceedsCredits => insufficient_funds(),
                other => ApiError::new(
                    StatusCode::CONFLICT,
                    other.as_str(),
                    format!("the ledger refused: {}", other.as_str()),
                ),
            });
        }
    };
    if let Some(data) = travel_rule {
        let transfer = crate::compliance::Transfer {
            customer_id,
            reference: &w.id,
            asset: &w.asset,
            amount: &w.amount,
            amount_usd: usd,
        };
        crate::compliance::record_travel_rule(&state, &actor, transfer, &data).await?;
    }
    if at_once {
        return Ok((StatusCode::CREATED, Json(view(&state, &w).await?)));
    }
    let w = match withdrawals::screen(&state, &w, screening, finding, &actor).await? {
        Advanced::Done(w) => *w,
        // Moved meanwhile (cancelled at once, say): show it as it is.
        _ => store.withdrawal(&w.id).await?.ok_or_else(|| internal("a recorded withdrawal vanished"))?,
    };
    Ok((StatusCode::CREATED, Json(view(&state, &w).await?)))
}

fn insufficient_funds() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "insufficient_funds",
        "the available balance does not cover the amount and the network fee held with it",
    )
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        "this idempotency key was used for a different withdrawal",
    )
}

fn over_limit(e: rampart_compliance::kyc::OverLimit) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "over_limit",
        format!(
            "this withdrawal exceeds the {} limit of your verification level: USD {} remains of USD {}",
            e.window,
            usd_text(i64::try_from(e.remaining).unwrap_or(i64::MAX)),
            usd_text(i64::try_from(e.limit).unwrap_or(i64::MAX))
        ),
    )
}

async fn answer_existing(
    state: &AppState,
    w: WithdrawalRecord,
    hash: [u8; 32],
) -> Result<(StatusCode, Json<WithdrawalView>), ApiError> {
    if w.request_hash != hash {
        return Err(key_reused());
    }
    Ok((StatusCode::OK, Json(view(state, &w).await?)))
}

/// The page of a list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// How many, newest first (at most 200).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Staff: the state to list (default: those waiting for people).
    #[serde(default)]
    pub state: Option<String>,
}

/// `GET /v1/me/withdrawals`.
#[utoipa::path(get, path = "/v1/me/withdrawals", tag = "withdrawals", params(ListQuery),
    security(("bearer" = [], "device" = []), ("api_key" = [], "api_timestamp" = [], "api_signature" = [])),
    responses(
        (status = 200, body = Vec<WithdrawalView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn mine(
    State(state): State<AppState>,
    customer: Customer,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<WithdrawalView>>, ApiError> {
    let q = crate::compliance_api::query(q)?;
    customer.require(Scope::Read)?;
    let mut out = Vec::new();
    for w in state.store().customer_withdrawals(customer.record.id, q.limit.unwrap_or(50).min(200)).await? {
        out.push(view(&state, &w).await?);
    }
    Ok(Json(out))
}

async fn own(
    state: &AppState,
    customer: &Customer,
    path: Result<Path<String>, PathRejection>,
) -> Result<WithdrawalRecord, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::bad_request("invalid_id", "a withdrawal id is 32 hex digits"))?;
    let w = state.store().withdrawal(&id).await?;
    // Another customer's withdrawal is as unknown as one that does not exist.
    w.filter(|w| w.customer_id == customer.record.id).ok_or_else(|| ApiError::not_found(format!("no withdrawal {id}")))
}

/// `GET /v1/me/withdrawals/{id}`.
#[utoipa::path(get, path = "/v1/me/withdrawals/{id}", tag = "withdrawals",
    params(("id" = String, Path, description = "withdrawal id (32 hex digits)")),
    security(("bearer" = [], "device" = []), ("api_key" = [], "api_timestamp" = [], "api_signature" = [])),
    responses(
        (status = 200, body = WithdrawalView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn one(
    State(state): State<AppState>,
    customer: Customer,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<WithdrawalView>, ApiError> {
    customer.require(Scope::Read)?;
    let w = own(&state, &customer, path).await?;
    Ok(Json(view(&state, &w).await?))
}

/// `POST /v1/me/withdrawals/{id}/cancel`: the customer cancels a withdrawal not yet signed; the funds return.
#[utoipa::path(post, path = "/v1/me/withdrawals/{id}/cancel", tag = "withdrawals",
    params(("id" = String, Path, description = "withdrawal id (32 hex digits)")),
    security(("bearer" = [], "device" = []), ("api_key" = [], "api_timestamp" = [], "api_signature" = [])),
    responses(
        (status = 200, description = "cancelled, the funds returned", body = WithdrawalView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "not_cancellable", body = ErrorBody)
    ))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    customer: Customer,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<WithdrawalView>, ApiError> {
    customer.require(Scope::Withdraw)?;
    let w = own(&state, &customer, path).await?;
    let from = w.state()?;
    if !from.is_cancellable() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("a withdrawal that is {from} can no longer be cancelled"),
        ));
    }
    match withdrawals::advance(
        &state,
        &w,
        &[WState::Cancelled],
        &customer.actor(),
        "cancelled by the customer",
        &Changes::default(),
    )
    .await?
    {
        Advanced::Done(w) => Ok(Json(view(&state, &w).await?)),
        Advanced::Stale(now) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("the withdrawal moved to {now} meanwhile; it can no longer be cancelled"),
        )),
        Advanced::NotFound => Err(ApiError::not_found("no such withdrawal")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The whitelist.

/// A whitelist entry.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WhitelistView {
    /// Id.
    pub id: i64,
    /// Asset.
    pub asset: String,
    /// Address.
    pub address: String,
    /// Label.
    pub label: String,
    /// `unconfirmed` or `active`.
    pub state: String,
    /// When it can be used (RFC 3339), once confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usable_at: Option<String>,
}

fn whitelist_view(e: &WhitelistEntry) -> WhitelistView {
    WhitelistView {
        id: e.id,
        asset: e.asset.clone(),
        address: e.address.clone(),
        label: e.label.clone(),
        state: e.state.clone(),
        usable_at: e.usable_at.map(|u| rfc3339(u64::try_from(u).unwrap_or(0))),
    }
}

/// The whitelist and its mode.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WhitelistPage {
    /// Whether withdrawals may go only to whitelisted addresses.
    pub whitelist_only: bool,
    /// The entries.
    pub addresses: Vec<WhitelistView>,
}

/// `GET /v1/me/whitelist`.
#[utoipa::path(get, path = "/v1/me/whitelist", tag = "withdrawals",
    security(("bearer" = [], "device" = []), ("api_key" = [], "api_timestamp" = [], "api_signature" = [])),
    responses(
        (status = 200, body = WhitelistPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn whitelist(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<WhitelistPage>, ApiError> {
    customer.require(Scope::Read)?;
    let entries = state.store().whitelist(customer.record.id).await?;
    Ok(Json(WhitelistPage {
        whitelist_only: state.store().whitelist_only(customer.record.id).await?,
        addresses: entries.iter().map(whitelist_view).collect(),
    }))
}

/// A new whitelist address.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAddress {
    /// Asset.
    pub asset: String,
    /// Address.
    pub address: String,
    /// The customer's name for it.
    pub label: String,
}

/// `POST /v1/me/whitelist`: adds an address (session with a fresh second factor); it becomes usable when the
/// emailed link confirms it and its cooling-off has passed.
#[utoipa::path(post, path = "/v1/me/whitelist", tag = "withdrawals", operation_id = "whitelist_add_address",
    request_body = NewAddress,
    security(("bearer" = [], "device" = [])),
    responses(
        (status = 201, description = "added, unconfirmed: a confirmation link is emailed", body = WhitelistView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "step_up_required, session_required or destination_refused", body = ErrorBody),
        (status = 409, description = "already_whitelisted", body = ErrorBody),
        (status = 503, description = "custody is not configured", body = ErrorBody)
    ))]
pub(crate) async fn add_address(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<NewAddress>,
) -> Result<(StatusCode, Json<WhitelistView>), ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let asset = custody_asset(&state, &body.asset)?;
    let address = parse_address(&state, &body.address)?;
    let label = body.label.trim();
    if label.is_empty() || label.chars().count() > LABEL_CHARS_MAX || label.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_label",
            format!("a label is 1 to {LABEL_CHARS_MAX} characters without control characters"),
        ));
    }
    if let AddressVerdict::Refuse(listing) = state.compliance().screen_address(&address) {
        return Err(crate::compliance_api::refuse_destination(
            &state,
            &customer,
            &address,
            asset.code.as_str(),
            &listing,
        )
        .await?);
    }
    let keyring = state.keyring()?;
    let token = BearerSecret::generate("rwl_");
    let now = state.now_ns();
    let record = customer_record(
        &state,
        &customer.actor(),
        "withdrawal.whitelist.added",
        customer.record.id,
        Outcome::Success,
        &[("address", address.clone()), ("label", label.to_owned()), ("step_up_at", proof.proven_at_ns().to_string())],
    );
    let link = link(&state, "/confirm-address", &token.secret);
    let owner = customer.record.subject();
    let make = |id: i64| {
        Effects::audit(record)
            .notify(notice(
                &keyring,
                Notification::WhitelistConfirmation {
                    link: rampart_notify::SecretLink::new(link),
                    address_masked: masked(&address),
                    label: label.to_owned(),
                },
                None,
            ))
            .ticket(NewTicket {
                token_hash: token.hash,
                purpose: "whitelist_confirm",
                owner,
                data: Some(id.to_string().into_bytes()),
                expires_at_ns: now + EMAIL_LINK_S * NS,
            })
    };
    let entry = state
        .store()
        .add_whitelist_address(
            customer.record.id,
            asset.code.as_str(),
            &address,
            label,
            now,
            &state.auditor(&keyring),
            make,
        )
        .await?
        .ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "already_whitelisted", "this address is on the whitelist")
        })?;
    Ok((StatusCode::CREATED, Json(whitelist_view(&entry))))
}

/// A token from an emailed link.
#[derive(Deserialize, ToSchema)]
#[schema(as = WhitelistToken)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token.
    #[schema(value_type = String)]
    pub token: SecretString,
}

/// `POST /v1/customers/whitelist/confirm`: the emailed link confirms a new address; its cooling-off starts.
#[utoipa::path(post, path = "/v1/customers/whitelist/confirm", tag = "withdrawals", request_body = TokenRequest,
    responses(
        (status = 200, description = "confirmed: usable once its cooling-off has passed", body = WhitelistView),
        (status = 400, body = ErrorBody), (status = 401, description = "invalid_ticket", body = ErrorBody),
        (status = 409, description = "not_unconfirmed", body = ErrorBody)
    ))]
pub(crate) async fn confirm_address(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<WhitelistView>, ApiError> {
    let (customer, data) = ticket_customer(&state, &body.token, "whitelist_confirm", None).await?;
    let id: i64 = data.and_then(|d| String::from_utf8(d).ok()).and_then(|s| s.parse().ok()).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_ticket", "the ticket or link is invalid or expired")
    })?;
    let keyring = state.keyring()?;
    let now = state.now_ns();
    let usable = now + state.withdrawals().config.cooling_off_s * NS;
    let record = customer_record(
        &state,
        &customer.subject(),
        "withdrawal.whitelist.confirmed",
        customer.id,
        Outcome::Success,
        &[("entry", id.to_string()), ("usable_at", usable.to_string())],
    );
    let entries = state.store().whitelist(customer.id).await?;
    let address = entries.iter().find(|e| e.id == id).map(|e| e.address.clone()).unwrap_or_default();
    let effects = Effects::audit(record).notify(notice(
        &keyring,
        Notification::WhitelistChanged { address_masked: masked(&address), added: true },
        None,
    ));
    let entry = state
        .store()
        .confirm_whitelist_address(id, customer.id, usable, now, &state.auditor(&keyring), effects)
        .await?
        .ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "not_unconfirmed", "this address is not waiting for confirmation")
        })?;
    // The link is followed outside any session: the event carries no address or device for the profile to learn.
    let event = rampart_risk::Event {
        at_ns: state.now_ns(),
        user: rampart_risk::UserId(u64::try_from(customer.id).unwrap_or(0)),
        ip: None,
        device: None,
        country: None,
        kind: rampart_risk::EventKind::WhitelistChange { destination: entry.address.clone(), added: true },
    };
    crate::risk::assess(&state, customer.id, event).await?;
    Ok(Json(whitelist_view(&entry)))
}

/// `DELETE /v1/me/whitelist/{id}`.
#[utoipa::path(delete, path = "/v1/me/whitelist/{id}", tag = "withdrawals",
    operation_id = "whitelist_remove_address",
    params(("id" = i64, Path, description = "whitelist entry id")), security(("bearer" = [], "device" = [])),
    responses(
        (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn remove_address(
    State(state): State<AppState>,
    customer: Customer,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let id = crate::staff_api::path_i64(path)?;
    let keyring = state.keyring()?;
    let entries = state.store().whitelist(customer.record.id).await?;
    let entry =
        entries.iter().find(|e| e.id == id).ok_or_else(|| ApiError::not_found(format!("no whitelist entry {id}")))?;
    let record = customer_record(
        &state,
        &customer.actor(),
        "withdrawal.whitelist.removed",
        customer.record.id,
        Outcome::Success,
        &[("address", entry.address.clone()), ("step_up_at", proof.proven_at_ns().to_string())],
    );
    let effects = Effects::audit(record).notify(notice(
        &keyring,
        Notification::WhitelistChanged { address_masked: masked(&entry.address), added: false },
        None,
    ));
    state
        .store()
        .remove_whitelist_address(id, customer.record.id, state.now_ns(), &state.auditor(&keyring), effects)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no whitelist entry {id}")))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The whitelist-only mode.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhitelistMode {
    /// On or off.
    pub enabled: bool,
}

/// `PUT /v1/me/whitelist-only`: turning it on takes effect at once; turning it off is a security change that
/// suspends withdrawals for the security lock's hours.
#[utoipa::path(put, path = "/v1/me/whitelist-only", tag = "withdrawals", request_body = WhitelistMode,
    security(("bearer" = [], "device" = [])),
    responses(
        (status = 200, body = WhitelistPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn set_whitelist_only(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<WhitelistMode>,
) -> Result<Json<WhitelistPage>, ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let keyring = state.keyring()?;
    let lock = (!body.enabled).then(|| lock_until(&state, state.identity().security_lock_hours));
    let record = customer_record(
        &state,
        &customer.actor(),
        "withdrawal.whitelist_only",
        customer.record.id,
        Outcome::Success,
        &[("enabled", body.enabled.to_string()), ("step_up_at", proof.proven_at_ns().to_string())],
    );
    let mut effects = Effects::audit(record);
    if let Some(until) = lock {
        effects = effects.notify(notice(&keyring, Notification::SecurityLock { until_ns: until }, None));
    }
    state
        .store()
        .set_whitelist_only(
            customer.record.id,
            body.enabled,
            lock.map(|u| (u, "whitelist-only mode turned off")),
            state.now_ns(),
            &state.auditor(&keyring),
            effects,
        )
        .await?;
    whitelist(State(state), customer).await
}

// ---------------------------------------------------------------------------------------------------------------
// Staff.

/// A withdrawal in the staff queue, with what a reviewer needs.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// The withdrawal.
    pub withdrawal: WithdrawalView,
    /// The customer (internal id).
    pub customer: i64,
    /// Who asked (`customer:<id>` or with an API key).
    pub initiator: String,
    /// What the gates found: KYC level, whitelist age, risk score, outcome and rules, address screening, policy.
    pub screening: serde_json::Value,
    /// The policy's requirement, when it needs approvals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirement: Option<serde_json::Value>,
    /// Approvals so far: approver, layer, reason.
    pub approvals: Vec<serde_json::Value>,
    /// The customer's confirmed withdrawals: how many and their value in USD.
    pub customer_history: serde_json::Value,
    /// Earlier withdrawals to this address by anyone.
    pub destination_history: serde_json::Value,
    /// The risk case and the compliance review, when there are.
    pub risk_case: Option<i64>,
    /// The review.
    pub review: Option<i64>,
}

async fn queue_view(state: &AppState, item: &QueueItem) -> Result<QueueView, ApiError> {
    let w = &item.withdrawal;
    Ok(QueueView {
        withdrawal: view(state, w).await?,
        customer: w.customer_id,
        initiator: w.actor.clone(),
        screening: serde_json::from_str(&w.screening).unwrap_or(serde_json::Value::Null),
        requirement: w.requirement.as_deref().and_then(|r| serde_json::from_str(r).ok()),
        approvals: item
            .approvals
            .iter()
            .map(|(a, reason, at)| {
                serde_json::json!({"approver": a.approver, "layer": a.layer, "reason": reason,
                    "at": rfc3339(u64::try_from(*at).unwrap_or(0))})
            })
            .collect(),
        customer_history: serde_json::json!({"confirmed": item.customer_confirmed.0,
            "confirmed_usd": usd_text(item.customer_confirmed.1)}),
        destination_history: serde_json::json!({"withdrawals": item.destination_seen.0,
            "customers": item.destination_seen.1}),
        risk_case: w.risk_case,
        review: w.review_id,
    })
}

/// `GET /v1/withdrawals?state=…`: the queue (by default every withdrawal waiting for people), oldest first.
#[utoipa::path(get, path = "/v1/withdrawals", tag = "withdrawals", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<QueueView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn queue(
    State(state): State<AppState>,
    principal: Principal,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<QueueView>>, ApiError> {
    let q = crate::compliance_api::query(q)?;
    state.authorize(&principal, Permission::WithdrawalRead, "withdrawals.queue", "-").await?;
    let states = match q.state.as_deref() {
        None => vec![WState::AwaitingApproval, WState::AwaitingReview, WState::Frozen, WState::Queued],
        Some(s) => vec![
            WState::parse(s)
                .ok_or_else(|| ApiError::bad_request("invalid_state", format!("no withdrawal state {s:?}")))?,
        ],
    };
    let items = state.store().withdrawal_queue(&states, q.limit.unwrap_or(100).min(500)).await?;
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        out.push(queue_view(&state, item).await?);
    }
    Ok(Json(out))
}

/// `GET /v1/withdrawals/{id}`: one withdrawal with its history of moves.
#[utoipa::path(get, path = "/v1/withdrawals/{id}", tag = "withdrawals",
    params(("id" = String, Path, description = "withdrawal id (32 hex digits)")), security(("bearer" = [])),
    responses(
        (status = 200, description = "`withdrawal` (a queue item) and `events` (its moves)", body = serde_json::Value),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn staff_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.authorize(&principal, Permission::WithdrawalRead, "withdrawals.read", &format!("withdrawal:{id}")).await?;
    let item = state
        .store()
        .withdrawal_queue_item(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no withdrawal {id}")))?;
    let events: Vec<serde_json::Value> = state
        .store()
        .withdrawal_events(&id)
        .await?
        .into_iter()
        .map(|(from, to, actor, reason, at)| {
            serde_json::json!({"from": from, "to": to, "actor": actor, "reason": reason,
                "at": rfc3339(u64::try_from(at).unwrap_or(0))})
        })
        .collect();
    Ok(Json(serde_json::json!({"withdrawal": queue_view(&state, &item).await?, "events": events})))
}

/// A staff decision: a reason and a second factor.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffDecision {
    /// Why.
    pub reason: String,
    /// The staff member's current TOTP code.
    pub totp_code: String,
}

/// Checks a staff member's reason and TOTP code (each code works once, across nodes).
pub(crate) async fn staff_factor(
    state: &AppState,
    principal: &Principal,
    body: &StaffDecision,
) -> Result<String, ApiError> {
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > REASON_CHARS_MAX {
        return Err(ApiError::bad_request("invalid_reason", format!("a reason is 1 to {REASON_CHARS_MAX} characters")));
    }
    let staff_id = crate::custody_api::staff_id(principal)?;
    let staff =
        state.store().staff_by_id(staff_id).await?.ok_or_else(|| ApiError::unauthorized("no such staff member"))?;
    let secret = crate::staff_api::totp_secret(state, &staff).await?;
    let step = secret.and_then(|s| s.verify(body.totp_code.trim(), state.now_ns() / NS));
    let accepted = match step {
        Some(step) => state.store().accept_totp_step(staff_id, step).await?,
        None => false,
    };
    if !accepted {
        let mut denied = state.record(&principal.actor(), "withdrawal.second_factor", "-", Outcome::Denied);
        denied.details.insert("reason".into(), "invalid_second_factor".into());
        state.audit(vec![denied]).await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_second_factor",
            "the code is wrong or was used already",
        ));
    }
    Ok(reason.to_owned())
}

/// The groups a staff member approves for: their roles, and the approvers' group for holders of the permission.
fn groups(principal: &Principal) -> Vec<String> {
    let mut out: Vec<String> = principal.roles().iter().map(|r| r.as_str().to_owned()).collect();
    if principal.may(Permission::WithdrawalApprove) {
        out.push(withdrawals::APPROVER_GROUP.to_owned());
    }
    out
}

/// `POST /v1/withdrawals/{id}/approve`: one staff approval; the last one the policy needs approves the withdrawal.
#[utoipa::path(post, path = "/v1/withdrawals/{id}/approve", tag = "withdrawals", request_body = StaffDecision,
    params(("id" = String, Path, description = "withdrawal id (32 hex digits)")), security(("bearer" = [])),
    responses(
        (status = 200, description = "`layer`, `complete` and the `withdrawal`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 401, description = "invalid_second_factor", body = ErrorBody),
        (status = 403, description = "forbidden, own_withdrawal, already_approved, not_an_approver_needed",
            body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "not_awaiting_approval", body = ErrorBody)
    ))]
pub(crate) async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StaffDecision>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let target = format!("withdrawal:{id}");
    state.authorize(&principal, Permission::WithdrawalApprove, "withdrawals.approve", &target).await?;
    let reason = staff_factor(&state, &principal, &body).await?;
    let actor = principal.actor();
    let Some(w) = state.store().withdrawal(&id).await? else {
        return Err(ApiError::not_found(format!("no withdrawal {id}")));
    };
    let requirement: Option<Requirement> = w.requirement.as_deref().and_then(|r| serde_json::from_str(r).ok());
    let Some(requirement) = requirement else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_awaiting_approval",
            format!("withdrawal {id} is {}", w.state),
        ));
    };
    let policy = withdrawals::policy_version(&state, w.policy_version.unwrap_or(0)).await?;
    let member_of = groups(&principal);
    let member_refs: Vec<&str> = member_of.iter().map(String::as_str).collect();
    let initiator = format!("customer:{}", w.customer_id);
    let keyring = state.keyring()?;
    let mut record = state.record(&actor, "withdrawal.approved_by", &target, Outcome::Success);
    record.details.insert("reason".into(), reason.clone());
    let asset = state.assets().lookup(&w.asset).map_err(internal)?;
    let n = Notification::WithdrawalStatus {
        asset: asset.code,
        amount: w.amount.parse::<u128>().map(|u| asset.format_amount(rampart_core::Amount::new(u))).unwrap_or_default(),
        status: "approval".into(),
        detail: "a staff member approved the withdrawal".into(),
    };
    // An approval that leaves more to come tells the customer in the app; the completing one records and notifies
    // the move to `approved` as every move is (the store makes the move in the same transaction).
    let completed = if w.state == WState::AwaitingApproval.as_str() {
        withdrawals::move_effects(&state, &keyring, &w, &[WState::Approved], &actor, "approvals complete")?.0
    } else {
        // Moved meanwhile: the store answers `not_awaiting_approval` and writes nothing.
        Effects::default()
    };
    let effects = |complete: bool| {
        let mut effects = Effects::audit(record);
        if complete {
            effects.records.extend(completed.records);
            effects.notices.extend(completed.notices);
        } else {
            effects.notices.push(withdrawals::in_app(n));
        }
        effects
    };
    let verdict = state
        .store()
        .approve_withdrawal(
            &id,
            &actor,
            &reason,
            |record_now, approvals| {
                let layer = requirement.assign(&initiator, approvals, &actor, &member_refs)?;
                let mut all = approvals.to_vec();
                all.push(rampart_withdrawal::Approval { approver: actor.clone(), layer });
                let screening: Screening = serde_json::from_str(&record_now.screening).unwrap_or_default();
                let complete = withdrawals::facts_for(record_now, &screening)
                    .map(|f| policy.approved(&f, &initiator, &all).is_some())
                    .unwrap_or(false);
                Ok((layer, complete))
            },
            state.now_ns(),
            &state.auditor(&keyring),
            effects,
        )
        .await?;
    match verdict {
        Approved::Recorded { layer, complete } => {
            let w = state.store().withdrawal(&id).await?.ok_or_else(|| internal("a withdrawal vanished"))?;
            Ok(Json(serde_json::json!({"layer": layer, "complete": complete, "withdrawal": view(&state, &w).await?})))
        }
        Approved::Refused(refused) => {
            let code = match refused {
                ApprovalRefused::Initiator => "own_withdrawal",
                ApprovalRefused::AlreadyApproved => "already_approved",
                ApprovalRefused::AlreadyMet => "already_complete",
                ApprovalRefused::NotInNeededGroup => "not_an_approver_needed",
            };
            let mut denied = state.record(&actor, "withdrawal.approved_by", &target, Outcome::Denied);
            denied.details.insert("reason".into(), code.into());
            state.audit(vec![denied]).await?;
            Err(ApiError::new(StatusCode::FORBIDDEN, code, refused.to_string()))
        }
        Approved::NotAwaiting(s) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_awaiting_approval", format!("withdrawal {id} is {s}")))
        }
        Approved::NotFound => Err(ApiError::not_found(format!("no withdrawal {id}"))),
    }
}

/// `POST /v1/withdrawals/{id}/reject`: a staff member rejects a withdrawal waiting for approvals; the funds return.
#[utoipa::path(post, path = "/v1/withdrawals/{id}/reject", tag = "withdrawals", request_body = StaffDecision,
    params(("id" = String, Path, description = "withdrawal id (32 hex digits)")), security(("bearer" = [])),
    responses(
        (status = 200, description = "rejected, the funds returned", body = WithdrawalView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "not_awaiting_approval", body = ErrorBody)
    ))]
pub(crate) async fn reject(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StaffDecision>,
) -> Result<Json<WithdrawalView>, ApiError> {
    let target = format!("withdrawal:{id}");
    state.authorize(&principal, Permission::WithdrawalApprove, "withdrawals.reject", &target).await?;
    let reason = staff_factor(&state, &principal, &body).await?;
    let w = state.store().withdrawal(&id).await?.ok_or_else(|| ApiError::not_found(format!("no withdrawal {id}")))?;
    if w.state()? != WState::AwaitingApproval {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_awaiting_approval",
            format!("withdrawal {id} is {}", w.state),
        ));
    }
    match withdrawals::advance(
        &state,
        &w,
        &[WState::Rejected],
        &principal.actor(),
        &reason,
        &Changes { reason: Some(&reason), ..Changes::default() },
    )
    .await?
    {
        Advanced::Done(w) => Ok(Json(view(&state, &w).await?)),
        Advanced::Stale(s) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_awaiting_approval", format!("withdrawal {id} is {s}")))
        }
        Advanced::NotFound => Err(ApiError::not_found(format!("no withdrawal {id}"))),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The policy.

/// A policy version.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    /// Version.
    pub version: i32,
    /// `proposed`, `active`, `superseded`, `rejected`.
    pub state: String,
    /// Who proposed it.
    pub proposed_by: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Why.
    pub note: String,
    /// The document.
    pub policy: serde_json::Value,
}

fn policy_view(p: &PolicyRecord) -> PolicyView {
    PolicyView {
        version: p.version,
        state: p.state.clone(),
        proposed_by: p.proposed_by.clone(),
        decided_by: p.decided_by.clone(),
        note: p.note.clone(),
        policy: serde_json::from_str(&p.body).unwrap_or(serde_json::Value::Null),
    }
}

/// A customer's withdrawal-policy group.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerGroup {
    /// The group (1 to 32 of `a-z`, `0-9`, `_`, `-`), as the policy's rules name it in `when.groups`.
    pub group: String,
    /// Why.
    pub reason: String,
    /// The staff member's current TOTP code.
    pub totp_code: String,
}

/// `PUT /v1/withdrawals/customers/{id}/group`: puts a customer (internal id, as the queue shows it) in a
/// withdrawal-policy group, with a reason and a second factor; new requests are judged by the rules for it. Audited
/// with the group and the reason.
#[utoipa::path(put, path = "/v1/withdrawals/customers/{id}/group", tag = "withdrawals", request_body = CustomerGroup,
    params(("id" = i64, Path, description = "customer id (internal)")), security(("bearer" = [])),
    responses(
        (status = 200, description = "`customer`, `group`, `previous`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn set_group(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<i64>, PathRejection>,
    ApiJson(body): ApiJson<CustomerGroup>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::bad_request("invalid_id", "a customer id is a number"))?;
    let target = format!("customer:{id}");
    state.authorize(&principal, Permission::WithdrawalPolicy, "withdrawals.customer_group", &target).await?;
    let group = body.group.trim();
    let valid = (1..=32).contains(&group.len())
        && group.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(ApiError::bad_request("invalid_group", "a group is 1 to 32 of a-z, 0-9, _ and -"));
    }
    let decision = StaffDecision { reason: body.reason, totp_code: body.totp_code };
    let reason = staff_factor(&state, &principal, &decision).await?;
    let keyring = state.keyring()?;
    let mut record = state.record(&principal.actor(), "withdrawal.customer_group", &target, Outcome::Success);
    record.details.insert("group".into(), group.into());
    record.details.insert("reason".into(), reason);
    let previous = state
        .store()
        .set_customer_group(id, group, state.now_ns(), &state.auditor(&keyring), Effects::audit(record))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no customer {id}")))?;
    Ok(Json(serde_json::json!({"customer": id, "group": group, "previous": previous})))
}

/// `GET /v1/withdrawals/policies`: every version, newest first.
#[utoipa::path(get, path = "/v1/withdrawals/policies", tag = "withdrawals", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<PolicyView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn policies(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<PolicyView>>, ApiError> {
    state.authorize(&principal, Permission::WithdrawalRead, "withdrawals.policies", "-").await?;
    withdrawals::ensure_policy(&state).await?;
    Ok(Json(state.store().withdrawal_policies().await?.iter().map(policy_view).collect()))
}

/// A proposed policy.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposePolicy {
    /// The document.
    pub policy: serde_json::Value,
    /// Why.
    pub note: String,
}

/// `POST /v1/withdrawals/policies`: proposes a version; another holder of the permission must approve it.
#[utoipa::path(post, path = "/v1/withdrawals/policies", tag = "withdrawals", request_body = ProposePolicy,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "proposed, with the next version number", body = PolicyView),
        (status = 400, description = "invalid_policy or invalid_note", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn propose_policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ProposePolicy>,
) -> Result<(StatusCode, Json<PolicyView>), ApiError> {
    state.authorize(&principal, Permission::WithdrawalPolicy, "withdrawals.policy.propose", "-").await?;
    withdrawals::ensure_policy(&state).await?;
    let text = body.policy.to_string();
    let policy = Policy::from_json(&text).map_err(|e| ApiError::bad_request("invalid_policy", e.to_string()))?;
    let note = body.note.trim();
    if note.is_empty() || note.chars().count() > REASON_CHARS_MAX {
        return Err(ApiError::bad_request("invalid_note", format!("a note is 1 to {REASON_CHARS_MAX} characters")));
    }
    let keyring = state.keyring()?;
    let record = state.record(&principal.actor(), "withdrawal.policy.proposed", "withdrawal_policy", Outcome::Success);
    let version = state
        .store()
        .propose_withdrawal_policy(
            &policy.to_json(),
            &principal.actor(),
            note,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?;
    let stored = state.store().withdrawal_policies().await?;
    let p = stored.iter().find(|p| p.version == version).ok_or_else(|| internal("a proposed policy vanished"))?;
    Ok((StatusCode::CREATED, Json(policy_view(p))))
}

/// A decision on a proposed policy.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDecision {
    /// Activate (true) or reject.
    pub approve: bool,
    /// Why.
    pub note: String,
}

/// `POST /v1/withdrawals/policies/{version}/decide`: a second person activates or rejects a proposed version.
#[utoipa::path(post, path = "/v1/withdrawals/policies/{version}/decide", tag = "withdrawals",
    request_body = PolicyDecision, params(("version" = i32, Path, description = "policy version")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "activated (the active version superseded) or rejected", body = PolicyView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "forbidden, or four_eyes: the proposer cannot decide", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "not_proposed", body = ErrorBody)
    ))]
pub(crate) async fn decide_policy(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<PolicyDecision>,
) -> Result<Json<PolicyView>, ApiError> {
    let version = i32::try_from(crate::staff_api::path_i64(path)?)
        .map_err(|_| ApiError::bad_request("invalid_id", "no such version"))?;
    let target = format!("withdrawal_policy:{version}");
    state.authorize(&principal, Permission::WithdrawalPolicy, "withdrawals.policy.decide", &target).await?;
    let note = body.note.trim();
    if note.is_empty() || note.chars().count() > REASON_CHARS_MAX {
        return Err(ApiError::bad_request("invalid_note", format!("a note is 1 to {REASON_CHARS_MAX} characters")));
    }
    let keyring = state.keyring()?;
    let action = if body.approve { "withdrawal.policy.activated" } else { "withdrawal.policy.rejected" };
    let record = state.record(&principal.actor(), action, &target, Outcome::Success);
    match state
        .store()
        .decide_withdrawal_policy(
            version,
            body.approve,
            &principal.actor(),
            note,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
    {
        PolicyDecided::Done(p) => {
            withdrawals::refresh_policy(&state).await?;
            Ok(Json(policy_view(&p)))
        }
        PolicyDecided::OwnProposal => {
            let mut denied = state.record(&principal.actor(), action, &target, Outcome::Denied);
            denied.details.insert("reason".into(), "four_eyes".into());
            state.audit(vec![denied]).await?;
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "four_eyes",
                "a policy is decided by someone other than its proposer",
            ))
        }
        PolicyDecided::NotProposed => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_proposed",
            format!("version {version} is not waiting for a decision"),
        )),
        PolicyDecided::NotFound => Err(ApiError::not_found(format!("no policy version {version}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::withdrawals::start_of_day_and_month;

    #[test]
    fn day_and_month_starts() {
        // 2026-12-03T15:25:09Z
        let now = 1_796_311_509 * NS;
        let (day, month) = start_of_day_and_month(now);
        assert_eq!(day, 1_796_256_000 * NS); // 2026-12-03T00:00:00Z
        assert_eq!(month, 1_796_083_200 * NS); // 2026-12-01T00:00:00Z
        // 2024-02-29T23:59:59Z: a leap day.
        let (day, month) = start_of_day_and_month(1_709_251_199 * NS);
        assert_eq!(day, 1_709_164_800 * NS);
        assert_eq!(month, 1_706_745_600 * NS);
    }

    #[test]
    fn usd_is_shown_in_cents() {
        assert_eq!(usd_text(12_345_678_901), "12345.67");
        assert_eq!(usd_text(0), "0.00");
    }

    #[test]
    fn a_withdrawal_needs_a_well_formed_idempotency_key() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h, Some("k-1")).unwrap(), "k-1");
        assert!(idempotency_key(&h, None).is_err());
        assert!(idempotency_key(&h, Some("a b")).is_err());
        assert!(idempotency_key(&h, Some(&"x".repeat(65))).is_err());
        h.insert("idempotency-key", "k-2".parse().unwrap());
        assert_eq!(idempotency_key(&h, None).unwrap(), "k-2");
        assert!(idempotency_key(&h, Some("k-3")).is_err());
    }
}
