//! One-time backup codes: the way back into an account when the second-factor device is lost.
//!
//! A customer receives [`BACKUP_CODES`] codes once, to print or store in a password manager. Each code has 80 random
//! bits, written as 16 characters of Crockford's base32 alphabet (`0-9a-z` without `i`, `l`, `o`, `u`) in four groups
//! of four, such as `k7m2-9xqp-ab3d-wx9z`. The alphabet has no look-alike pairs, and when typing one back the common
//! mistakes are forgiven: case, spaces and dashes are ignored, `i` and `l` read as `1`, and `o` as `0`.
//!
//! The server keeps only SHA-256 hashes of the normalised codes. A fast hash is acceptable here, and only here,
//! because each code has 80 bits of entropy: even with the hashes in hand, an offline search would need about 2^79
//! SHA-256 evaluations per code, which no attacker can afford. A human-chosen secret would need Argon2id instead.
//! Online guessing is bounded by the sign-in rate limits, and each code is struck off once used.

use std::fmt;

use rand_core::{OsRng, RngCore};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

/// How many backup codes a customer receives at once: the usual number (GitHub, Google), enough to last through
/// several lost devices.
pub const BACKUP_CODES: usize = 10;

/// Crockford's base32 alphabet in lowercase: digits and letters without `i`, `l`, `o` (mistaken for `1` and `0`) and
/// `u`. Its 32 symbols carry exactly 5 bits each.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Random bytes per code: 80 bits, exactly 16 base32 characters.
const CODE_BYTES: usize = 10;
/// Characters per normalised code.
const CODE_CHARS: usize = 16;
/// Characters per group in the displayed form.
const GROUP_CHARS: usize = 4;
/// The longest input [`normalise_backup_code`] looks at. Generous for separators and spaces, and it bounds the work
/// an untrusted input can cause.
const INPUT_LEN_MAX: usize = 64;

/// A fresh set of backup codes: the codes themselves, to show the customer once, and their hashes, to store. Never
/// printed by `Debug`.
pub struct BackupCodes {
    codes: Vec<SecretString>,
    hashes: Vec<[u8; 32]>,
}

impl fmt::Debug for BackupCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupCodes(<redacted>)")
    }
}

impl BackupCodes {
    /// [`BACKUP_CODES`] new random codes from the operating system's generator, with their hashes.
    pub fn generate() -> BackupCodes {
        let mut codes = Vec::with_capacity(BACKUP_CODES);
        let mut hashes = Vec::with_capacity(BACKUP_CODES);
        for _ in 0..BACKUP_CODES {
            let mut bytes = Zeroizing::new([0u8; CODE_BYTES]);
            OsRng.fill_bytes(bytes.as_mut());
            let normalised = encode(&bytes);
            hashes.push(hash_backup_code(&normalised));
            codes.push(SecretString::from(group(&normalised)));
        }
        BackupCodes { codes, hashes }
    }

    /// The codes in their displayed form (`k7m2-9xqp-ab3d-wx9z`), to show the customer once.
    pub fn codes(&self) -> &[SecretString] {
        &self.codes
    }

    /// The SHA-256 hashes of the normalised codes, in the same order as [`BackupCodes::codes`]: what the database
    /// keeps.
    pub fn hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }
}

/// Encodes 80 bits as 16 base32 characters, five bits at a time from the most significant.
fn encode(bytes: &[u8; CODE_BYTES]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(CODE_CHARS));
    let mut buffer: u16 = 0;
    let mut bits: u32 = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            text.push(char::from(ALPHABET[usize::from((buffer >> bits) & 0x1f)]));
        }
    }
    // The buffer held code bits; clear it rather than leave them on the stack.
    buffer.zeroize();
    text
}

/// `abcdefghjkmnpqrs` → `abcd-efgh-jkmn-pqrs`.
fn group(normalised: &str) -> String {
    let mut text = String::with_capacity(CODE_CHARS + CODE_CHARS / GROUP_CHARS);
    for (index, c) in normalised.chars().enumerate() {
        if index > 0 && index % GROUP_CHARS == 0 {
            text.push('-');
        }
        text.push(c);
    }
    text
}

/// Turns what a customer typed into the canonical 16-character form that is hashed, or `None` if it cannot be a
/// backup code. Case, ASCII whitespace and dashes are ignored; `i` and `l` are read as `1` and `o` as `0`, the
/// mistakes Crockford's alphabet is designed to forgive. Any other character outside the alphabet (including `u`),
/// or a length other than 16 characters after normalisation, gives `None`. Inputs longer than 64 bytes are refused
/// without being examined.
pub fn normalise_backup_code(input: &str) -> Option<String> {
    if input.len() > INPUT_LEN_MAX {
        return None;
    }
    let mut normalised = String::with_capacity(CODE_CHARS);
    for c in input.chars() {
        let c = match c.to_ascii_lowercase() {
            c if c.is_ascii_whitespace() || c == '-' => continue,
            'i' | 'l' => '1',
            'o' => '0',
            c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
            _ => return None,
        };
        if normalised.len() == CODE_CHARS {
            return None;
        }
        normalised.push(c);
    }
    (normalised.len() == CODE_CHARS).then_some(normalised)
}

/// The stored form of a normalised backup code: its SHA-256. See the module documentation for why a fast hash is
/// sound here. Pass the output of [`normalise_backup_code`], never raw input, or codes typed differently would hash
/// differently.
pub fn hash_backup_code(normalised: &str) -> [u8; 32] {
    Sha256::digest(normalised.as_bytes()).into()
}

/// Which stored hash, if any, the typed `input` matches. Every hash is compared, in constant time, so the time taken
/// says nothing about which code matched or how many remain. The caller strikes the matched code off in the same
/// transaction that accepts it, so each code works once.
pub fn find_backup_code(input: &str, stored: &[[u8; 32]]) -> Option<usize> {
    let normalised = Zeroizing::new(normalise_backup_code(input)?);
    let hash = hash_backup_code(&normalised);
    let mut found = subtle::Choice::from(0);
    let mut index: u64 = 0;
    for (candidate_index, candidate) in (0u64..).zip(stored) {
        let matches = candidate.ct_eq(&hash);
        index.conditional_assign(&candidate_index, matches & !found);
        found |= matches;
    }
    bool::from(found).then(|| usize::try_from(index).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn codes_are_ten_groups_of_base32_with_eighty_bits() {
        let set = BackupCodes::generate();
        assert_eq!(set.codes().len(), BACKUP_CODES);
        assert_eq!(set.hashes().len(), BACKUP_CODES);
        let mut seen = HashSet::new();
        for (code, hash) in set.codes().iter().zip(set.hashes()) {
            let code = code.expose_secret();
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 4, "{code}");
            assert!(groups.iter().all(|group| group.len() == 4 && group.bytes().all(|b| ALPHABET.contains(&b))));
            let normalised = normalise_backup_code(code).unwrap();
            assert_eq!(normalised, code.replace('-', ""));
            assert_eq!(&hash_backup_code(&normalised), hash);
            assert!(seen.insert(normalised));
        }
        // 16 symbols of a 32-symbol alphabet are 80 bits.
        assert_eq!(CODE_CHARS * 5, 80);
        assert_eq!(CODE_BYTES * 8, 80);
    }

    #[test]
    fn encoding_is_big_endian_base32() {
        assert_eq!(*encode(&[0; CODE_BYTES]), "0000000000000000");
        assert_eq!(*encode(&[0xff; CODE_BYTES]), "zzzzzzzzzzzzzzzz");
        // 0x08 = 00001 000..., so the first symbol is 1 and the rest are 0.
        assert_eq!(*encode(&[0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "1000000000000000");
        assert_eq!(*encode(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1f]), "000000000000000z");
        assert_eq!(group("abcdefghjkmnpqrs"), "abcd-efgh-jkmn-pqrs");
    }

    #[test]
    fn normalisation_forgives_case_separators_and_look_alikes() {
        let canonical = Some("k7m29xqpab3dwx91".to_string());
        for typed in [
            "k7m2-9xqp-ab3d-wx91",
            "K7M2-9XQP-AB3D-WX91",
            "k7m2 9xqp ab3d wx91",
            "k7m29xqpab3dwx91",
            "  k7m2--9xqp\tab3d-wx9l ",
            "k7m2-9xqp-ab3d-wx9I",
        ] {
            assert_eq!(normalise_backup_code(typed), canonical, "{typed:?}");
        }
        assert_eq!(normalise_backup_code("oooo-0000-OOOO-0000").as_deref(), Some("0000000000000000"));
    }

    #[test]
    fn normalisation_refuses_wrong_lengths_and_characters() {
        for typed in [
            "",
            "k7m2-9xqp-ab3d-wx9",
            "k7m2-9xqp-ab3d-wx911",
            "k7m2-9xqp-ab3d-wx9u",
            "k7m2-9xqp-ab3d-wx9!",
            "k7m2_9xqp_ab3d_wx91",
            "k7m2-9xqp-ab3d-wx9é",
            "k7m2-9xqp-ab3d-wx9１",
            "k7m2-9xqp-ab3d-wx9\u{0}",
        ] {
            assert_eq!(normalise_backup_code(typed), None, "{typed:?}");
        }
        let padded = format!("{}k7m2-9xqp-ab3d-wx91", " ".repeat(60));
        assert_eq!(normalise_backup_code(&padded), None, "overlong input is refused unread");
    }

    #[test]
    fn a_typed_code_finds_its_hash_and_nothing_else_does() {
        let set = BackupCodes::generate();
        let third = set.codes()[2].expose_secret().to_uppercase().replace('-', " ");
        assert_eq!(find_backup_code(&third, set.hashes()), Some(2));
        let last = set.codes()[BACKUP_CODES - 1].expose_secret().to_string();
        assert_eq!(find_backup_code(&last, set.hashes()), Some(BACKUP_CODES - 1));
        assert_eq!(find_backup_code(&last, &set.hashes()[..BACKUP_CODES - 1]), None, "a struck-off code fails");
        assert_eq!(find_backup_code("0000-0000-0000-0000", set.hashes()), None);
        assert_eq!(find_backup_code("not a code", set.hashes()), None);
        assert_eq!(find_backup_code(&last, &[]), None);
        let other = BackupCodes::generate();
        assert_eq!(find_backup_code(&last, other.hashes()), None);
    }

    #[test]
    fn codes_never_appear_in_debug_output() {
        let set = BackupCodes::generate();
        let debug = format!("{set:?}");
        assert_eq!(debug, "BackupCodes(<redacted>)");
        for code in set.codes() {
            assert!(!debug.contains(code.expose_secret()));
            assert!(!format!("{code:?}").contains(code.expose_secret()));
        }
    }
}
