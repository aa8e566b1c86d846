//! The seal in the running service: sealed until enough unseal shares arrive, then the keyring in memory.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rampart_audit::Outcome;
use rampart_crypto::{Keyring, SealConfig, UnsealProgress, UnsealShare, Unsealer};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ApiError;

/// Where the seal stands.
pub enum VaultState {
    /// `rampart init` has not run on this database.
    Uninitialised,
    /// Waiting for unseal shares.
    Sealed(Unsealer),
    /// Open: every key is in memory.
    Unsealed(Arc<Keyring>),
}

impl VaultState {
    /// The state for a database: sealed if initialised.
    pub fn for_config(config: Option<SealConfig>) -> VaultState {
        match config {
            None => VaultState::Uninitialised,
            Some(config) => VaultState::Sealed(Unsealer::new(config)),
        }
    }
}

/// The answer of the seal-status and unseal endpoints.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SealStatus {
    /// Whether `rampart init` has run.
    pub initialised: bool,
    /// Whether secrets are unavailable.
    pub sealed: bool,
    /// Shares needed.
    pub threshold: Option<u8>,
    /// Shares made.
    pub shares: Option<u8>,
    /// Shares received so far.
    pub progress: u8,
}

/// `POST /v1/sys/unseal`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    /// One custodian's share, as `rampart init` wrote it.
    #[schema(value_type = String)]
    pub share: secrecy::SecretString,
}

/// The error of anything that needs a secret while sealed.
pub fn sealed_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "sealed",
        "the service is sealed: custodians must submit unseal shares (rampart unseal)",
    )
}

impl AppState {
    /// The keyring, or the `sealed` error.
    pub fn keyring(&self) -> Result<Arc<Keyring>, ApiError> {
        match &*self.inner.vault.read().expect("the vault lock is never poisoned") {
            VaultState::Unsealed(keyring) => Ok(Arc::clone(keyring)),
            VaultState::Sealed(_) => Err(sealed_error()),
            VaultState::Uninitialised => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_initialised",
                "the service has no keys yet: run `rampart init` against its database",
            )),
        }
    }

    /// Reloads the stored keys (a data key rotated by another node) into the keyring, and returns it.
    pub async fn refresh_keyring(&self) -> Result<Arc<Keyring>, ApiError> {
        let current = self.keyring()?;
        let stored = self.store().crypto_keys().await?;
        let refreshed = Arc::new(current.refreshed(&stored).map_err(|e| {
            tracing::error!(error = %e, "stored keys do not open with the root key");
            ApiError::new(StatusCode::CONFLICT, "keys_unreadable", "the stored keys do not open with this root key")
        })?);
        self.install_keyring(Arc::clone(&refreshed));
        Ok(refreshed)
    }

    /// Opens the seal with this keyring.
    pub fn install_keyring(&self, keyring: Arc<Keyring>) {
        *self.inner.vault.write().expect("the vault lock is never poisoned") = VaultState::Unsealed(keyring);
    }

    fn seal_status(&self) -> SealStatus {
        match &*self.inner.vault.read().expect("the vault lock is never poisoned") {
            VaultState::Uninitialised => {
                SealStatus { initialised: false, sealed: true, threshold: None, shares: None, progress: 0 }
            }
            VaultState::Sealed(u) => SealStatus {
                initialised: true,
                sealed: true,
                threshold: Some(u.config().threshold),
                shares: Some(u.config().shares),
                progress: u.received(),
            },
            VaultState::Unsealed(_) => {
                SealStatus { initialised: true, sealed: false, threshold: None, shares: None, progress: 0 }
            }
        }
    }
}

/// Where the seal stands. Needs no token: operators and custodians check it before unsealing.
#[utoipa::path(get, path = "/v1/sys/seal-status", responses((status = 200, body = SealStatus)))]
pub(crate) async fn seal_status(State(state): State<AppState>) -> Json<SealStatus> {
    Json(state.seal_status())
}

/// Submits one unseal share. Needs no token: the shares are the credential. When the threshold is reached the
/// keyring is opened from the database and the service unseals.
#[utoipa::path(post, path = "/v1/sys/unseal", request_body = UnsealRequest, responses(
    (status = 200, body = SealStatus), (status = 400, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)
))]
pub(crate) async fn unseal(
    State(state): State<AppState>,
    crate::handlers::ApiJson(request): crate::handlers::ApiJson<UnsealRequest>,
) -> Result<Json<SealStatus>, ApiError> {
    let share = UnsealShare::parse(secrecy::ExposeSecret::expose_secret(&request.share))
        .map_err(|e| ApiError::bad_request("invalid_share", e.to_string()))?;
    let unsealed = {
        let mut vault = state.inner.vault.write().expect("the vault lock is never poisoned");
        let unsealer = match &mut *vault {
            VaultState::Uninitialised => {
                return Err(ApiError::new(StatusCode::CONFLICT, "not_initialised", "run `rampart init` first"));
            }
            VaultState::Unsealed(_) => {
                return Err(ApiError::new(StatusCode::CONFLICT, "already_unsealed", "the service is already unsealed"));
            }
            VaultState::Sealed(unsealer) => unsealer,
        };
        match unsealer.submit(share) {
            Ok(UnsealProgress::Progress { .. }) => None,
            Ok(UnsealProgress::Unsealed(root)) => Some((root, unsealer.config().init_id)),
            Err(e) => {
                tracing::warn!(error = %e, "unseal share refused");
                return Err(ApiError::bad_request("invalid_share", e.to_string()));
            }
        }
    };
    if let Some((root, init_id)) = unsealed {
        let stored = state.store().crypto_keys().await?;
        let keyring = Keyring::open(root, init_id, &stored).map_err(|e| {
            tracing::error!(error = %e, "the stored keys do not open with the reconstructed root key");
            ApiError::new(StatusCode::CONFLICT, "keys_unreadable", "the stored keys do not open with this root key")
        })?;
        state.install_keyring(Arc::new(keyring));
        let record = state.record("system", "system.seal.unseal", "seal", Outcome::Success);
        if let Err(e) = state.audit(vec![record]).await {
            tracing::error!(error = ?e.code(), "auditing the unseal failed");
        }
        tracing::info!("unsealed");
    }
    Ok(Json(state.seal_status()))
}
