//! Delivery of one-time codes by SMS.

use secrecy::{ExposeSecret, SecretString};

use crate::mail::{MailError, MailFuture};
use crate::mask::mask_phone;

/// What an SMS code is for; it chooses the wording and is the only thing about the code that may be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmsPurpose {
    /// A second factor at sign-in.
    SignIn,
    /// Proof that the customer holds a phone number being added.
    PhoneVerification,
    /// Confirmation of a withdrawal.
    WithdrawalConfirmation,
    /// Confirmation of a change to security settings.
    SecurityChange,
}

impl SmsPurpose {
    /// The purpose's stable snake_case name, for logs and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            SmsPurpose::SignIn => "sign_in",
            SmsPurpose::PhoneVerification => "phone_verification",
            SmsPurpose::WithdrawalConfirmation => "withdrawal_confirmation",
            SmsPurpose::SecurityChange => "security_change",
        }
    }

    fn phrase(self) -> &'static str {
        match self {
            SmsPurpose::SignIn => "to sign in",
            SmsPurpose::PhoneVerification => "to verify this phone number",
            SmsPurpose::WithdrawalConfirmation => "to confirm your withdrawal",
            SmsPurpose::SecurityChange => "to confirm a change to your security settings",
        }
    }
}

/// A one-time code to send by SMS. `Debug` never shows the code.
#[derive(Debug, Clone)]
pub struct SmsMessage {
    /// The destination number, in E.164 form (`+447700900123`).
    pub to: String,
    /// What the code is for.
    pub purpose: SmsPurpose,
    /// The code itself.
    pub code: SecretString,
}

impl SmsMessage {
    /// The text of the SMS. It carries the code, so it is a secret too.
    pub fn text(&self) -> SecretString {
        SecretString::from(format!(
            "Rampart: {} is your code {}. Never share it: Rampart staff will never ask for it.",
            self.code.expose_secret(),
            self.purpose.phrase()
        ))
    }
}

/// Sends SMS messages. Errors are [`MailError`]s, with the same meaning for retries.
pub trait SmsProvider: Send + Sync {
    /// Sends `msg`; resolves once the provider has accepted it.
    fn send<'a>(&'a self, msg: &'a SmsMessage) -> MailFuture<'a>;
}

/// An [`SmsProvider`] for development and tests: no SMS is sent. It logs at `info`, with `tracing`, the masked
/// destination, the purpose and the code's length, never the code.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingSms;

impl SmsProvider for LoggingSms {
    fn send<'a>(&'a self, msg: &'a SmsMessage) -> MailFuture<'a> {
        Box::pin(async move {
            tracing::info!(
                to = %mask_phone(&msg.to),
                kind = msg.purpose.kind(),
                code_len = msg.code.expose_secret().chars().count(),
                "SMS not sent: the logging provider sends nothing"
            );
            Ok::<(), MailError>(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes, so that the test can read the log.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn message() -> SmsMessage {
        SmsMessage {
            to: "+447700900123".to_owned(),
            purpose: SmsPurpose::WithdrawalConfirmation,
            code: SecretString::from("918273"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn logging_sms_logs_no_code_and_no_number() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let provider: Arc<dyn SmsProvider> = Arc::new(LoggingSms);
        provider.send(&message()).await.unwrap();

        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("INFO"), "{log}");
        assert!(log.contains("+44********23"), "{log}");
        assert!(log.contains("withdrawal_confirmation"), "{log}");
        assert!(log.contains("code_len=6"), "{log}");
        assert!(!log.contains("918273"), "{log}");
        assert!(!log.contains("7700900"), "{log}");
    }

    #[test]
    fn the_text_carries_the_code_and_debug_does_not() {
        let m = message();
        let text = m.text();
        assert!(text.expose_secret().contains("918273 is your code to confirm your withdrawal"));
        assert!(!format!("{m:?}").contains("918273"));
        assert!(!format!("{text:?}").contains("918273"));
    }
}
