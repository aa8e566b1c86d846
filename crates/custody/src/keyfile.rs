//! A custodian's key file: their share of a threshold key (and their identity key) encrypted under a passphrase that
//! only they know, so that the file alone is worth nothing. Argon2id derives the key (memory-hard, at a cost well
//! above the sign-in floor, since a key file is opened rarely and guards far more), XChaCha20-Poly1305 encrypts, and
//! the header (format, cost, salt, nonce) is authenticated as associated data, so that no field can be changed
//! without the open failing.
//!
//! Layout: `RKF1` | m_kib (u32 BE) | t (u32 BE) | p (u32 BE) | salt (16) | nonce (24) | ciphertext.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::CustodyError;

const MAGIC: &[u8; 4] = b"RKF1";
const HEADER_LEN: usize = 4 + 12 + 16 + 24;
/// Argon2id memory cost of key files, in KiB (64 MiB).
pub const KEYFILE_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes of key files.
pub const KEYFILE_ITERATIONS: u32 = 3;
/// The shortest passphrase accepted for a key file.
pub const PASSPHRASE_LEN_MIN: usize = 12;
/// The largest Argon2id memory cost a file may ask for, in KiB, so that a crafted file cannot exhaust memory.
const MEMORY_KIB_MAX: u32 = 1024 * 1024;

fn key(passphrase: &[u8], salt: &[u8], m_kib: u32, t: u32, p: u32) -> Result<Zeroizing<[u8; 32]>, CustodyError> {
    if m_kib > MEMORY_KIB_MAX || t > 64 || p > 16 {
        return Err(CustodyError::KeyFile("the key file asks for an unreasonable cost"));
    }
    let params = Params::new(m_kib, t, p, Some(32)).map_err(|_| CustodyError::KeyFile("invalid cost parameters"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|_| CustodyError::KeyFile("key derivation failed"))?;
    Ok(out)
}

/// Encrypts `secret` under `passphrase` (at least [`PASSPHRASE_LEN_MIN`] characters).
pub fn seal(secret: &[u8], passphrase: &str) -> Result<Vec<u8>, CustodyError> {
    seal_with_cost(secret, passphrase, KEYFILE_MEMORY_KIB, KEYFILE_ITERATIONS)
}

/// [`seal`] at another cost (tests use a small one; the cost is recorded in the file).
pub fn seal_with_cost(secret: &[u8], passphrase: &str, m_kib: u32, t: u32) -> Result<Vec<u8>, CustodyError> {
    if passphrase.chars().count() < PASSPHRASE_LEN_MIN {
        return Err(CustodyError::KeyFile("a key file passphrase has at least 12 characters"));
    }
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&m_kib.to_be_bytes());
    header.extend_from_slice(&t.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);
    let key = key(passphrase.as_bytes(), &salt, m_kib, t, 1)?;
    let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_slice()));
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: &header })
        .map_err(|_| CustodyError::KeyFile("encryption failed"))?;
    header.extend_from_slice(&ciphertext);
    Ok(header)
}

/// Decrypts a key file. A wrong passphrase and a damaged file give the same answer.
pub fn open(file: &[u8], passphrase: &str) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
    if file.len() < HEADER_LEN + 16 || &file[..4] != MAGIC {
        return Err(CustodyError::KeyFile("not a Rampart key file"));
    }
    let word = |at: usize| u32::from_be_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    let (m_kib, t, p) = (word(4), word(8), word(12));
    let salt = &file[16..32];
    let nonce = &file[32..56];
    let key = key(passphrase.as_bytes(), salt, m_kib, t, p)?;
    let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_slice()));
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: &file[HEADER_LEN..], aad: &file[..HEADER_LEN] })
        .map(Zeroizing::new)
        .map_err(|_| CustodyError::KeyFile("wrong passphrase, or the file is damaged"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "correct horse battery staple";

    #[test]
    fn a_key_file_opens_with_its_passphrase_only_and_detects_any_change() {
        let file = seal_with_cost(b"the share", PASS, 256, 1).unwrap();
        assert_eq!(open(&file, PASS).unwrap().as_slice(), b"the share");
        assert!(open(&file, "correct horse battery stapler").is_err());
        for at in [5, 20, 40, HEADER_LEN + 1, file.len() - 1] {
            let mut damaged = file.clone();
            damaged[at] ^= 1;
            assert!(open(&damaged, PASS).is_err(), "a change at byte {at} is detected");
        }
        assert!(open(&file[..HEADER_LEN + 8], PASS).is_err());
        assert!(open(b"not a key file at all, just some bytes that are long enough....", PASS).is_err());
        assert!(seal(b"x", "too short").is_err());
        // Two seals of the same secret differ (fresh salt and nonce).
        assert_ne!(seal_with_cost(b"the share", PASS, 256, 1).unwrap(), file);
        // A crafted header asking for a huge memory cost is refused before any work.
        let mut greedy = file.clone();
        greedy[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            open(&greedy, PASS).err(),
            Some(CustodyError::KeyFile("the key file asks for an unreasonable cost"))
        );
    }

    #[test]
    fn the_default_cost_is_recorded_in_the_file() {
        let file = seal(b"s", PASS).unwrap();
        assert_eq!(&file[4..8], &KEYFILE_MEMORY_KIB.to_be_bytes());
        assert_eq!(&file[8..12], &KEYFILE_ITERATIONS.to_be_bytes());
        assert_eq!(open(&file, PASS).unwrap().as_slice(), b"s");
    }
}
