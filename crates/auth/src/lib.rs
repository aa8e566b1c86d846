//! Proving who someone is. Today: staff passwords (Argon2id), TOTP second factors (RFC 6238, each time step accepted
//! at most once), one-time enrolment codes and opaque session tokens stored only as hashes. Customer identity
//! (passkeys, devices, lockout) grows here with the identity issue.
//!
//! Pure except for randomness from the operating system; the time is always an argument.

pub mod backup;
pub mod policy;
pub mod qr;
pub mod signature;

pub use backup::{BACKUP_CODES, BackupCodes, find_backup_code, hash_backup_code, normalise_backup_code};
pub use policy::{PASSWORD_SCORE_MIN, PasswordRejection, check_password};
pub use qr::{QR_DATA_LEN_MAX, qr_svg, try_qr_svg};
pub use signature::{
    ALLOW_LIST_ENTRIES_MAX, API_KEY_HEADER, ApiKeyId, ApiKeySecret, IpNet, SIGNATURE_HEADER,
    SIGNATURE_WINDOW_MS_DEFAULT, SIGNATURE_WINDOW_MS_MAX, SignatureError, SignedRequestHeaders, TIMESTAMP_HEADER,
    ip_allowed, parse_allow_list, parse_signed_headers, sign, sign_hex, verify,
};

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::TOTP;
use zeroize::Zeroizing;

/// Argon2id memory cost in KiB: the OWASP/ASVS floor (19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes: the OWASP/ASVS floor.
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id lanes: the OWASP/ASVS floor.
pub const ARGON2_LANES: u32 = 1;
/// The shortest password accepted.
pub const PASSWORD_LEN_MIN: usize = 12;
/// The longest password accepted, in characters (Argon2 takes any length; this bounds the work a request can ask for
/// and matches the customer password policy of 12 to 128 characters).
pub const PASSWORD_LEN_MAX: usize = 128;
/// Seconds per TOTP time step.
pub const TOTP_STEP_S: u64 = 30;
/// TOTP steps accepted either side of now, for clock drift.
pub const TOTP_SKEW_STEPS: u64 = 1;

/// Why an authentication operation failed. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A password outside the length bounds.
    #[error("a password must be {PASSWORD_LEN_MIN} to {PASSWORD_LEN_MAX} characters")]
    PasswordLength,
    /// A stored hash that does not parse: corruption.
    #[error("stored password hash is malformed")]
    MalformedHash,
    /// A TOTP secret of the wrong size.
    #[error("invalid TOTP secret")]
    InvalidTotpSecret,
}

fn argon2() -> Argon2<'static> {
    let params =
        Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with Argon2id (PHC string format, salt included).
pub fn hash_password(password: &SecretString) -> Result<String, AuthError> {
    let len = password.expose_secret().chars().count();
    if !(PASSWORD_LEN_MIN..=PASSWORD_LEN_MAX).contains(&len) {
        return Err(AuthError::PasswordLength);
    }
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map_err(|_| AuthError::MalformedHash)?
        .to_string())
}

/// Whether `name` is an acceptable staff username: 3 to 64 ASCII letters, digits, `.`, `_` or `-`.
pub fn valid_username(name: &str) -> bool {
    (3..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Computes the dummy hash used for unknown accounts now, so that the first refusal of an unknown account does not
/// take twice as long as the others (which would tell that the account does not exist).
pub fn warm_up() {
    dummy_hash();
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&SecretString::from("dummy password for timing")).expect("the dummy password is valid")
    })
}

/// Whether `password` matches `stored`. With `stored = None` (an unknown account) it still spends the time of a
/// real check against a dummy hash, so that a refusal does not reveal whether the account exists.
pub fn verify_password(password: &SecretString, stored: Option<&str>) -> bool {
    let (hash, real) = match stored {
        Some(h) => (h, true),
        None => (dummy_hash(), false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let bytes = password.expose_secret().as_bytes();
    if bytes.len() > PASSWORD_LEN_MAX * 4 {
        return false;
    }
    argon2().verify_password(bytes, &parsed).is_ok() && real
}

/// A TOTP shared secret (20 random bytes, as RFC 4226 recommends). Never printed by `Debug`.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A new random secret.
    pub fn generate() -> TotpSecret {
        let mut bytes = Zeroizing::new(vec![0u8; 20]);
        OsRng.fill_bytes(&mut bytes);
        TotpSecret(bytes)
    }

    /// A secret from its raw bytes (decrypted from storage).
    pub fn from_bytes(bytes: &[u8]) -> Result<TotpSecret, AuthError> {
        if bytes.len() < 16 {
            return Err(AuthError::InvalidTotpSecret);
        }
        Ok(TotpSecret(Zeroizing::new(bytes.to_vec())))
    }

    /// The raw bytes, for encrypting into storage.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    fn totp(&self, account: &str) -> TOTP {
        TOTP::new(totp_rs::Algorithm::SHA1, 6, 0, TOTP_STEP_S, self.0.to_vec(), Some("Rampart".into()), account.into())
            .expect("a 20-byte secret and a plain label are valid")
    }

    /// The `otpauth://` URI an authenticator app imports (usually as a QR code). Secret: show it once.
    pub fn provisioning_uri(&self, account: &str) -> Zeroizing<String> {
        Zeroizing::new(self.totp(&account.replace(':', "_")).get_url())
    }

    /// The base32 secret, for typing into an authenticator app by hand. Secret: show it once.
    pub fn base32(&self) -> Zeroizing<String> {
        Zeroizing::new(self.totp("x").get_secret_base32())
    }

    /// The code for the time step containing `unix_s` (for tests and the demo).
    pub fn code_at(&self, unix_s: u64) -> String {
        self.totp("x").generate(unix_s)
    }

    /// The time step a code belongs to, if it is valid within the allowed drift of `unix_s`. The caller must also
    /// check that the step is later than the last one accepted for the account, so that each step is used once.
    pub fn verify(&self, code: &str, unix_s: u64) -> Option<u64> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let totp = self.totp("x");
        let now_step = unix_s / TOTP_STEP_S;
        let mut matched = None;
        // Every candidate is compared, in constant time, so timing does not reveal which step matched.
        for step in now_step.saturating_sub(TOTP_SKEW_STEPS)..=now_step + TOTP_SKEW_STEPS {
            let expected = totp.generate(step * TOTP_STEP_S);
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                matched = Some(step);
            }
        }
        matched
    }
}

/// A random bearer secret (a session token or an enrolment code) and the hash under which it is stored.
pub struct BearerSecret {
    /// The secret, shown once to its owner.
    pub secret: SecretString,
    /// SHA-256 of the secret: what the database keeps.
    pub hash: [u8; 32],
}

impl fmt::Debug for BearerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerSecret(<redacted>)")
    }
}

impl BearerSecret {
    /// A new secret of 32 random bytes, hex-encoded, with `prefix` (such as `rst_` for staff sessions) so that a
    /// leaked one is recognisable.
    pub fn generate(prefix: &str) -> BearerSecret {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        let secret = SecretString::from(format!("{prefix}{}", hex::encode(bytes.as_ref())));
        let hash = hash_bearer(secret.expose_secret());
        BearerSecret { secret, hash }
    }
}

/// The stored form of a bearer secret. A fast hash is right here: the secret has 256 bits of entropy, so nothing is
/// gained by slowing down a guess.
pub fn hash_bearer(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_at_the_floor_and_verify() {
        let password = SecretString::from("correct horse battery staple");
        let hash = hash_password(&password).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify_password(&password, Some(&hash)));
        assert!(!verify_password(&SecretString::from("correct horse battery stapler"), Some(&hash)));
        assert!(!verify_password(&password, None), "an unknown account never verifies");
        assert_eq!(hash_password(&SecretString::from("short")), Err(AuthError::PasswordLength));
    }

    #[test]
    fn totp_accepts_the_current_step_and_its_neighbours_only() {
        // RFC 6238 test secret (ASCII "12345678901234567890") and its published SHA-1 vector at T = 59 s.
        let secret = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        assert_eq!(secret.code_at(59), "287082");
        let now = 1_800_000_000;
        let code = secret.code_at(now);
        assert_eq!(secret.verify(&code, now), Some(now / TOTP_STEP_S));
        assert_eq!(secret.verify(&code, now + TOTP_STEP_S), Some(now / TOTP_STEP_S));
        assert_eq!(secret.verify(&code, now + 3 * TOTP_STEP_S), None);
        assert_eq!(secret.verify("12345", now), None);
        assert_eq!(secret.verify("abcdef", now), None);
        assert!(secret.provisioning_uri("staff:alice").starts_with("otpauth://totp/Rampart:staff_alice?"));
    }

    #[test]
    fn bearer_secrets_are_random_and_stored_as_hashes() {
        let a = BearerSecret::generate("rst_");
        let b = BearerSecret::generate("rst_");
        assert_ne!(a.hash, b.hash);
        assert!(a.secret.expose_secret().starts_with("rst_"));
        assert_eq!(hash_bearer(a.secret.expose_secret()), a.hash);
        assert!(!format!("{a:?}").contains(&a.secret.expose_secret()[4..]));
    }
}
