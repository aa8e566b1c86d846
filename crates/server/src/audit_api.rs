//! The auditor's API: reading and verifying the audit log, and rotating the data key.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use rampart_audit::{AuditEntry, Outcome, Permission, VerifyReport};
use rampart_store::AuditFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::principal::Principal;

/// The most entries one page returns.
pub const AUDIT_PAGE_LEN_MAX: u32 = 10_000;

/// Filters of `GET /v1/audit/entries`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number (for paging).
    after_seq: Option<u64>,
    /// Entries at or after this time (ns since the Unix epoch).
    from_ns: Option<u64>,
    /// Entries before this time (ns since the Unix epoch).
    until_ns: Option<u64>,
    /// Only this actor.
    actor: Option<String>,
    /// Only this action.
    action: Option<String>,
    /// At most this many (1 to 10,000; default 1,000).
    limit: Option<u32>,
}

/// The verdict of `GET /v1/audit/verify`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyView {
    /// Whether the log is intact.
    pub intact: bool,
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The first bad entry.
    pub first_bad_seq: Option<u64>,
    /// What it looks like (`edited`, `deleted`, `inserted`, `reordered`, `checkpoint`, `truncated`).
    pub kind: Option<String>,
    /// A sentence for the auditor.
    pub message: Option<String>,
    /// The public key the signatures were checked against (hex).
    pub public_key: String,
}

/// Audit entries, oldest first, filtered.
#[utoipa::path(get, path = "/v1/audit/entries", params(AuditQuery), security(("bearer" = [])), responses(
    (status = 200, description = "entries", body = Vec<serde_json::Value>), (status = 403, body = ErrorBody)
))]
pub(crate) async fn entries(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    state.authorize(&principal, Permission::AuditRead, "audit.read", "audit").await?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=AUDIT_PAGE_LEN_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be 1 to {AUDIT_PAGE_LEN_MAX}")));
    }
    let filter = AuditFilter {
        after_seq: q.after_seq.unwrap_or(0),
        through_seq: None,
        from_ns: q.from_ns,
        until_ns: q.until_ns,
        actor: q.actor,
        action: q.action,
    };
    Ok(Json(state.store().audit_entries(&filter, limit).await?))
}

/// Verifies the whole chain, its checkpoints and its signed head.
#[utoipa::path(get, path = "/v1/audit/verify", security(("bearer" = [])), responses(
    (status = 200, body = AuditVerifyView), (status = 403, body = ErrorBody)
))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<AuditVerifyView>, ApiError> {
    state.authorize(&principal, Permission::AuditVerify, "audit.verify", "audit").await?;
    let keyring = state.keyring()?;
    let key = keyring.verifying_key();
    let VerifyReport { entries, checkpoints, finding } = state.store().verify_audit(&key).await?;
    if let Some(f) = &finding {
        tracing::error!(seq = f.seq, kind = ?f.kind, "AUDIT LOG TAMPERED");
    }
    Ok(Json(AuditVerifyView {
        intact: finding.is_none(),
        entries,
        checkpoints,
        first_bad_seq: finding.as_ref().map(|f| f.seq),
        kind: finding
            .as_ref()
            .map(|f| serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()),
        message: finding.map(|f| f.message),
        public_key: hex::encode(key),
    }))
}

/// The new data-key version.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RotatedView {
    /// The version new ciphertexts use from now on.
    pub version: u32,
}

/// Rotates the data key: new writes use a new version; old ciphertexts stay readable.
#[utoipa::path(post, path = "/v1/sys/keys/rotate", security(("bearer" = [])), responses(
    (status = 200, body = RotatedView), (status = 403, body = ErrorBody)
))]
pub(crate) async fn rotate_keys(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<RotatedView>, ApiError> {
    state.authorize(&principal, Permission::KeysManage, "system.keys.rotate", "keys").await?;
    // Rotate from the stored keys, so that a version another node added is neither missed nor reused.
    let keyring = state.refresh_keyring().await?;
    let (next, wrapped) = keyring.rotated();
    let version = next.current_version();
    let mut record = state.record(&principal.actor(), "system.keys.rotate", "keys", Outcome::Success);
    record.details.insert("version".into(), version.to_string());
    state.store().add_crypto_key_audited(&wrapped, state.now_ns(), &state.auditor(&keyring), vec![record]).await?;
    state.install_keyring(Arc::new(next));
    Ok(Json(RotatedView { version }))
}

/// How many ciphertexts a rewrap moved to the current key version.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RewrappedView {
    /// The version they now use.
    pub version: u32,
    /// Ciphertexts re-encrypted.
    pub rewrapped: u64,
}

/// Re-encrypts every stored secret under the current data key, inside this process, in one transaction.
#[utoipa::path(post, path = "/v1/sys/keys/rewrap", security(("bearer" = [])), responses(
    (status = 200, body = RewrappedView), (status = 403, body = ErrorBody)
))]
pub(crate) async fn rewrap_keys(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<RewrappedView>, ApiError> {
    state.authorize(&principal, Permission::KeysManage, "system.keys.rewrap", "keys").await?;
    let keyring = state.keyring()?;
    let version = keyring.current_version();
    let rewrap = |id: i64, ciphertext: &[u8]| -> Result<Option<Vec<u8>>, rampart_store::StoreError> {
        if rampart_crypto::Keyring::ciphertext_version(ciphertext).ok() == Some(version) {
            return Ok(None);
        }
        let aad = format!("staff:{id}:totp_secret");
        keyring
            .rewrap(ciphertext, aad.as_bytes())
            .map(Some)
            .map_err(|e| rampart_store::StoreError::Corrupt(format!("staff {id} TOTP secret: {e}")))
    };
    let record = state.record(&principal.actor(), "system.keys.rewrap", "keys", Outcome::Success);
    let rewrapped = state.store().rewrap_staff_secrets(&rewrap, &state.auditor(&keyring), record).await?;
    Ok(Json(RewrappedView { version, rewrapped }))
}
