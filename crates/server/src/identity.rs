//! Customer identity in the service: who a customer request comes from (a session bound to its device, or an API key
//! whose signature, window, allow-list and scope all check out), the brute-force policy, step-up proofs, the
//! security-change lock, rate limits and the notifications every security event sends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use rampart_audit::{AuditRecord, Outcome};
use rampart_crypto::Keyring;
use rampart_notify::Notification;
use rampart_store::{ApiKeyRecord, CustomerRecord, CustomerSession, CustomerStatus, Notice};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::group::{Batch, GroupCommit};

const NS: u64 = 1_000_000_000;

/// The header carrying a customer's device token on every signed-in request.
pub const DEVICE_HEADER: &str = "x-rampart-device";

/// How customer identity behaves; every limit is named with its unit. Read from the `[identity]` table of the
/// configuration file; every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The base of links in emails (`https://exchange.example`).
    pub public_url: String,
    /// The sender of emails.
    pub email_from: String,
    /// How recently a second factor must have been proven for a sensitive action.
    pub step_up_window_s: u64,
    /// A session unused for this long ends.
    pub session_idle_s: u64,
    /// A session ends this long after sign-in, however busy.
    pub session_absolute_s: u64,
    /// The accepted distance between a signed request's timestamp and now.
    pub signature_window_ms: u64,
    /// Withdrawals are refused for this long after a password, email or second-factor change.
    pub security_lock_hours: u64,
    /// … and for this long after an account recovery.
    pub recovery_lock_hours: u64,
    /// Failed sign-ins of one account before each further attempt is delayed.
    pub account_free_failures: u32,
    /// The first delay after the free failures (of an account or an address); each further failure doubles it.
    pub delay_base_s: u64,
    /// Failed sign-ins of one account that lock it.
    pub account_lock_failures: u32,
    /// Failed sign-ins from one address before each further attempt is delayed.
    pub ip_free_failures: u32,
    /// Failed sign-ins from one address that block it for `ip_block_s`.
    pub ip_block_failures: u32,
    /// How long an address stays blocked.
    pub ip_block_s: u64,
    /// Requests per second one client address may make (sustained), and the burst above it.
    pub rate_limit_per_s: u32,
    /// The burst.
    pub rate_limit_burst: u32,
    /// Requests per second to the sign-in, sign-up and recovery routes from one address, and their burst.
    pub auth_rate_limit_per_s: u32,
    /// The burst.
    pub auth_rate_limit_burst: u32,
    /// The header a trusted reverse proxy puts the client's address in (`x-forwarded-for`: its last entry);
    /// `None` to use the peer address.
    pub client_ip_header: Option<String>,
    /// The proxies whose `client_ip_header` is believed (addresses and CIDR ranges); from any other peer the header
    /// is ignored, so that a client reaching the service directly cannot choose its own address.
    pub trusted_proxies: Vec<String>,
    /// WebAuthn relying-party id (a domain) and origin.
    pub webauthn_rp_id: String,
    /// The origin browsers report.
    pub webauthn_origin: String,
}

impl Default for IdentityConfig {
    fn default() -> IdentityConfig {
        IdentityConfig {
            public_url: "http://localhost:8080".into(),
            email_from: "Rampart Security <security@rampart.localhost>".into(),
            step_up_window_s: 300,
            session_idle_s: 30 * 60,
            session_absolute_s: 24 * 3600,
            signature_window_ms: rampart_auth::SIGNATURE_WINDOW_MS_DEFAULT,
            security_lock_hours: 24,
            recovery_lock_hours: 48,
            account_free_failures: 3,
            delay_base_s: 1,
            account_lock_failures: 10,
            ip_free_failures: 20,
            ip_block_failures: 100,
            ip_block_s: 3600,
            rate_limit_per_s: 50,
            rate_limit_burst: 500,
            auth_rate_limit_per_s: 5,
            auth_rate_limit_burst: 60,
            client_ip_header: None,
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
            webauthn_rp_id: "localhost".into(),
            webauthn_origin: "http://localhost:8080".into(),
        }
    }
}

impl IdentityConfig {
    /// Refuses settings that would break a guarantee: a signature window beyond 60 s, zero limits, unparsable proxies.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=rampart_auth::SIGNATURE_WINDOW_MS_MAX).contains(&self.signature_window_ms) {
            return Err(format!("signature_window_ms must be 1 to {}", rampart_auth::SIGNATURE_WINDOW_MS_MAX));
        }
        let positive = [
            ("step_up_window_s", self.step_up_window_s),
            ("session_idle_s", self.session_idle_s),
            ("session_absolute_s", self.session_absolute_s),
            ("delay_base_s", self.delay_base_s),
            ("account_lock_failures", u64::from(self.account_lock_failures)),
            ("ip_block_failures", u64::from(self.ip_block_failures)),
            ("rate_limit_per_s", u64::from(self.rate_limit_per_s)),
            ("auth_rate_limit_per_s", u64::from(self.auth_rate_limit_per_s)),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        // Ten years, in seconds: far beyond any sensible setting, and far from overflowing nanoseconds.
        const LONGEST_S: u64 = 10 * 365 * 86_400;
        if [self.session_idle_s, self.session_absolute_s, self.step_up_window_s, self.ip_block_s]
            .iter()
            .any(|v| *v > LONGEST_S)
            || self.security_lock_hours > LONGEST_S / 3600
            || self.recovery_lock_hours > LONGEST_S / 3600
        {
            return Err("a duration is longer than ten years".into());
        }
        rampart_auth::parse_allow_list(&self.trusted_proxies).map_err(|e| format!("trusted_proxies: {e}"))?;
        Ok(())
    }

    /// When the next attempt on an account may be considered after `failures` consecutive failures ending at
    /// `now_ns`: free at first, then doubling delays from one second (capped at 15 minutes). Locking is separate
    /// ([`IdentityConfig::account_lock_failures`]).
    pub fn account_blocked_until(&self, failures: u32, now_ns: u64) -> u64 {
        delay_after(failures, self.account_free_failures, self.delay_base_s, 15 * 60, now_ns)
    }

    /// The same for a source address: free at first, then doubling delays (capped at 10 minutes), and blocked for
    /// `ip_block_s` from `ip_block_failures` on.
    pub fn ip_blocked_until(&self, failures: u32, now_ns: u64) -> u64 {
        if failures >= self.ip_block_failures {
            return now_ns.saturating_add(self.ip_block_s.saturating_mul(NS));
        }
        delay_after(failures, self.ip_free_failures, self.delay_base_s, 10 * 60, now_ns)
    }
}

fn delay_after(failures: u32, free: u32, base_s: u64, cap_s: u64, now_ns: u64) -> u64 {
    if failures < free {
        return 0;
    }
    let exponent = (failures - free).min(20);
    let delay_s = base_s.max(1).saturating_mul(1u64 << exponent).min(cap_s);
    now_ns.saturating_add(delay_s * NS)
}

/// The client's address: the peer, or the last entry of the configured header when the peer is a trusted proxy.
pub fn client_ip(config: &IdentityConfig, headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
    let trusted = || {
        peer.is_some_and(|p| {
            rampart_auth::parse_allow_list(&config.trusted_proxies)
                .is_ok_and(|list| rampart_auth::ip_allowed(&list, p.ip()))
        })
    };
    if let Some(name) = &config.client_ip_header
        && !config.trusted_proxies.is_empty()
        && trusted()
        && let Some(ip) = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return ip;
    }
    peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip())
}

/// The client's address of a request (see [`client_ip`]).
pub(crate) fn request_ip(state: &AppState, parts_headers: &HeaderMap, ext: &axum::http::Extensions) -> IpAddr {
    let peer = ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    client_ip(state.identity(), parts_headers, peer)
}

/// The unit that rate limits and failure counters count: an IPv4 address, or an IPv6 address's /64 (one subscriber
/// usually holds a whole /64, so counting single IPv6 addresses would let them rotate past every limit).
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

/// The failure-counter subject of an address: its [`ip_bucket`], with the prefix length for IPv6.
pub fn ip_subject(ip: IpAddr) -> String {
    match ip_bucket(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

/// The user agent of a request, bounded.
pub(crate) fn user_agent(headers: &HeaderMap) -> String {
    let ua = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    ua.chars().take(256).collect()
}

/// A token bucket per client address, in this process: the coarse limit on every endpoint. (The brute-force
/// counters, which must hold across nodes, are in the database.)
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(IpAddr, bool), Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Tokens, in thousandths.
    milli_tokens: u64,
    at_ns: u64,
}

impl RateLimiter {
    /// Takes one token for `ip` from the bucket of its class; `Err(seconds)` to wait when there is none.
    pub fn take(&self, ip: IpAddr, auth: bool, per_s: u32, burst: u32, now_ns: u64) -> Result<(), u64> {
        let capacity = u64::from(burst.max(1)) * 1000;
        let rate = u64::from(per_s.max(1));
        let mut buckets = self.buckets.lock().expect("the rate limiter lock is never poisoned");
        if buckets.len() > 100_000 {
            // Forget full buckets rather than grow without bound under a flood of addresses.
            buckets.retain(|_, b| now_ns.saturating_sub(b.at_ns) < 60 * NS);
        }
        let bucket = buckets.entry((ip, auth)).or_insert(Bucket { milli_tokens: capacity, at_ns: now_ns });
        let elapsed_ms = now_ns.saturating_sub(bucket.at_ns) / 1_000_000;
        bucket.milli_tokens = (bucket.milli_tokens + elapsed_ms.saturating_mul(rate)).min(capacity);
        bucket.at_ns = now_ns;
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            Ok(())
        } else {
            Err((1000 - bucket.milli_tokens).div_ceil(rate).div_ceil(1000).max(1))
        }
    }
}

/// Rate-limits every request by client address: `429 rate_limited` with `Retry-After` beyond the limit.
pub(crate) async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let ip = request_ip(&state, request.headers(), request.extensions());
    let path = request.uri().path();
    let auth = path.starts_with("/v1/customers/") || path.starts_with("/v1/staff/sign-in");
    let config = state.identity();
    let (per_s, burst) = if auth {
        (config.auth_rate_limit_per_s, config.auth_rate_limit_burst)
    } else {
        (config.rate_limit_per_s, config.rate_limit_burst)
    };
    if let Err(wait_s) = state.inner.rate_limiter.take(ip_bucket(ip), auth, per_s, burst, state.now_ns()) {
        metrics::counter!("http_rate_limited_total").increment(1);
        return axum::response::IntoResponse::into_response(ApiError::too_many(
            "rate_limited",
            "too many requests from this address; slow down",
            wait_s,
        ));
    }
    next.run(request).await
}

/// Refuses (429 with `Retry-After`, audited under `action`) an attempt while its subject is blocked after failures.
pub(crate) async fn check_throttle(
    state: &AppState,
    action: &str,
    scope: &str,
    subject: &str,
    target: &str,
    ip: IpAddr,
) -> Result<(), ApiError> {
    let now = state.now_ns();
    if let Some(t) = state.store().throttle_state(scope, subject).await?
        && t.blocked_until_ns > now
    {
        let wait_s = (t.blocked_until_ns - now).div_ceil(NS);
        let mut record = state.record("anonymous", action, target, Outcome::Denied);
        record.details.insert("reason".into(), format!("throttled_{scope}"));
        record.details.insert("ip".into(), ip.to_string());
        record.details.insert("failures".into(), t.failures.to_string());
        state.audit(vec![record]).await?;
        return Err(ApiError::too_many(
            "too_many_attempts",
            format!(
                "too many failed sign-ins from this {}; try again in {wait_s} s",
                if scope == "ip" { "address" } else { "account" }
            ),
            wait_s,
        ));
    }
    Ok(())
}

/// The throttle subject of a staff username: a keyed hash, so the table holds no names (or mistyped passwords).
pub(crate) fn staff_subject(keyring: &rampart_crypto::Keyring, username: &str) -> String {
    format!("staff:{}", hex::encode(keyring.blind_index("staff.username", username.as_bytes())))
}

/// Refuses a staff sign-in while the address or the username is blocked after failures.
pub(crate) async fn staff_throttle_check(
    state: &AppState,
    keyring: &rampart_crypto::Keyring,
    username: &str,
    target: &str,
    ip: IpAddr,
) -> Result<(), ApiError> {
    let ip_text = crate::identity::ip_subject(ip);
    check_throttle(state, "auth.staff.sign_in", "ip", &ip_text, &format!("ip:{ip_text}"), ip).await?;
    let subject = staff_subject(keyring, username);
    check_throttle(state, "auth.staff.sign_in", "account", &subject, target, ip).await
}

/// Counts a failed staff sign-in against the username and the address (delays only: a staff account is disabled by
/// an administrator, never locked by strangers' guesses), or clears the username's count after a success.
pub(crate) async fn staff_throttle_record(
    state: &AppState,
    keyring: &rampart_crypto::Keyring,
    username: &str,
    ip: IpAddr,
    failed: bool,
) -> Result<(), ApiError> {
    let subject = staff_subject(keyring, username);
    if !failed {
        state.store().clear_throttle("account", &subject).await?;
        return Ok(());
    }
    let config = state.identity().clone();
    let now = state.now_ns();
    state
        .store()
        .record_auth_failure("account", &subject, now, 24 * 3600 * NS, |f| config.account_blocked_until(f, now))
        .await?;
    state
        .store()
        .record_auth_failure("ip", &crate::identity::ip_subject(ip), now, 3600 * NS, |f| {
            config.ip_blocked_until(f, now)
        })
        .await?;
    Ok(())
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read balances, history and settings.
    Read,
    /// Trade.
    Trade,
    /// Withdraw (needs an IP allow-list).
    Withdraw,
}

impl Scope {
    /// A stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Trade => "trade",
            Scope::Withdraw => "withdraw",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "trade" => Some(Scope::Trade),
            "withdraw" => Some(Scope::Withdraw),
            _ => None,
        }
    }
}

/// How a customer request was authenticated.
#[derive(Clone)]
pub enum Via {
    /// A session on a confirmed device.
    Session(CustomerSession),
    /// A signed API request.
    ApiKey {
        /// The key.
        key: ApiKeyRecord,
        /// Its scopes.
        scopes: Vec<Scope>,
    },
}

/// A signed-in customer.
#[derive(Clone)]
pub struct Customer {
    /// The account.
    pub record: CustomerRecord,
    /// How.
    pub via: Via,
    /// The client's address.
    pub ip: IpAddr,
    /// The client's country, when a trusted proxy says it.
    pub country: Option<rampart_risk::Country>,
    /// The request's allowed risk events not yet logged: logged when the request is done, unless a handler takes
    /// them into a transaction it makes anyway.
    pub(crate) risk: crate::risk::PendingRisk,
}

impl Customer {
    /// The actor name in audit entries (`customer:<id>`, with the API key when signed by one).
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Session(_) => self.record.subject(),
            Via::ApiKey { key, .. } => format!("customer:{}/{}", self.record.id, key.id),
        }
    }

    /// The session, for routes that only a person in a session may use (security settings): an API key is
    /// refused.
    pub fn session(&self) -> Result<&CustomerSession, ApiError> {
        match &self.via {
            Via::Session(s) => Ok(s),
            Via::ApiKey { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "session_required",
                "security settings can be changed only in a signed-in session, not with an API key",
            )),
        }
    }

    /// Refuses an API key without `scope` (a session has every scope).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match &self.via {
            Via::Session(_) => Ok(()),
            Via::ApiKey { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Via::ApiKey { key, .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "scope_missing",
                format!("API key {} lacks the {} scope this route needs", key.id, scope.as_str()),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Customer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Customer>().cloned().ok_or_else(|| ApiError::unauthorized("not signed in"))
    }
}

/// Proof that the caller proved a second factor within the step-up window: the only way to reach a sensitive
/// action. It cannot be built outside this module except through [`StepUp::check`].
#[derive(Debug, Clone, Copy)]
pub struct StepUp {
    /// When the factor was proven. Private, so that nothing outside this module can make a proof.
    proven_at_ns: u64,
}

impl StepUp {
    /// When the second factor behind this proof was proven.
    pub fn proven_at_ns(&self) -> u64 {
        self.proven_at_ns
    }

    /// The proof, if the session's last second factor is recent enough; otherwise `403 step_up_required`.
    pub fn check(state: &AppState, customer: &Customer) -> Result<StepUp, ApiError> {
        let session = customer.session()?;
        let window_ns = state.identity().step_up_window_s.saturating_mul(NS);
        if state.now_ns().saturating_sub(session.second_factor_at_ns) <= window_ns {
            return Ok(StepUp { proven_at_ns: session.second_factor_at_ns });
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "step_up_required",
            format!(
                "this action needs a second factor proven in the last {} s: POST /v1/me/step-up first",
                state.identity().step_up_window_s
            ),
        ))
    }
}

/// Refuses a withdrawal while the security-change lock holds, saying until when (issue 8 calls it first).
pub fn withdrawal_gate(customer: &CustomerRecord, now_ns: u64) -> Result<(), ApiError> {
    if customer.status != CustomerStatus::Active {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "account_not_active", "the account is locked or frozen"));
    }
    match customer.withdrawal_lock_until_ns {
        Some(until) if until > now_ns => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "security_lock",
            format!(
                "withdrawals are suspended until {} ({}) after a recent {}",
                rfc3339(until),
                until,
                customer.withdrawal_lock_reason.as_deref().unwrap_or("security change")
            ),
        )),
        _ => Ok(()),
    }
}

/// A UTC time as RFC 3339 (`2026-11-22T10:00:00Z`), computed without a date library.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / NS;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days algorithm, in unsigned arithmetic (dates from 1970 on).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An email's stored form: the notification and, when it must go elsewhere than the account's current address
/// (confirming a new address, warning the old one), the recipient.
#[derive(Serialize, Deserialize)]
pub(crate) struct OutboxPayload {
    pub notification: Notification,
    pub to: Option<String>,
}

fn outbox_aad(id: &[u8; 16]) -> String {
    format!("outbox:{}", hex::encode(id))
}

/// A notice of `notification`: in-app, and by email (encrypted in the outbox) unless `email` is false.
pub(crate) fn notice(keyring: &Keyring, notification: Notification, to: Option<String>) -> Notice {
    let id: [u8; 16] = uuid::Uuid::new_v4().into_bytes();
    let kind = notification.kind().to_owned();
    let title = notification.title();
    let payload = serde_json::to_vec(&OutboxPayload { notification, to }).expect("a notification serialises");
    let ciphertext = keyring.encrypt(&payload, outbox_aad(&id).as_bytes());
    Notice { kind, title, email: Some((id, ciphertext)) }
}

/// Opens an outbox payload.
pub(crate) fn open_payload(keyring: &Keyring, id: &[u8; 16], ciphertext: &[u8]) -> Option<OutboxPayload> {
    let plain = keyring.decrypt(ciphertext, outbox_aad(id).as_bytes()).ok()?;
    serde_json::from_slice(&plain).ok()
}

/// The associated data of a customer's encrypted field: the row's identity, so a ciphertext moved elsewhere fails.
pub(crate) fn customer_aad(handle: &[u8; 16], field: &str) -> String {
    format!("customer:{}:{field}", hex::encode(handle))
}

/// Decrypts one of a customer's fields, reloading the keys once if another node rotated them.
pub(crate) async fn decrypt_field(
    state: &AppState,
    customer: &CustomerRecord,
    field: &str,
    ciphertext: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, ApiError> {
    let mut keyring = state.keyring()?;
    if let Ok(version) = Keyring::ciphertext_version(ciphertext)
        && version > keyring.current_version()
    {
        keyring = state.refresh_keyring().await?;
    }
    keyring.decrypt(ciphertext, customer_aad(&customer.handle, field).as_bytes()).map_err(|e| {
        tracing::error!(customer = customer.id, field, error = %e, "a stored customer field does not decrypt");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    })
}

/// A customer's email address, decrypted.
pub(crate) async fn customer_email(state: &AppState, customer: &CustomerRecord) -> Result<String, ApiError> {
    let plain = decrypt_field(state, customer, "email", &customer.email).await?;
    Ok(String::from_utf8_lossy(&plain).into_owned())
}

/// An audit record about a customer.
pub(crate) fn customer_record(
    state: &AppState,
    actor: &str,
    action: &str,
    customer_id: i64,
    outcome: Outcome,
    details: &[(&str, String)],
) -> AuditRecord {
    let mut record = state.record(actor, action, &format!("customer:{customer_id}"), outcome);
    for (k, v) in details {
        record.details.insert((*k).to_owned(), v.clone());
    }
    record
}

/// Admits a request from a signed-in customer: a session bound to the device that sends it, or a request signed
/// with an API key. Refusals of a presented credential are audited.
pub(crate) async fn authenticate_customer(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.keyring()?;
    let ip = request_ip(&state, request.headers(), request.extensions());
    let country = crate::risk::client_country(&state, request.headers(), request.extensions());
    let (customer, request) = if request.headers().contains_key("x-rampart-key") {
        api_key_customer(&state, request, ip, country).await?
    } else {
        (Customer { country, ..session_customer(&state, request.headers().clone(), ip).await? }, request)
    };
    let mut request = request;
    let path = request.uri().path().to_owned();
    let (actor, id) = (customer.actor(), customer.record.id);
    // What the handler leaves of the request's risk events is logged before the answer (or, if the client hangs
    // up first, by a task of its own).
    let unlogged = crate::risk::Unlogged::new(&state, customer.risk.clone());
    request.extensions_mut().insert(customer);
    let response = next.run(request).await;
    if let Err(e) = unlogged.log().await {
        tracing::warn!(code = e.code(), error = e.message(), "a request's risk event was not logged");
    }
    // Refusals decided in the handlers (a scope the key lacks, a missing step-up, an API key on a security route)
    // are audited here, once, with the route.
    if let Some(crate::error::ErrorCode(code)) = response.extensions().get::<crate::error::ErrorCode>()
        && matches!(*code, "scope_missing" | "step_up_required" | "session_required")
    {
        let record = customer_record(
            &state,
            &actor,
            "auth.customer.refused",
            id,
            Outcome::Denied,
            &[("reason", (*code).to_owned()), ("route", path)],
        );
        state.audit(vec![record]).await?;
    }
    Ok(response)
}

async fn session_customer(state: &AppState, headers: HeaderMap, ip: IpAddr) -> Result<Customer, ApiError> {
    let Some(token) = crate::principal::bearer(&headers) else {
        return Err(ApiError::unauthorized("sign in first: send Authorization: Bearer <session token>"));
    };
    let config = state.identity();
    let now = state.now_ns();
    let hash = rampart_auth::hash_bearer(token);
    // Last use is written at most once a minute (and at least twice per idle period), not on every request.
    let idle_ns = config.session_idle_s.saturating_mul(NS);
    let session = state
        .store()
        .customer_session(&hash, now, idle_ns, (idle_ns / 2).min(60 * NS))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or expired session"))?;
    let record = state
        .store()
        .customer_by_id(session.customer_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or expired session"))?;
    // The session works only from the device it was created on: a stolen token alone is not enough.
    let device = match headers.get(DEVICE_HEADER).and_then(|v| v.to_str().ok()) {
        Some(t) => state.store().device_by_token(record.id, &rampart_auth::hash_bearer(t)).await?,
        None => None,
    };
    if device.as_ref().map(|d| d.id) != Some(session.device_id) {
        let mut audit = customer_record(
            state,
            "anonymous",
            "auth.customer.session_refused",
            record.id,
            Outcome::Denied,
            &[("reason", "device_mismatch".into()), ("ip", ip.to_string())],
        );
        audit.details.insert("session_device".into(), session.device_id.to_string());
        state.audit(vec![audit]).await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "device_mismatch",
            format!("this session belongs to another device: send its {DEVICE_HEADER} token"),
        ));
    }
    // A lock stops sign-ins (strangers guessing); the owner's sessions and keys keep working. A freeze stops all.
    if record.status == CustomerStatus::Frozen {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "account_frozen", "the account is frozen: contact support"));
    }
    Ok(Customer { record, via: Via::Session(session), ip, country: None, risk: crate::risk::PendingRisk::default() })
}

async fn api_key_customer(
    state: &AppState,
    request: Request,
    ip: IpAddr,
    country: Option<rampart_risk::Country>,
) -> Result<(Customer, Request), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, crate::BODY_BYTES_MAX).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
    })?;
    let headers = &parts.headers;
    // The signed text joins method, path and body without separators: a body on a bodiless method could make two
    // different requests sign alike, so it is refused.
    if matches!(parts.method.as_str(), "GET" | "HEAD" | "DELETE") && !bytes.is_empty() {
        return Err(ApiError::bad_request("unexpected_body", format!("a {} request carries no body", parts.method)));
    }
    let parsed = rampart_auth::parse_signed_headers(
        headers.get("x-rampart-key").map(|v| v.as_bytes()),
        headers.get("x-rampart-timestamp").map(|v| v.as_bytes()),
        headers.get("x-rampart-sign").map(|v| v.as_bytes()),
    )
    .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
    let key_id = parsed.key_id.to_string();
    let refuse = |reason: &'static str, customer: Option<i64>| {
        let mut record = state.record(
            "anonymous",
            "auth.api_key.refused",
            &customer.map_or_else(|| format!("api_key:{key_id}"), |c| format!("customer:{c}")),
            Outcome::Denied,
        );
        record.details.insert("reason".into(), reason.into());
        record.details.insert("key".into(), key_id.clone());
        record.details.insert("ip".into(), ip.to_string());
        record
    };
    let unknown = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", "unknown, revoked or expired API key");
    let now = state.now_ns();
    let known = match state.api_keys().get(&key_id) {
        Some(known) => Some(known),
        None => match state.store().api_key_with_customer(&key_id).await? {
            Some((key, _)) if key.revoked_at_ns.is_none() => Some(state.api_keys().remember(state, key)?),
            _ => None,
        },
    };
    let Some(known) = known.filter(|k| k.key.expires_at_ns > now) else {
        state.audit(vec![refuse("unknown_key", None)]).await?;
        return Err(unknown());
    };
    let customer_id = known.key.customer_id;
    if !known.allow.is_empty() && !rampart_auth::ip_allowed(&known.allow, ip) {
        state.audit(vec![refuse("ip_not_allowed", Some(customer_id))]).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ip_not_allowed",
            format!("API key {key_id} may not be used from {ip}"),
        ));
    }
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str());
    let now_ms = now / 1_000_000;
    let window_ms = state.identity().signature_window_ms;
    if let Err(e) = rampart_auth::verify(&known.secret, parts.method.as_str(), path, &bytes, &parsed, now_ms, window_ms)
    {
        state.audit(vec![refuse(e.code(), Some(customer_id))]).await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()));
    }
    // Each signature works once, on every node: remembered until its timestamp leaves the window.
    let forget_at = parsed.timestamp_ms.saturating_add(window_ms).saturating_add(1).saturating_mul(1_000_000);
    let admission = GroupCommit::<Admissions>::submit(state, (key_id.clone(), parsed.signature, forget_at)).await?;
    // The key and its customer as the admission read them: a key revoked on another node stops here.
    let Some((key, record)) = admission.key.filter(|(k, _)| k.revoked_at_ns.is_none() && k.expires_at_ns > now) else {
        state.api_keys().forget(&key_id);
        state.audit(vec![refuse("unknown_key", None)]).await?;
        return Err(unknown());
    };
    if !admission.fresh {
        state.audit(vec![refuse("replayed_signature", Some(key.customer_id))]).await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "replayed_signature", "this signature was already used"));
    }
    // A lock stops sign-ins (strangers guessing); the owner's sessions and keys keep working. A freeze stops all.
    if record.status == CustomerStatus::Frozen {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "account_frozen", "the account is frozen: contact support"));
    }
    // Every admitted API-key request is scored: a flood from one key is refused before the handler runs. A replay,
    // a revoked key or a frozen account is refused before it, so that neither teaches the engine nor counts as the
    // owner's traffic (a captured request replayed a thousand times must not freeze its owner's account).
    let kind = rampart_risk::EventKind::ApiRequest { key: rampart_risk::profile::hash64(key_id.as_str()) };
    // An allowed event is logged with the request's own transaction when it makes one (a withdrawal's recording),
    // else when the request is done; any other is logged before it is acted on.
    let event = crate::risk::event(state, customer_id, ip, None, country, kind);
    let risk = crate::risk::PendingRisk::default();
    if let Some(scored) = crate::risk::score(state, customer_id, event)? {
        if scored.outcome() == rampart_risk::Outcome::Allow {
            risk.put(scored.record.clone());
        } else {
            GroupCommit::<crate::risk::RiskLog>::submit(state, scored.record.clone()).await?;
        }
        if let Some(refusal) = crate::risk::refusal(&crate::risk::act(state, scored).await?) {
            return Err(refusal);
        }
    }
    let scopes = key.scopes.split(',').filter_map(Scope::parse).collect();
    let request = Request::from_parts(parts, Body::from(bytes));
    Ok((Customer { record, via: Via::ApiKey { key, scopes }, ip, country, risk }, request))
}

/// What a signed request needs of its API key that never changes once the key is made (its secret, decrypted; its
/// IP allow list, parsed; its expiry), kept per process so that a key's requests need no read of their own.
/// Whether the key is revoked, and its customer's state, are read afresh with each request's admission.
pub(crate) struct KnownKey {
    key: ApiKeyRecord,
    secret: rampart_auth::ApiKeySecret,
    allow: Vec<rampart_auth::IpNet>,
}

/// The API keys this process has verified requests of ([`KnownKey`]), by id.
#[derive(Default)]
pub(crate) struct KnownKeys(Mutex<HashMap<String, std::sync::Arc<KnownKey>>>);

/// Keys remembered at most; past it, the memory starts again empty.
const KNOWN_KEYS_MAX: usize = 100_000;

impl KnownKeys {
    fn get(&self, id: &str) -> Option<std::sync::Arc<KnownKey>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Decrypts the key's secret and remembers what it needs.
    fn remember(&self, state: &AppState, key: ApiKeyRecord) -> Result<std::sync::Arc<KnownKey>, ApiError> {
        let internal = || ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error");
        let allow = rampart_auth::parse_allow_list(
            &key.allow_list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>(),
        )
        .map_err(|_| internal())?;
        let keyring = state.keyring()?;
        let secret_bytes = keyring.decrypt(&key.secret, api_key_aad(&key.id).as_bytes()).map_err(|_| internal())?;
        let secret = rampart_auth::ApiKeySecret::from_bytes(&secret_bytes).map_err(|_| internal())?;
        let known = std::sync::Arc::new(KnownKey { key, secret, allow });
        let mut keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= KNOWN_KEYS_MAX {
            keys.clear();
        }
        keys.insert(known.key.id.clone(), known.clone());
        Ok(known)
    }

    /// Forgets a key (revoked here or found revoked).
    pub(crate) fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Admitting signed API requests, in groups: each spends its signature `(key, signature, remembered until)` and
/// reads its key and customer as they are now.
pub(crate) struct Admissions;

impl Batch for Admissions {
    type Item = (String, [u8; 32], u64);
    type Out = rampart_store::Admission;
    const MAX: usize = 500;
    const NAME: &'static str = "admissions";
    const OWN_THREAD: bool = true;

    fn queue(state: &AppState) -> &GroupCommit<Admissions> {
        state.admissions()
    }

    async fn write(state: &AppState, items: Vec<Self::Item>) -> Result<Vec<Self::Out>, ApiError> {
        Ok(state.writer_store().admit_api_requests(&items, state.now_ns()).await?)
    }
}

/// The associated data of an API key's secret.
pub(crate) fn api_key_aad(id: &str) -> String {
    format!("api_key:{id}:secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures_and_are_capped() {
        let c = IdentityConfig::default();
        let now = 1_000 * NS;
        assert_eq!(c.account_blocked_until(2, now), 0);
        assert_eq!(c.account_blocked_until(3, now), now + NS);
        assert_eq!(c.account_blocked_until(5, now), now + 4 * NS);
        assert_eq!(c.account_blocked_until(40, now), now + 15 * 60 * NS);
        assert_eq!(c.ip_blocked_until(19, now), 0);
        assert_eq!(c.ip_blocked_until(21, now), now + 2 * NS);
        assert_eq!(c.ip_blocked_until(100, now), now + 3600 * NS);
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 * NS), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000 * NS), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_bucket(a), ip_bucket(b));
        assert_ne!(ip_bucket(a), ip_bucket(c));
        assert_eq!(ip_subject(a), "2001:db8:1:2::/64");
        assert_eq!(ip_subject("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(ip_subject("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }

    #[test]
    fn the_rate_limiter_refills_at_its_rate() {
        let limiter = RateLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = 10 * NS;
        for _ in 0..3 {
            assert!(limiter.take(ip, true, 1, 3, t).is_ok());
        }
        assert_eq!(limiter.take(ip, true, 1, 3, t), Err(1));
        assert!(limiter.take(ip, false, 1, 3, t).is_ok(), "classes have separate buckets");
        assert!(limiter.take(ip, true, 1, 3, t + NS).is_ok(), "one token back after a second");
        assert!(limiter.take("192.0.2.2".parse().unwrap(), true, 1, 3, t).is_ok());
    }
}
