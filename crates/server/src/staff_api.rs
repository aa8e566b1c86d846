//! Staff sign-in and enrolment, staff management, and four-eyes role changes.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use rampart_audit::{Outcome, Permission, Role};
use rampart_auth::{BearerSecret, TotpSecret, hash_bearer, hash_password, verify_password};
use rampart_store::{RoleDecision, StaffRecord, StaffStatus};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::principal::{Principal, bearer};

/// How long a staff session lasts, in seconds (a working day).
pub const SESSION_TTL_S: u64 = 12 * 3600;
/// How long an enrolment code works, in seconds.
pub const ENROLMENT_TTL_S: u64 = 24 * 3600;

const NS: u64 = 1_000_000_000;

/// `POST /v1/staff/sign-in`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    /// The staff username.
    pub username: String,
    /// The password.
    #[schema(value_type = String)]
    pub password: SecretString,
    /// The current code of the authenticator app.
    pub totp_code: String,
}

/// A new session.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// The bearer token for `Authorization: Bearer …`; shown once, stored only as a hash.
    pub token: String,
    /// When it expires, nanoseconds since the Unix epoch.
    pub expires_at_ns: String,
    /// The staff member's roles.
    pub roles: Vec<String>,
}

/// `POST /v1/staff/enrol`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The username an administrator created.
    pub username: String,
    /// The one-time enrolment code the administrator passed on.
    #[schema(value_type = String)]
    pub enrolment_code: SecretString,
    /// The new password (12 to 256 characters).
    #[schema(value_type = String)]
    pub password: SecretString,
}

/// The second factor to load into an authenticator app; shown once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EnrolView {
    /// The TOTP secret in base32, to type in.
    pub totp_secret: String,
    /// The `otpauth://` URI, usually shown as a QR code.
    pub otpauth_uri: String,
}

/// `POST /v1/staff/enrol/confirm`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmEnrolRequest {
    /// The username.
    pub username: String,
    /// The one-time enrolment code.
    #[schema(value_type = String)]
    pub enrolment_code: SecretString,
    /// A current code from the authenticator app, proving it was set up.
    pub totp_code: String,
}

/// A staff member as listed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct StaffView {
    /// The id.
    pub id: i64,
    /// The username.
    pub username: String,
    /// Roles held.
    pub roles: Vec<String>,
    /// `enrolling`, `active` or `disabled`.
    pub status: String,
}

/// `POST /v1/staff`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStaffRequest {
    /// The new username (letters, digits, `.`, `_`, `-`; 3 to 64 characters).
    pub username: String,
}

/// A created staff account and its enrolment code (shown once, to pass on to its owner).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedStaffView {
    /// The id.
    pub id: i64,
    /// The username.
    pub username: String,
    /// The one-time enrolment code.
    pub enrolment_code: String,
    /// When the code stops working, nanoseconds since the Unix epoch.
    pub expires_at_ns: String,
}

/// `POST /v1/staff/{id}/role-requests`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChangeRequest {
    /// The role.
    pub role: String,
    /// `true` to grant, `false` to revoke.
    pub grant: bool,
}

/// A role request.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RoleRequestView {
    /// The id.
    pub id: i64,
    /// Whose roles change.
    pub staff_id: i64,
    /// The role.
    pub role: String,
    /// Grant or revoke.
    pub grant: bool,
    /// Who asked.
    pub requested_by: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
}

impl From<&StaffRecord> for StaffView {
    fn from(s: &StaffRecord) -> StaffView {
        StaffView {
            id: s.id,
            username: s.username.clone(),
            roles: s.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            status: s.status.as_str().to_owned(),
        }
    }
}

impl From<rampart_store::RoleRequest> for RoleRequestView {
    fn from(r: rampart_store::RoleRequest) -> RoleRequestView {
        RoleRequestView {
            id: r.id,
            staff_id: r.staff_id,
            role: r.role.as_str().to_owned(),
            grant: r.grant,
            requested_by: r.requested_by,
            status: r.status,
            decided_by: r.decided_by,
        }
    }
}

fn totp_aad(id: i64) -> String {
    format!("staff:{id}:totp_secret")
}

/// A staff member's TOTP secret, decrypted. A ciphertext under a key version this node has not seen (another node
/// rotated) makes it reload the stored keys once and try again.
pub(crate) async fn totp_secret(state: &AppState, staff: &StaffRecord) -> Result<Option<TotpSecret>, ApiError> {
    let Some(ciphertext) = staff.totp_secret.as_deref() else { return Ok(None) };
    let aad = totp_aad(staff.id);
    let mut keyring = state.keyring()?;
    if let Ok(version) = rampart_crypto::Keyring::ciphertext_version(ciphertext)
        && version > keyring.current_version()
    {
        keyring = state.refresh_keyring().await?;
    }
    match keyring.decrypt(ciphertext, aad.as_bytes()) {
        Ok(plain) => Ok(TotpSecret::from_bytes(&plain).ok()),
        Err(e) => {
            tracing::error!(staff = staff.id, error = %e, "a stored TOTP secret does not decrypt");
            Ok(None)
        }
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "the username, password or code is wrong")
}

/// The audit target of a sign-in or enrolment attempt. A known account is named; an unknown name is recorded only
/// as a keyed hash, because people type passwords into the username field and the log must not keep them.
pub(crate) fn attempt_target(keyring: &rampart_crypto::Keyring, username: &str, known: Option<&StaffRecord>) -> String {
    match known {
        Some(s) => format!("staff:{}", s.username),
        None => format!(
            "unknown_staff:{}",
            hex::encode(&keyring.blind_index("audit.staff_username", username.as_bytes())[..12])
        ),
    }
}

fn unix_s(now_ns: u64) -> u64 {
    now_ns / NS
}

/// Signs a staff member in with password and TOTP code; answers a session token.
#[utoipa::path(post, path = "/v1/staff/sign-in", operation_id = "staff_sign_in_password", request_body = SignInRequest,
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    client: crate::customer_api::Client,
    ApiJson(request): ApiJson<SignInRequest>,
) -> Result<Json<SessionView>, ApiError> {
    let keyring = state.keyring()?;
    let now = state.now_ns();
    let staff = state.store().staff_by_username(&request.username).await?;
    let target = attempt_target(&keyring, &request.username, staff.as_ref());
    crate::identity::staff_throttle_check(&state, &keyring, &request.username, &target, client.ip).await?;
    let active = staff.as_ref().filter(|s| s.status == StaffStatus::Active);
    // Unknown and inactive accounts take as long to refuse as a wrong password.
    let password_ok = verify_password(&request.password, active.and_then(|s| s.password_hash.as_deref()));
    let step = match (password_ok, active) {
        (true, Some(s)) => {
            totp_secret(&state, s).await?.and_then(|secret| secret.verify(&request.totp_code, unix_s(now)))
        }
        _ => None,
    };
    let accepted = match (step, active) {
        (Some(step), Some(s)) => state.store().accept_totp_step(s.id, step).await?,
        _ => false,
    };
    let (Some(staff), true) = (active, accepted) else {
        let mut record = state.record("anonymous", "auth.staff.sign_in", &target, Outcome::Failure);
        let reason = if !password_ok {
            "credentials"
        } else if step.is_none() {
            "second_factor"
        } else {
            "replayed_code"
        };
        record.details.insert("reason".into(), reason.into());
        record.details.insert("ip".into(), client.ip.to_string());
        state.audit(vec![record]).await?;
        crate::identity::staff_throttle_record(&state, &keyring, &request.username, client.ip, true).await?;
        return Err(invalid_credentials());
    };
    crate::identity::staff_throttle_record(&state, &keyring, &request.username, client.ip, false).await?;
    let session = BearerSecret::generate("rst_");
    let expires = now + SESSION_TTL_S * NS;
    let record = state.record(&format!("staff:{}", staff.id), "auth.staff.sign_in", &target, Outcome::Success);
    state.store().create_session(&session.hash, staff.id, now, expires, &state.auditor(&keyring), vec![record]).await?;
    Ok(Json(SessionView {
        token: session.secret.expose_secret().to_owned(),
        expires_at_ns: expires.to_string(),
        roles: staff.roles.iter().map(|r| r.as_str().to_owned()).collect(),
    }))
}

/// Ends the caller's session.
#[utoipa::path(post, path = "/v1/staff/sign-out", operation_id = "staff_sign_out", security(("bearer" = [])),
    responses((status = 204)))]
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let keyring = state.keyring()?;
    if let (Principal::Staff(_), Some(token)) = (&principal, bearer(&headers)) {
        let record = state.record(&principal.actor(), "auth.staff.sign_out", &principal.actor(), Outcome::Success);
        state.store().delete_session(&hash_bearer(token), &state.auditor(&keyring), vec![record]).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn enrolling(state: &AppState, username: &str, code: &SecretString) -> Result<StaffRecord, ApiError> {
    let keyring = state.keyring()?;
    let staff = state.store().staff_by_username(username).await?;
    let valid = staff.as_ref().is_some_and(|s| {
        s.status == StaffStatus::Enrolling
            && s.enrolment_expires_at_ns.is_some_and(|at| at > state.now_ns())
            && s.enrolment_hash.as_deref().is_some_and(|h| bool::from(h.ct_eq(&hash_bearer(code.expose_secret()))))
    });
    match staff {
        Some(s) if valid => Ok(s),
        _ => {
            let target = attempt_target(&keyring, username, state.store().staff_by_username(username).await?.as_ref());
            let record = state.record("anonymous", "auth.staff.enrol", &target, Outcome::Failure);
            state.audit(vec![record]).await?;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_enrolment",
                "the username or enrolment code is wrong or expired",
            ))
        }
    }
}

/// First step of enrolment: sets the password and answers a new TOTP secret for the authenticator app.
#[utoipa::path(post, path = "/v1/staff/enrol", request_body = EnrolRequest, responses(
    (status = 200, body = EnrolView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)
))]
pub(crate) async fn enrol(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrolRequest>,
) -> Result<Json<EnrolView>, ApiError> {
    let keyring = state.keyring()?;
    let staff = enrolling(&state, &request.username, &request.enrolment_code).await?;
    let password_hash =
        hash_password(&request.password).map_err(|e| ApiError::bad_request("weak_password", e.to_string()))?;
    let secret = TotpSecret::generate();
    let ciphertext = keyring.encrypt(secret.expose_bytes(), totp_aad(staff.id).as_bytes());
    let record = state.record(
        &format!("staff:{}", staff.id),
        "auth.staff.enrol",
        &format!("staff:{}", staff.id),
        Outcome::Success,
    );
    if !state
        .store()
        .set_staff_credentials(staff.id, &password_hash, &ciphertext, &state.auditor(&keyring), vec![record])
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_enrolled",
            "credentials were already set for this account: confirm them, or ask an administrator for a new account",
        ));
    }
    Ok(Json(EnrolView {
        totp_secret: secret.base32().to_string(),
        otpauth_uri: secret.provisioning_uri(&format!("staff:{}", staff.username)).to_string(),
    }))
}

/// Second step of enrolment: a code from the authenticator app activates the account.
#[utoipa::path(post, path = "/v1/staff/enrol/confirm", request_body = ConfirmEnrolRequest, responses(
    (status = 200, body = StaffView), (status = 401, body = ErrorBody)
))]
pub(crate) async fn confirm_enrolment(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ConfirmEnrolRequest>,
) -> Result<Json<StaffView>, ApiError> {
    let keyring = state.keyring()?;
    let staff = enrolling(&state, &request.username, &request.enrolment_code).await?;
    let step =
        totp_secret(&state, &staff).await?.and_then(|secret| secret.verify(&request.totp_code, unix_s(state.now_ns())));
    let actor = format!("staff:{}", staff.id);
    let Some(step) = step else {
        state.audit(vec![state.record(&actor, "auth.staff.enrol_confirm", &actor, Outcome::Failure)]).await?;
        return Err(invalid_credentials());
    };
    let record = state.record(&actor, "auth.staff.enrol_confirm", &actor, Outcome::Success);
    if !state.store().activate_staff(staff.id, step, &state.auditor(&keyring), vec![record]).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_enrolling",
            "set a password first (POST /v1/staff/enrol)",
        ));
    }
    let staff = state.store().staff_by_id(staff.id).await?.ok_or_else(|| ApiError::not_found("staff vanished"))?;
    Ok(Json(StaffView::from(&staff)))
}

/// Every staff account.
#[utoipa::path(get, path = "/v1/staff", security(("bearer" = [])), responses(
    (status = 200, body = Vec<StaffView>), (status = 403, body = ErrorBody)
))]
pub(crate) async fn list_staff(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<StaffView>>, ApiError> {
    state.authorize(&principal, Permission::StaffRead, "staff.list", "staff").await?;
    Ok(Json(state.store().list_staff().await?.iter().map(StaffView::from).collect()))
}

/// Creates a staff account with no roles and answers its one-time enrolment code.
#[utoipa::path(post, path = "/v1/staff", request_body = CreateStaffRequest, security(("bearer" = [])), responses(
    (status = 201, body = CreatedStaffView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 409, body = ErrorBody)
))]
pub(crate) async fn create_staff(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateStaffRequest>,
) -> Result<(StatusCode, Json<CreatedStaffView>), ApiError> {
    state.authorize(&principal, Permission::StaffManage, "staff.create", "staff").await?;
    if !rampart_auth::valid_username(&request.username) {
        return Err(ApiError::bad_request("invalid_username", "3 to 64 letters, digits, '.', '_' or '-'"));
    }
    let keyring = state.keyring()?;
    let code = BearerSecret::generate("enr_");
    let now = state.now_ns();
    let expires = now + ENROLMENT_TTL_S * NS;
    let record =
        state.record(&principal.actor(), "staff.create", &format!("staff:{}", request.username), Outcome::Success);
    let id = state
        .store()
        .create_staff(&request.username, &[], &code.hash, expires, now, &state.auditor(&keyring), vec![record])
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "username_taken", "that username is taken"))?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedStaffView {
            id,
            username: request.username,
            enrolment_code: code.secret.expose_secret().to_owned(),
            expires_at_ns: expires.to_string(),
        }),
    ))
}

pub(crate) fn path_i64(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::bad_request("invalid_id", "expected a positive integer id"))
}

/// Asks for a role to be granted or revoked; another administrator must approve it.
#[utoipa::path(post, path = "/v1/staff/{id}/role-requests", request_body = RoleChangeRequest,
    params(("id" = i64, Path, description = "staff id")), security(("bearer" = [])), responses(
    (status = 201, body = RoleRequestView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)
))]
pub(crate) async fn request_role_change(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(request): ApiJson<RoleChangeRequest>,
) -> Result<(StatusCode, Json<RoleRequestView>), ApiError> {
    let staff_id = path_i64(path)?;
    let target = format!("staff:{staff_id}");
    state.authorize(&principal, Permission::StaffManage, "staff.role.request", &target).await?;
    let role = Role::parse(&request.role).ok_or_else(|| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::bad_request(
            "invalid_role",
            format!("unknown role {:?} (expected one of {})", request.role, known.join(", ")),
        )
    })?;
    state.store().staff_by_id(staff_id).await?.ok_or_else(|| ApiError::not_found(format!("no staff {staff_id}")))?;
    let keyring = state.keyring()?;
    let actor = principal.actor();
    let mut record = state.record(&actor, "staff.role.request", &target, Outcome::Success);
    record.details.insert("role".into(), role.as_str().into());
    record.details.insert("grant".into(), request.grant.to_string());
    let id = state
        .store()
        .request_role_change(
            staff_id,
            role,
            request.grant,
            &actor,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?;
    let view = RoleRequestView {
        id,
        staff_id,
        role: role.as_str().to_owned(),
        grant: request.grant,
        requested_by: actor,
        status: "pending".into(),
        decided_by: None,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Role requests waiting for a decision.
#[utoipa::path(get, path = "/v1/staff/role-requests", security(("bearer" = [])), responses(
    (status = 200, body = Vec<RoleRequestView>), (status = 403, body = ErrorBody)
))]
pub(crate) async fn pending_role_requests(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<RoleRequestView>>, ApiError> {
    state.authorize(&principal, Permission::StaffRead, "staff.role.list", "staff").await?;
    Ok(Json(state.store().role_requests("pending").await?.into_iter().map(RoleRequestView::from).collect()))
}

async fn decide(
    state: AppState,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    approve: bool,
) -> Result<Json<RoleRequestView>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("role_request:{id}");
    let action = if approve { "staff.role.approve" } else { "staff.role.reject" };
    state.authorize(&principal, Permission::StaffApprove, action, &target).await?;
    let keyring = state.keyring()?;
    let actor = principal.actor();
    let record = state.record(&actor, action, &target, Outcome::Success);
    match state
        .store()
        .decide_role_request(id, approve, &actor, state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?
    {
        RoleDecision::Decided(r) => Ok(Json(RoleRequestView::from(r))),
        RoleDecision::NotFound => Err(ApiError::not_found(format!("no role request {id}"))),
        RoleDecision::NotPending => {
            Err(ApiError::new(StatusCode::CONFLICT, "already_decided", "this request was already decided"))
        }
        RoleDecision::SeparationOfDuties(reason) => {
            let mut denied = state.record(&actor, action, &target, Outcome::Denied);
            denied.details.insert("reason".into(), "separation_of_duties".into());
            state.audit(vec![denied]).await?;
            Err(ApiError::new(StatusCode::FORBIDDEN, "separation_of_duties", format!("refused: {reason}")))
        }
        RoleDecision::OwnRequest => {
            let mut denied = state.record(&actor, action, &target, Outcome::Denied);
            denied.details.insert("reason".into(), "own_request".into());
            state.audit(vec![denied]).await?;
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "four_eyes",
                "a role change must be decided by another administrator",
            ))
        }
    }
}

/// Approves a role request (four eyes: not the requester's own), applying the change.
#[utoipa::path(post, path = "/v1/staff/role-requests/{id}/approve", params(("id" = i64, Path, description = "request id")),
    security(("bearer" = [])), responses((status = 200, body = RoleRequestView), (status = 403, body = ErrorBody)))]
pub(crate) async fn approve_role_request(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RoleRequestView>, ApiError> {
    decide(state, principal, path, true).await
}

/// Rejects a role request.
#[utoipa::path(post, path = "/v1/staff/role-requests/{id}/reject", params(("id" = i64, Path, description = "request id")),
    security(("bearer" = [])), responses((status = 200, body = RoleRequestView), (status = 403, body = ErrorBody)))]
pub(crate) async fn reject_role_request(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RoleRequestView>, ApiError> {
    decide(state, principal, path, false).await
}

/// Disables a staff account at once and ends every session it has (a leaver, a lost laptop). Protective, so one
/// administrator may do it; re-enabling is not offered: create a new account instead.
#[utoipa::path(post, path = "/v1/staff/{id}/disable", params(("id" = i64, Path, description = "staff id")),
    security(("bearer" = [])), responses(
    (status = 200, body = StaffView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
))]
pub(crate) async fn disable_staff(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StaffView>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("staff:{id}");
    state.authorize(&principal, Permission::StaffManage, "staff.disable", &target).await?;
    let keyring = state.keyring()?;
    let record = state.record(&principal.actor(), "staff.disable", &target, Outcome::Success);
    if !state.store().disable_staff(id, &state.auditor(&keyring), vec![record]).await? {
        return Err(ApiError::not_found(format!("no staff {id}")));
    }
    let staff = state.store().staff_by_id(id).await?.ok_or_else(|| ApiError::not_found(format!("no staff {id}")))?;
    Ok(Json(StaffView::from(&staff)))
}
