//! Secrets at rest, after HashiCorp Vault's seal.
//!
//! A 256-bit root key exists only in memory. At initialisation it is split into unseal shares (Shamir over GF(256),
//! by the audited `vsss-rs` crate), handed to different custodians and never stored. Everything else is wrapped by it:
//! versioned data-encryption keys (XChaCha20-Poly1305 for records, with the record's identity as associated data), a
//! key for blind indexes and keyed hashes (HMAC-SHA256), and the Ed25519 key that signs audit checkpoints. Until
//! enough shares arrive the service is sealed and nothing that needs a secret can run.
//!
//! No type here prints a secret in its `Debug` output, and secret bytes are zeroed when dropped.

mod keyring;
mod shamir;

pub use keyring::{KeyPurpose, Keyring, RootKey, WrappedKey};
pub use shamir::{SealConfig, UnsealProgress, UnsealShare, Unsealer, initialise};

/// Why a cryptographic operation failed. Messages never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The share count or threshold is impossible.
    #[error("invalid sharing: {0}")]
    InvalidSharing(String),
    /// A share is not in the `rampart-share-v1:…` format.
    #[error("malformed unseal share: {0}")]
    MalformedShare(&'static str),
    /// A share's checksum does not match: it was mistyped or damaged.
    #[error("unseal share {index} is damaged or mistyped (checksum mismatch)")]
    ShareChecksum {
        /// The share's index as written.
        index: u8,
    },
    /// A share was made by another `rampart init`.
    #[error("unseal share {index} belongs to another initialisation")]
    WrongInitialisation {
        /// The share's index.
        index: u8,
    },
    /// The same share was submitted twice.
    #[error("unseal share {index} was already submitted")]
    DuplicateShare {
        /// The share's index.
        index: u8,
    },
    /// Enough shares arrived but they do not reconstruct the root key; the progress was reset.
    #[error("the shares do not reconstruct the root key; unsealing starts over")]
    SharesDoNotReconstruct,
    /// The service is already unsealed.
    #[error("already unsealed")]
    AlreadyUnsealed,
    /// A wrapped key or ciphertext does not decrypt: the wrong key, the wrong record, or tampering.
    #[error("decryption failed: {0}")]
    Decrypt(&'static str),
    /// A ciphertext names a key version the keyring does not hold.
    #[error("unknown key version {0}")]
    UnknownKeyVersion(u32),
    /// The keyring's stored keys are incomplete.
    #[error("missing key: {0}")]
    MissingKey(&'static str),
}
