//! Who is calling, and whether they may: authentication of staff sessions (and the development root token), the
//! permission check, and the audit record of every refusal.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use rampart_audit::{AuditRecord, Outcome, Permission, Role};
use rampart_crypto::Keyring;
use rampart_store::{Auditor, StaffRecord};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// Entries between signed audit checkpoints.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// An authenticated caller.
#[derive(Clone)]
pub enum Principal {
    /// The development root token of `serve --dev`: every permission, like Vault's dev root token. Never exists in
    /// production mode.
    DevRoot,
    /// A signed-in staff member.
    Staff(StaffRecord),
}

impl Principal {
    /// The actor named in audit entries.
    pub fn actor(&self) -> String {
        match self {
            Principal::DevRoot => "dev-root".to_owned(),
            Principal::Staff(s) => format!("staff:{}", s.id),
        }
    }

    /// Whether the caller holds `permission`.
    pub fn may(&self, permission: Permission) -> bool {
        match self {
            Principal::DevRoot => true,
            Principal::Staff(s) => permission.granted_by(&s.roles),
        }
    }

    /// The caller's roles (all of them for the development root).
    pub fn roles(&self) -> Vec<Role> {
        match self {
            Principal::DevRoot => Role::ALL.to_vec(),
            Principal::Staff(s) => s.roles.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| ApiError::unauthorized("not signed in"))
    }
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(request_headers: &axum::http::HeaderMap) -> Option<&str> {
    request_headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").filter(|t| !t.is_empty())
}

/// Admits a request only from a signed-in staff member (or the development root), and only while unsealed.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.keyring()?;
    let Some(token) = bearer(request.headers()) else {
        return Err(ApiError::unauthorized("sign in first: send Authorization: Bearer <session token>"));
    };
    let dev_root = state
        .inner
        .dev_root_token
        .as_ref()
        .is_some_and(|root| bool::from(token.as_bytes().ct_eq(root.expose_secret().as_bytes())));
    let principal = if dev_root {
        Principal::DevRoot
    } else {
        let hash = rampart_auth::hash_bearer(token);
        match state.store().session_staff(&hash, state.now_ns()).await? {
            Some(staff) => Principal::Staff(staff),
            None => return Err(ApiError::unauthorized("invalid or expired session")),
        }
    };
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

impl AppState {
    /// An audit record of now.
    pub fn record(&self, actor: &str, action: &str, target: &str, outcome: Outcome) -> AuditRecord {
        AuditRecord {
            time_ns: self.now_ns(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome,
            details: Default::default(),
        }
    }

    /// The signer and checkpoint policy of audited commands.
    pub fn auditor<'k>(&self, keyring: &'k Keyring) -> Auditor<'k> {
        Auditor { signer: keyring, checkpoint_every: CHECKPOINT_EVERY }
    }

    /// Appends records on their own (events that change nothing else).
    pub async fn audit(&self, records: Vec<AuditRecord>) -> Result<(), ApiError> {
        let keyring = self.keyring()?;
        self.store().append_audit(records, &self.auditor(&keyring)).await?;
        Ok(())
    }

    /// Refuses, with `403 forbidden` and an audit entry, a caller without `permission`.
    pub async fn authorize(
        &self,
        principal: &Principal,
        permission: Permission,
        action: &str,
        target: &str,
    ) -> Result<(), ApiError> {
        if principal.may(permission) {
            return Ok(());
        }
        let mut record = self.record(&principal.actor(), action, target, Outcome::Denied);
        record.details.insert("missing_permission".into(), permission.as_str().into());
        // If the refusal cannot be recorded, the request fails anyway: it was refused.
        if let Err(e) = self.audit(vec![record]).await {
            tracing::error!(code = e.code(), "auditing a refusal failed");
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {} permission, which your roles do not grant", permission.as_str()),
        ))
    }
}
