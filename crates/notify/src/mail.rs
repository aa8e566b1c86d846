//! The [`Mailer`] interface, its error, and the MIME message both mailers build.

use std::future::Future;
use std::pin::Pin;

use lettre::Message;
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};

use crate::render::EmailMessage;

/// The future a [`Mailer`] returns: boxed, so that mailers can be used as `Arc<dyn Mailer>`.
pub type MailFuture<'a> = Pin<Box<dyn Future<Output = Result<(), MailError>> + Send + 'a>>;

/// Delivers rendered emails. Implementations are shared between tasks (`Arc<dyn Mailer>`).
pub trait Mailer: Send + Sync {
    /// Sends `msg` from `from`, a mailbox such as `Rampart Security <security@rampart.example>`. Resolves once the
    /// message is accepted for delivery (by the relay, or on disk); an error says whether a retry can help.
    fn send<'a>(&'a self, from: &'a str, msg: &'a EmailMessage) -> MailFuture<'a>;
}

/// Why a message was not delivered. [`MailError::is_permanent`] tells an outbox worker whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The sender or recipient is not a valid address: permanent.
    #[error("invalid {field} address")]
    InvalidAddress {
        /// `"from"` or `"to"`.
        field: &'static str,
    },
    /// The message could not be built: permanent.
    #[error("the message cannot be built: {0}")]
    InvalidMessage(String),
    /// The server refused with a 5xx reply (unknown mailbox, policy, authentication): permanent.
    #[error("the mail server refused the message ({code}): {message}")]
    Rejected {
        /// The SMTP reply code.
        code: u16,
        /// What the server said.
        message: String,
    },
    /// The server answered with a 4xx reply (greylisting, full mailbox, rate limit): transient.
    #[error("the mail server deferred the message ({code}): {message}")]
    Deferred {
        /// The SMTP reply code.
        code: u16,
        /// What the server said.
        message: String,
    },
    /// The server did not answer in time: transient.
    #[error("timed out talking to the mail server")]
    Timeout,
    /// The server could not be reached, the connection broke, TLS failed, the session could not be set up as
    /// configured (STARTTLS, authentication mechanism) or the server answered nonsense: transient.
    #[error("cannot deliver to the mail server: {0}")]
    Connection(String),
    /// Writing a message locally (Maildir) failed: transient.
    #[error("cannot store the message: {0}")]
    Io(#[from] std::io::Error),
}

impl MailError {
    /// Whether retrying the same message cannot help (bad address, 5xx reply), so the outbox should give it up.
    pub fn is_permanent(&self) -> bool {
        matches!(self, MailError::InvalidAddress { .. } | MailError::InvalidMessage(_) | MailError::Rejected { .. })
    }
}

/// Builds the MIME message: multipart/alternative with the text part first and the HTML part last (the preferred
/// one, per RFC 2046), a `Message-ID` in the sender's domain and the current `Date`.
pub(crate) fn build_message(from: &str, msg: &EmailMessage) -> Result<Message, MailError> {
    let from: Mailbox = from.parse().map_err(|_| MailError::InvalidAddress { field: "from" })?;
    let to: Mailbox = msg.to.parse().map_err(|_| MailError::InvalidAddress { field: "to" })?;
    let message_id = format!("<{}@{}>", uuid::Uuid::new_v4().simple(), from.email.domain());
    Message::builder()
        .from(from)
        .to(to)
        .subject(msg.subject.as_str())
        .message_id(Some(message_id))
        .multipart(
            MultiPart::alternative()
                .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(msg.text_body.clone()))
                .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(msg.html_body.clone())),
        )
        .map_err(|e| MailError::InvalidMessage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: &str) -> EmailMessage {
        EmailMessage {
            to: to.to_owned(),
            subject: "Subject\r\nBcc: evil@example.com".to_owned(),
            text_body: "hello\n".to_owned(),
            html_body: "<p>hello</p>\n".to_owned(),
        }
    }

    #[test]
    fn bad_addresses_are_permanent() {
        for (from, to, field) in [
            ("not an address", "a@example.com", "from"),
            ("Rampart <security@rampart.example>", "no-at-sign", "to"),
            ("Rampart <security@rampart.example>", "a@example.com\r\nBcc: evil@example.com", "to"),
            ("Rampart <security@rampart.example>", "", "to"),
        ] {
            let err = build_message(from, &msg(to)).unwrap_err();
            assert!(matches!(err, MailError::InvalidAddress { field: f } if f == field), "{from} {to}: {err}");
            assert!(err.is_permanent());
        }
    }

    #[test]
    fn a_subject_cannot_inject_headers() {
        let m = build_message("Rampart <security@rampart.example>", &msg("a@example.com")).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(!raw.contains("\r\nBcc:"), "{raw}");
        assert!(raw.contains("Message-ID: <"));
        assert!(raw.contains("@rampart.example>\r\n"));
        assert!(raw.contains("multipart/alternative"));
    }

    #[test]
    fn transient_and_permanent() {
        assert!(MailError::Rejected { code: 550, message: String::new() }.is_permanent());
        assert!(!MailError::Deferred { code: 451, message: String::new() }.is_permanent());
        assert!(!MailError::Timeout.is_permanent());
        assert!(!MailError::Connection("refused".to_owned()).is_permanent());
        assert!(!MailError::Io(std::io::Error::other("disk full")).is_permanent());
    }
}
