//! Real WebAuthn ceremonies between `Relying` and a software authenticator and client (1Password's `passkey` crates:
//! P-256 keys, `none` attestation, CTAP2 authenticator data, a client that builds `clientDataJSON` and checks the
//! relying party id against its origin). Everything crosses between the two sides as WebAuthn JSON, as it would
//! between the server and a browser.

use passkey_authenticator::{Authenticator, UiHint, UserCheck, UserValidationMethod};
use passkey_client::{Client, DefaultClientData, DefaultClientDataWithCustomHash};
use passkey_crypto::hash::Sha256Backend;
use passkey_crypto::rust_crypto::{RustCryptoBackend, RustCryptoSha2};
use passkey_types::ctap2::{Aaguid, Ctap2Error};
use passkey_types::webauthn::{CredentialCreationOptions, CredentialRequestOptions};
use passkey_types::{Passkey, encoding};
use rampart_webauthn::{CeremonyState, Relying, StoredCredential, WebauthnError};
use serde_json::{Value, json};
use webauthn_rs::prelude::Url;

const RP_ID: &str = "localhost";
const ORIGIN: &str = "http://localhost:8080";

/// A user who is present and passes the authenticator's PIN or biometric check.
struct VerifyingUser;

#[async_trait::async_trait]
impl UserValidationMethod for VerifyingUser {
    type PasskeyItem = Passkey;

    async fn check_user<'a>(
        &self,
        hint: UiHint<'a, Passkey>,
        presence: bool,
        verification: bool,
    ) -> Result<UserCheck, Ctap2Error> {
        // `passkey-authenticator` leaves ending a registration of an excluded credential to this hook (CTAP 2.1
        // §6.1.2 step 1: "wait for user presence, then … return CTAP2_ERR_CREDENTIAL_EXCLUDED"), as a browser's
        // "this key is already registered" dialog does.
        if let UiHint::InformExcludedCredentialFound(_) = hint {
            return Err(Ctap2Error::CredentialExcluded);
        }
        Ok(UserCheck { presence, verification })
    }

    fn is_presence_enabled(&self) -> bool {
        true
    }

    fn is_verification_enabled(&self) -> Option<bool> {
        Some(true)
    }
}

/// A software authenticator holding one credential, behind a browser on `origin`. Its whole state is `store`, so
/// cloning a `SoftKey` clones the authenticator, private key and signature counter included.
#[derive(Clone)]
struct SoftKey {
    store: Option<Passkey>,
    /// Whether new credentials keep a signature counter (hardware security keys do; synced passkeys keep 0).
    counter: bool,
    origin: Url,
}

/// The browser and authenticator for one operation, built from the key's state (the client's type names a public
/// suffix list provider that this crate does not otherwise need to name).
macro_rules! client {
    ($key:expr) => {{
        let mut authenticator =
            Authenticator::new(Aaguid::new_empty(), $key.store.clone(), VerifyingUser, RustCryptoBackend);
        authenticator.set_make_credentials_with_signature_counter($key.counter);
        Client::new(authenticator).allows_insecure_localhost(true)
    }};
}

impl SoftKey {
    fn new(origin: &str, counter: bool) -> SoftKey {
        SoftKey { store: None, counter, origin: Url::parse(origin).unwrap() }
    }

    /// `navigator.credentials.create(options)`.
    async fn create(&mut self, options: &Value) -> Result<Value, passkey_client::WebauthnError> {
        let request: CredentialCreationOptions = serde_json::from_value(options.clone()).unwrap();
        let mut client = client!(self);
        let created = client.register(&self.origin, request, DefaultClientData).await;
        self.store = client.authenticator().store().clone();
        created.map(|c| serde_json::to_value(c).unwrap())
    }

    /// `navigator.credentials.get(options)`.
    async fn get(&mut self, options: &Value) -> Result<Value, passkey_client::WebauthnError> {
        let request: CredentialRequestOptions = serde_json::from_value(options.clone()).unwrap();
        let mut client = client!(self);
        let assertion = client.authenticate(&self.origin, request, DefaultClientData).await;
        self.store = client.authenticator().store().clone();
        assertion.map(|a| serde_json::to_value(a).unwrap())
    }

    /// An assertion whose signed `clientDataJSON` names `origin` instead of the page's: what a compromised browser,
    /// or a phishing proxy driving a real browser's authenticator, would send.
    async fn get_as(&mut self, options: &Value, origin: &str) -> Value {
        let client_data = json!({
            "type": "webauthn.get",
            "challenge": options["publicKey"]["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string();
        let hash = RustCryptoSha2::sha256(client_data.as_bytes()).to_vec();
        let request: CredentialRequestOptions = serde_json::from_value(options.clone()).unwrap();
        let mut client = client!(self);
        let assertion =
            client.authenticate(&self.origin, request, DefaultClientDataWithCustomHash(hash)).await.unwrap();
        self.store = client.authenticator().store().clone();
        let mut assertion = serde_json::to_value(assertion).unwrap();
        assertion["response"]["clientDataJSON"] = json!(encoding::base64url(client_data.as_bytes()));
        assertion
    }
}

fn relying() -> Relying {
    Relying::new(RP_ID, "Rampart", ORIGIN).unwrap()
}

async fn register(rp: &Relying, key: &mut SoftKey, user: [u8; 16], existing: &[StoredCredential]) -> StoredCredential {
    let (options, state) = rp.start_registration(user, "alice", "Alice", existing).unwrap();
    let response = key.create(&options).await.unwrap();
    rp.finish_registration(&response, &state).unwrap()
}

/// One authentication; on success the updated credential is written back into `stored`, as the store does.
async fn sign_in(rp: &Relying, key: &mut SoftKey, stored: &mut [StoredCredential]) -> Result<bool, WebauthnError> {
    let (options, state) = rp.start_authentication(stored).unwrap();
    let response = key.get(&options).await.unwrap();
    let done = rp.finish_authentication(&response, &state, stored)?;
    if let Some(updated) = done.updated {
        let slot = stored.iter_mut().find(|c| c.id == done.credential_id).unwrap();
        *slot = updated;
    }
    Ok(done.user_verified)
}

#[tokio::test]
async fn register_then_authenticate() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, false);
    let (options, state) = rp.start_registration([1; 16], "alice", "Alice", &[]).unwrap();
    assert_eq!(options["publicKey"]["authenticatorSelection"]["userVerification"], "required");
    let response = key.create(&options).await.unwrap();
    let credential = rp.finish_registration(&response, &state).unwrap();
    assert_eq!(credential.id, key.store.as_ref().unwrap().credential_id.to_vec());
    assert_eq!(credential.counter, 0);
    assert_eq!(credential.id_base64url(), response["id"]);

    let credentials = [credential];
    let (options, state) = rp.start_authentication(&credentials).unwrap();
    assert_eq!(options["publicKey"]["allowCredentials"][0]["id"], response["id"]);
    let assertion = key.get(&options).await.unwrap();
    let done = rp.finish_authentication(&assertion, &state, &credentials).unwrap();
    assert_eq!(done.credential_id, credentials[0].id);
    assert!(done.user_verified);
    // A synced passkey keeps its counter at zero: nothing to write back, and it keeps working.
    assert_eq!(done.updated, None);
    for _ in 0..3 {
        assert!(sign_in(&rp, &mut key, &mut credentials.clone()).await.unwrap());
    }
}

#[tokio::test]
async fn a_counting_authenticator_moves_the_stored_counter() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, true);
    let mut credentials = [register(&rp, &mut key, [2; 16], &[]).await];
    assert_eq!(credentials[0].counter, 0);
    for expected in 1..=3 {
        assert!(sign_in(&rp, &mut key, &mut credentials).await.unwrap());
        assert_eq!(credentials[0].counter, expected);
        credentials[0].validate().unwrap();
    }
}

#[tokio::test]
async fn a_replayed_assertion_is_refused() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, true);
    let mut credentials = [register(&rp, &mut key, [3; 16], &[]).await];
    let (options, state) = rp.start_authentication(&credentials).unwrap();
    let assertion = key.get(&options).await.unwrap();
    let done = rp.finish_authentication(&assertion, &state, &credentials).unwrap();
    credentials[0] = done.updated.unwrap();
    // The same response against the same state (a state that was not deleted, or two racing requests after the
    // first one committed): the signature and challenge still verify, the counter does not move.
    let e = rp.finish_authentication(&assertion, &state, &credentials).unwrap_err();
    assert_eq!(e, WebauthnError::CounterRegressed);
    assert_eq!(e.code(), "webauthn_counter_regressed");
}

#[tokio::test]
async fn a_cloned_authenticator_is_refused() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, true);
    let mut credentials = [register(&rp, &mut key, [4; 16], &[]).await];
    // The attacker copies the authenticator (private key and counter) right after registration.
    let mut clone = key.clone();
    sign_in(&rp, &mut key, &mut credentials).await.unwrap();
    sign_in(&rp, &mut key, &mut credentials).await.unwrap();
    assert_eq!(credentials[0].counter, 2);

    // The clone signs with counter 1, behind the stored 2.
    assert_eq!(sign_in(&rp, &mut clone, &mut credentials).await, Err(WebauthnError::CounterRegressed));

    // A race: a copy taken at counter 2 starts a ceremony while the stored counter is 2, the owner signs in
    // meanwhile (3), and the copy answers with 3. Against the counter copied into the state (2) that would pass;
    // against the stored one it does not.
    let mut clone = key.clone();
    let (options, state) = rp.start_authentication(&credentials).unwrap();
    sign_in(&rp, &mut key, &mut credentials).await.unwrap();
    assert_eq!(credentials[0].counter, 3);
    let assertion = clone.get(&options).await.unwrap();
    let e = rp.finish_authentication(&assertion, &state, &credentials).unwrap_err();
    assert_eq!(e, WebauthnError::CounterRegressed);

    // The owner is not locked out.
    sign_in(&rp, &mut key, &mut credentials).await.unwrap();
    assert_eq!(credentials[0].counter, 4);
}

#[tokio::test]
async fn an_assertion_for_another_challenge_is_refused() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, false);
    let credentials = [register(&rp, &mut key, [5; 16], &[]).await];
    let (options, _state) = rp.start_authentication(&credentials).unwrap();
    let (_other_options, other_state) = rp.start_authentication(&credentials).unwrap();
    let assertion = key.get(&options).await.unwrap();
    let e = rp.finish_authentication(&assertion, &other_state, &credentials).unwrap_err();
    assert_eq!(e, WebauthnError::ChallengeMismatch);
    assert_eq!(e.code(), "webauthn_challenge_mismatch");

    // The same for registration.
    let (options, _state) = rp.start_registration([6; 16], "bob", "Bob", &[]).unwrap();
    let (_other_options, other_state) = rp.start_registration([6; 16], "bob", "Bob", &[]).unwrap();
    let response = SoftKey::new(ORIGIN, false).create(&options).await.unwrap();
    let e = rp.finish_registration(&response, &other_state).unwrap_err();
    assert_eq!(e, WebauthnError::ChallengeMismatch);
}

#[tokio::test]
async fn an_assertion_from_another_origin_is_refused() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, false);
    let credentials = [register(&rp, &mut key, [7; 16], &[]).await];
    let (options, state) = rp.start_authentication(&credentials).unwrap();
    let assertion = key.get_as(&options, "https://evil.example").await;
    let e = rp.finish_authentication(&assertion, &state, &credentials).unwrap_err();
    assert_eq!(e, WebauthnError::OriginMismatch);
    assert_eq!(e.code(), "webauthn_origin_mismatch");
    // The same authenticator and challenge with the true origin works: only the origin was wrong.
    let assertion = key.get_as(&options, ORIGIN).await;
    rp.finish_authentication(&assertion, &state, &credentials).unwrap();
}

#[tokio::test]
async fn a_sibling_subdomain_is_another_origin() {
    // A taken-over sibling subdomain may use the parent domain as its relying party id, and a browser lets it; the
    // server accepts only its own origin.
    let rp = Relying::new("example.com", "Rampart", "https://www.example.com").unwrap();
    let mut key = SoftKey::new("https://www.example.com", false);
    let credentials = [register(&rp, &mut key, [8; 16], &[]).await];
    let mut evil = key.clone();
    evil.origin = Url::parse("https://evil.example.com").unwrap();

    let (options, state) = rp.start_authentication(&credentials).unwrap();
    let assertion = evil.get(&options).await.unwrap();
    assert_eq!(rp.finish_authentication(&assertion, &state, &credentials), Err(WebauthnError::OriginMismatch));

    let (options, state) = rp.start_registration([8; 16], "alice", "Alice", &[]).unwrap();
    let response = SoftKey::new("https://evil.example.com", false).create(&options).await.unwrap();
    assert_eq!(rp.finish_registration(&response, &state), Err(WebauthnError::OriginMismatch));

    // A browser refuses outright to use `example.com` from an unrelated site.
    let (options, _state) = rp.start_authentication(&credentials).unwrap();
    let mut phisher = key.clone();
    phisher.origin = Url::parse("https://evil.example").unwrap();
    assert!(phisher.get(&options).await.is_err());
}

#[tokio::test]
async fn an_unknown_credential_is_refused() {
    let rp = relying();
    let mut alice_key = SoftKey::new(ORIGIN, false);
    let mut bob_key = SoftKey::new(ORIGIN, false);
    let alice = [register(&rp, &mut alice_key, [9; 16], &[]).await];
    let bob = [register(&rp, &mut bob_key, [10; 16], &[]).await];

    // Alice's assertion offered to a ceremony for Bob.
    let (options, _state) = rp.start_authentication(&alice).unwrap();
    let (_bob_options, bob_state) = rp.start_authentication(&bob).unwrap();
    let assertion = alice_key.get(&options).await.unwrap();
    let e = rp.finish_authentication(&assertion, &bob_state, &bob).unwrap_err();
    assert_eq!(e, WebauthnError::UnknownCredential);
    assert_eq!(e.code(), "webauthn_unknown_credential");

    // A credential removed between the start and the finish of a ceremony.
    let (options, state) = rp.start_authentication(&alice).unwrap();
    let assertion = alice_key.get(&options).await.unwrap();
    assert_eq!(rp.finish_authentication(&assertion, &state, &bob), Err(WebauthnError::UnknownCredential));
    assert_eq!(rp.finish_authentication(&assertion, &state, &[]), Err(WebauthnError::UnknownCredential));

    // Bob's authenticator has no credential that Alice's ceremony allows.
    let (options, _state) = rp.start_authentication(&alice).unwrap();
    assert!(bob_key.get(&options).await.is_err());

    assert_eq!(rp.start_authentication(&[]).unwrap_err().code(), "webauthn_no_credentials");
}

#[tokio::test]
async fn a_credential_is_not_registered_twice() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, false);
    let first = [register(&rp, &mut key, [11; 16], &[]).await];

    // The authenticator honours the exclusion list.
    let (options, _state) = rp.start_registration([11; 16], "alice", "Alice", &first).unwrap();
    assert_eq!(options["publicKey"]["excludeCredentials"][0]["id"], first[0].id_base64url());
    assert!(key.create(&options).await.is_err());

    // A client that ignores it and passes off a new key under the registered id (`none` attestation signs nothing,
    // so nothing stops it from naming any id it likes) is refused by the server.
    let (options, state) = rp.start_registration([11; 16], "alice", "Alice", &first).unwrap();
    let mut response = SoftKey::new(ORIGIN, false).create(&options).await.unwrap();
    let new_id = encoding::try_from_base64url(response["rawId"].as_str().unwrap()).unwrap();
    assert_eq!(new_id.len(), first[0].id.len());
    let object = encoding::try_from_base64url(response["response"]["attestationObject"].as_str().unwrap()).unwrap();
    let at = object.windows(new_id.len()).position(|w| w == new_id.as_slice()).unwrap();
    let mut forged = object.clone();
    forged[at..at + new_id.len()].copy_from_slice(&first[0].id);
    response["response"]["attestationObject"] = json!(encoding::base64url(&forged));
    // Claiming the new id outside while the authenticator data names the registered one: refused (webauthn-rs
    // 0.5 reports this as an altered algorithm, hence the generic code).
    let e = rp.finish_registration(&response, &state).unwrap_err();
    assert!(["webauthn_failed", "webauthn_already_registered"].contains(&e.code()), "{e:?}");
    // Claiming the registered id throughout.
    response["id"] = json!(first[0].id_base64url());
    response["rawId"] = json!(first[0].id_base64url());
    let e = rp.finish_registration(&response, &state).unwrap_err();
    assert_eq!(e, WebauthnError::AlreadyRegistered);
    assert_eq!(e.code(), "webauthn_already_registered");
    // Without the tampering, the same response registers a second credential.
    response = SoftKey::new(ORIGIN, false).create(&options).await.unwrap();
    rp.finish_registration(&response, &state).unwrap();
}

#[tokio::test]
async fn state_and_credentials_survive_storage() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, true);

    // Registration with the state taken through bytes, as between the two requests.
    let (options, state) = rp.start_registration([12; 16], "alice", "Alice", &[]).unwrap();
    let stored_state = state.to_bytes();
    let response = key.create(&options).await.unwrap();
    let credential = rp.finish_registration(&response, &CeremonyState::from_bytes(&stored_state)).unwrap();

    // The credential through its columns and through its single-blob form.
    let columns =
        StoredCredential { id: credential.id.clone(), data: credential.data.clone(), counter: credential.counter };
    assert_eq!(columns, credential);
    let blob = credential.to_bytes();
    assert_eq!(StoredCredential::from_bytes(&blob).unwrap(), credential);

    // A credential's data under another row's id is refused.
    let mut swapped = credential.clone();
    swapped.id[0] ^= 1;
    assert_eq!(swapped.validate().unwrap_err().code(), "webauthn_bad_state");
    assert_eq!(rp.start_authentication(&[swapped]).unwrap_err().code(), "webauthn_bad_state");

    // Authentication with everything read back from bytes.
    let credentials = [StoredCredential::from_bytes(&blob).unwrap()];
    let (options, state) = rp.start_authentication(&credentials).unwrap();
    let state = CeremonyState::from_bytes(&state.to_bytes());
    let assertion = key.get(&options).await.unwrap();
    let done = rp.finish_authentication(&assertion, &state, &credentials).unwrap();
    assert_eq!(done.updated.as_ref().unwrap().counter, 1);

    // Neither the challenge nor the key material shows in Debug output.
    let challenge = options["publicKey"]["challenge"].as_str().unwrap();
    let debug = format!("{state:?} {:?}", credentials[0]);
    assert!(!debug.contains(challenge), "{debug}");
    assert!(!debug.contains("EC_EC2"), "{debug}");

    // A truncated or tampered state is refused as server-side corruption, not blamed on the client.
    let bytes = state.to_bytes();
    let truncated = CeremonyState::from_bytes(&bytes[..bytes.len() / 2]);
    assert_eq!(
        rp.finish_authentication(&assertion, &truncated, &credentials).unwrap_err().code(),
        "webauthn_bad_state"
    );
}

#[tokio::test]
async fn a_malformed_response_is_a_bad_request() {
    let rp = relying();
    let mut key = SoftKey::new(ORIGIN, false);
    let credentials = [register(&rp, &mut key, [13; 16], &[]).await];
    let (options, state) = rp.start_authentication(&credentials).unwrap();
    let assertion = key.get(&options).await.unwrap();

    let mut bad = assertion.clone();
    bad["response"]["authenticatorData"] = json!("!!not base64!!");
    assert_eq!(rp.finish_authentication(&bad, &state, &credentials).unwrap_err().code(), "webauthn_bad_request");
    let mut bad = assertion.clone();
    bad["response"]["authenticatorData"] = json!("AAAA");
    assert_eq!(rp.finish_authentication(&bad, &state, &credentials).unwrap_err().code(), "webauthn_bad_request");
    assert_eq!(rp.finish_authentication(&json!("x"), &state, &credentials).unwrap_err().code(), "webauthn_bad_request");

    // A flipped bit in the signature is a failed verification.
    let mut bad = assertion.clone();
    let mut signature = encoding::try_from_base64url(bad["response"]["signature"].as_str().unwrap()).unwrap();
    let last = signature.len() - 1;
    signature[last] ^= 1;
    bad["response"]["signature"] = json!(encoding::base64url(&signature));
    assert_eq!(rp.finish_authentication(&bad, &state, &credentials).unwrap_err().code(), "webauthn_failed");

    rp.finish_authentication(&assertion, &state, &credentials).unwrap();
}
