//! The events the engine scores: what happened, to whom, when, from where, and for how much.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One US dollar in the engine's unit (integer micro-dollars).
pub const MICRO_USD_PER_USD: u64 = 1_000_000;

/// A customer, by the service's numeric id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u64);

/// A two-letter ISO 3166-1 country code, upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses `"DE"` (either case); anything but two ASCII letters is refused.
    pub fn parse(code: &str) -> Option<Country> {
        let b = code.as_bytes();
        (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
            .then(|| Country([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]))
    }

    /// A compact numeric code (never 0), used by compiled rules.
    pub fn code(self) -> u16 {
        u16::from_be_bytes(self.0)
    }

    /// The country of a [`Country::code`].
    pub fn from_code(code: u16) -> Country {
        Country(code.to_be_bytes())
    }

    /// The two letters.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Country {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Country::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a two-letter country code")))
    }
}

/// How a sign-in was proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Factor {
    /// The password step (the first of two).
    Password,
    /// A TOTP code.
    Totp,
    /// A one-time backup code.
    BackupCode,
    /// A passkey or security key.
    Passkey,
}

impl Factor {
    /// Every factor, in code order.
    pub const ALL: [Factor; 4] = [Factor::Password, Factor::Totp, Factor::BackupCode, Factor::Passkey];

    /// The name rules use.
    pub fn name(self) -> &'static str {
        match self {
            Factor::Password => "password",
            Factor::Totp => "totp",
            Factor::BackupCode => "backup_code",
            Factor::Passkey => "passkey",
        }
    }
}

/// Which security setting changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The password.
    Password,
    /// The TOTP authenticator (added, replaced or removed).
    Totp,
    /// A passkey (added or removed).
    Passkey,
    /// The email address.
    Email,
    /// The anti-phishing code.
    AntiPhishing,
    /// An API key (created or revoked).
    ApiKey,
    /// Backup codes regenerated.
    BackupCodes,
}

impl Change {
    /// Every change, in code order.
    pub const ALL: [Change; 7] = [
        Change::Password,
        Change::Totp,
        Change::Passkey,
        Change::Email,
        Change::AntiPhishing,
        Change::ApiKey,
        Change::BackupCodes,
    ];

    /// The name rules use.
    pub fn name(self) -> &'static str {
        match self {
            Change::Password => "password",
            Change::Totp => "totp",
            Change::Passkey => "passkey",
            Change::Email => "email",
            Change::AntiPhishing => "anti_phishing",
            Change::ApiKey => "api_key",
            Change::BackupCodes => "backup_codes",
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A sign-in attempt: the password step, or its completion with a second factor.
    SignIn {
        /// Whether the step succeeded.
        success: bool,
        /// The factor of this step.
        factor: Factor,
    },
    /// The extra verification that a `challenge` asked for was passed (the context is now the user's own).
    ChallengePassed,
    /// A request made with a session.
    Session,
    /// A request signed with an API key.
    ApiRequest {
        /// The key's id.
        key: u64,
    },
    /// A security setting changed.
    SecurityChange {
        /// Which.
        change: Change,
    },
    /// A deposit was credited.
    Deposit {
        /// Its value in micro-dollars.
        amount_micro_usd: u64,
        /// The address it came from, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// A withdrawal was requested.
    Withdrawal {
        /// Its value in micro-dollars.
        amount_micro_usd: u64,
        /// Where it would go.
        destination: String,
    },
    /// A withdrawal address was added to (or removed from) the user's whitelist.
    WhitelistChange {
        /// The address.
        destination: String,
        /// Added (true) or removed.
        added: bool,
    },
}

/// The kinds of event, as rules name them (`on = ["withdrawal"]`, `kind == "sign_in"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// [`EventKind::SignIn`].
    SignIn,
    /// [`EventKind::ChallengePassed`].
    ChallengePassed,
    /// [`EventKind::Session`].
    Session,
    /// [`EventKind::ApiRequest`].
    ApiRequest,
    /// [`EventKind::SecurityChange`].
    SecurityChange,
    /// [`EventKind::Deposit`].
    Deposit,
    /// [`EventKind::Withdrawal`].
    Withdrawal,
    /// [`EventKind::WhitelistChange`].
    WhitelistChange,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 8] = [
        Kind::SignIn,
        Kind::ChallengePassed,
        Kind::Session,
        Kind::ApiRequest,
        Kind::SecurityChange,
        Kind::Deposit,
        Kind::Withdrawal,
        Kind::WhitelistChange,
    ];

    /// The name rules use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::SignIn => "sign_in",
            Kind::ChallengePassed => "challenge_passed",
            Kind::Session => "session",
            Kind::ApiRequest => "api_request",
            Kind::SecurityChange => "security_change",
            Kind::Deposit => "deposit",
            Kind::Withdrawal => "withdrawal",
            Kind::WhitelistChange => "whitelist_change",
        }
    }

    /// This kind's bit in a set of kinds.
    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// An event: who, when, from where, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in nanoseconds since the Unix epoch (the shell's clock; the engine reads no clock).
    pub at_ns: u64,
    /// Whose account.
    pub user: UserId,
    /// The client's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The client's device (the service's device id), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u64>,
    /// The client's country, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<Country>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> Kind {
        match &self.kind {
            EventKind::SignIn { .. } => Kind::SignIn,
            EventKind::ChallengePassed => Kind::ChallengePassed,
            EventKind::Session => Kind::Session,
            EventKind::ApiRequest { .. } => Kind::ApiRequest,
            EventKind::SecurityChange { .. } => Kind::SecurityChange,
            EventKind::Deposit { .. } => Kind::Deposit,
            EventKind::Withdrawal { .. } => Kind::Withdrawal,
            EventKind::WhitelistChange { .. } => Kind::WhitelistChange,
        }
    }

    /// The event's value in micro-dollars (0 for events that move nothing).
    pub fn amount_micro_usd(&self) -> u64 {
        match &self.kind {
            EventKind::Deposit { amount_micro_usd, .. } | EventKind::Withdrawal { amount_micro_usd, .. } => {
                *amount_micro_usd
            }
            _ => 0,
        }
    }

    /// The time in whole seconds.
    pub fn at_s(&self) -> u32 {
        u32::try_from(self.at_ns / 1_000_000_000).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_and_write_as_flat_json() {
        let line = r#"{"at_ns":5,"user":7,"ip":"10.0.0.1","country":"de","kind":"withdrawal","amount_micro_usd":12,"destination":"bc1q"}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert_eq!(e.kind(), Kind::Withdrawal);
        assert_eq!(e.country.unwrap().as_str(), "DE");
        assert_eq!(e.amount_micro_usd(), 12);
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn bad_countries_and_kinds_are_refused() {
        assert!(Country::parse("D").is_none() && Country::parse("D1").is_none() && Country::parse("DEU").is_none());
        let bad = r#"{"at_ns":5,"user":7,"kind":"teleport"}"#;
        assert!(serde_json::from_str::<Event>(bad).is_err());
        let bad = r#"{"at_ns":5,"user":7,"country":"XYZ","kind":"session"}"#;
        assert!(serde_json::from_str::<Event>(bad).unwrap_err().to_string().contains("country"));
    }
}
