//! The key hierarchy under the root key: versioned data keys, the blind-index key and the audit signing key.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, OsRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::CryptoError;

/// Bytes of an XChaCha20-Poly1305 nonce: random nonces of this size never collide in practice.
const NONCE_LEN: usize = 24;
/// The first bytes of every record ciphertext: a magic byte and the format version.
const CIPHERTEXT_MAGIC: [u8; 2] = [b'R', 1];
const CIPHERTEXT_HEADER_LEN: usize = CIPHERTEXT_MAGIC.len() + 4 + NONCE_LEN;

/// The root key: it exists only in memory, reconstructed from unseal shares, and wraps every other key.
pub struct RootKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

impl RootKey {
    pub(crate) fn generate(rng: &mut (impl RngCore + CryptoRng)) -> RootKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        RootKey(key)
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<RootKey> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(RootKey(Zeroizing::new(array)))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What a wrapped key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPurpose {
    /// Encrypts records (personal data, TOTP secrets, API-key secrets); rotatable.
    Data,
    /// Keys blind indexes and the keyed hashes of sensitive audit fields.
    BlindIndex,
    /// The Ed25519 key that signs audit checkpoints.
    AuditSigning,
}

impl KeyPurpose {
    /// A stable name, for storage.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Data => "data",
            KeyPurpose::BlindIndex => "blind_index",
            KeyPurpose::AuditSigning => "audit_signing",
        }
    }

    /// The purpose named `s`.
    pub fn parse(s: &str) -> Option<KeyPurpose> {
        Some(match s {
            "data" => KeyPurpose::Data,
            "blind_index" => KeyPurpose::BlindIndex,
            "audit_signing" => KeyPurpose::AuditSigning,
            _ => return None,
        })
    }
}

/// A key encrypted under the root key, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// What it is for.
    pub purpose: KeyPurpose,
    /// Its version (data keys rotate; the others stay at 1).
    pub version: u32,
    /// The nonce, then the AEAD ciphertext of the key.
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} v{})", self.purpose.as_str(), self.version)
    }
}

fn wrap_aad(init_id: &[u8; 16], purpose: KeyPurpose, version: u32) -> Vec<u8> {
    [b"rampart-key-v1\0".as_slice(), init_id, purpose.as_str().as_bytes(), &version.to_be_bytes()].concat()
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    key
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

fn wrap(root: &RootKey, init_id: &[u8; 16], purpose: KeyPurpose, version: u32, key: &[u8; 32]) -> WrappedKey {
    let nonce = random_nonce();
    let aad = wrap_aad(init_id, purpose, version);
    let sealed = XChaCha20Poly1305::new(root.expose().into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: key, aad: &aad })
        .expect("encrypting a key cannot fail");
    WrappedKey { purpose, version, wrapped: [nonce.as_slice(), &sealed].concat() }
}

fn unwrap(root: &RootKey, init_id: &[u8; 16], key: &WrappedKey) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    if key.wrapped.len() < NONCE_LEN {
        return Err(CryptoError::Decrypt("wrapped key too short"));
    }
    let (nonce, sealed) = key.wrapped.split_at(NONCE_LEN);
    let aad = wrap_aad(init_id, key.purpose, key.version);
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new(root.expose().into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
            .map_err(|_| CryptoError::Decrypt("a wrapped key does not open with this root key"))?,
    );
    let array: [u8; 32] = plain.as_slice().try_into().map_err(|_| CryptoError::Decrypt("wrapped key of wrong size"))?;
    Ok(Zeroizing::new(array))
}

/// Every key the service uses, unwrapped in memory once the seal is open.
pub struct Keyring {
    init_id: [u8; 16],
    root: RootKey,
    data: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    blind: Zeroizing<[u8; 32]>,
    signing: SigningKey,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("init_id", &hex::encode(self.init_id))
            .field("data_key_versions", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A new keyring under `root`: data key version 1, a blind-index key and a signing key, with their wrapped forms
    /// for storage.
    pub fn create(root: RootKey, init_id: [u8; 16]) -> (Keyring, Vec<WrappedKey>) {
        let data = random_key();
        let blind = random_key();
        let signing = random_key();
        let wrapped = vec![
            wrap(&root, &init_id, KeyPurpose::Data, 1, &data),
            wrap(&root, &init_id, KeyPurpose::BlindIndex, 1, &blind),
            wrap(&root, &init_id, KeyPurpose::AuditSigning, 1, &signing),
        ];
        let keyring = Keyring {
            init_id,
            root,
            data: BTreeMap::from([(1, data)]),
            blind,
            signing: SigningKey::from_bytes(&signing),
        };
        (keyring, wrapped)
    }

    /// Opens the stored keys with `root`.
    pub fn open(root: RootKey, init_id: [u8; 16], stored: &[WrappedKey]) -> Result<Keyring, CryptoError> {
        let mut data = BTreeMap::new();
        let mut blind = None;
        let mut signing = None;
        for key in stored {
            let plain = unwrap(&root, &init_id, key)?;
            match key.purpose {
                KeyPurpose::Data => {
                    data.insert(key.version, plain);
                }
                KeyPurpose::BlindIndex => blind = Some(plain),
                KeyPurpose::AuditSigning => signing = Some(SigningKey::from_bytes(&plain)),
            }
        }
        if data.is_empty() {
            return Err(CryptoError::MissingKey("no data key"));
        }
        Ok(Keyring {
            init_id,
            root,
            data,
            blind: blind.ok_or(CryptoError::MissingKey("no blind-index key"))?,
            signing: signing.ok_or(CryptoError::MissingKey("no audit signing key"))?,
        })
    }

    /// The version new ciphertexts use.
    pub fn current_version(&self) -> u32 {
        *self.data.keys().next_back().expect("a keyring holds a data key")
    }

    /// A copy of this keyring with a new data-key version (which new writes use), and that key wrapped for storage.
    /// The running service swaps the copy in, so requests holding the old keyring finish undisturbed.
    pub fn rotated(&self) -> (Keyring, WrappedKey) {
        let mut next = Keyring {
            init_id: self.init_id,
            root: RootKey(self.root.0.clone()),
            data: self.data.clone(),
            blind: self.blind.clone(),
            signing: self.signing.clone(),
        };
        let wrapped = next.rotate();
        (next, wrapped)
    }

    /// A copy of this keyring that also holds any data-key versions among `stored` that it lacks (rotated by another
    /// node), unwrapped with the root key it already holds.
    pub fn refreshed(&self, stored: &[WrappedKey]) -> Result<Keyring, CryptoError> {
        let mut data = self.data.clone();
        for key in stored.iter().filter(|k| k.purpose == KeyPurpose::Data && !self.data.contains_key(&k.version)) {
            data.insert(key.version, unwrap(&self.root, &self.init_id, key)?);
        }
        Ok(Keyring {
            init_id: self.init_id,
            root: RootKey(self.root.0.clone()),
            data,
            blind: self.blind.clone(),
            signing: self.signing.clone(),
        })
    }

    /// Adds a new data-key version, which new writes use from now on; returns it wrapped, for storage.
    pub fn rotate(&mut self) -> WrappedKey {
        let version = self.current_version() + 1;
        let key = random_key();
        let wrapped = wrap(&self.root, &self.init_id, KeyPurpose::Data, version, &key);
        self.data.insert(version, key);
        wrapped
    }

    fn record_aad(version: u32, aad: &[u8]) -> Vec<u8> {
        [b"rampart-record-v1\0".as_slice(), &version.to_be_bytes(), aad].concat()
    }

    /// Encrypts `plaintext` for the record named by `aad` (for example `staff:42:totp_secret`) with the current data
    /// key. The ciphertext names its key version; it decrypts only with the same `aad`, so a ciphertext moved to
    /// another row fails.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let version = self.current_version();
        let key = &self.data[&version];
        let nonce = random_nonce();
        let sealed = XChaCha20Poly1305::new(key.as_ref().into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &Self::record_aad(version, aad) })
            .expect("encrypting a record cannot fail");
        [CIPHERTEXT_MAGIC.as_slice(), &version.to_be_bytes(), &nonce, &sealed].concat()
    }

    /// The key version a ciphertext was made with.
    pub fn ciphertext_version(ciphertext: &[u8]) -> Result<u32, CryptoError> {
        if ciphertext.len() < CIPHERTEXT_HEADER_LEN || ciphertext[..2] != CIPHERTEXT_MAGIC {
            return Err(CryptoError::Decrypt("not a rampart ciphertext"));
        }
        Ok(u32::from_be_bytes(ciphertext[2..6].try_into().expect("four bytes")))
    }

    /// Decrypts a ciphertext of the record named by `aad`.
    pub fn decrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let version = Self::ciphertext_version(ciphertext)?;
        let key = self.data.get(&version).ok_or(CryptoError::UnknownKeyVersion(version))?;
        let nonce = &ciphertext[6..CIPHERTEXT_HEADER_LEN];
        let sealed = &ciphertext[CIPHERTEXT_HEADER_LEN..];
        XChaCha20Poly1305::new(key.as_ref().into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &Self::record_aad(version, aad) })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt("the ciphertext does not open for this record"))
    }

    /// Re-encrypts a ciphertext under the current data key, without the plaintext leaving this process.
    pub fn rewrap(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let plain = self.decrypt(ciphertext, aad)?;
        Ok(self.encrypt(&plain, aad))
    }

    /// A keyed hash of `value` for equality lookups on an encrypted field (a blind index) or for hiding a sensitive
    /// value in the audit log while keeping it comparable. `domain` separates uses, so the index of an email can
    /// never be matched against the index of a phone number.
    pub fn blind_index(&self, domain: &str, value: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.blind.as_ref()).expect("HMAC takes any key size");
        mac.update(&(domain.len() as u64).to_be_bytes());
        mac.update(domain.as_bytes());
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// Signs `message` with the audit signing key (Ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The public half of the audit signing key.
    pub fn verifying_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }
}
