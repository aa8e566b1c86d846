//! Passkeys and security keys (WebAuthn) for customers and staff, over `webauthn-rs`.
//!
//! A ceremony is two HTTP requests. The first (`start_registration`, `start_authentication`) returns the options the
//! browser passes to `navigator.credentials.create()` / `.get()` and a [`CeremonyState`] that the server keeps in its
//! database; the second (`finish_registration`, `finish_authentication`) takes the browser's answer and that state.
//!
//! **One kind of credential for everyone.** Both customers and staff use `webauthn-rs`'s *passkey* ceremonies, with
//! user verification **required**: the authenticator must check a PIN or a biometric, so a credential is two factors
//! on its own (something held and something known or been). A platform passkey (Touch ID, Windows Hello, a synced
//! password-manager passkey) and a FIDO2 security key with a PIN both qualify; a security key that cannot verify its
//! user (U2F-only, or a FIDO2 key whose owner refuses to set a PIN) is refused at registration with
//! `webauthn_user_not_verified`. We do not use `webauthn-rs`'s security-key ceremonies, whose user verification is
//! only preferred, because an exchange account behind a key that anyone holding it can use is one stolen key away from
//! an emptied account. Attestation is not requested, so no make of authenticator is preferred over another.
//!
//! **Counters.** An authenticator that keeps a signature counter must present a larger value every time. An assertion
//! whose counter is not above the one stored is refused with `webauthn_counter_regressed`: it comes from a clone of
//! the credential, or it is a replay. `webauthn-rs` checks this against the credentials copied into the state when
//! the ceremony started; [`Relying::finish_authentication`] checks it again against the credentials as stored *now*,
//! which catches two ceremonies raced with a cloned key. Synced passkeys keep the counter at zero, which WebAuthn
//! defines as "no counter": for them only the single-use challenge prevents a replay.
//!
//! **What the caller must do.** Keep the state on the server (never in a cookie or the page), use it at most once
//! (delete it when `finish_*` is called, whatever the outcome), and expire it after [`CEREMONY_TIMEOUT_MS`]. Keep a
//! credential id unique across all users (a unique index), and write back [`Authenticated::updated`] when it is set.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    Base64UrlSafeData, Credential, CredentialID, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder, WebauthnError as CoreError,
};

/// How long the browser is told to wait for the authenticator, and how long the server should keep a
/// [`CeremonyState`] before refusing to finish it.
pub const CEREMONY_TIMEOUT_MS: u64 = 300_000;

/// The version of the [`CeremonyState`] encoding.
const STATE_VERSION: u8 = 1;
/// The version of the [`StoredCredential::to_bytes`] encoding.
const STORED_VERSION: u8 = 1;

/// Why a ceremony failed. Each variant has a stable [`code`](WebauthnError::code) for the API; messages never contain
/// a challenge or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebauthnError {
    /// The relying party configuration is unusable: the origin is not an `https` (or `http://localhost`) URL, or the
    /// relying party id is not its host or a parent domain of it.
    #[error("webauthn configuration: {0}")]
    Config(String),
    /// The browser's response is malformed: not the expected JSON, bad base64, bad CBOR, or a truncated structure.
    #[error("malformed webauthn response: {0}")]
    BadRequest(String),
    /// A ceremony state or stored credential that does not decode, or the state of the other kind of ceremony.
    /// Server-side data, so a bug or corruption rather than a client's fault.
    #[error("webauthn state or stored credential is unusable: {0}")]
    BadState(&'static str),
    /// The response answers a different challenge than the one this ceremony issued.
    #[error("the response was made for another ceremony's challenge")]
    ChallengeMismatch,
    /// The response was made on another origin or for another relying party id (a phishing site, or a cross-origin
    /// frame).
    #[error("the response was made for another origin")]
    OriginMismatch,
    /// The authenticator did not verify its user (no PIN or biometric), or did not even check presence.
    #[error("the authenticator did not verify the user")]
    UserNotVerified,
    /// The signature counter did not go up: a cloned authenticator or a replayed response.
    #[error("the signature counter did not increase; the credential may be cloned")]
    CounterRegressed,
    /// The response names a credential that is not among the user's (or no longer is).
    #[error("unknown credential")]
    UnknownCredential,
    /// Authentication was asked for a user who has no credential.
    #[error("the user has no webauthn credential")]
    NoCredentials,
    /// Registration produced a credential the user already has (the authenticator ignored the exclusion list).
    #[error("this credential is already registered")]
    AlreadyRegistered,
    /// Any other verification failure: a bad signature, a refused algorithm, an inconsistent authenticator.
    #[error("webauthn verification failed: {0}")]
    Failed(String),
}

impl WebauthnError {
    /// The stable snake_case code of this error, for API responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            WebauthnError::Config(_) => "webauthn_config",
            WebauthnError::BadRequest(_) => "webauthn_bad_request",
            WebauthnError::BadState(_) => "webauthn_bad_state",
            WebauthnError::ChallengeMismatch => "webauthn_challenge_mismatch",
            WebauthnError::OriginMismatch => "webauthn_origin_mismatch",
            WebauthnError::UserNotVerified => "webauthn_user_not_verified",
            WebauthnError::CounterRegressed => "webauthn_counter_regressed",
            WebauthnError::UnknownCredential => "webauthn_unknown_credential",
            WebauthnError::NoCredentials => "webauthn_no_credentials",
            WebauthnError::AlreadyRegistered => "webauthn_already_registered",
            WebauthnError::Failed(_) => "webauthn_failed",
        }
    }
}

impl From<CoreError> for WebauthnError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Configuration => WebauthnError::Config(e.to_string()),
            CoreError::MismatchedChallenge | CoreError::ChallengeNotFound => WebauthnError::ChallengeMismatch,
            CoreError::InvalidRPOrigin | CoreError::InvalidRPIDHash | CoreError::CredentialCrossOrigin => {
                WebauthnError::OriginMismatch
            }
            CoreError::UserNotPresent | CoreError::UserNotVerified => WebauthnError::UserNotVerified,
            CoreError::CredentialPossibleCompromise => WebauthnError::CounterRegressed,
            CoreError::CredentialNotFound => WebauthnError::UnknownCredential,
            CoreError::CredentialAlreadyExists | CoreError::CredentialExcludedFromRequest => {
                WebauthnError::AlreadyRegistered
            }
            CoreError::ParseBase64Failure(_)
            | CoreError::ParseCBORFailure(_)
            | CoreError::ParseJSONFailure(_)
            | CoreError::ParseNOMFailure
            | CoreError::ParseInsufficientBytesAvailable
            | CoreError::InvalidClientDataType
            | CoreError::MissingAttestationCredentialData
            | CoreError::InvalidUsername
            | CoreError::InvalidUserUniqueId => WebauthnError::BadRequest(e.to_string()),
            other => WebauthnError::Failed(other.to_string()),
        }
    }
}

/// The server's side of a ceremony between its two requests: the challenge it issued, the user and the credentials
/// it concerns. Store it server-side, use it once, and expire it after [`CEREMONY_TIMEOUT_MS`]. Its `Debug` output
/// shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct CeremonyState(Vec<u8>);

impl CeremonyState {
    /// The bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }

    /// Wraps bytes read back from storage. They are checked when the ceremony is finished.
    pub fn from_bytes(bytes: &[u8]) -> CeremonyState {
        CeremonyState(bytes.to_vec())
    }

    fn encode(ceremony: Ceremony) -> Result<CeremonyState, WebauthnError> {
        let envelope = StateEnvelope { v: STATE_VERSION, ceremony };
        serde_json::to_vec(&envelope)
            .map(CeremonyState)
            .map_err(|_| WebauthnError::Failed("ceremony state does not serialise".to_owned()))
    }

    fn decode(&self) -> Result<Ceremony, WebauthnError> {
        let envelope: StateEnvelope =
            serde_json::from_slice(&self.0).map_err(|_| WebauthnError::BadState("ceremony state does not decode"))?;
        if envelope.v != STATE_VERSION {
            return Err(WebauthnError::BadState("unknown ceremony state version"));
        }
        Ok(envelope.ceremony)
    }
}

impl fmt::Debug for CeremonyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CeremonyState(<{} bytes>)", self.0.len())
    }
}

/// What a [`CeremonyState`] holds, tagged so that the state of one kind of ceremony cannot finish the other.
#[derive(Serialize, Deserialize)]
struct StateEnvelope {
    v: u8,
    ceremony: Ceremony,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Ceremony {
    Registration {
        state: PasskeyRegistration,
        /// The user's credentials when the ceremony started, refused again at the finish because an authenticator
        /// is free to ignore the exclusion list it was sent.
        excluded: Vec<Base64UrlSafeData>,
    },
    Authentication {
        state: PasskeyAuthentication,
    },
}

/// A credential id in unpadded base64url, as the browser and `navigator.credentials` name it.
pub fn credential_id_base64url(id: &[u8]) -> String {
    // Serialising bytes to a JSON string cannot fail; the quotes are stripped.
    let json = serde_json::to_string(&Base64UrlSafeData::from(id.to_vec())).unwrap_or_default();
    json.trim_matches('"').to_owned()
}

/// A registered credential as the database keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// The credential id chosen by the authenticator (at most 1023 bytes); unique across all users.
    pub id: Vec<u8>,
    /// The `webauthn-rs` passkey (public key, counter, flags) as JSON. Public data, but its integrity matters: it is
    /// the key that signatures are checked against.
    pub data: Vec<u8>,
    /// The signature counter last accepted (0 for an authenticator without a counter), also inside `data`; kept
    /// apart so that the database can show it.
    pub counter: u32,
}

/// The single-blob form of a [`StoredCredential`].
#[derive(Serialize, Deserialize)]
struct StoredForm {
    v: u8,
    id: Base64UrlSafeData,
    counter: u32,
    data: Base64UrlSafeData,
}

impl StoredCredential {
    /// The credential id in unpadded base64url, as the browser and `navigator.credentials` name it.
    pub fn id_base64url(&self) -> String {
        credential_id_base64url(&self.id)
    }

    /// Checks that `data` decodes and belongs to `id`.
    pub fn validate(&self) -> Result<(), WebauthnError> {
        self.passkey().map(|_| ())
    }

    /// The whole credential as one self-describing blob, for storage that keeps it in a single column.
    pub fn to_bytes(&self) -> Vec<u8> {
        let form = StoredForm {
            v: STORED_VERSION,
            id: self.id.clone().into(),
            counter: self.counter,
            data: self.data.clone().into(),
        };
        // A struct of byte strings and an integer always serialises.
        serde_json::to_vec(&form).unwrap_or_default()
    }

    /// Reads back [`to_bytes`](StoredCredential::to_bytes), checking that the passkey inside belongs to the id.
    pub fn from_bytes(bytes: &[u8]) -> Result<StoredCredential, WebauthnError> {
        let form: StoredForm =
            serde_json::from_slice(bytes).map_err(|_| WebauthnError::BadState("stored credential does not decode"))?;
        if form.v != STORED_VERSION {
            return Err(WebauthnError::BadState("unknown stored credential version"));
        }
        let credential = StoredCredential { id: form.id.into(), data: form.data.into(), counter: form.counter };
        credential.validate()?;
        Ok(credential)
    }

    fn from_passkey(passkey: &Passkey) -> Result<StoredCredential, WebauthnError> {
        let data =
            serde_json::to_vec(passkey).map_err(|_| WebauthnError::Failed("passkey does not serialise".to_owned()))?;
        Ok(StoredCredential { id: passkey.cred_id().to_vec(), data, counter: passkey_counter(passkey) })
    }

    fn passkey(&self) -> Result<Passkey, WebauthnError> {
        let passkey: Passkey = serde_json::from_slice(&self.data)
            .map_err(|_| WebauthnError::BadState("stored credential does not decode"))?;
        if passkey.cred_id().as_slice() != self.id.as_slice() {
            return Err(WebauthnError::BadState("stored credential data belongs to another credential id"));
        }
        Ok(passkey)
    }
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCredential")
            .field("id", &self.id_base64url())
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .field("counter", &self.counter)
            .finish()
    }
}

/// The signature counter a passkey holds.
fn passkey_counter(passkey: &Passkey) -> u32 {
    Credential::from(passkey.clone()).counter
}

/// A successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The id of the credential that signed.
    pub credential_id: Vec<u8>,
    /// The credential with its new counter (or backup flags), to write back in the same transaction that accepts the
    /// sign-in; `None` when nothing changed (an authenticator without a counter).
    pub updated: Option<StoredCredential>,
    /// Whether the authenticator verified its user (always true today, since verification is required).
    pub user_verified: bool,
}

/// The relying party: this service as WebAuthn sees it, an id (a domain) and the one origin its pages are served
/// from.
#[derive(Debug, Clone)]
pub struct Relying {
    webauthn: Webauthn,
}

impl Relying {
    /// A relying party with id `rp_id` (e.g. `"localhost"`, `"example.com"`), shown to users as `rp_name`, whose pages
    /// are served from `origin` (e.g. `"http://localhost:8080"`, `"https://www.example.com"`). The origin must be
    /// `https`, or `http` on `localhost`, and `rp_id` must be its host or a parent domain of it. Only that exact
    /// origin (scheme, host and port) is accepted in responses.
    pub fn new(rp_id: &str, rp_name: &str, origin: &str) -> Result<Relying, WebauthnError> {
        let url = Url::parse(origin).map_err(|e| WebauthnError::Config(format!("origin is not a URL: {e}")))?;
        let secure = match url.scheme() {
            "https" => true,
            "http" => url.host_str() == Some("localhost"),
            _ => false,
        };
        if !secure {
            return Err(WebauthnError::Config("origin must be https (or http on localhost)".to_owned()));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(WebauthnError::Config("origin must be a scheme, host and port only".to_owned()));
        }
        let webauthn = WebauthnBuilder::new(rp_id, &url)
            .map_err(|_| WebauthnError::Config("rp_id must be the origin's host or a parent domain of it".to_owned()))?
            .rp_name(rp_name)
            .timeout(Duration::from_millis(CEREMONY_TIMEOUT_MS))
            .build()?;
        Ok(Relying { webauthn })
    }

    /// Begins registering a new credential for a user. `user_handle` is the user's stable 16-byte id (their uuid),
    /// which the authenticator stores; `existing` are the user's current credentials, which the authenticator is
    /// asked not to register again (and which the finish refuses). Returns the JSON for
    /// `navigator.credentials.create()` (`{"publicKey": …}`, binary fields in base64url) and the state to store.
    pub fn start_registration(
        &self,
        user_handle: [u8; 16],
        user_name: &str,
        display_name: &str,
        existing: &[StoredCredential],
    ) -> Result<(serde_json::Value, CeremonyState), WebauthnError> {
        let exclude: Vec<CredentialID> = existing.iter().map(|c| CredentialID::from(c.id.clone())).collect();
        let excluded = existing.iter().map(|c| Base64UrlSafeData::from(c.id.clone())).collect();
        let exclude = (!exclude.is_empty()).then_some(exclude);
        let (options, state) = self.webauthn.start_passkey_registration(
            Uuid::from_bytes(user_handle),
            user_name,
            display_name,
            exclude,
        )?;
        let options = serde_json::to_value(&options)
            .map_err(|_| WebauthnError::Failed("registration options do not serialise".to_owned()))?;
        Ok((options, CeremonyState::encode(Ceremony::Registration { state, excluded })?))
    }

    /// Finishes registration with the browser's response (the `PublicKeyCredential` from
    /// `navigator.credentials.create()`, binary fields in base64url) and returns the credential to store.
    pub fn finish_registration(
        &self,
        response: &serde_json::Value,
        state: &CeremonyState,
    ) -> Result<StoredCredential, WebauthnError> {
        let Ceremony::Registration { state, excluded } = state.decode()? else {
            return Err(WebauthnError::BadState("not a registration ceremony"));
        };
        let response =
            RegisterPublicKeyCredential::deserialize(response).map_err(|e| WebauthnError::BadRequest(e.to_string()))?;
        let is_excluded = |id: &[u8]| excluded.iter().any(|e| e.as_slice() == id);
        // `webauthn-rs` refuses an excluded id in the authenticator data too, but reports it as an altered algorithm;
        // the id the client claims gives the clearer answer first.
        if is_excluded(response.raw_id.as_slice()) {
            return Err(WebauthnError::AlreadyRegistered);
        }
        let passkey = self.webauthn.finish_passkey_registration(&response, &state)?;
        // The id that counts is the one in the authenticator data; checked again here so that this holds whatever
        // `webauthn-rs` version is underneath.
        if is_excluded(passkey.cred_id().as_slice()) {
            return Err(WebauthnError::AlreadyRegistered);
        }
        StoredCredential::from_passkey(&passkey)
    }

    /// Begins authentication against the user's credentials. Returns the JSON for `navigator.credentials.get()`
    /// (`{"publicKey": …}`) and the state to store.
    pub fn start_authentication(
        &self,
        credentials: &[StoredCredential],
    ) -> Result<(serde_json::Value, CeremonyState), WebauthnError> {
        if credentials.is_empty() {
            return Err(WebauthnError::NoCredentials);
        }
        let passkeys = credentials.iter().map(StoredCredential::passkey).collect::<Result<Vec<_>, _>>()?;
        let (options, state) = self.webauthn.start_passkey_authentication(&passkeys)?;
        let options = serde_json::to_value(&options)
            .map_err(|_| WebauthnError::Failed("authentication options do not serialise".to_owned()))?;
        Ok((options, CeremonyState::encode(Ceremony::Authentication { state })?))
    }

    /// Finishes authentication with the browser's response (the `PublicKeyCredential` from
    /// `navigator.credentials.get()`). Checks the challenge, the origin and relying party, the signature, user
    /// verification, that the credential is still among `credentials` (the user's credentials as stored now), and
    /// that its signature counter went up past the stored one.
    pub fn finish_authentication(
        &self,
        response: &serde_json::Value,
        state: &CeremonyState,
        credentials: &[StoredCredential],
    ) -> Result<Authenticated, WebauthnError> {
        let Ceremony::Authentication { state } = state.decode()? else {
            return Err(WebauthnError::BadState("not an authentication ceremony"));
        };
        let response =
            PublicKeyCredential::deserialize(response).map_err(|e| WebauthnError::BadRequest(e.to_string()))?;
        let result = self.webauthn.finish_passkey_authentication(&response, &state)?;

        // The state holds the credentials as they were when the ceremony started; what counts is what is stored now.
        let stored = credentials
            .iter()
            .find(|c| c.id.as_slice() == result.cred_id().as_slice())
            .ok_or(WebauthnError::UnknownCredential)?;
        let mut passkey = stored.passkey()?;
        let known = stored.counter.max(passkey_counter(&passkey));
        // A zero on both sides means an authenticator without a counter (WebAuthn §7.2 step 22).
        if (result.counter() > 0 || known > 0) && result.counter() <= known {
            return Err(WebauthnError::CounterRegressed);
        }
        let updated = match passkey.update_credential(&result) {
            Some(true) => Some(StoredCredential::from_passkey(&passkey)?),
            Some(false) => None,
            None => return Err(WebauthnError::Failed("result names another credential".to_owned())),
        };
        Ok(Authenticated { credential_id: stored.id.clone(), updated, user_verified: result.user_verified() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        assert!(Relying::new("localhost", "Rampart", "http://localhost:8080").is_ok());
        assert!(Relying::new("example.com", "Rampart", "https://www.example.com").is_ok());
        for (rp_id, origin) in [
            ("localhost", "not a url"),
            ("example.com", "https://www.example.org"),
            ("ample.com", "https://example.com"),
            ("example.com", "http://example.com"),
            ("example.com", "ftp://example.com"),
            ("example.com", "https://example.com/login"),
        ] {
            let e = Relying::new(rp_id, "Rampart", origin).unwrap_err();
            assert_eq!(e.code(), "webauthn_config", "{rp_id} {origin}");
        }
    }

    #[test]
    fn no_credentials_is_refused() {
        let rp = Relying::new("localhost", "Rampart", "http://localhost:8080").unwrap();
        assert_eq!(rp.start_authentication(&[]).unwrap_err(), WebauthnError::NoCredentials);
    }

    #[test]
    fn registration_options_and_state() {
        let rp = Relying::new("localhost", "Rampart", "http://localhost:8080").unwrap();
        let (options, state) = rp.start_registration([7; 16], "alice", "Alice", &[]).unwrap();
        let public_key = &options["publicKey"];
        assert_eq!(public_key["rp"]["id"], "localhost");
        assert_eq!(public_key["rp"]["name"], "Rampart");
        assert_eq!(public_key["user"]["name"], "alice");
        assert_eq!(public_key["authenticatorSelection"]["userVerification"], "required");
        assert_eq!(format!("{state:?}"), format!("CeremonyState(<{} bytes>)", state.to_bytes().len()));
        // A registration state cannot finish an authentication, and garbage is not a state.
        let e = rp.finish_authentication(&serde_json::json!({}), &state, &[]).unwrap_err();
        assert_eq!(e.code(), "webauthn_bad_state");
        let e = rp.finish_registration(&serde_json::json!({}), &CeremonyState::from_bytes(b"junk")).unwrap_err();
        assert_eq!(e.code(), "webauthn_bad_state");
        // A response that is not a credential is the client's fault.
        let e = rp.finish_registration(&serde_json::json!({"id": 1}), &state).unwrap_err();
        assert_eq!(e.code(), "webauthn_bad_request");
    }

    #[test]
    fn corrupt_stored_credentials_are_refused() {
        let bad = StoredCredential { id: vec![1, 2, 3], data: b"{}".to_vec(), counter: 0 };
        assert_eq!(bad.validate().unwrap_err().code(), "webauthn_bad_state");
        assert_eq!(StoredCredential::from_bytes(&bad.to_bytes()).unwrap_err().code(), "webauthn_bad_state");
        assert_eq!(StoredCredential::from_bytes(b"[]").unwrap_err().code(), "webauthn_bad_state");
        assert_eq!(bad.id_base64url(), "AQID");
    }
}
