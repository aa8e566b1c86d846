//! What Rampart tells customers about the security of their account, and how it reaches them.
//!
//! - [`Notification`] names each security event a customer hears about. It is plain data that serialises to JSON
//!   (tagged by `"kind"`) so that the store can keep it in an outbox table until a worker delivers it.
//! - [`render_email`] turns one into an [`EmailMessage`] (subject, text and HTML bodies). The customer's
//!   anti-phishing code always stands in the same prominent place: the first line of the text body and a highlighted
//!   box at the top of the HTML body. Every value that came from outside is escaped and stripped of control
//!   characters, so a hostile user agent cannot inject markup or fake lines.
//! - [`Mailer`] delivers an [`EmailMessage`]: [`SmtpMailer`] through an SMTP relay, [`MaildirMailer`] into a
//!   Maildir for development. [`MailError::is_permanent`] tells the outbox worker whether a retry can help, and
//!   [`backoff_ns`] how long to wait before it.
//! - [`SmsProvider`] delivers one-time codes by SMS; [`LoggingSms`] is the development stand-in that sends nothing.
//!
//! Rendering is pure: the time is an argument. Only the mailers and the SMS provider do I/O.

mod mail;
mod maildir;
mod mask;
mod notification;
mod render;
mod sms;
mod smtp;

pub use mail::{MailError, MailFuture, Mailer};
pub use maildir::MaildirMailer;
pub use mask::{mask_address, mask_email, mask_phone};
pub use notification::{DeviceInfo, FactorKind, Notification, SecretLink};
pub use render::{EmailMessage, escape_html, format_time_utc, render_email};
pub use sms::{LoggingSms, SmsMessage, SmsProvider, SmsPurpose};
pub use smtp::{SMTP_TIMEOUT_S_MAX, SmtpConfig, SmtpMailer, SmtpTls};

/// The shortest anti-phishing code accepted, in characters.
pub const ANTI_PHISHING_CODE_LEN_MIN: usize = 4;
/// The longest anti-phishing code accepted, in characters.
pub const ANTI_PHISHING_CODE_LEN_MAX: usize = 20;

/// How many times the outbox worker tries to deliver one message before it gives up on it.
pub const DELIVERY_ATTEMPTS_MAX: u32 = 12;
/// The wait before the first retry.
pub const BACKOFF_BASE_NS: u64 = 5_000_000_000;
/// The longest wait between two attempts.
pub const BACKOFF_MAX_NS: u64 = 3_600_000_000_000;

/// Why a value given to this crate was refused. Messages never repeat the refused value, which may be private.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// An anti-phishing code shorter or longer than the bounds.
    #[error("an anti-phishing code must be {min} to {max} characters, not {len}",
        min = ANTI_PHISHING_CODE_LEN_MIN, max = ANTI_PHISHING_CODE_LEN_MAX)]
    AntiPhishingCodeLength {
        /// The length of the refused code, in characters.
        len: usize,
    },
    /// An anti-phishing code with a character other than an ASCII letter, a digit, `-` or `_`.
    #[error("an anti-phishing code may contain only the letters A to Z, digits, '-' and '_'")]
    AntiPhishingCodeCharacter,
    /// An SMTP configuration that cannot work, with the reason.
    #[error("invalid SMTP configuration: {0}")]
    SmtpConfig(String),
}

/// Parses an anti-phishing code chosen by a customer: 4 to 20 characters, each an ASCII letter, a digit, `-` or
/// `_`. The alphabet is what makes the code safe to place anywhere in an email: it cannot carry markup, a quote, a
/// line break (so no header or line injection) or a look-alike or right-to-left character.
pub fn parse_anti_phishing_code(s: &str) -> Result<String, NotifyError> {
    let len = s.chars().count();
    if !(ANTI_PHISHING_CODE_LEN_MIN..=ANTI_PHISHING_CODE_LEN_MAX).contains(&len) {
        return Err(NotifyError::AntiPhishingCodeLength { len });
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(NotifyError::AntiPhishingCodeCharacter);
    }
    Ok(s.to_owned())
}

/// The wait before the next delivery attempt, after `attempt` attempts have failed (counting from 1): 5 s after the
/// first failure, doubling after each one, and never more than an hour. `attempt` 0 is treated as 1. Integer
/// arithmetic only; a caller that wants jitter adds it.
pub fn backoff_ns(attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1);
    // 5 s · 2^10 already exceeds the cap, so larger exponents need no shift at all (and cannot overflow one).
    if doublings >= 10 {
        return BACKOFF_MAX_NS;
    }
    (BACKOFF_BASE_NS << doublings).min(BACKOFF_MAX_NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anti_phishing_codes_that_are_accepted() {
        for ok in ["abcd", "ABCD-1234", "my_code_2024", "a-b_c", "12345678901234567890"] {
            assert_eq!(parse_anti_phishing_code(ok).as_deref(), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn anti_phishing_codes_that_are_refused() {
        assert_eq!(parse_anti_phishing_code("abc"), Err(NotifyError::AntiPhishingCodeLength { len: 3 }));
        assert_eq!(parse_anti_phishing_code(""), Err(NotifyError::AntiPhishingCodeLength { len: 0 }));
        assert_eq!(
            parse_anti_phishing_code("123456789012345678901"),
            Err(NotifyError::AntiPhishingCodeLength { len: 21 })
        );
        for bad in [
            "<b>x</b>",
            "<b>",
            "abcd\r\nBcc: x@evil.example",
            "abcd\n",
            "abcd\r",
            "ab cd",
            "abc\"d",
            "abc'd",
            "ab&cd",
            "abçd",
            "\u{202e}abcd",
            "abcd\0",
            "ab/cd",
        ] {
            assert!(parse_anti_phishing_code(bad).is_err(), "{bad:?}");
        }
        // The length counts characters, not bytes: four non-ASCII letters are refused for their alphabet.
        assert_eq!(parse_anti_phishing_code("éééé"), Err(NotifyError::AntiPhishingCodeCharacter));
    }

    #[test]
    fn errors_do_not_repeat_the_code() {
        let err = parse_anti_phishing_code("secret<b>").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_an_hour() {
        let s = 1_000_000_000;
        assert_eq!(backoff_ns(0), 5 * s);
        assert_eq!(backoff_ns(1), 5 * s);
        assert_eq!(backoff_ns(2), 10 * s);
        assert_eq!(backoff_ns(3), 20 * s);
        assert_eq!(backoff_ns(10), 2560 * s);
        assert_eq!(backoff_ns(11), 3600 * s);
        assert_eq!(backoff_ns(DELIVERY_ATTEMPTS_MAX), 3600 * s);
        assert_eq!(backoff_ns(64), 3600 * s);
        assert_eq!(backoff_ns(u32::MAX), 3600 * s);
        for attempt in 1..100 {
            assert!(backoff_ns(attempt) <= backoff_ns(attempt + 1));
        }
    }
}
