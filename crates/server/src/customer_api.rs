//! The customer's side of identity: sign-up with mandatory TOTP enrolment, email verification, two-step sign-in
//! with brute-force protection and new-device confirmation, sessions and devices, step-up, security settings
//! (password, anti-phishing code, factors, backup codes, email), API keys, notifications and account recovery.

use std::net::IpAddr;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use rampart_audit::Outcome;
use rampart_auth::{BackupCodes, BearerSecret, TotpSecret, hash_bearer};
use rampart_core::AccountId;
use rampart_ledger::{AccountFlags, NewAccount};
use rampart_notify::{DeviceInfo, FactorKind, Notification, SecretLink};
use rampart_risk::{Country, EventKind, Factor};
use rampart_store::{CustomerRecord, CustomerStatus, Effects, NewCustomer, NewSession, NewTicket, SecurityChange};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::identity::{
    Customer, DEVICE_HEADER, Scope, StepUp, api_key_aad, check_throttle, customer_aad, customer_email, customer_record,
    decrypt_field, notice, request_ip, rfc3339, user_agent,
};

const NS: u64 = 1_000_000_000;
/// How long the enrolment ticket of a sign-up works.
const ENROL_TICKET_S: u64 = 30 * 60;
/// How long a sign-in ticket (between password and second factor) works, and how many codes it may try.
const SIGN_IN_TICKET_S: u64 = 5 * 60;
const SIGN_IN_ATTEMPTS_MAX: u32 = 5;
/// The mark support puts on the recovery link it sends after resetting the factors.
const SUPPORT_RESET: &str = "support_reset";
/// How long emailed links work.
pub(crate) const EMAIL_LINK_S: u64 = 24 * 3600;
const RECOVERY_LINK_S: u64 = 3600;
/// The ledger account code of a customer's balance in one asset.
pub const CUSTOMER_ACCOUNT_CODE: u16 = 1;

/// The client's address and user agent.
pub(crate) struct Client {
    pub ip: IpAddr,
    pub user_agent: String,
    /// The client's country, when a trusted proxy says it or geofencing's address ranges know it.
    pub country: Option<Country>,
}

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let ip = request_ip(state, &parts.headers, &parts.extensions);
        // A trusted proxy's word first, then the address ranges when geofencing has them.
        let country = crate::risk::client_country(state, &parts.headers, &parts.extensions)
            .or_else(|| state.geofencing().and_then(|g| g.country(ip)));
        Ok(Client { ip, user_agent: user_agent(&parts.headers), country })
    }
}

/// A name a customer or staff member gives something (an API key, a passkey): trimmed, 1 to 64 printable
/// characters; refused with `code` otherwise.
pub(crate) fn valid_label(raw: &str, code: &'static str) -> Result<String, ApiError> {
    let label = raw.trim();
    if label.is_empty() || label.chars().count() > 64 || label.chars().any(char::is_control) {
        return Err(ApiError::bad_request(code, "a name is 1 to 64 printable characters"));
    }
    Ok(label.to_owned())
}

/// Normalises and checks an email address: trimmed, lower-cased, one `@`, a dotted domain, no spaces or controls.
pub fn normalise_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let bad = || ApiError::bad_request("invalid_email", "not an email address (name@example.com)");
    if email.len() > 254 {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let ok_chars = |s: &str| s.chars().all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:@\"".contains(c));
    if local.is_empty()
        || local.len() > 64
        || !ok_chars(local)
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !ok_chars(domain)
    {
        return Err(bad());
    }
    Ok(email)
}

/// Masks an email for display (`a***@example.com`).
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

pub(crate) fn email_index(keyring: &rampart_crypto::Keyring, email: &str) -> [u8; 32] {
    keyring.blind_index("customer.email", email.as_bytes())
}

/// The ledger account holding a customer's balance of one asset: a deterministic id, so that creating it again
/// answers `exists`.
pub fn customer_ledger_account(customer_id: i64, asset: &str) -> AccountId {
    let digest = Sha256::new()
        .chain_update(b"rampart.customer_account.v1")
        .chain_update(customer_id.to_be_bytes())
        .chain_update(asset.as_bytes())
        .finalize();
    AccountId(u128::from_be_bytes(digest[..16].try_into().expect("16 bytes")))
}

/// The failure-counter subject of an email: its blind index, never the email, so the table holds no personal data.
fn account_subject(index: &[u8; 32]) -> String {
    hex::encode(index)
}

async fn hash_password_blocking(password: SecretString) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || rampart_auth::hash_password(&password))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))
}

async fn verify_password_blocking(password: SecretString, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || rampart_auth::verify_password(&password, stored.as_deref()))
        .await
        .unwrap_or(false)
}

fn check_new_password(password: &SecretString, email: &str) -> Result<(), ApiError> {
    let local = email.split_once('@').map_or(email, |(l, _)| l);
    rampart_auth::check_password(password, &[local, email, "rampart"])
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))
}

pub(crate) fn link(state: &AppState, path: &str, token: &SecretString) -> String {
    format!("{}{path}?token={}", state.identity().public_url.trim_end_matches('/'), token.expose_secret())
}

pub(crate) fn lock_until(state: &AppState, hours: u64) -> u64 {
    state.now_ns().saturating_add(hours.saturating_mul(3600 * NS))
}

// ---------------------------------------------------------------------------------------------------------------
// Sign-up, enrolment, email verification

/// `POST /v1/customers/sign-up`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUpRequest {
    /// The email address.
    pub email: String,
    /// The password: 12 to 128 characters, not common, not guessable.
    #[schema(value_type = String)]
    pub password: SecretString,
    /// The full legal name, screened against the sanctions list (a match freezes the account for review).
    #[serde(default)]
    pub legal_name: Option<String>,
    /// Nationality or residence (ISO 3166-1 alpha-2), which sharpens screening.
    #[serde(default)]
    pub country: Option<String>,
    /// Date of birth (`YYYY-MM-DD`), which sharpens screening.
    #[serde(default)]
    pub date_of_birth: Option<String>,
}

/// The screening data of a sign-up, checked: a name of 1 to 200 printable characters, an ISO country code, a date.
fn sign_up_screening(request: &SignUpRequest) -> Result<Option<crate::compliance::ScreeningData>, ApiError> {
    let Some(name) = request.legal_name.as_deref().map(str::trim) else {
        if request.country.is_some() || request.date_of_birth.is_some() {
            return Err(ApiError::bad_request("missing_field", "legal_name is required with country or date_of_birth"));
        }
        return Ok(None);
    };
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_name", "legal_name is 1 to 200 printable characters"));
    }
    let country = crate::compliance_api::valid_country(request.country.as_deref())?;
    if let Some(d) = request.date_of_birth.as_deref()
        && rampart_compliance::kyc::parse_date(d).is_none()
    {
        return Err(ApiError::bad_request("invalid_date_of_birth", "date_of_birth is a date YYYY-MM-DD"));
    }
    Ok(Some(crate::compliance::ScreeningData {
        name: name.to_owned(),
        country,
        date_of_birth: request.date_of_birth.clone(),
    }))
}

/// A TOTP secret to load into an authenticator app; shown once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TotpEnrolmentView {
    /// Base32, to type in.
    pub secret: String,
    /// The `otpauth://` URI.
    pub otpauth_uri: String,
    /// The URI as a QR code (SVG).
    pub qr_svg: String,
}

/// A new account, waiting for its second factor.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SignUpView {
    /// The customer's public id.
    pub customer: String,
    /// This device's token: send it as `X-Rampart-Device` with every request.
    pub device_token: String,
    /// Proves the enrolment step: `POST /v1/customers/sign-up/totp` with it and a code.
    pub enrolment_ticket: String,
    /// The authenticator to set up.
    pub totp: TotpEnrolmentView,
}

fn totp_view(secret: &TotpSecret, label: &str) -> TotpEnrolmentView {
    let uri = secret.provisioning_uri(label);
    TotpEnrolmentView {
        secret: secret.base32().to_string(),
        qr_svg: rampart_auth::qr_svg(&uri),
        otpauth_uri: uri.to_string(),
    }
}

/// Creates a customer account; the verification link goes by email; the TOTP factor must be confirmed next.
#[utoipa::path(post, path = "/v1/customers/sign-up", request_body = SignUpRequest, responses(
    (status = 201, body = SignUpView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)
))]
pub(crate) async fn sign_up(
    State(state): State<AppState>,
    client: Client,
    ApiJson(request): ApiJson<SignUpRequest>,
) -> Result<(StatusCode, Json<SignUpView>), ApiError> {
    crate::geofence::check(&state, &client, "auth.customer.sign_up").await?;
    let keyring = state.keyring()?;
    let email = normalise_email(&request.email)?;
    check_new_password(&request.password, &email)?;
    let screening = sign_up_screening(&request)?;
    let password_hash = hash_password_blocking(request.password).await?;
    let handle: [u8; 16] = uuid::Uuid::new_v4().into_bytes();
    let index = email_index(&keyring, &email);
    let email_ct = keyring.encrypt(email.as_bytes(), customer_aad(&handle, "email").as_bytes());
    let totp = TotpSecret::generate();
    let totp_ct = keyring.encrypt(totp.expose_bytes(), customer_aad(&handle, "totp").as_bytes());
    let device = BearerSecret::generate("rdv_");
    let enrol = BearerSecret::generate("ren_");
    let verify = BearerSecret::generate("rve_");
    let now = state.now_ns();
    let new = NewCustomer {
        handle,
        email_index: &index,
        email: &email_ct,
        password_hash: &password_hash,
        totp_pending: &totp_ct,
    };
    let verify_link = link(&state, "/verify-email", &verify.secret);
    let created = state
        .store()
        .create_customer(
            &new,
            &device.hash,
            &client.user_agent,
            &client.ip.to_string(),
            now,
            &state.auditor(&keyring),
            |id| {
                let owner = format!("customer:{id}");
                Effects::audit(customer_record(
                    &state,
                    &owner,
                    "auth.customer.sign_up",
                    id,
                    Outcome::Success,
                    &[("ip", client.ip.to_string())],
                ))
                .notify(notice(
                    &keyring,
                    Notification::EmailVerification { link: SecretLink::new(verify_link.clone()) },
                    None,
                ))
                .ticket(NewTicket {
                    token_hash: enrol.hash,
                    purpose: "enrol",
                    owner: owner.clone(),
                    data: None,
                    expires_at_ns: now + ENROL_TICKET_S * NS,
                })
                .ticket(NewTicket {
                    token_hash: verify.hash,
                    purpose: "verify_email",
                    owner,
                    data: None,
                    expires_at_ns: now + EMAIL_LINK_S * NS,
                })
            },
        )
        .await?;
    let Some((id, _device)) = created else {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", "an account with this email exists"));
    };
    ensure_ledger_accounts(&state, id).await?;
    if let Some(data) = &screening {
        // A match freezes the account and opens a compliance case; the answer does not say so.
        crate::compliance::screen_customer(&state, id, &handle, data, "sign_up").await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(SignUpView {
            customer: hex::encode(handle),
            device_token: device.secret.expose_secret().to_owned(),
            enrolment_ticket: enrol.secret.expose_secret().to_owned(),
            totp: totp_view(&totp, &email),
        }),
    ))
}

/// Applies `change` to customer `customer_id` with its effects (audit entries, notifications, tickets) in one
/// transaction, at the state's time; `false` when there was nothing to change.
async fn change_for(
    state: &AppState,
    customer_id: i64,
    change: SecurityChange<'_>,
    lock: Option<(u64, &str)>,
    effects: Effects,
) -> Result<bool, ApiError> {
    let keyring = state.keyring()?;
    Ok(state
        .store()
        .apply_security_change(customer_id, change, lock, state.now_ns(), &state.auditor(&keyring), effects)
        .await?)
}

/// Opens the customer's ledger account in every configured asset: deterministic ids make it idempotent (a repeat
/// answers `exists`), so sign-up opens them and every sign-in makes sure of them (after a failure between the two
/// writes of a sign-up, or when an asset is added to the configuration).
async fn ensure_ledger_accounts(state: &AppState, customer_id: i64) -> Result<(), ApiError> {
    let accounts: Vec<NewAccount> = state
        .assets()
        .iter()
        .map(|a| NewAccount {
            id: customer_ledger_account(customer_id, a.code.as_str()),
            asset: a.code,
            code: CUSTOMER_ACCOUNT_CODE,
            flags: AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: false },
            user_data: u128::try_from(customer_id).unwrap_or(0),
        })
        .collect();
    state.store().create_accounts(&accounts, state.now_ns()).await?;
    Ok(())
}

/// `POST /v1/customers/sign-up/totp`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolTotpRequest {
    /// The ticket of the sign-up.
    #[schema(value_type = String)]
    pub enrolment_ticket: SecretString,
    /// A current code from the authenticator app.
    pub totp_code: String,
}

/// Backup codes, shown once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BackupCodesView {
    /// Ten one-time codes for when the authenticator is lost; each works once.
    pub backup_codes: Vec<String>,
}

fn owner_id(owner: &str) -> Option<i64> {
    owner.strip_prefix("customer:")?.parse().ok()
}

pub(crate) async fn ticket_customer(
    state: &AppState,
    token: &SecretString,
    purpose: &'static str,
    attempts: Option<u32>,
) -> Result<(CustomerRecord, Option<Vec<u8>>), ApiError> {
    let hash = hash_bearer(token.expose_secret());
    let now = state.now_ns();
    let ticket = match attempts {
        Some(max) => state.store().use_ticket(&hash, purpose, max, now).await?,
        None => state.store().take_ticket(&hash, purpose, now).await?,
    };
    let invalid =
        || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_ticket", "the ticket or link is invalid or expired");
    let ticket = ticket.ok_or_else(invalid)?;
    let id = owner_id(&ticket.owner).ok_or_else(invalid)?;
    let customer = state.store().customer_by_id(id).await?.ok_or_else(invalid)?;
    Ok((customer, ticket.data))
}

/// Confirms the TOTP factor of a new account with a code; answers the ten backup codes.
#[utoipa::path(post, path = "/v1/customers/sign-up/totp", request_body = EnrolTotpRequest, responses(
    (status = 200, body = BackupCodesView), (status = 401, body = ErrorBody)
))]
pub(crate) async fn enrol_totp(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrolTotpRequest>,
) -> Result<Json<BackupCodesView>, ApiError> {
    let keyring = state.keyring()?;
    let (customer, _) = ticket_customer(&state, &request.enrolment_ticket, "enrol", Some(SIGN_IN_ATTEMPTS_MAX)).await?;
    let codes = confirm_pending_totp(&state, &customer, &request.totp_code, &customer.subject()).await?;
    state.store().delete_ticket(&hash_bearer(request.enrolment_ticket.expose_secret())).await?;
    let _ = keyring;
    Ok(Json(codes))
}

/// Proves a pending TOTP secret with a code and makes it the factor; first enrolment also issues backup codes.
async fn confirm_pending_totp(
    state: &AppState,
    customer: &CustomerRecord,
    code: &str,
    actor: &str,
) -> Result<BackupCodesView, ApiError> {
    let keyring = state.keyring()?;
    let pending = customer.totp_pending.as_deref().ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "no_pending_factor", "no authenticator is being enrolled")
    })?;
    let secret = TotpSecret::from_bytes(&decrypt_field(state, customer, "totp", pending).await?)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?;
    let now = state.now_ns();
    let Some(step) = secret.verify(code, now / NS) else {
        let record = customer_record(
            state,
            actor,
            "auth.customer.totp_enrol",
            customer.id,
            Outcome::Failure,
            &[("reason", "wrong_code".into())],
        );
        state.audit(vec![record]).await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_code", "the code is wrong or expired"));
    };
    let first = customer.totp_secret.is_none() && state.store().backup_codes_left(customer.id).await? == 0;
    // Replacing an authenticator is a second-factor reset: withdrawals lock, in the same transaction.
    let replacing = customer.totp_secret.is_some();
    let until = lock_until(state, state.identity().security_lock_hours);
    let mut details = vec![("replaced", replacing.to_string())];
    if replacing {
        details.push(("withdrawals_locked_until", rfc3339(until)));
    }
    let record = customer_record(state, actor, "auth.customer.totp_enrol", customer.id, Outcome::Success, &details);
    let mut effects =
        Effects::audit(record).notify(notice(&keyring, Notification::FactorAdded { kind: FactorKind::Totp }, None));
    if replacing {
        effects = effects.notify(notice(&keyring, Notification::SecurityLock { until_ns: until }, None));
    }
    let confirmed = state
        .store()
        .apply_security_change(
            customer.id,
            SecurityChange::TotpConfirmed { step },
            replacing.then_some((until, "second-factor reset")),
            now,
            &state.auditor(&keyring),
            effects,
        )
        .await?;
    if !confirmed {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_code", "that code was already used"));
    }
    if !first {
        return Ok(BackupCodesView { backup_codes: Vec::new() });
    }
    issue_backup_codes(state, customer, actor).await
}

async fn issue_backup_codes(
    state: &AppState,
    customer: &CustomerRecord,
    actor: &str,
) -> Result<BackupCodesView, ApiError> {
    let codes = BackupCodes::generate();
    let record = customer_record(state, actor, "auth.customer.backup_codes", customer.id, Outcome::Success, &[]);
    change_for(state, customer.id, SecurityChange::BackupCodes(codes.hashes()), None, Effects::audit(record)).await?;
    Ok(BackupCodesView { backup_codes: codes.codes().iter().map(|c| c.expose_secret().to_owned()).collect() })
}

/// `{"token": "…"}`: an emailed link's token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token from the link.
    #[schema(value_type = String)]
    pub token: SecretString,
}

/// Verifies the email address from the emailed link.
#[utoipa::path(post, path = "/v1/customers/verify-email", request_body = TokenRequest, responses(
    (status = 204), (status = 401, body = ErrorBody)
))]
pub(crate) async fn verify_email(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<StatusCode, ApiError> {
    let (customer, _) = ticket_customer(&state, &request.token, "verify_email", None).await?;
    let record = customer_record(
        &state,
        &customer.subject(),
        "auth.customer.email_verified",
        customer.id,
        Outcome::Success,
        &[],
    );
    change_for(&state, customer.id, SecurityChange::EmailVerified, None, Effects::audit(record)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirms a new device from the emailed link; the owner then signs in from it.
#[utoipa::path(post, path = "/v1/customers/devices/confirm", request_body = TokenRequest, responses(
    (status = 204), (status = 401, body = ErrorBody)
))]
pub(crate) async fn confirm_device(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<StatusCode, ApiError> {
    let (customer, data) = ticket_customer(&state, &request.token, "device", None).await?;
    let data = data.and_then(|d| String::from_utf8(d).ok()).unwrap_or_default();
    let mut fields = data.split(' ');
    let device_id: i64 = fields
        .next()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_ticket", "the link is invalid or expired"))?;
    let ip: Option<IpAddr> = fields.next().and_then(|v| v.parse().ok());
    let country = fields.next().and_then(Country::parse);
    let record = customer_record(
        &state,
        &customer.subject(),
        "auth.customer.device_confirmed",
        customer.id,
        Outcome::Success,
        &[("device", device_id.to_string())],
    );
    change_for(&state, customer.id, SecurityChange::DeviceConfirmed(device_id), None, Effects::audit(record)).await?;
    // The emailed link proves the sign-in was the customer's: the risk engine learns its address, device and country.
    if let Some(ip) = ip {
        let event = crate::risk::event(&state, customer.id, ip, Some(device_id), country, EventKind::ChallengePassed);
        crate::risk::assess(&state, customer.id, event).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------------------------
// Sign-in

/// `POST /v1/customers/sign-in`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerSignInRequest {
    /// The email address.
    pub email: String,
    /// The password.
    #[schema(value_type = String)]
    pub password: SecretString,
}

/// The password was right: prove a second factor with the ticket next.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SignInTicketView {
    /// `POST /v1/customers/sign-in/verify` with it (or the WebAuthn routes).
    pub ticket: String,
    /// The second factors this account has: `totp`, `webauthn`, `backup_code`.
    pub second_factors: Vec<String>,
    /// When the ticket stops working.
    pub expires_at_ns: String,
}

fn sign_in_target(customer: Option<&CustomerRecord>, subject: &str) -> String {
    customer.map_or_else(|| format!("unknown_customer:{}", &subject[..24]), CustomerRecord::subject)
}

/// Counts a failed sign-in against the account and the address; locks the account at the limit (with a
/// notification). Answers the error the client sees.
async fn sign_in_failed(
    state: &AppState,
    customer: Option<&CustomerRecord>,
    subject: &str,
    ip: IpAddr,
    reason: &str,
    action: &str,
    reserved: Option<rampart_store::ThrottleState>,
) -> Result<ApiError, ApiError> {
    let keyring = state.keyring()?;
    let config = state.identity().clone();
    let now = state.now_ns();
    let account = match reserved {
        Some(counted) => counted,
        None => {
            state
                .store()
                .record_auth_failure("account", subject, now, 24 * 3600 * NS, |f| config.account_blocked_until(f, now))
                .await?
        }
    };
    let ip_text = crate::identity::ip_subject(ip);
    let by_ip =
        state.store().record_auth_failure("ip", &ip_text, now, 3600 * NS, |f| config.ip_blocked_until(f, now)).await?;
    let target = sign_in_target(customer, subject);
    let mut record = state.record("anonymous", action, &target, Outcome::Failure);
    record.details.insert("reason".into(), reason.into());
    record.details.insert("ip".into(), ip.to_string());
    record.details.insert("account_failures".into(), account.failures.to_string());
    record.details.insert("ip_failures".into(), by_ip.failures.to_string());
    if account.failures >= config.account_lock_failures
        && let Some(c) = customer.filter(|c| c.status == CustomerStatus::Active)
    {
        let lock = customer_record(
            state,
            "system",
            "auth.customer.locked",
            c.id,
            Outcome::Success,
            &[("failures", account.failures.to_string())],
        );
        let effects = Effects { records: vec![record, lock], ..Effects::default() }.notify(notice(
            &keyring,
            Notification::AccountLocked { until_ns: None },
            None,
        ));
        state
            .store()
            .apply_security_change(c.id, SecurityChange::Locked, None, now, &state.auditor(&keyring), effects)
            .await?;
    } else {
        state.audit(vec![record]).await?;
    }
    if account.failures >= config.account_lock_failures {
        return Ok(locked_error());
    }
    Ok(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "the email, password or code is wrong"))
}

/// Before a second factor is checked (sign-in, step-up, recovery): the address and the account must not be blocked
/// after failures, so that guessing codes is bounded per account exactly like guessing passwords.
async fn guard_second_factor(
    state: &AppState,
    action: &str,
    customer: &CustomerRecord,
    subject: &str,
    ip: IpAddr,
) -> Result<(), ApiError> {
    let ip_text = crate::identity::ip_subject(ip);
    check_throttle(state, action, "ip", &ip_text, &format!("ip:{ip_text}"), ip).await?;
    check_throttle(state, action, "account", subject, &customer.subject(), ip).await
}

/// The throttle subject of a customer: the blind index of their email, in hex.
async fn customer_subject(state: &AppState, customer: &CustomerRecord) -> Result<String, ApiError> {
    let keyring = state.keyring()?;
    let email = customer_email(state, customer).await?;
    Ok(hex::encode(email_index(&keyring, &email)))
}

fn locked_error() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "account_locked",
        "the account is locked after too many failed sign-ins: recover it with a second factor \
         (POST /v1/customers/recovery/start) or contact support",
    )
}

fn factors(customer: &CustomerRecord, webauthn: usize, backup: u32) -> Vec<String> {
    let mut f = Vec::new();
    if customer.totp_secret.is_some() {
        f.push("totp".to_owned());
    }
    if webauthn > 0 {
        f.push("webauthn".to_owned());
    }
    if backup > 0 {
        f.push("backup_code".to_owned());
    }
    f
}

/// First step of a sign-in: the password. Throttled per account and per address (in the database, shared by every
/// node); an unknown email takes as long as a known one and gets the same answer.
#[utoipa::path(post, path = "/v1/customers/sign-in", request_body = CustomerSignInRequest, responses(
    (status = 200, body = SignInTicketView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 429, body = ErrorBody)
))]
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    client: Client,
    ApiJson(request): ApiJson<CustomerSignInRequest>,
) -> Result<Json<SignInTicketView>, ApiError> {
    if let Err(refused) = crate::geofence::check(&state, &client, "auth.customer.sign_in").await {
        crate::geofence::flag_for_offboarding(&state, &client, &request.email).await?;
        return Err(refused);
    }
    let keyring = state.keyring()?;
    // An address that cannot be an email is still counted and timed like any other attempt.
    let email = normalise_email(&request.email).unwrap_or_else(|_| request.email.trim().to_lowercase());
    let index = email_index(&keyring, &email);
    let subject = account_subject(&index);
    let ip_text = crate::identity::ip_subject(client.ip);
    check_throttle(&state, "auth.customer.sign_in", "ip", &ip_text, &format!("ip:{ip_text}"), client.ip).await?;
    let customer = state.store().customer_by_email_index(&index).await?;
    let target = sign_in_target(customer.as_ref(), &subject);
    check_throttle(&state, "auth.customer.sign_in", "account", &subject, &target, client.ip).await?;
    // The attempt is counted as a failure before the password is checked, atomically, and given back if the password
    // is right: a burst of concurrent guesses cannot all slip in under the limit. Attempts past the lock are never
    // checked, for known and unknown emails alike, so a locked account is no password oracle.
    let config = state.identity().clone();
    let now = state.now_ns();
    let before = state.store().throttle_state("account", &subject).await?;
    let reserved = state
        .store()
        .record_auth_failure("account", &subject, now, 24 * 3600 * NS, |f| config.account_blocked_until(f, now))
        .await?;
    if reserved.failures > config.account_lock_failures {
        // Not counted: attempts on a locked account must not push the owner's recovery further away.
        let blocked = before.map_or(0, |b| b.blocked_until_ns);
        state.store().release_auth_attempt("account", &subject, blocked).await?;
        let mut record = state.record("anonymous", "auth.customer.sign_in", &target, Outcome::Denied);
        record.details.insert("reason".into(), "locked".into());
        record.details.insert("ip".into(), client.ip.to_string());
        state.audit(vec![record]).await?;
        return Err(locked_error());
    }
    let ok = verify_password_blocking(request.password, customer.as_ref().map(|c| c.password_hash.clone())).await;
    let customer = match customer {
        Some(c) if ok => c,
        other => {
            if let Some(c) = other.as_ref() {
                let kind = EventKind::SignIn { success: false, factor: Factor::Password };
                crate::risk::assess(
                    &state,
                    c.id,
                    crate::risk::event(&state, c.id, client.ip, None, client.country, kind),
                )
                .await?;
            }
            return Err(sign_in_failed(
                &state,
                other.as_ref(),
                &subject,
                client.ip,
                "credentials",
                "auth.customer.sign_in",
                Some(reserved),
            )
            .await?);
        }
    };
    let still_blocked = before.map_or(0, |b| b.blocked_until_ns);
    state.store().release_auth_attempt("account", &subject, still_blocked).await?;
    if customer.status == CustomerStatus::Locked {
        return Err(locked_error());
    }
    if customer.status == CustomerStatus::Frozen {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "account_frozen", "the account is frozen: contact support"));
    }
    if customer.email_verified_at_ns.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "email_unverified",
            "verify the email address first: follow the link we sent",
        ));
    }
    // The password step is scored too: a burst of failures from this address refuses even a right password.
    let kind = EventKind::SignIn { success: true, factor: Factor::Password };
    let event = crate::risk::event(&state, customer.id, client.ip, None, client.country, kind);
    if let Some(refusal) = crate::risk::refusal(&crate::risk::assess(&state, customer.id, event).await?) {
        return Err(refusal);
    }
    let webauthn = state.store().webauthn_credentials(&customer.subject()).await?.len();
    let backup = state.store().backup_codes_left(customer.id).await?;
    let second_factors = factors(&customer, webauthn, backup);
    if customer.totp_secret.is_none() && webauthn == 0 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "second_factor_missing",
            "this account has no second factor: finish enrolment or recover the account",
        ));
    }
    // One live sign-in ticket per account: a burst of password sign-ins cannot stockpile tickets (five code guesses
    // each) to spend later.
    state.store().delete_tickets_of(&customer.subject(), "sign_in").await?;
    let ticket = BearerSecret::generate("rsi_");
    let expires = state.now_ns() + SIGN_IN_TICKET_S * NS;
    state
        .store()
        .store_tickets(
            &state.auditor(&keyring),
            Effects::default().ticket(NewTicket {
                token_hash: ticket.hash,
                purpose: "sign_in",
                owner: customer.subject(),
                data: None,
                expires_at_ns: expires,
            }),
        )
        .await?;
    Ok(Json(SignInTicketView {
        ticket: ticket.secret.expose_secret().to_owned(),
        second_factors,
        expires_at_ns: expires.to_string(),
    }))
}

/// `POST /v1/customers/sign-in/verify`.
#[derive(Deserialize, ToSchema)]
pub struct VerifySignInRequest {
    /// The ticket of the first step.
    #[schema(value_type = String)]
    pub ticket: SecretString,
    /// The second factor.
    #[serde(flatten)]
    pub factor: SecondFactorFields,
}

/// The second factor's fields, flattened into a request.
#[derive(Deserialize, ToSchema, Default)]
pub struct SecondFactorFields {
    /// A code from the authenticator app.
    #[serde(default)]
    pub totp_code: Option<String>,
    /// One of the backup codes.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub backup_code: Option<SecretString>,
    /// A WebAuthn assertion.
    #[serde(default)]
    pub webauthn: Option<serde_json::Value>,
}

/// A new session, or a device that must be confirmed first.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CustomerSessionView {
    /// `signed_in`, or `device_confirmation_required` (follow the emailed link, then sign in again).
    pub status: String,
    /// The session token (when signed in): `Authorization: Bearer …`; shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When the session ends at the latest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ns: Option<String>,
    /// This device's token, to send as `X-Rampart-Device` (a new device gets one here).
    pub device_token: String,
}

/// Checks a second factor for a customer; answers which kind was proven. Each TOTP step and each backup code works
/// once (atomically, in the database); a WebAuthn assertion must raise the credential's counter.
pub(crate) async fn prove_second_factor(
    state: &AppState,
    customer: &CustomerRecord,
    factor: &SecondFactorFields,
    webauthn_state: Option<&[u8]>,
) -> Result<&'static str, (&'static str, ApiError)> {
    let wrong = |reason: &'static str| {
        (
            reason,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_second_factor",
                "the second factor is wrong, expired or already used",
            ),
        )
    };
    let internal = |e: ApiError| ("internal", e);
    let now = state.now_ns();
    match (&factor.totp_code, &factor.backup_code, &factor.webauthn) {
        (Some(code), None, None) => {
            let Some(ct) = customer.totp_secret.as_deref() else { return Err(wrong("no_totp")) };
            let plain = decrypt_field(state, customer, "totp", ct).await.map_err(internal)?;
            let secret = TotpSecret::from_bytes(&plain).map_err(|_| wrong("totp_unreadable"))?;
            let step = secret.verify(code, now / NS).ok_or_else(|| wrong("wrong_totp"))?;
            if !state.store().accept_customer_totp_step(customer.id, step).await.map_err(|e| internal(e.into()))? {
                return Err(wrong("replayed_totp"));
            }
            Ok("totp")
        }
        (None, Some(code), None) => {
            let normalised = rampart_auth::normalise_backup_code(code.expose_secret())
                .ok_or_else(|| wrong("malformed_backup_code"))?;
            let hash = rampart_auth::hash_backup_code(&normalised);
            if !state.store().use_backup_code(customer.id, &hash, now).await.map_err(|e| internal(e.into()))? {
                return Err(wrong("wrong_backup_code"));
            }
            Ok("backup_code")
        }
        (None, None, Some(response)) => {
            let ceremony = webauthn_state.ok_or_else(|| wrong("webauthn_without_challenge"))?;
            crate::passkeys::verify_assertion(state, &customer.subject(), response, ceremony)
                .await
                .map_err(|e| ("webauthn", e))?;
            Ok("webauthn")
        }
        _ => Err((
            "malformed",
            ApiError::bad_request("invalid_second_factor", "send exactly one of totp_code, backup_code or webauthn"),
        )),
    }
}

/// Second step of a sign-in: the second factor. From a confirmed device (its token in `X-Rampart-Device`) it answers
/// a session; from an unrecognised one it records the device, emails a confirmation link and notifies the owner.
#[utoipa::path(post, path = "/v1/customers/sign-in/verify", request_body = VerifySignInRequest, responses(
    (status = 200, body = CustomerSessionView), (status = 202, body = CustomerSessionView),
    (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
))]
pub(crate) async fn verify_sign_in(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    ApiJson(request): ApiJson<VerifySignInRequest>,
) -> Result<(StatusCode, Json<CustomerSessionView>), ApiError> {
    let keyring = state.keyring()?;
    let (customer, _) = ticket_customer(&state, &request.ticket, "sign_in", Some(SIGN_IN_ATTEMPTS_MAX)).await?;
    // A WebAuthn challenge is answered once, whatever the outcome: taken out of the ticket before it is checked.
    let data = if request.factor.webauthn.is_some() {
        let hash = hash_bearer(request.ticket.expose_secret());
        state.store().take_ticket_data(&hash, "sign_in", state.now_ns()).await?
    } else {
        None
    };
    let index_hex = customer_subject(&state, &customer).await?;
    guard_second_factor(&state, "auth.customer.sign_in", &customer, &index_hex, client.ip).await?;
    match customer.status {
        CustomerStatus::Active => {}
        CustomerStatus::Locked => return Err(locked_error()),
        CustomerStatus::Frozen => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "account_frozen",
                "the account is frozen: contact support",
            ));
        }
    }
    let factor = match prove_second_factor(&state, &customer, &request.factor, data.as_deref()).await {
        Ok(kind) => kind,
        Err(("internal", e)) => return Err(e),
        Err((reason, e)) => {
            let kind = EventKind::SignIn { success: false, factor: attempted_factor(&request.factor) };
            let event = crate::risk::event(&state, customer.id, client.ip, None, client.country, kind);
            crate::risk::assess(&state, customer.id, event).await?;
            let failed =
                sign_in_failed(&state, Some(&customer), &index_hex, client.ip, reason, "auth.customer.sign_in", None)
                    .await?;
            return Err(if failed.code() == "account_locked" { failed } else { e });
        }
    };
    state.store().delete_ticket(&hash_bearer(request.ticket.expose_secret())).await?;
    state.store().clear_throttle("account", &index_hex).await?;
    let now = state.now_ns();
    let device_info = DeviceInfo { user_agent: client.user_agent.clone(), ip: client.ip, country: None };
    let presented = headers.get(DEVICE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let device = match &presented {
        Some(t) => state.store().device_by_token(customer.id, &hash_bearer(t)).await?,
        None => None,
    };
    let context = RiskContext { ip: client.ip, country: client.country };
    match device {
        Some(d) if d.confirmed_at_ns.is_some() => {
            let kind = EventKind::SignIn { success: true, factor: risk_factor(factor) };
            let event = crate::risk::event(&state, customer.id, client.ip, Some(d.id), client.country, kind);
            let assessed = crate::risk::assess(&state, customer.id, event).await?;
            if let Some(refusal) = crate::risk::refusal(&assessed) {
                return Err(refusal);
            }
            if assessed.decision.outcome == rampart_risk::Outcome::Challenge {
                // Unusual for this customer: a second, out-of-band verification by the emailed link before a session.
                let details = [("device", d.id.to_string()), ("ip", client.ip.to_string())];
                let sent = ConfirmationLink {
                    action: "auth.customer.sign_in_confirmation",
                    details: &details,
                    device_id: d.id,
                    context: &context,
                };
                send_confirmation_link(&state, &keyring, &customer, sent, device_info, now).await?;
                return Ok((
                    StatusCode::ACCEPTED,
                    Json(CustomerSessionView {
                        status: "sign_in_confirmation_required".into(),
                        token: None,
                        expires_at_ns: None,
                        device_token: presented.unwrap_or_default(),
                    }),
                ));
            }
            ensure_ledger_accounts(&state, customer.id).await?;
            let session = BearerSecret::generate("rcs_");
            let expires = now + state.identity().session_absolute_s * NS;
            let record = customer_record(
                &state,
                &customer.subject(),
                "auth.customer.sign_in",
                customer.id,
                Outcome::Success,
                &[("ip", client.ip.to_string()), ("device", d.id.to_string()), ("factor", factor.into())],
            );
            state
                .store()
                .create_customer_session(
                    customer.id,
                    &NewSession {
                        token_hash: session.hash,
                        device_id: d.id,
                        expires_at_ns: expires,
                        second_factor: factor,
                    },
                    &client.ip.to_string(),
                    now,
                    &state.auditor(&keyring),
                    Effects::audit(record),
                )
                .await?;
            Ok((
                StatusCode::OK,
                Json(CustomerSessionView {
                    status: "signed_in".into(),
                    token: Some(session.secret.expose_secret().to_owned()),
                    expires_at_ns: Some(expires.to_string()),
                    device_token: presented.unwrap_or_default(),
                }),
            ))
        }
        Some(d) => {
            // A device seen before but not yet confirmed: send its link again.
            let details = [("device", d.id.to_string())];
            let sent = ConfirmationLink {
                action: "auth.customer.device_confirmation",
                details: &details,
                device_id: d.id,
                context: &context,
            };
            send_confirmation_link(&state, &keyring, &customer, sent, device_info, now).await?;
            Ok(confirmation_required(presented.unwrap_or_default()))
        }
        None => {
            let token = BearerSecret::generate("rdv_");
            let link_token = BearerSecret::generate("rdc_");
            let url = link(&state, "/confirm-device", &link_token.secret);
            let subject = customer.subject();
            state
                .store()
                .create_device(
                    customer.id,
                    &token.hash,
                    &client.user_agent,
                    &client.ip.to_string(),
                    now,
                    &state.auditor(&keyring),
                    |device_id| {
                        Effects::audit(customer_record(
                            &state,
                            &subject,
                            "auth.customer.new_device",
                            customer.id,
                            Outcome::Success,
                            &[("device", device_id.to_string()), ("ip", client.ip.to_string())],
                        ))
                        .notify(notice(
                            &keyring,
                            Notification::NewDeviceConfirmation {
                                link: SecretLink::new(url),
                                device: device_info.clone(),
                            },
                            None,
                        ))
                        .ticket(device_ticket(
                            &customer,
                            device_id,
                            &context,
                            link_token.hash,
                            now,
                        ))
                    },
                )
                .await?;
            Ok(confirmation_required(token.secret.expose_secret().to_owned()))
        }
    }
}

/// What a confirmation link is for: the audited action and its details, the device and the sign-in's context.
struct ConfirmationLink<'a> {
    action: &'static str,
    details: &'a [(&'a str, String)],
    device_id: i64,
    context: &'a RiskContext,
}

/// Emails a link that confirms a device or an unusual sign-in, with its audit entry and ticket, in one transaction.
async fn send_confirmation_link(
    state: &AppState,
    keyring: &rampart_crypto::Keyring,
    customer: &CustomerRecord,
    sent: ConfirmationLink<'_>,
    device: DeviceInfo,
    now: u64,
) -> Result<(), ApiError> {
    let link_token = BearerSecret::generate("rdc_");
    let url = link(state, "/confirm-device", &link_token.secret);
    let record = customer_record(state, &customer.subject(), sent.action, customer.id, Outcome::Success, sent.details);
    let effects = Effects::audit(record)
        .notify(notice(keyring, Notification::NewDeviceConfirmation { link: SecretLink::new(url), device }, None))
        .ticket(device_ticket(customer, sent.device_id, sent.context, link_token.hash, now));
    state
        .store()
        .apply_security_change(customer.id, SecurityChange::None, None, now, &state.auditor(keyring), effects)
        .await?;
    Ok(())
}

/// Where a sign-in came from, kept in its confirmation link's ticket so that following the link teaches the risk
/// engine this context as the customer's own.
struct RiskContext {
    ip: IpAddr,
    country: Option<Country>,
}

/// The risk engine's name of a proven second factor.
fn risk_factor(kind: &str) -> Factor {
    match kind {
        "backup_code" => Factor::BackupCode,
        "webauthn" => Factor::Passkey,
        _ => Factor::Totp,
    }
}

/// The factor a failed second step tried.
fn attempted_factor(fields: &SecondFactorFields) -> Factor {
    if fields.webauthn.is_some() {
        Factor::Passkey
    } else if fields.backup_code.is_some() {
        Factor::BackupCode
    } else {
        Factor::Totp
    }
}

fn device_ticket(
    customer: &CustomerRecord,
    device_id: i64,
    context: &RiskContext,
    hash: [u8; 32],
    now: u64,
) -> NewTicket {
    let country = context.country.map_or_else(|| "-".to_owned(), |c| c.to_string());
    NewTicket {
        token_hash: hash,
        purpose: "device",
        owner: customer.subject(),
        data: Some(format!("{device_id} {} {country}", context.ip).into_bytes()),
        expires_at_ns: now + EMAIL_LINK_S * NS,
    }
}

fn confirmation_required(device_token: String) -> (StatusCode, Json<CustomerSessionView>) {
    (
        StatusCode::ACCEPTED,
        Json(CustomerSessionView {
            status: "device_confirmation_required".into(),
            token: None,
            expires_at_ns: None,
            device_token,
        }),
    )
}

// ---------------------------------------------------------------------------------------------------------------
// The signed-in customer

/// A customer's view of their account.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MeView {
    /// The public id.
    pub customer: String,
    /// The email address.
    pub email: String,
    /// Whether it is verified.
    pub email_verified: bool,
    /// `active`, `locked` or `frozen`.
    pub status: String,
    /// The second factors set up.
    pub second_factors: Vec<String>,
    /// Unused backup codes.
    pub backup_codes_left: u32,
    /// Whether an anti-phishing code is set (it is printed in every email).
    pub anti_phishing_code_set: bool,
    /// Withdrawals are suspended until then (RFC 3339), after a security change.
    pub withdrawals_locked_until: Option<String>,
}

/// The signed-in customer's account (scope `read`).
#[utoipa::path(get, path = "/v1/me", responses((status = 200, body = MeView), (status = 401, body = ErrorBody)))]
pub(crate) async fn me(State(state): State<AppState>, customer: Customer) -> Result<Json<MeView>, ApiError> {
    customer.require(Scope::Read)?;
    let c = &customer.record;
    let webauthn = state.store().webauthn_credentials(&c.subject()).await?.len();
    let backup = state.store().backup_codes_left(c.id).await?;
    Ok(Json(MeView {
        customer: hex::encode(c.handle),
        email: customer_email(&state, c).await?,
        email_verified: c.email_verified_at_ns.is_some(),
        status: c.status.as_str().into(),
        second_factors: factors(c, webauthn, backup),
        backup_codes_left: backup,
        anti_phishing_code_set: c.anti_phishing_code.is_some(),
        withdrawals_locked_until: c.withdrawal_lock_until_ns.filter(|u| *u > state.now_ns()).map(rfc3339),
    }))
}

/// One balance.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    /// The asset.
    pub asset: String,
    /// Available: posted credits minus posted and pending debits, in the asset's decimal units.
    pub available: String,
    /// Held by pending withdrawals.
    pub pending: String,
}

/// The signed-in customer's balances (scope `read`).
#[utoipa::path(get, path = "/v1/me/balances", responses((status = 200, body = Vec<BalanceView>)))]
pub(crate) async fn balances(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<BalanceView>>, ApiError> {
    customer.require(Scope::Read)?;
    let mut out = Vec::new();
    for asset in state.assets().iter() {
        let id = customer_ledger_account(customer.record.id, asset.code.as_str());
        let Some(account) = state.store().account(id).await? else { continue };
        let available = account
            .credits_posted
            .checked_sub(account.debits_posted)
            .and_then(|a| a.checked_sub(account.debits_pending))
            .unwrap_or_default();
        out.push(BalanceView {
            asset: asset.code.to_string(),
            available: asset.format_amount(available),
            pending: asset.format_amount(account.debits_pending),
        });
    }
    Ok(Json(out))
}

/// `POST /v1/me/step-up`: a second factor proven now, opening the step-up window for sensitive actions.
#[utoipa::path(post, path = "/v1/me/step-up", request_body = SecondFactorFields, responses(
    (status = 204), (status = 401, body = ErrorBody)
))]
pub(crate) async fn step_up(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(factor): ApiJson<SecondFactorFields>,
) -> Result<StatusCode, ApiError> {
    let session = customer.session()?.clone();
    // Guessing codes in a stolen session is bounded like guessing them at sign-in: the same counters, the same lock.
    let subject = customer_subject(&state, &customer.record).await?;
    guard_second_factor(&state, "auth.customer.step_up", &customer.record, &subject, customer.ip).await?;
    if customer.record.status != CustomerStatus::Active {
        return Err(locked_error());
    }
    let ceremony = if factor.webauthn.is_some() {
        crate::passkeys::take_session_challenge(&state, &customer).await?
    } else {
        None
    };
    match prove_second_factor(&state, &customer.record, &factor, ceremony.as_deref()).await {
        Ok(kind) => {
            state.store().session_second_factor(&session.token_hash, kind, state.now_ns()).await?;
            // A second factor proven in this session's context answers any challenge the risk engine made of it.
            let event = crate::risk::event(
                &state,
                customer.record.id,
                customer.ip,
                Some(session.device_id),
                customer.country,
                EventKind::ChallengePassed,
            );
            crate::risk::assess(&state, customer.record.id, event).await?;
            let record = customer_record(
                &state,
                &customer.actor(),
                "auth.customer.step_up",
                customer.record.id,
                Outcome::Success,
                &[("factor", kind.into())],
            );
            state.audit(vec![record]).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(("internal", e)) => Err(e),
        Err((reason, e)) => {
            let failed = sign_in_failed(
                &state,
                Some(&customer.record),
                &subject,
                customer.ip,
                reason,
                "auth.customer.step_up",
                None,
            )
            .await?;
            Err(if failed.code() == "account_locked" { failed } else { e })
        }
    }
}

/// `POST /v1/me/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The current password.
    #[schema(value_type = String)]
    pub current_password: SecretString,
    /// The new one.
    #[schema(value_type = String)]
    pub new_password: SecretString,
}

/// Changes the password (step-up): every other session ends, withdrawals lock for 24 h, the owner is told.
#[utoipa::path(post, path = "/v1/me/password", request_body = ChangePasswordRequest, responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)
))]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(request): ApiJson<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let c = &customer.record;
    if !verify_password_blocking(request.current_password, Some(c.password_hash.clone())).await {
        let record = customer_record(
            &state,
            &customer.actor(),
            "auth.customer.password_change",
            c.id,
            Outcome::Failure,
            &[("reason", "wrong_current_password".into())],
        );
        state.audit(vec![record]).await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "the current password is wrong"));
    }
    let email = customer_email(&state, c).await?;
    check_new_password(&request.new_password, &email)?;
    let hash = hash_password_blocking(request.new_password).await?;
    let keep = customer.session()?.token_hash;
    security_change(
        &state,
        &customer,
        proof,
        SecurityChange::Password { hash: &hash, keep_session: Some(keep) },
        Some("password change"),
        "auth.customer.password_change",
        Notification::PasswordChanged,
    )
    .await
}

/// The risk engine's name of a security change (`None` for changes it does not score).
fn risk_change(change: &SecurityChange<'_>) -> Option<rampart_risk::Change> {
    use rampart_risk::Change;
    Some(match change {
        SecurityChange::Password { .. } => Change::Password,
        SecurityChange::AntiPhishingCode(_) => Change::AntiPhishing,
        SecurityChange::TotpPending(_) | SecurityChange::TotpConfirmed { .. } | SecurityChange::TotpRemoved => {
            Change::Totp
        }
        SecurityChange::BackupCodes(_) => Change::BackupCodes,
        SecurityChange::Email { .. } => Change::Email,
        SecurityChange::WebauthnAdded(_) | SecurityChange::WebauthnRemoved(_) => Change::Passkey,
        _ => return None,
    })
}

/// Applies a sensitive change that a step-up proof authorised, with its audit entry, notification and (for the
/// changes that warrant it) the security-change lock.
async fn security_change(
    state: &AppState,
    customer: &Customer,
    proof: StepUp,
    change: SecurityChange<'_>,
    lock_reason: Option<&str>,
    action: &str,
    notification: Notification,
) -> Result<StatusCode, ApiError> {
    if let Some(kind) = risk_change(&change) {
        let device = customer.session().ok().map(|s| s.device_id);
        let event = crate::risk::event(
            state,
            customer.record.id,
            customer.ip,
            device,
            customer.country,
            EventKind::SecurityChange { change: kind },
        );
        let assessed = crate::risk::assess(state, customer.record.id, event).await?;
        if let Some(refusal) = crate::risk::refusal(&assessed) {
            return Err(refusal);
        }
        if assessed.decision.outcome == rampart_risk::Outcome::Challenge {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "step_up_required",
                "this change looks unusual for your account: prove a second factor again (POST /v1/me/step-up), then retry",
            ));
        }
    }
    let keyring = state.keyring()?;
    let lock = lock_reason.map(|r| (lock_until(state, state.identity().security_lock_hours), r));
    let mut details = vec![("step_up_at", proof.proven_at_ns().to_string())];
    if let Some((until, _)) = lock {
        details.push(("withdrawals_locked_until", rfc3339(until)));
    }
    let record = customer_record(state, &customer.actor(), action, customer.record.id, Outcome::Success, &details);
    let effects = Effects::audit(record).notify(notice(&keyring, notification, None));
    if !state
        .store()
        .apply_security_change(customer.record.id, change, lock, state.now_ns(), &state.auditor(&keyring), effects)
        .await?
    {
        return Err(ApiError::not_found("nothing to change"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/me/anti-phishing-code`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AntiPhishingRequest {
    /// 4 to 20 letters, digits, `-` or `_`; printed at the top of every email Rampart sends you.
    pub code: String,
}

/// Sets the anti-phishing code (step-up).
#[utoipa::path(put, path = "/v1/me/anti-phishing-code", request_body = AntiPhishingRequest, responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)
))]
pub(crate) async fn set_anti_phishing_code(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(request): ApiJson<AntiPhishingRequest>,
) -> Result<StatusCode, ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let code = rampart_notify::parse_anti_phishing_code(&request.code)
        .map_err(|e| ApiError::bad_request("invalid_anti_phishing_code", e.to_string()))?;
    let keyring = state.keyring()?;
    let ct = keyring.encrypt(code.as_bytes(), customer_aad(&customer.record.handle, "anti_phishing_code").as_bytes());
    security_change(
        &state,
        &customer,
        proof,
        SecurityChange::AntiPhishingCode(&ct),
        None,
        "auth.customer.anti_phishing_code",
        Notification::AntiPhishingCodeChanged,
    )
    .await
}

/// Starts replacing the authenticator app (step-up): answers a new secret to confirm with a code.
#[utoipa::path(post, path = "/v1/me/totp", responses((status = 200, body = TotpEnrolmentView), (status = 403, body = ErrorBody)))]
pub(crate) async fn start_totp(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<TotpEnrolmentView>, ApiError> {
    let _proof = StepUp::check(&state, &customer)?;
    let keyring = state.keyring()?;
    let secret = TotpSecret::generate();
    let ct = keyring.encrypt(secret.expose_bytes(), customer_aad(&customer.record.handle, "totp").as_bytes());
    let record = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.totp_start",
        customer.record.id,
        Outcome::Success,
        &[],
    );
    change_for(&state, customer.record.id, SecurityChange::TotpPending(&ct), None, Effects::audit(record)).await?;
    let email = customer_email(&state, &customer.record).await?;
    Ok(Json(totp_view(&secret, &email)))
}

/// `POST /v1/me/totp/confirm`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotpRequest {
    /// A code from the new authenticator.
    pub totp_code: String,
}

/// Confirms the new authenticator with a code (step-up); the old one stops working; withdrawals lock for 24 h.
#[utoipa::path(post, path = "/v1/me/totp/confirm", request_body = ConfirmTotpRequest, responses(
    (status = 200, body = BackupCodesView), (status = 401, body = ErrorBody)
))]
pub(crate) async fn confirm_totp(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(request): ApiJson<ConfirmTotpRequest>,
) -> Result<Json<BackupCodesView>, ApiError> {
    let _proof = StepUp::check(&state, &customer)?;
    let codes = confirm_pending_totp(&state, &customer.record, &request.totp_code, &customer.actor()).await?;
    Ok(Json(codes))
}

/// Removes the authenticator app (step-up); refused if it is the only second factor. Withdrawals lock for 24 h.
#[utoipa::path(delete, path = "/v1/me/totp", responses((status = 204), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove_totp(State(state): State<AppState>, customer: Customer) -> Result<StatusCode, ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    if state.store().webauthn_credentials(&customer.record.subject()).await?.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_second_factor",
            "a second factor is mandatory: add a passkey before removing the authenticator",
        ));
    }
    security_change(
        &state,
        &customer,
        proof,
        SecurityChange::TotpRemoved,
        Some("second-factor removal"),
        "auth.customer.totp_removed",
        Notification::FactorRemoved { kind: FactorKind::Totp },
    )
    .await
}

/// Replaces the backup codes (step-up); answers the new ones, once.
#[utoipa::path(post, path = "/v1/me/backup-codes", responses((status = 200, body = BackupCodesView), (status = 403, body = ErrorBody)))]
pub(crate) async fn new_backup_codes(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<BackupCodesView>, ApiError> {
    let _proof = StepUp::check(&state, &customer)?;
    Ok(Json(issue_backup_codes(&state, &customer.record, &customer.actor()).await?))
}

/// `POST /v1/me/email`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEmailRequest {
    /// The new address; a link goes there to confirm it.
    pub new_email: String,
}

/// Starts an email change (step-up): a confirmation link goes to the new address.
#[utoipa::path(post, path = "/v1/me/email", request_body = ChangeEmailRequest, responses((status = 202), (status = 409, body = ErrorBody)))]
pub(crate) async fn change_email(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(request): ApiJson<ChangeEmailRequest>,
) -> Result<StatusCode, ApiError> {
    let _proof = StepUp::check(&state, &customer)?;
    let keyring = state.keyring()?;
    let email = normalise_email(&request.new_email)?;
    if state.store().customer_by_email_index(&email_index(&keyring, &email)).await?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", "an account with this email exists"));
    }
    let token = BearerSecret::generate("rce_");
    let now = state.now_ns();
    let record = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.email_change_start",
        customer.record.id,
        Outcome::Success,
        &[],
    );
    let effects = Effects::audit(record)
        .notify(notice(
            &keyring,
            Notification::EmailVerification { link: SecretLink::new(link(&state, "/confirm-email", &token.secret)) },
            Some(email.clone()),
        ))
        .ticket(NewTicket {
            token_hash: token.hash,
            purpose: "change_email",
            owner: customer.record.subject(),
            data: Some(keyring.encrypt(email.as_bytes(), format!("ticket:{}", hex::encode(token.hash)).as_bytes())),
            expires_at_ns: now + EMAIL_LINK_S * NS,
        });
    state
        .store()
        .apply_security_change(customer.record.id, SecurityChange::None, None, now, &state.auditor(&keyring), effects)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Confirms an email change from the link sent to the new address; the old address is told; withdrawals lock 24 h.
#[utoipa::path(post, path = "/v1/customers/email/confirm", request_body = TokenRequest, responses((status = 204), (status = 401, body = ErrorBody)))]
pub(crate) async fn confirm_email_change(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<StatusCode, ApiError> {
    let keyring = state.keyring()?;
    let hash = hash_bearer(request.token.expose_secret());
    let (customer, data) = ticket_customer(&state, &request.token, "change_email", None).await?;
    let invalid = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_ticket", "the link is invalid or expired");
    let email = keyring
        .decrypt(&data.ok_or_else(invalid)?, format!("ticket:{}", hex::encode(hash)).as_bytes())
        .map_err(|_| invalid())?;
    let email = String::from_utf8(email.to_vec()).map_err(|_| invalid())?;
    let old = customer_email(&state, &customer).await?;
    let index = email_index(&keyring, &email);
    let ct = keyring.encrypt(email.as_bytes(), customer_aad(&customer.handle, "email").as_bytes());
    let until = lock_until(&state, state.identity().security_lock_hours);
    let record = customer_record(
        &state,
        &customer.subject(),
        "auth.customer.email_changed",
        customer.id,
        Outcome::Success,
        &[("withdrawals_locked_until", rfc3339(until))],
    );
    let effects = Effects::audit(record).notify(notice(
        &keyring,
        Notification::EmailChanged { new_email_masked: mask_email(&email) },
        Some(old),
    ));
    if !change_for(
        &state,
        customer.id,
        SecurityChange::Email { index: &index, email: &ct },
        Some((until, "email change")),
        effects,
    )
    .await?
    {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", "an account with this email exists"));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------------------------
// Devices, sessions, notifications

/// A device.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// The id.
    pub id: i64,
    /// The user agent.
    pub user_agent: String,
    /// The last address.
    pub ip: String,
    /// The country, once known.
    pub country: Option<String>,
    /// Whether confirmed.
    pub confirmed: bool,
    /// Whether revoked.
    pub revoked: bool,
    /// First seen (RFC 3339).
    pub first_seen: String,
    /// Last seen (RFC 3339).
    pub last_seen: String,
}

/// The customer's devices.
#[utoipa::path(get, path = "/v1/me/devices", responses((status = 200, body = Vec<DeviceView>)))]
pub(crate) async fn devices(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    customer.require(Scope::Read)?;
    let devices = state.store().devices(customer.record.id).await?;
    Ok(Json(
        devices
            .into_iter()
            .map(|d| DeviceView {
                id: d.id,
                user_agent: d.user_agent,
                ip: d.ip,
                country: d.country,
                confirmed: d.confirmed_at_ns.is_some(),
                revoked: d.revoked_at_ns.is_some(),
                first_seen: rfc3339(d.first_seen_ns),
                last_seen: rfc3339(d.last_seen_ns),
            })
            .collect(),
    ))
}

fn path_i64(path: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    path.map(|Path(id)| id).map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))
}

/// Revokes a device: its sessions end and it must be confirmed again.
#[utoipa::path(delete, path = "/v1/me/devices/{id}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_device(
    State(state): State<AppState>,
    customer: Customer,
    path: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    customer.session()?;
    let id = path_i64(path)?;
    let record = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.device_revoked",
        customer.record.id,
        Outcome::Success,
        &[("device", id.to_string())],
    );
    if !change_for(&state, customer.record.id, SecurityChange::DeviceRevoked(id), None, Effects::audit(record)).await? {
        return Err(ApiError::not_found("no such device"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A session.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionInfoView {
    /// Its id (the hash of its token, never the token).
    pub id: String,
    /// The device.
    pub device_id: i64,
    /// Whether this is the session asking.
    pub current: bool,
    /// Began (RFC 3339).
    pub created: String,
    /// Last used (RFC 3339).
    pub last_seen: String,
    /// Ends at the latest (RFC 3339).
    pub expires: String,
}

/// The customer's live sessions.
#[utoipa::path(get, path = "/v1/me/sessions", responses((status = 200, body = Vec<SessionInfoView>)))]
pub(crate) async fn sessions(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<SessionInfoView>>, ApiError> {
    let current = customer.session()?.token_hash;
    let sessions = state.store().customer_sessions(customer.record.id, state.now_ns()).await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| SessionInfoView {
                id: hex::encode(s.token_hash),
                device_id: s.device_id,
                current: s.token_hash == current,
                created: rfc3339(s.created_at_ns),
                last_seen: rfc3339(s.last_seen_ns),
                expires: rfc3339(s.expires_at_ns),
            })
            .collect(),
    ))
}

/// Ends one of the customer's sessions (by the id that `GET /v1/me/sessions` lists).
#[utoipa::path(delete, path = "/v1/me/sessions/{id}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_session(
    State(state): State<AppState>,
    customer: Customer,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    customer.session()?;
    let hash: [u8; 32] = hex::decode(&id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_id", "a session id is 64 hex digits"))?;
    let record = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.session_revoked",
        customer.record.id,
        Outcome::Success,
        &[],
    );
    if !change_for(&state, customer.record.id, SecurityChange::SessionRevoked(hash), None, Effects::audit(record))
        .await?
    {
        return Err(ApiError::not_found("no such session"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Ends the caller's session.
#[utoipa::path(post, path = "/v1/me/sign-out", responses((status = 204)))]
pub(crate) async fn sign_out(State(state): State<AppState>, customer: Customer) -> Result<StatusCode, ApiError> {
    let hash = customer.session()?.token_hash;
    let record =
        customer_record(&state, &customer.actor(), "auth.customer.sign_out", customer.record.id, Outcome::Success, &[]);
    change_for(&state, customer.record.id, SecurityChange::SessionRevoked(hash), None, Effects::audit(record)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An in-app notification.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    /// The id.
    pub id: i64,
    /// The event (`password_changed`, `api_key_created`, …).
    pub kind: String,
    /// The title.
    pub title: String,
    /// When (RFC 3339).
    pub created: String,
}

/// The customer's security notifications, newest first.
#[utoipa::path(get, path = "/v1/me/notifications", responses((status = 200, body = Vec<NotificationView>)))]
pub(crate) async fn notifications(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<NotificationView>>, ApiError> {
    customer.require(Scope::Read)?;
    let list = state.store().notifications(customer.record.id, 100).await?;
    Ok(Json(
        list.into_iter()
            .map(|n| NotificationView { id: n.id, kind: n.kind, title: n.title, created: rfc3339(n.created_at_ns) })
            .collect(),
    ))
}

/// Whether a withdrawal could be requested now: the security-change lock and the account's state.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WithdrawalStatusView {
    /// Whether withdrawals are allowed now.
    pub allowed: bool,
    /// If not, why (`security_lock`, `account_not_active`).
    pub code: Option<String>,
    /// And a sentence saying until when.
    pub message: Option<String>,
}

/// Whether the customer may withdraw now (scope `read`); the withdrawal routes apply the same gate.
#[utoipa::path(get, path = "/v1/me/withdrawal-status", responses((status = 200, body = WithdrawalStatusView)))]
pub(crate) async fn withdrawal_status(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<WithdrawalStatusView>, ApiError> {
    customer.require(Scope::Read)?;
    Ok(Json(match crate::identity::withdrawal_gate(&customer.record, state.now_ns()) {
        Ok(()) => WithdrawalStatusView { allowed: true, code: None, message: None },
        Err(e) => {
            WithdrawalStatusView { allowed: false, code: Some(e.code().into()), message: Some(e.message().into()) }
        }
    }))
}

// ---------------------------------------------------------------------------------------------------------------
// API keys

/// `POST /v1/me/api-keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// A label for the owner.
    pub label: String,
    /// `read`, `trade`, `withdraw`.
    pub scopes: Vec<String>,
    /// Addresses and CIDR ranges the key may be used from; mandatory with `withdraw`.
    #[serde(default)]
    pub allow_list: Vec<String>,
    /// Days until it expires (1 to 365; default 90).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// A new API key; the secret is shown once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKeyView {
    /// The key id, sent as `X-RAMPART-KEY`.
    pub key: String,
    /// The signing secret: HMAC-SHA256 key for `X-RAMPART-SIGN`. Shown once, stored encrypted.
    pub secret: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// When it expires (RFC 3339).
    pub expires: String,
}

/// An API key as listed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// The key id.
    pub key: String,
    /// The label.
    pub label: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// The allow-list.
    pub allow_list: Vec<String>,
    /// Created (RFC 3339).
    pub created: String,
    /// Expires (RFC 3339).
    pub expires: String,
    /// Revoked (RFC 3339).
    pub revoked: Option<String>,
    /// Last used (RFC 3339).
    pub last_used: Option<String>,
}

/// Creates an API key (step-up).
#[utoipa::path(post, path = "/v1/me/api-keys", request_body = CreateApiKeyRequest, responses(
    (status = 201, body = CreatedApiKeyView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)
))]
pub(crate) async fn create_api_key(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(request): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKeyView>), ApiError> {
    let proof = StepUp::check(&state, &customer)?;
    let label = valid_label(&request.label, "invalid_label")?;
    let label = label.as_str();
    let mut scopes = Vec::new();
    for s in &request.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_scope", format!("unknown scope {s:?}: read, trade or withdraw"))
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::bad_request("invalid_scope", "a key needs at least one scope"));
    }
    let allow = rampart_auth::parse_allow_list(&request.allow_list)
        .map_err(|e| ApiError::bad_request("invalid_allow_list", e.to_string()))?;
    if scopes.contains(&Scope::Withdraw) && allow.is_empty() {
        return Err(ApiError::bad_request(
            "allow_list_required",
            "a key with the withdraw scope needs an IP allow-list",
        ));
    }
    // For withdrawals the list must mean something: no range wider than a /24 (IPv4) or a /48 (IPv6).
    if scopes.contains(&Scope::Withdraw)
        && let Some(wide) = allow.iter().find(|net| match net {
            rampart_auth::IpNet::V4(n) => n.prefix_len() < 24,
            rampart_auth::IpNet::V6(n) => n.prefix_len() < 48,
        })
    {
        return Err(ApiError::bad_request(
            "allow_list_too_wide",
            format!("{wide} is too wide for a withdraw key: at most a /24 (IPv4) or a /48 (IPv6)"),
        ));
    }
    let days = request.expires_in_days.unwrap_or(90);
    if !(1..=365).contains(&days) {
        return Err(ApiError::bad_request("invalid_expiry", "expires_in_days is 1 to 365"));
    }
    let keyring = state.keyring()?;
    let id = rampart_auth::ApiKeyId::generate().to_string();
    let secret = rampart_auth::ApiKeySecret::generate();
    let now = state.now_ns();
    let expires = now + u64::from(days) * 86_400 * NS;
    let scope_names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    let key = rampart_store::ApiKeyRecord {
        id: id.clone(),
        customer_id: customer.record.id,
        label: label.to_owned(),
        secret: keyring.encrypt(secret.expose_bytes(), api_key_aad(&id).as_bytes()),
        scopes: scope_names.join(","),
        allow_list: request.allow_list.iter().map(|s| s.trim().to_owned()).collect::<Vec<_>>().join(","),
        created_at_ns: now,
        expires_at_ns: expires,
        revoked_at_ns: None,
        last_used_ns: None,
    };
    let record = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.api_key_created",
        customer.record.id,
        Outcome::Success,
        &[
            ("key", id.clone()),
            ("scopes", key.scopes.clone()),
            ("allow_list", key.allow_list.clone()),
            ("step_up_at", proof.proven_at_ns().to_string()),
        ],
    );
    let effects = Effects::audit(record).notify(notice(
        &keyring,
        Notification::ApiKeyCreated { key_id: id.clone(), scopes: scope_names.clone() },
        None,
    ));
    state.store().create_api_key(&key, &state.auditor(&keyring), effects).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyView {
            key: id,
            secret: secret.to_display_string().to_string(),
            scopes: scope_names,
            expires: rfc3339(expires),
        }),
    ))
}

/// The customer's API keys.
#[utoipa::path(get, path = "/v1/me/api-keys", responses((status = 200, body = Vec<ApiKeyView>)))]
pub(crate) async fn api_keys(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    customer.require(Scope::Read)?;
    let keys = state.store().api_keys(customer.record.id).await?;
    let split = |s: &str| s.split(',').filter(|x| !x.is_empty()).map(str::to_owned).collect::<Vec<_>>();
    Ok(Json(
        keys.into_iter()
            .map(|k| ApiKeyView {
                key: k.id,
                label: k.label,
                scopes: split(&k.scopes),
                allow_list: split(&k.allow_list),
                created: rfc3339(k.created_at_ns),
                expires: rfc3339(k.expires_at_ns),
                revoked: k.revoked_at_ns.map(rfc3339),
                last_used: k.last_used_ns.map(rfc3339),
            })
            .collect(),
    ))
}

/// Revokes an API key.
#[utoipa::path(delete, path = "/v1/me/api-keys/{id}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_api_key(
    State(state): State<AppState>,
    customer: Customer,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    customer.session()?;
    let keyring = state.keyring()?;
    let record = customer_record(
        &state,
        &customer.actor(),
        "auth.customer.api_key_revoked",
        customer.record.id,
        Outcome::Success,
        &[("key", id.clone())],
    );
    let effects =
        Effects::audit(record).notify(notice(&keyring, Notification::ApiKeyRevoked { key_id: id.clone() }, None));
    if !state.store().revoke_api_key(customer.record.id, &id, state.now_ns(), &state.auditor(&keyring), effects).await?
    {
        return Err(ApiError::not_found("no such live API key"));
    }
    // Every request's admission reads the key afresh (other nodes refuse it there); this node forgets it now.
    state.api_keys().forget(&id);
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------------------------
// Recovery

/// `POST /v1/customers/recovery/start`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryStartRequest {
    /// The account's email.
    pub email: String,
}

/// Starts an account recovery: a link goes to the address if it has an account. The answer is the same either way.
#[utoipa::path(post, path = "/v1/customers/recovery/start", request_body = RecoveryStartRequest, responses((status = 202)))]
pub(crate) async fn start_recovery(
    State(state): State<AppState>,
    client: Client,
    ApiJson(request): ApiJson<RecoveryStartRequest>,
) -> Result<StatusCode, ApiError> {
    let keyring = state.keyring()?;
    let Ok(email) = normalise_email(&request.email) else { return Ok(StatusCode::ACCEPTED) };
    let Some(customer) = state.store().customer_by_email_index(&email_index(&keyring, &email)).await? else {
        return Ok(StatusCode::ACCEPTED);
    };
    // The link is made and sent after the answer, so that a known address is not answered more slowly than an
    // unknown one (both cost one lookup before the answer).
    let ip = client.ip;
    tokio::spawn(async move {
        if let Err(e) = send_recovery_link(&state, &keyring, &customer, ip).await {
            tracing::error!(customer = customer.id, code = e.code(), "starting a recovery failed");
        }
    });
    Ok(StatusCode::ACCEPTED)
}

async fn send_recovery_link(
    state: &AppState,
    keyring: &rampart_crypto::Keyring,
    customer: &CustomerRecord,
    ip: IpAddr,
) -> Result<(), ApiError> {
    // One live recovery link per account: each link allows five tries of a second factor.
    state.store().delete_tickets_of(&customer.subject(), "recovery").await?;
    let token = BearerSecret::generate("rrc_");
    let now = state.now_ns();
    let record = customer_record(
        state,
        "anonymous",
        "auth.customer.recovery_start",
        customer.id,
        Outcome::Success,
        &[("ip", ip.to_string())],
    );
    let effects = Effects::audit(record)
        .notify(notice(
            keyring,
            Notification::RecoveryStarted { link: SecretLink::new(link(state, "/recover", &token.secret)) },
            None,
        ))
        .ticket(NewTicket {
            token_hash: token.hash,
            purpose: "recovery",
            owner: customer.subject(),
            data: None,
            expires_at_ns: now + RECOVERY_LINK_S * NS,
        });
    state
        .store()
        .apply_security_change(customer.id, SecurityChange::None, None, now, &state.auditor(keyring), effects)
        .await?;
    Ok(())
}

/// `POST /v1/customers/recovery/finish`.
#[derive(Deserialize, ToSchema)]
pub struct RecoveryFinishRequest {
    /// The token from the emailed link.
    #[schema(value_type = String)]
    pub token: SecretString,
    /// The new password.
    #[schema(value_type = String)]
    pub new_password: SecretString,
    /// A second factor (TOTP or backup code). Not needed only when support reset the factors.
    #[serde(flatten)]
    pub factor: SecondFactorFields,
}

/// What a recovery answers: when withdrawals unlock, and a new authenticator when support reset the factors.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RecoveryView {
    /// Withdrawals are suspended until then (RFC 3339).
    pub withdrawals_locked_until: String,
    /// When the factors were reset by support: the enrolment ticket and authenticator to set up.
    pub enrolment_ticket: Option<String>,
    /// The authenticator.
    pub totp: Option<TotpEnrolmentView>,
}

/// Finishes a recovery: the emailed link plus a second factor (or backup code) set a new password, unlock the
/// account, end every session and lock withdrawals for 48 h.
#[utoipa::path(post, path = "/v1/customers/recovery/finish", request_body = RecoveryFinishRequest, responses(
    (status = 200, body = RecoveryView), (status = 401, body = ErrorBody)
))]
pub(crate) async fn finish_recovery(
    State(state): State<AppState>,
    client: Client,
    ApiJson(request): ApiJson<RecoveryFinishRequest>,
) -> Result<Json<RecoveryView>, ApiError> {
    let keyring = state.keyring()?;
    let (customer, data) = ticket_customer(&state, &request.token, "recovery", Some(SIGN_IN_ATTEMPTS_MAX)).await?;
    let email = customer_email(&state, &customer).await?;
    let index = email_index(&keyring, &email);
    let subject = hex::encode(index);
    guard_second_factor(&state, "auth.customer.recovery", &customer, &subject, client.ip).await?;
    // The new password is checked before the factor is spent.
    check_new_password(&request.new_password, &email)?;
    // Only support, after identity checks, can waive the second factor (it marks the link it sends); an account that
    // merely has no factor left is recovered through support, never by the emailed link alone.
    let support_reset = data.as_deref() == Some(SUPPORT_RESET.as_bytes());
    let has_factor = !support_reset;
    let factor = if has_factor {
        match prove_second_factor(&state, &customer, &request.factor, None).await {
            Ok(kind) => kind,
            Err(("internal", e)) => return Err(e),
            Err((reason, e)) => {
                let failed = sign_in_failed(
                    &state,
                    Some(&customer),
                    &subject,
                    client.ip,
                    reason,
                    "auth.customer.recovery",
                    None,
                )
                .await?;
                return Err(if failed.code() == "too_many_attempts" { failed } else { e });
            }
        }
    } else {
        "support_reset"
    };
    let hash = hash_password_blocking(request.new_password).await?;
    let until = lock_until(&state, state.identity().recovery_lock_hours);
    let now = state.now_ns();
    let mut enrolment = None;
    let mut effects = Effects::audit(customer_record(
        &state,
        &customer.subject(),
        "auth.customer.recovery",
        customer.id,
        Outcome::Success,
        &[("factor", factor.into()), ("withdrawals_locked_until", rfc3339(until)), ("ip", client.ip.to_string())],
    ))
    .notify(notice(&keyring, Notification::RecoveryCompleted { lock_until_ns: until }, None));
    if !has_factor {
        // Support reset the factors: enrol a new authenticator now, as at sign-up.
        let totp = TotpSecret::generate();
        let ct = keyring.encrypt(totp.expose_bytes(), customer_aad(&customer.handle, "totp").as_bytes());
        let ticket = BearerSecret::generate("ren_");
        effects = effects.ticket(NewTicket {
            token_hash: ticket.hash,
            purpose: "enrol",
            owner: customer.subject(),
            data: None,
            expires_at_ns: now + ENROL_TICKET_S * NS,
        });
        state
            .store()
            .apply_security_change(
                customer.id,
                SecurityChange::TotpPending(&ct),
                None,
                now,
                &state.auditor(&keyring),
                Effects::default(),
            )
            .await?;
        enrolment = Some((ticket.secret.expose_secret().to_owned(), totp_view(&totp, &email)));
    }
    let recovered = state
        .store()
        .apply_security_change(
            customer.id,
            SecurityChange::Recovered { password_hash: Some(&hash), reset_factors: false, email_index: &index },
            Some((until, "account recovery")),
            now,
            &state.auditor(&keyring),
            effects,
        )
        .await?;
    if !recovered {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "account_frozen",
            "a frozen account is released by compliance, not by recovery",
        ));
    }
    state.store().delete_ticket(&hash_bearer(request.token.expose_secret())).await?;
    let (enrolment_ticket, totp) = enrolment.map_or((None, None), |(t, v)| (Some(t), Some(v)));
    Ok(Json(RecoveryView { withdrawals_locked_until: rfc3339(until), enrolment_ticket, totp }))
}

/// `POST /v1/support/customers/{id}/recover`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupportRecoveryRequest {
    /// Why (the ticket number, what the customer asked).
    pub reason: String,
    /// The identity checks done (document verified, video call, …); at least two.
    pub identity_checks: Vec<String>,
    /// Remove every second factor (the customer lost them all); they enrol anew through the recovery link.
    #[serde(default)]
    pub reset_factors: bool,
}

/// Support unlocks a customer's account after identity checks (audited with the checks and the reason); with
/// `reset_factors`, the factors are removed and a recovery link is emailed. Withdrawals lock for 48 h.
#[utoipa::path(post, path = "/v1/support/customers/{id}/recover", request_body = SupportRecoveryRequest, security(("bearer" = [])), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
))]
pub(crate) async fn support_recover(
    State(state): State<AppState>,
    principal: crate::Principal,
    Path(handle): Path<String>,
    ApiJson(request): ApiJson<SupportRecoveryRequest>,
) -> Result<StatusCode, ApiError> {
    let handle: [u8; 16] = hex::decode(&handle)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_id", "a customer id is 32 hex digits"))?;
    // The audit names customers by their internal id, as every other customer entry does.
    let customer =
        state.store().customer_by_handle(&handle).await?.ok_or_else(|| ApiError::not_found("no such customer"))?;
    let target = customer.subject();
    state
        .authorize(&principal, rampart_audit::Permission::CustomerRecover, "auth.customer.support_recovery", &target)
        .await?;
    let reason = request.reason.trim();
    let checks: Vec<&str> = request.identity_checks.iter().map(|c| c.trim()).filter(|c| !c.is_empty()).collect();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::bad_request("invalid_reason", "a reason of 1 to 500 characters is required"));
    }
    if checks.len() < 2 || checks.iter().any(|c| c.len() > 200) {
        return Err(ApiError::bad_request(
            "identity_checks_required",
            "name at least two identity checks (each up to 200 characters)",
        ));
    }
    let keyring = state.keyring()?;
    let id = customer.id;
    let email = customer_email(&state, &customer).await?;
    let index = email_index(&keyring, &email);
    let until = lock_until(&state, state.identity().recovery_lock_hours);
    let now = state.now_ns();
    let mut effects = Effects::audit(customer_record(
        &state,
        &principal.actor(),
        "auth.customer.support_recovery",
        id,
        Outcome::Success,
        &[
            ("reason", reason.to_owned()),
            ("identity_checks", checks.join("; ")),
            ("reset_factors", request.reset_factors.to_string()),
            ("withdrawals_locked_until", rfc3339(until)),
        ],
    ))
    .notify(notice(&keyring, Notification::RecoveryCompleted { lock_until_ns: until }, None));
    if request.reset_factors {
        let token = BearerSecret::generate("rrc_");
        effects = effects
            .notify(notice(
                &keyring,
                Notification::RecoveryStarted { link: SecretLink::new(link(&state, "/recover", &token.secret)) },
                None,
            ))
            .ticket(NewTicket {
                token_hash: token.hash,
                purpose: "recovery",
                owner: customer.subject(),
                data: request.reset_factors.then(|| SUPPORT_RESET.as_bytes().to_vec()),
                expires_at_ns: now + EMAIL_LINK_S * NS,
            });
    }
    let change =
        SecurityChange::Recovered { password_hash: None, reset_factors: request.reset_factors, email_index: &index };
    if !state
        .store()
        .apply_security_change(id, change, Some((until, "account recovery")), now, &state.auditor(&keyring), effects)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "account_frozen",
            "a frozen account is released by compliance, not support",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
