//! How custodians talk through a server they do not trust: every ceremony message is signed by its sender's Ed25519
//! identity key over the ceremony, the round, the sender, the recipient and a hash of the payload, and every private
//! payload (a DKG or refresh round-2 package, a repair value) is encrypted to its recipient's X25519 key. The server
//! stores and relays; it can drop or delay messages, but it cannot read a private one, forge one, or move one to
//! another ceremony, round or recipient.
//!
//! Encryption ([`seal_to`]): a fresh ephemeral X25519 key per message; the shared secret with the recipient's key
//! goes through HKDF-SHA256 with the context, both public keys and the sender's signing key in its `info`, to an
//! XChaCha20-Poly1305 key; the nonce is random, and the associated data binds the context, the sender and the
//! recipient. Output: `ephemeral public key (32) ‖ nonce (24) ‖ ciphertext and tag`.
//!
//! Encryption alone does not prove who sent a message: anyone who knows a recipient's public key can seal to it in
//! any sender's name. Authenticity comes from the Ed25519 signature the sender makes over the whole sealed message
//! with [`sign_message`], which the recipient (and the server, before storing) checks with [`verify_message`].

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::CustodyError;

const MESSAGE_DOMAIN: &[u8] = b"rampart/custody/message/v1";
const ENVELOPE_INFO: &[u8] = b"rampart/custody/envelope/v1";
const AAD_DOMAIN: &[u8] = b"rampart/custody/envelope-aad/v1";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// A custodian's long-term identity: an Ed25519 key that signs their messages and an X25519 key that others encrypt
/// to. Prints as `<redacted>`; erased when dropped.
pub struct Identity {
    signing: SigningKey,
    exchange: StaticSecret,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(<redacted>)")
    }
}

impl Identity {
    /// A fresh identity from the operating system's randomness.
    pub fn generate() -> Identity {
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(seed.as_mut());
        Identity { signing: SigningKey::from_bytes(&seed), exchange: StaticSecret::random_from_rng(OsRng) }
    }

    /// The stored form: the Ed25519 secret key, then the X25519 secret key (64 bytes).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(self.signing.as_bytes());
        out[32..].copy_from_slice(self.exchange.as_bytes());
        out
    }

    /// The identity from its stored form ([`Identity::to_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Identity, CustodyError> {
        if bytes.len() != 64 {
            return Err(CustodyError::Envelope("an identity is 64 bytes"));
        }
        let mut signing = Zeroizing::new([0u8; 32]);
        let mut exchange = Zeroizing::new([0u8; 32]);
        signing.copy_from_slice(&bytes[..32]);
        exchange.copy_from_slice(&bytes[32..]);
        Ok(Identity { signing: SigningKey::from_bytes(&signing), exchange: StaticSecret::from(*exchange) })
    }

    /// The public halves, to register with the server and give to the other custodians.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            signing: self.signing.verifying_key().to_bytes(),
            exchange: PublicKey::from(&self.exchange).to_bytes(),
        }
    }

    /// The Ed25519 signing key (for the confirmation rounds of `crate::dkg` and `crate::refresh`).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// A custodian's public identity: the Ed25519 key that checks their signatures and the X25519 key to encrypt to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity {
    /// Ed25519 verifying key.
    pub signing: [u8; 32],
    /// X25519 public key.
    pub exchange: [u8; 32],
}

impl PublicIdentity {
    /// Hex of the signing key then the exchange key (128 characters).
    pub fn to_hex(&self) -> String {
        let mut out = hex::encode(self.signing);
        out.push_str(&hex::encode(self.exchange));
        out
    }

    /// Parses [`PublicIdentity::to_hex`], refusing an Ed25519 key that is not a curve point and an X25519 key of
    /// small order (with which every shared secret would be known to everyone).
    pub fn parse(text: &str) -> Result<PublicIdentity, CustodyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CustodyError::Envelope("a public identity is hex"))?;
        let (signing, exchange) = match (bytes.get(..32), bytes.get(32..)) {
            (Some(s), Some(e)) if bytes.len() == 64 => (s, e),
            _ => return Err(CustodyError::Envelope("a public identity is 64 bytes")),
        };
        let public = PublicIdentity {
            signing: signing.try_into().map_err(|_| CustodyError::Envelope("a public identity is 64 bytes"))?,
            exchange: exchange.try_into().map_err(|_| CustodyError::Envelope("a public identity is 64 bytes"))?,
        };
        public.check()?;
        Ok(public)
    }

    /// Checks both keys: the Ed25519 key decodes to a point of the full group, and the X25519 key contributes to a
    /// shared secret.
    pub fn check(&self) -> Result<(), CustodyError> {
        let signing = VerifyingKey::from_bytes(&self.signing)
            .map_err(|_| CustodyError::Envelope("the signing key is not an Ed25519 key"))?;
        if signing.is_weak() {
            return Err(CustodyError::Envelope("the signing key is of small order"));
        }
        // Every clamped X25519 scalar is a multiple of the cofactor, so a small-order key yields the all-zero
        // secret for any scalar: one trial exchange tells.
        let probe = EphemeralSecret::random_from_rng(OsRng);
        if !probe.diffie_hellman(&PublicKey::from(self.exchange)).was_contributory() {
            return Err(CustodyError::Envelope("the exchange key is of small order"));
        }
        Ok(())
    }
}

fn framed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes a message signature covers: a domain, then the context, round, sender, recipient (or broadcast) and
/// SHA-256 of the payload, each length-prefixed or of fixed size, so that no two messages encode alike.
fn signed_bytes(context: &[u8], round: &str, from: u16, to: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(MESSAGE_DOMAIN.len() + context.len() + round.len() + 64);
    framed(&mut m, MESSAGE_DOMAIN);
    framed(&mut m, context);
    framed(&mut m, round.as_bytes());
    m.extend_from_slice(&from.to_be_bytes());
    match to {
        None => m.push(0),
        Some(to) => {
            m.push(1);
            m.extend_from_slice(&to.to_be_bytes());
        }
    }
    m.extend_from_slice(&Sha256::digest(payload));
    m
}

/// Signs a ceremony message: `context` names the ceremony (its id), `round` the step, `from` and `to` the
/// participants' identifiers (`None` for a broadcast), `payload` the message as sent (sealed, if private).
pub fn sign_message(
    identity: &Identity,
    context: &[u8],
    round: &str,
    from: u16,
    to: Option<u16>,
    payload: &[u8],
) -> [u8; 64] {
    identity.signing.sign(&signed_bytes(context, round, from, to, payload)).to_bytes()
}

/// Whether `signature` is the signature of the Ed25519 key `public` on exactly this message ([`sign_message`]).
pub fn verify_message(
    public: &[u8; 32],
    context: &[u8],
    round: &str,
    from: u16,
    to: Option<u16>,
    payload: &[u8],
    signature: &[u8; 64],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    key.verify_strict(&signed_bytes(context, round, from, to, payload), &Signature::from_bytes(signature)).is_ok()
}

fn envelope_key(
    shared: &[u8; 32],
    context: &[u8],
    ephemeral: &[u8; 32],
    recipient: &PublicIdentity,
    sender: &PublicIdentity,
) -> Result<Zeroizing<[u8; KEY_LEN]>, CustodyError> {
    let mut info = ENVELOPE_INFO.to_vec();
    framed(&mut info, context);
    info.extend_from_slice(ephemeral);
    info.extend_from_slice(&recipient.exchange);
    info.extend_from_slice(&sender.signing);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Hkdf::<Sha256>::new(None, shared)
        .expand(&info, key.as_mut())
        .map_err(|_| CustodyError::Envelope("key derivation failed"))?;
    Ok(key)
}

fn associated_data(context: &[u8], recipient: &PublicIdentity, sender: &PublicIdentity) -> Vec<u8> {
    let mut aad = AAD_DOMAIN.to_vec();
    framed(&mut aad, context);
    aad.extend_from_slice(&sender.signing);
    aad.extend_from_slice(&recipient.exchange);
    aad
}

/// Encrypts `plaintext` to `recipient`, from `sender`, for `context` (the ceremony and round, say). Refuses a
/// recipient whose exchange key is of small order. The caller signs the result with [`sign_message`].
pub fn seal_to(
    recipient: &PublicIdentity,
    sender: &Identity,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CustodyError> {
    let ephemeral = EphemeralSecret::random_from_rng(OsRng);
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(recipient.exchange));
    if !shared.was_contributory() {
        return Err(CustodyError::Envelope("the recipient's exchange key is of small order"));
    }
    let sender = sender.public();
    let key = envelope_key(shared.as_bytes(), context, &ephemeral_public, recipient, &sender)?;
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let aad = associated_data(context, recipient, &sender);
    let ciphertext = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_slice()))
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
        .map_err(|_| CustodyError::Envelope("encryption failed"))?;
    let mut out = Vec::with_capacity(32 + NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&ephemeral_public);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens what `sender` sealed to `recipient` for `context` ([`seal_to`]). Any difference (another recipient,
/// sender or context, a changed byte) fails, without saying which.
pub fn open_from(
    recipient: &Identity,
    sender: &PublicIdentity,
    context: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
    const UNOPENED: CustodyError = CustodyError::Envelope("the message does not open");
    if ciphertext.len() < 32 + NONCE_LEN + TAG_LEN {
        return Err(UNOPENED);
    }
    let (ephemeral_public, rest) = ciphertext.split_at(32);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let ephemeral_public: [u8; 32] = ephemeral_public.try_into().map_err(|_| UNOPENED)?;
    let shared = recipient.exchange.diffie_hellman(&PublicKey::from(ephemeral_public));
    if !shared.was_contributory() {
        return Err(UNOPENED);
    }
    let me = recipient.public();
    let key = envelope_key(shared.as_bytes(), context, &ephemeral_public, &me, sender)?;
    let aad = associated_data(context, &me, sender);
    XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_slice()))
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| UNOPENED)
}
