//! The password policy for customers: 12 to 128 characters, not a common or breached password, not built from the
//! customer's own email address or name, and not guessable according to zxcvbn's estimator.
//!
//! Everything here runs offline: the "common" lists are the frequency lists compiled into the `zxcvbn` crate (about
//! 30,000 leaked passwords plus English words, names and surnames, and film and television vocabulary), so checking a
//! password sends it nowhere. The rules follow NIST SP 800-63B §5.1.1.2: a length floor, a breach/dictionary check,
//! no context-specific words, and no composition rules (no "one digit, one symbol") because they do not help.

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;
use zxcvbn::matching::patterns::MatchPattern;
use zxcvbn::{Entropy, zxcvbn};

use crate::{PASSWORD_LEN_MAX, PASSWORD_LEN_MIN};

/// The lowest zxcvbn score (0 to 4) accepted. Score 3 means zxcvbn estimates at least 10^8 guesses, which zxcvbn's
/// authors call "safely unguessable" against an online attack and moderately resistant to an offline slow-hash one;
/// with Argon2id on the server side that is the usual floor.
pub const PASSWORD_SCORE_MIN: u8 = 3;

/// Passwords estimated to fall in fewer guesses than this are treated as common, not merely weak: a million guesses
/// is what a cracking dictionary with its standard mangling rules covers in its first pass, so a password below it is
/// effectively on the list even when zxcvbn assembles it from several pieces (`Password123!`).
const COMMON_GUESSES_MAX: u64 = 1_000_000;

/// The shortest stem (a password without its trailing digits and punctuation) that is looked up on its own. Shorter
/// stems match too many lists by accident and add nothing: such passwords are weak by score anyway.
const STEM_LEN_MIN: usize = 4;

/// The shortest piece of personal data (an email local part, a name) that a password may not contain. Shorter pieces
/// ("al", "bob") occur in too many unrelated passwords to refuse them.
const PERSONAL_INPUT_LEN_MIN: usize = 4;

/// Why a password was refused. The messages are written for the customer choosing the password, and none of them
/// ever contains the password or a part of it, so they are safe to log and to return over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRejection {
    /// Fewer characters than the floor: length is the single best predictor of strength.
    #[error("the password is too short: use at least {min} characters")]
    TooShort {
        /// The minimum number of characters (Unicode scalar values).
        min: usize,
    },
    /// More characters than the ceiling, which bounds the hashing work a single request can cause.
    #[error("the password is too long: use at most {max} characters")]
    TooLong {
        /// The maximum number of characters (Unicode scalar values).
        max: usize,
    },
    /// The password, or the password without its trailing digits and punctuation, is on a list of common or leaked
    /// passwords, which attackers try first.
    #[error("this password is too common: it appears in lists of passwords that attackers try first")]
    Common,
    /// The password is not on a list but is still too easy to guess.
    #[error("this password is too easy to guess{}", warning_suffix(.warning))]
    Weak {
        /// zxcvbn's score, 0 to 4, below [`PASSWORD_SCORE_MIN`].
        score: u8,
        /// zxcvbn's explanation for the customer ("Dates are often easy to guess."), if it has one. It is one of a
        /// fixed set of sentences and never quotes the password.
        warning: Option<String>,
    },
    /// The password contains the customer's email address, its local part, or their name: the first thing someone
    /// who knows the customer would try.
    #[error("the password must not contain your email address, username or name")]
    ContainsPersonalData,
}

impl PasswordRejection {
    /// A stable snake_case code for the HTTP error body, so that clients can branch on the reason without parsing
    /// the message.
    pub fn code(&self) -> &'static str {
        match self {
            PasswordRejection::TooShort { .. } => "password_too_short",
            PasswordRejection::TooLong { .. } => "password_too_long",
            PasswordRejection::Common => "password_common",
            PasswordRejection::Weak { .. } => "password_weak",
            PasswordRejection::ContainsPersonalData => "password_contains_personal_data",
        }
    }
}

fn warning_suffix(warning: &Option<String>) -> String {
    match warning {
        Some(text) => format!(": {text}"),
        None => String::from("."),
    }
}

/// Checks a new customer password against the policy, returning the first rule it breaks.
///
/// `user_inputs` are the customer's own details (email address, username, names). The rules, in the order checked:
///
/// 1. **Length**, counted in characters: [`PASSWORD_LEN_MIN`] to [`PASSWORD_LEN_MAX`].
/// 2. **Personal data**: the lowercased password may not contain, case-insensitively, any input of at least four
///    characters, nor the local part of an email address among them, nor any piece of four or more characters of
///    that local part or of a name (split on anything that is not a letter or digit: `jane.doe@x` gives `jane.doe`,
///    `jane` and `doe` is too short).
/// 3. **Common**: refused if any of these hold.
///    - zxcvbn estimates fewer than a million guesses for the password (see `COMMON_GUESSES_MAX`): such a
///      password is what a cracking dictionary and its standard rules produce first.
///    - zxcvbn explains the lowercased password *entirely* by one pattern: one entry of a frequency list (possibly
///      l33t-spelt or reversed), one keyboard walk, one repeat or one sequence. That is "it is on the list", however
///      long the entry.
///    - The same holds for the *stem*, the lowercased password without its trailing ASCII digits, punctuation and
///      spaces (`Password123!` → `password`), when the stem has at least four characters: appending digits and a
///      symbol to a listed password is the first rule every cracker applies.
///
///    A single pattern is required for the stem and whole-password rules, rather than any listed word inside the
///    password, because a passphrase of several listed words is exactly what we want people to choose.
/// 4. **Strength**: zxcvbn's score (with `user_inputs` as its personal dictionary) must be at least
///    [`PASSWORD_SCORE_MIN`].
///
/// zxcvbn looks at the first 100 characters only; a longer password is judged by them, which can only make it seem
/// weaker than it is.
pub fn check_password(password: &SecretString, user_inputs: &[&str]) -> Result<(), PasswordRejection> {
    let password = password.expose_secret();
    let len = password.chars().count();
    if len < PASSWORD_LEN_MIN {
        return Err(PasswordRejection::TooShort { min: PASSWORD_LEN_MIN });
    }
    if len > PASSWORD_LEN_MAX {
        return Err(PasswordRejection::TooLong { max: PASSWORD_LEN_MAX });
    }
    let lowered = Zeroizing::new(password.to_lowercase());
    if contains_personal_data(&lowered, user_inputs) {
        return Err(PasswordRejection::ContainsPersonalData);
    }
    let entropy = zxcvbn(password, user_inputs);
    if entropy.guesses() < COMMON_GUESSES_MAX || is_listed(&lowered) {
        return Err(PasswordRejection::Common);
    }
    let stem = lowered.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation() || c == ' ');
    if stem.len() < lowered.len() && stem.chars().count() >= STEM_LEN_MIN && is_listed(stem) {
        return Err(PasswordRejection::Common);
    }
    let score = u8::from(entropy.score());
    if score < PASSWORD_SCORE_MIN {
        let warning = entropy.feedback().and_then(|feedback| feedback.warning()).map(|warning| warning.to_string());
        return Err(PasswordRejection::Weak { score, warning });
    }
    Ok(())
}

/// Whether zxcvbn explains all of `candidate` with a single list entry, keyboard walk, repeat or sequence. It runs
/// without user inputs, so a dictionary match here is always one of the crate's frequency lists.
fn is_listed(candidate: &str) -> bool {
    single_pattern_covers(&zxcvbn(candidate, &[]), candidate.chars().count())
}

fn single_pattern_covers(entropy: &Entropy, len_chars: usize) -> bool {
    let [only] = entropy.sequence() else { return false };
    let covers = only.i == 0 && only.j.checked_add(1) == Some(len_chars);
    covers
        && matches!(
            only.pattern,
            MatchPattern::Dictionary(_)
                | MatchPattern::Spatial(_)
                | MatchPattern::Repeat(_)
                | MatchPattern::Sequence(_)
        )
}

/// Whether the lowercased password contains any sufficiently long piece of the user's own details.
fn contains_personal_data(lowered: &str, user_inputs: &[&str]) -> bool {
    user_inputs.iter().any(|input| {
        let input = input.trim().to_lowercase();
        let local = input.rsplit_once('@').map_or(input.as_str(), |(local, _domain)| local);
        let found = |piece: &str| piece.chars().count() >= PERSONAL_INPUT_LEN_MIN && lowered.contains(piece);
        found(&input) || found(local) || local.split(|c: char| !c.is_alphanumeric()).any(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(password: &str, inputs: &[&str]) -> Result<(), PasswordRejection> {
        check_password(&SecretString::from(password), inputs)
    }

    #[test]
    fn length_is_counted_in_characters_between_12_and_128() {
        // A strong random string, cut to each length, so that only the length rule can refuse it.
        let strong: String =
            "vT9#qLm2$Wx7!pRz4&Kd8^Hn3*Bf6(Gs1)Jc5_Yv0+Ue2=Ao9[Xi4]Lq7{Mw3}Nr8|Pt1;Ez6:Ck5<Dy0>Fh2?Sg9~Tb4".repeat(2);
        assert_eq!(check(&strong[..11], &[]), Err(PasswordRejection::TooShort { min: 12 }));
        assert_eq!(check(&strong[..12], &[]), Ok(()));
        assert_eq!(check(&strong[..128], &[]), Ok(()));
        assert_eq!(check(&strong[..129], &[]), Err(PasswordRejection::TooLong { max: 128 }));
        // Twelve two-byte characters are twelve characters, not twenty-four bytes.
        assert_eq!(check(&"é".repeat(11), &[]), Err(PasswordRejection::TooShort { min: 12 }));
        assert_eq!(check(&"ü".repeat(129), &[]), Err(PasswordRejection::TooLong { max: 128 }));
        assert_eq!(check("", &[]), Err(PasswordRejection::TooShort { min: 12 }));
    }

    #[test]
    fn the_length_bounds_agree_with_hash_password() {
        let longest = "aB3$".repeat(32);
        assert_eq!(longest.chars().count(), PASSWORD_LEN_MAX);
        assert!(crate::hash_password(&SecretString::from(longest.as_str())).is_ok());
        let too_long = format!("{longest}x");
        assert_eq!(crate::hash_password(&SecretString::from(too_long)), Err(crate::AuthError::PasswordLength));
    }

    #[test]
    fn listed_passwords_and_their_decorated_forms_are_common() {
        for password in [
            "password1234",
            "Password123!",
            "PASSWORD2024!!",
            "qwertyuiop12",
            "qwertyuiopasdfghjkl",
            "iloveyou123456",
            "123456789012",
            "aaaaaaaaaaaaaaaa",
            "abcabcabcabcabc",
            "abcdefghijklmnop",
            "p@ssw0rdp@ssw0rd",
            "Passw0rd2024!",
            "drowssapdrowssap",
            "trustno1trustno1",
            // zxcvbn scores these two 3, enough to pass on strength: only the stem rule catches them.
            "Dragonfly2024!",
            "baseball2023!!",
        ] {
            assert_eq!(check(password, &[]), Err(PasswordRejection::Common), "{password}");
        }
        // "password" itself fails on length first: the cheapest rule is reported.
        assert_eq!(check("password", &[]), Err(PasswordRejection::TooShort { min: 12 }));
    }

    #[test]
    fn guessable_but_unlisted_passwords_are_weak_with_feedback() {
        let Err(PasswordRejection::Weak { score, warning }) = check("johnsmith1987", &[]) else {
            panic!("expected a weak password");
        };
        assert!(score < PASSWORD_SCORE_MIN);
        let warning = warning.expect("zxcvbn explains names and dates");
        assert!(!warning.to_lowercase().contains("johnsmith"), "{warning}");
    }

    #[test]
    fn passphrases_of_several_words_and_random_strings_are_accepted() {
        // The xkcd passphrase is four listed words but not a single listed entry: zxcvbn rates it at the top, and
        // the offline lists do not contain it. (It is famous enough to be in online breach corpora; an online
        // breach check would be a separate rule.)
        assert_eq!(check("correct horse battery staple", &[]), Ok(()));
        assert_eq!(check("Mango-Quilt-Orbit-Velvet-19", &[]), Ok(()));
        assert_eq!(check("kV7!rT2#pX9q", &[]), Ok(()));
        assert_eq!(check("tangerine submarine whistles softly", &[]), Ok(()));
    }

    #[test]
    fn personal_data_is_refused_case_insensitively() {
        let email = "Jane.Doe-Trader@example.com";
        assert_eq!(check("xX-jane.doe-trader-Xx-91!", &[email]), Err(PasswordRejection::ContainsPersonalData));
        assert_eq!(check("Tr4der!JANE.DOE-TRADERq", &[email]), Err(PasswordRejection::ContainsPersonalData));
        // A piece of the local part of four characters or more is enough.
        assert_eq!(check("orbit TRADER velvet 77", &[email]), Err(PasswordRejection::ContainsPersonalData));
        // "doe" is too short to count on its own.
        assert_eq!(check("mango doe quilt orbit", &[email]), Ok(()));
        assert_eq!(check("silent rivers of ALICE run", &["alice"]), Err(PasswordRejection::ContainsPersonalData));
        // Inputs shorter than four characters are ignored.
        assert_eq!(check("mango bob quilt orbit", &["bob"]), Ok(()));
        assert_eq!(check("mango bob quilt orbit", &[]), Ok(()));
    }

    #[test]
    fn messages_never_contain_the_password() {
        for password in ["Password123!", "johnsmith1987", "x7q", "xX-jane.doe-trader-Xx-91!"] {
            let Err(rejection) = check(password, &["jane.doe-trader@example.com"]) else {
                panic!("{password} should be refused");
            };
            let message = rejection.to_string();
            assert!(!message.contains(password), "{message}");
            assert!(!rejection.code().is_empty());
        }
        assert_eq!(
            PasswordRejection::Weak { score: 1, warning: None }.to_string(),
            "this password is too easy to guess."
        );
        assert_eq!(
            PasswordRejection::Weak { score: 1, warning: Some("Dates are often easy to guess.".into()) }.to_string(),
            "this password is too easy to guess: Dates are often easy to guess."
        );
    }
}
