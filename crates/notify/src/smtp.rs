//! Delivery through an SMTP relay, with `lettre`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::NotifyError;
use crate::mail::{MailError, MailFuture, Mailer, build_message};
use crate::render::EmailMessage;

/// The longest SMTP timeout accepted, in seconds.
pub const SMTP_TIMEOUT_S_MAX: u64 = 300;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text: only for a relay on this machine or in development.
    None,
    /// Plain connection upgraded with STARTTLS, which is required (usually port 587).
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// Where and how to reach the SMTP relay. `Debug` never shows the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The relay's host name (also the name its certificate must carry).
    pub host: String,
    /// The relay's port.
    pub port: u16,
    /// How the connection is protected.
    pub tls: SmtpTls,
    /// The user name to authenticate as, if the relay needs one.
    pub username: Option<String>,
    /// The password that goes with `username`.
    pub password: Option<SecretString>,
    /// The longest one delivery may take, from connecting to the server's last reply, in seconds.
    pub timeout_s: u64,
}

/// A [`Mailer`] that hands messages to an SMTP relay. Connections are pooled and reused.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: Duration,
    host: String,
    port: u16,
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl SmtpMailer {
    /// Checks the configuration and prepares the transport. No connection is made until the first message.
    ///
    /// Refused: an empty host, port 0, a timeout of 0 or above [`SMTP_TIMEOUT_S_MAX`], a user name without a
    /// password or the reverse, and credentials over an unencrypted connection to anything but this machine.
    ///
    /// Must be called within a Tokio runtime: the connection pool starts a task that closes idle connections.
    pub fn new(config: &SmtpConfig) -> Result<SmtpMailer, NotifyError> {
        let refuse = |why: &str| Err(NotifyError::SmtpConfig(why.to_owned()));
        if config.host.is_empty() {
            return refuse("the host is empty");
        }
        if config.port == 0 {
            return refuse("the port is 0");
        }
        if !(1..=SMTP_TIMEOUT_S_MAX).contains(&config.timeout_s) {
            return refuse(&format!("timeout_s must be 1 to {SMTP_TIMEOUT_S_MAX}"));
        }
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                if config.tls == SmtpTls::None && !is_loopback(&config.host) {
                    return refuse("credentials would cross the network in clear: use tls = \"start_tls\" or \"tls\"");
                }
                Some(Credentials::new(user.clone(), password.expose_secret().to_owned()))
            }
            (None, None) => None,
            _ => return refuse("username and password go together"),
        };
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls | SmtpTls::Tls => {
                let params = TlsParameters::new(config.host.clone())
                    .map_err(|e| NotifyError::SmtpConfig(format!("TLS: {e}")))?;
                if config.tls == SmtpTls::StartTls { Tls::Required(params) } else { Tls::Wrapper(params) }
            }
        };
        let timeout = Duration::from_secs(config.timeout_s);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str())
            .port(config.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        Ok(SmtpMailer { transport: builder.build(), timeout, host: config.host.clone(), port: config.port })
    }
}

/// Sorts a `lettre` SMTP error into permanent (a 5xx reply) and transient (everything else).
fn classify(err: &lettre::transport::smtp::Error) -> MailError {
    if let Some(code) = err.status() {
        let code = u16::from(code);
        let message = err.to_string();
        return if err.is_permanent() {
            MailError::Rejected { code, message }
        } else {
            MailError::Deferred { code, message }
        };
    }
    if err.is_timeout() {
        return MailError::Timeout;
    }
    // Everything else is about the session rather than this message: no connection, a broken one, a failed TLS
    // handshake, or lettre refusing to go on (no STARTTLS offered, which may be an attacker stripping it; no
    // authentication mechanism in common). An operator can fix those, so the message is kept and retried.
    MailError::Connection(err.to_string())
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, from: &'a str, msg: &'a EmailMessage) -> MailFuture<'a> {
        Box::pin(async move {
            let message = build_message(from, msg)?;
            // lettre's asynchronous transport bounds only the connection, not the replies, so a server that
            // accepts and then stalls would hold a worker for ever: the whole exchange gets one deadline here. A
            // connection abandoned this way is dropped, never returned to the pool.
            match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
                Ok(Ok(_response)) => Ok(()),
                Ok(Err(err)) => Err(classify(&err)),
                Err(_elapsed) => Err(MailError::Timeout),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SmtpConfig {
        SmtpConfig {
            host: "smtp.example.com".to_owned(),
            port: 587,
            tls: SmtpTls::StartTls,
            username: Some("mailer".to_owned()),
            password: Some(SecretString::from("hunter2-very-secret")),
            timeout_s: 10,
        }
    }

    #[tokio::test]
    async fn valid_configurations() {
        SmtpMailer::new(&config()).unwrap();
        SmtpMailer::new(&SmtpConfig { tls: SmtpTls::Tls, port: 465, ..config() }).unwrap();
        SmtpMailer::new(&SmtpConfig { username: None, password: None, tls: SmtpTls::None, ..config() }).unwrap();
        for host in ["localhost", "127.0.0.1", "::1", "[::1]"] {
            let local = SmtpConfig { host: host.to_owned(), tls: SmtpTls::None, ..config() };
            SmtpMailer::new(&local).unwrap();
        }
    }

    #[tokio::test]
    async fn invalid_configurations() {
        for bad in [
            SmtpConfig { host: String::new(), ..config() },
            SmtpConfig { port: 0, ..config() },
            SmtpConfig { timeout_s: 0, ..config() },
            SmtpConfig { timeout_s: SMTP_TIMEOUT_S_MAX + 1, ..config() },
            SmtpConfig { password: None, ..config() },
            SmtpConfig { username: None, ..config() },
            SmtpConfig { tls: SmtpTls::None, ..config() },
        ] {
            let err = SmtpMailer::new(&bad).unwrap_err();
            assert!(matches!(err, NotifyError::SmtpConfig(_)), "{err}");
            assert!(!err.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let debug = format!("{:?}", config());
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("smtp.example.com"));
    }

    #[test]
    fn configuration_from_json() {
        let json = r#"{"host":"smtp.example.com","port":465,"tls":"tls","username":"u","password":"p","timeout_s":5}"#;
        let config: SmtpConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.tls, SmtpTls::Tls);
        assert_eq!(config.password.as_ref().map(|p| p.expose_secret().to_owned()).as_deref(), Some("p"));
        let typo = r#"{"host":"h","port":25,"tls":"none","timeout_s":5,"pasword":"p"}"#;
        assert!(serde_json::from_str::<SmtpConfig>(typo).is_err());
    }
}
