//! WebAuthn passkeys and security keys, for customers and staff: registration (step-up for customers) and the
//! assertion that proves a second factor at sign-in or step-up. The ceremony state between the two requests is a
//! one-time ticket in the database, so any node can finish what another started.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rampart_audit::Outcome;
use rampart_auth::{BearerSecret, hash_bearer};
use rampart_notify::{FactorKind, Notification};
use rampart_store::{Effects, NewTicket, SecurityChange, WebauthnCredentialRecord};
use rampart_webauthn::{CeremonyState, Relying, StoredCredential, WebauthnError};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::AppState;
use crate::customer_api::Client;
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::identity::{Customer, StepUp, customer_email, customer_record, notice, rfc3339};
use crate::principal::Principal;

const NS: u64 = 1_000_000_000;
const CEREMONY_S: u64 = rampart_webauthn::CEREMONY_TIMEOUT_MS / 1000;

fn relying(state: &AppState) -> Result<&Relying, ApiError> {
    state.webauthn().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webauthn_unavailable",
            "WebAuthn is not configured on this service",
        )
    })
}

fn webauthn_error(e: &WebauthnError) -> ApiError {
    let status = match e {
        WebauthnError::Config(_) | WebauthnError::BadState(_) => StatusCode::INTERNAL_SERVER_ERROR,
        WebauthnError::BadRequest(_) => StatusCode::BAD_REQUEST,
        WebauthnError::AlreadyRegistered => StatusCode::CONFLICT,
        _ => StatusCode::UNAUTHORIZED,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "webauthn state unusable");
        return ApiError::new(status, "internal", "internal error");
    }
    ApiError::new(status, e.code(), e.to_string())
}

/// The owner's credentials, in the form the WebAuthn crate checks against.
async fn stored_credentials(state: &AppState, owner: &str) -> Result<Vec<StoredCredential>, ApiError> {
    Ok(state
        .store()
        .webauthn_credentials(owner)
        .await?
        .into_iter()
        .map(|c| StoredCredential { id: c.credential_id, data: c.data, counter: c.counter })
        .collect())
}

/// Stores a ceremony's state as the one live ticket under `key`, replacing an earlier one.
async fn store_ceremony(
    state: &AppState,
    key: [u8; 32],
    purpose: &'static str,
    owner: String,
    ceremony: &CeremonyState,
) -> Result<(), ApiError> {
    state.store().delete_ticket(&key).await?;
    let keyring = state.keyring()?;
    let ticket = NewTicket {
        token_hash: key,
        purpose,
        owner,
        data: Some(ceremony.to_bytes()),
        expires_at_ns: state.now_ns() + CEREMONY_S * NS,
    };
    state.store().store_tickets(&state.auditor(&keyring), Effects::default().ticket(ticket)).await?;
    Ok(())
}

/// The ticket key of a ceremony bound to a session: derived from the session's token hash, so that only that session
/// can finish it.
fn session_ceremony_key(session_hash: &[u8; 32], purpose: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"rampart.webauthn.session.v1")
        .chain_update(purpose)
        .chain_update(session_hash)
        .finalize()
        .into()
}

/// Checks an assertion against `owner`'s credentials and records the new counter atomically (a cloned authenticator
/// racing the real one cannot both pass).
pub(crate) async fn verify_assertion(
    state: &AppState,
    owner: &str,
    response: &serde_json::Value,
    ceremony: &[u8],
) -> Result<(), ApiError> {
    let relying = relying(state)?;
    let credentials = stored_credentials(state, owner).await?;
    let ceremony = CeremonyState::from_bytes(ceremony);
    let done = relying.finish_authentication(response, &ceremony, &credentials).map_err(|e| webauthn_error(&e))?;
    let old = credentials.iter().find(|c| c.id == done.credential_id).map_or(0, |c| c.counter);
    let (new_counter, data) = match &done.updated {
        Some(u) => (u.counter, u.data.clone()),
        None => {
            (old, credentials.iter().find(|c| c.id == done.credential_id).map(|c| c.data.clone()).unwrap_or_default())
        }
    };
    if !state.store().webauthn_used(&done.credential_id, old, new_counter, &data, state.now_ns()).await? {
        return Err(webauthn_error(&WebauthnError::CounterRegressed));
    }
    Ok(())
}

/// `{"ticket": "…"}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// The sign-in ticket.
    #[schema(value_type = String)]
    pub ticket: SecretString,
}

/// Options for `navigator.credentials.get()` answering a sign-in ticket; send the assertion to
/// `POST /v1/customers/sign-in/verify` as `webauthn`.
#[utoipa::path(post, path = "/v1/customers/sign-in/webauthn/options", request_body = TicketRequest, responses(
    (status = 200, description = "PublicKeyCredentialRequestOptions"), (status = 401, body = ErrorBody)
))]
pub(crate) async fn sign_in_options(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TicketRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let hash = hash_bearer(request.ticket.expose_secret());
    let invalid = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_ticket", "the ticket is invalid or expired");
    let ticket = state.store().peek_ticket(&hash, "sign_in", state.now_ns()).await?.ok_or_else(invalid)?;
    let credentials = stored_credentials(&state, &ticket.owner).await?;
    let (options, ceremony) = relying(&state)?.start_authentication(&credentials).map_err(|e| webauthn_error(&e))?;
    state.store().set_ticket_data(&hash, "sign_in", &ceremony.to_bytes()).await?;
    Ok(Json(options))
}

/// Options for `navigator.credentials.get()` for a step-up in the caller's session; send the assertion to
/// `POST /v1/me/step-up` as `webauthn`.
#[utoipa::path(post, path = "/v1/me/webauthn/options", responses((status = 200, description = "PublicKeyCredentialRequestOptions")))]
pub(crate) async fn step_up_options(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<serde_json::Value>, ApiError> {
    let session = customer.session()?;
    let credentials = stored_credentials(&state, &customer.record.subject()).await?;
    let (options, ceremony) = relying(&state)?.start_authentication(&credentials).map_err(|e| webauthn_error(&e))?;
    let key = session_ceremony_key(&session.token_hash, "step_up");
    store_ceremony(&state, key, "webauthn_step_up", customer.record.subject(), &ceremony).await?;
    Ok(Json(options))
}

/// The step-up ceremony the caller's session started, consumed.
pub(crate) async fn take_session_challenge(state: &AppState, customer: &Customer) -> Result<Option<Vec<u8>>, ApiError> {
    let session = customer.session()?;
    let key = session_ceremony_key(&session.token_hash, "step_up");
    Ok(state.store().take_ticket(&key, "webauthn_step_up", state.now_ns()).await?.and_then(|t| t.data))
}

/// Options for `navigator.credentials.create()` to register a passkey or security key (step-up).
#[utoipa::path(post, path = "/v1/me/webauthn/register/options", responses((status = 200, description = "PublicKeyCredentialCreationOptions"), (status = 403, body = ErrorBody)))]
pub(crate) async fn register_options(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<serde_json::Value>, ApiError> {
    let _proof = StepUp::check(&state, &customer)?;
    let session = customer.session()?;
    let email = customer_email(&state, &customer.record).await?;
    let existing = stored_credentials(&state, &customer.record.subject()).await?;
    let (options, ceremony) = relying(&state)?
        .start_registration(customer.record.handle, &email, &email, &existing)
        .map_err(|e| webauthn_error(&e))?;
    let key = session_ceremony_key(&session.token_hash, "register");
    store_ceremony(&state, key, "webauthn_register", customer.record.subject(), &ceremony).await?;
    Ok(Json(options))
}

/// `POST /v1/me/webauthn/register`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// A name for it (`YubiKey`, `laptop`).
    pub name: String,
    /// The browser's `PublicKeyCredential` from `navigator.credentials.create()`.
    pub response: serde_json::Value,
}

/// A registered credential.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    /// The credential id (base64url).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Registered (RFC 3339).
    pub created: String,
    /// Last used (RFC 3339).
    pub last_used: Option<String>,
}

/// Finishes registering a passkey or security key (step-up); the owner is notified.
#[utoipa::path(post, path = "/v1/me/webauthn/register", request_body = RegisterRequest, responses(
    (status = 201, body = CredentialView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
))]
pub(crate) async fn register(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<CredentialView>), ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let name = crate::customer_api::valid_label(&request.name, "invalid_name")?;
    let session = customer.session()?;
    let key = session_ceremony_key(&session.token_hash, "register");
    let ceremony =
        state.store().take_ticket(&key, "webauthn_register", state.now_ns()).await?.and_then(|t| t.data).ok_or_else(
            || ApiError::new(StatusCode::UNAUTHORIZED, "webauthn_challenge_mismatch", "start the registration first"),
        )?;
    let credential = relying(&state)?
        .finish_registration(&request.response, &CeremonyState::from_bytes(&ceremony))
        .map_err(|e| webauthn_error(&e))?;
    let keyring = state.keyring()?;
    let now = state.now_ns();
    let record = WebauthnCredentialRecord {
        credential_id: credential.id.clone(),
        owner: customer.record.subject(),
        name: name.clone(),
        data: credential.data.clone(),
        counter: credential.counter,
        created_at_ns: now,
        last_used_ns: None,
    };
    let audit = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.webauthn_added",
        customer.record.id,
        Outcome::Success,
        &[("credential", credential.id_base64url()), ("step_up_at", proof.proven_at_ns().to_string())],
    );
    let effects =
        Effects::audit(audit).notify(notice(&keyring, Notification::FactorAdded { kind: FactorKind::Passkey }, None));
    let added = state
        .store()
        .apply_security_change(
            customer.record.id,
            SecurityChange::WebauthnAdded(&record),
            None,
            now,
            &state.auditor(&keyring),
            effects,
        )
        .await?;
    if !added {
        return Err(webauthn_error(&WebauthnError::AlreadyRegistered));
    }
    Ok((
        StatusCode::CREATED,
        Json(CredentialView { id: credential.id_base64url(), name, created: rfc3339(now), last_used: None }),
    ))
}

/// The caller's passkeys and security keys.
#[utoipa::path(get, path = "/v1/me/webauthn", responses((status = 200, body = Vec<CredentialView>)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    customer.require(crate::identity::Scope::Read)?;
    let list = state.store().webauthn_credentials(&customer.record.subject()).await?;
    Ok(Json(
        list.into_iter()
            .map(|c| CredentialView {
                id: rampart_webauthn::credential_id_base64url(&c.credential_id),
                name: c.name,
                created: rfc3339(c.created_at_ns),
                last_used: c.last_used_ns.map(rfc3339),
            })
            .collect(),
    ))
}

/// Removes a passkey (step-up); refused if it is the last second factor. Withdrawals lock for 24 h.
#[utoipa::path(delete, path = "/v1/me/webauthn/{id}", responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    customer: Customer,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let list = state.store().webauthn_credentials(&customer.record.subject()).await?;
    let Some(found) = list.iter().find(|c| rampart_webauthn::credential_id_base64url(&c.credential_id) == id) else {
        return Err(ApiError::not_found("no such credential"));
    };
    if customer.record.totp_secret.is_none() && list.len() == 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_second_factor",
            "a second factor is mandatory: this is your last one",
        ));
    }
    let keyring = state.keyring()?;
    let until = state.now_ns().saturating_add(state.identity().security_lock_hours * 3600 * NS);
    let audit = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.webauthn_removed",
        customer.record.id,
        Outcome::Success,
        &[
            ("credential", id.clone()),
            ("step_up_at", proof.proven_at_ns().to_string()),
            ("withdrawals_locked_until", rfc3339(until)),
        ],
    );
    let effects =
        Effects::audit(audit).notify(notice(&keyring, Notification::FactorRemoved { kind: FactorKind::Passkey }, None));
    state
        .store()
        .apply_security_change(
            customer.record.id,
            SecurityChange::WebauthnRemoved(&found.credential_id),
            Some((until, "second-factor removal")),
            state.now_ns(),
            &state.auditor(&keyring),
            effects,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------------------------
// Staff

/// Options to register a passkey or security key for the signed-in staff member.
#[utoipa::path(post, path = "/v1/staff/webauthn/register/options", security(("bearer" = [])), responses((status = 200, description = "PublicKeyCredentialCreationOptions")))]
pub(crate) async fn staff_register_options(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Principal::Staff(staff) = &principal else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "staff_only", "only a staff member registers a passkey"));
    };
    let owner = format!("staff:{}", staff.id);
    let existing = stored_credentials(&state, &owner).await?;
    let handle = staff_handle(staff.id);
    let (options, ceremony) = relying(&state)?
        .start_registration(handle, &staff.username, &staff.username, &existing)
        .map_err(|e| webauthn_error(&e))?;
    let key = staff_register_key(&owner);
    store_ceremony(&state, key, "webauthn_register", owner, &ceremony).await?;
    Ok(Json(options))
}

/// The ticket key of a staff member's registration ceremony.
fn staff_register_key(owner: &str) -> [u8; 32] {
    Sha256::new().chain_update(b"rampart.webauthn.staff_register.v1").chain_update(owner.as_bytes()).finalize().into()
}

fn staff_handle(id: i64) -> [u8; 16] {
    let digest = Sha256::new().chain_update(b"rampart.staff.handle.v1").chain_update(id.to_be_bytes()).finalize();
    digest[..16].try_into().expect("16 bytes")
}

/// Registers a passkey or security key for the signed-in staff member (audited).
#[utoipa::path(post, path = "/v1/staff/webauthn/register", request_body = RegisterRequest, security(("bearer" = [])), responses((status = 201, body = CredentialView)))]
pub(crate) async fn staff_register(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<CredentialView>), ApiError> {
    let Principal::Staff(staff) = &principal else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "staff_only", "only a staff member registers a passkey"));
    };
    let name = crate::customer_api::valid_label(&request.name, "invalid_name")?;
    let owner = format!("staff:{}", staff.id);
    let key = staff_register_key(&owner);
    let ceremony =
        state.store().take_ticket(&key, "webauthn_register", state.now_ns()).await?.and_then(|t| t.data).ok_or_else(
            || ApiError::new(StatusCode::UNAUTHORIZED, "webauthn_challenge_mismatch", "start the registration first"),
        )?;
    let credential = relying(&state)?
        .finish_registration(&request.response, &CeremonyState::from_bytes(&ceremony))
        .map_err(|e| webauthn_error(&e))?;
    let keyring = state.keyring()?;
    let now = state.now_ns();
    let record = WebauthnCredentialRecord {
        credential_id: credential.id.clone(),
        owner: owner.clone(),
        name: name.clone(),
        data: credential.data.clone(),
        counter: credential.counter,
        created_at_ns: now,
        last_used_ns: None,
    };
    let mut audit = state.record(&owner, "auth.staff.webauthn_added", &owner, Outcome::Success);
    audit.details.insert("credential".into(), credential.id_base64url());
    state.store().add_webauthn_credential(&record, &state.auditor(&keyring), vec![audit]).await?;
    Ok((
        StatusCode::CREATED,
        Json(CredentialView { id: credential.id_base64url(), name, created: rfc3339(now), last_used: None }),
    ))
}

/// `POST /v1/staff/sign-in/webauthn/options`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffPasskeySignInRequest {
    /// The username.
    pub username: String,
    /// The password.
    #[schema(value_type = String)]
    pub password: SecretString,
}

/// A staff sign-in ticket and the options for `navigator.credentials.get()`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct StaffPasskeyOptionsView {
    /// The ticket to send with the assertion.
    pub ticket: String,
    /// PublicKeyCredentialRequestOptions.
    pub options: serde_json::Value,
}

/// First step of a staff sign-in with a passkey as the second factor: the password.
#[utoipa::path(post, path = "/v1/staff/sign-in/webauthn/options", request_body = StaffPasskeySignInRequest, responses((status = 200, body = StaffPasskeyOptionsView), (status = 401, body = ErrorBody)))]
pub(crate) async fn staff_sign_in_options(
    State(state): State<AppState>,
    client: Client,
    ApiJson(request): ApiJson<StaffPasskeySignInRequest>,
) -> Result<Json<StaffPasskeyOptionsView>, ApiError> {
    let keyring = state.keyring()?;
    let staff = state.store().staff_by_username(&request.username).await?;
    let target = crate::staff_api::attempt_target(&keyring, &request.username, staff.as_ref());
    crate::identity::staff_throttle_check(&state, &keyring, &request.username, &target, client.ip).await?;
    let active = staff.filter(|s| s.status == rampart_store::StaffStatus::Active);
    let stored = active.as_ref().and_then(|s| s.password_hash.clone());
    let password = request.password;
    let ok = tokio::task::spawn_blocking(move || rampart_auth::verify_password(&password, stored.as_deref()))
        .await
        .unwrap_or(false);
    let credentials = match (&active, ok) {
        (Some(s), true) => stored_credentials(&state, &format!("staff:{}", s.id)).await?,
        _ => Vec::new(),
    };
    let Some(staff) = active.filter(|_| ok && !credentials.is_empty()) else {
        let mut record = state.record("anonymous", "auth.staff.sign_in", "staff", Outcome::Failure);
        record.details.insert("reason".into(), "credentials".into());
        record.details.insert("ip".into(), client.ip.to_string());
        state.audit(vec![record]).await?;
        crate::identity::staff_throttle_record(&state, &keyring, &request.username, client.ip, true).await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the username or password is wrong, or no passkey is registered",
        ));
    };
    let (options, ceremony) = relying(&state)?.start_authentication(&credentials).map_err(|e| webauthn_error(&e))?;
    let ticket = BearerSecret::generate("rsi_");
    state
        .store()
        .store_tickets(
            &state.auditor(&keyring),
            Effects::default().ticket(NewTicket {
                token_hash: ticket.hash,
                purpose: "staff_sign_in",
                owner: format!("staff:{}", staff.id),
                data: Some(ceremony.to_bytes()),
                expires_at_ns: state.now_ns() + CEREMONY_S * NS,
            }),
        )
        .await?;
    Ok(Json(StaffPasskeyOptionsView { ticket: ticket.secret.expose_secret().to_owned(), options }))
}

/// `POST /v1/staff/sign-in/webauthn`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffPasskeyAssertion {
    /// The ticket of the first step.
    #[schema(value_type = String)]
    pub ticket: SecretString,
    /// The browser's `PublicKeyCredential` from `navigator.credentials.get()`.
    pub response: serde_json::Value,
}

/// Second step: the assertion; answers a staff session.
#[utoipa::path(post, path = "/v1/staff/sign-in/webauthn", request_body = StaffPasskeyAssertion, responses((status = 200, body = crate::staff_api::SessionView), (status = 401, body = ErrorBody)))]
pub(crate) async fn staff_sign_in(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<StaffPasskeyAssertion>,
) -> Result<Json<crate::staff_api::SessionView>, ApiError> {
    let keyring = state.keyring()?;
    let hash = hash_bearer(request.ticket.expose_secret());
    let invalid = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_ticket", "the ticket is invalid or expired");
    let ticket = state.store().take_ticket(&hash, "staff_sign_in", state.now_ns()).await?.ok_or_else(invalid)?;
    let id: i64 = ticket.owner.strip_prefix("staff:").and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    let staff = state
        .store()
        .staff_by_id(id)
        .await?
        .filter(|s| s.status == rampart_store::StaffStatus::Active)
        .ok_or_else(invalid)?;
    if let Err(e) = verify_assertion(&state, &ticket.owner, &request.response, &ticket.data.unwrap_or_default()).await {
        let mut record =
            state.record("anonymous", "auth.staff.sign_in", &format!("staff:{}", staff.username), Outcome::Failure);
        record.details.insert("reason".into(), e.code().into());
        state.audit(vec![record]).await?;
        return Err(e);
    }
    let session = BearerSecret::generate("rst_");
    let now = state.now_ns();
    let expires = now + crate::staff_api::SESSION_TTL_S * NS;
    let mut record =
        state.record(&ticket.owner, "auth.staff.sign_in", &format!("staff:{}", staff.username), Outcome::Success);
    record.details.insert("factor".into(), "webauthn".into());
    state.store().create_session(&session.hash, staff.id, now, expires, &state.auditor(&keyring), vec![record]).await?;
    Ok(Json(crate::staff_api::SessionView {
        token: session.secret.expose_secret().to_owned(),
        expires_at_ns: expires.to_string(),
        roles: staff.roles.iter().map(|r| r.as_str().to_owned()).collect(),
    }))
}
