//! The security events a customer is told about.

use std::fmt;
use std::net::IpAddr;

use rampart_core::AssetCode;
use serde::{Deserialize, Serialize};

use crate::render::{VALUE_CHARS_MAX, clean};

/// A link that carries a bearer secret (an email-verification or sign-in confirmation token). Anyone who holds it
/// can use it, so it never appears in `Debug` output; it serialises as a plain string because the outbox must keep
/// it until the email is sent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretLink(String);

impl SecretLink {
    /// Wraps a link.
    pub fn new(link: impl Into<String>) -> SecretLink {
        SecretLink(link.into())
    }

    /// The link itself, to put in the message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretLink(<redacted>)")
    }
}

/// What is known about the device behind a sign-in, as shown to the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The `User-Agent` the device sent: attacker-controlled text, escaped and shortened wherever it is shown.
    pub user_agent: String,
    /// The address the request came from.
    pub ip: IpAddr,
    /// The country that address is located in, when known.
    pub country: Option<String>,
}

/// A kind of second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorKind {
    /// Time-based one-time codes from an authenticator app.
    Totp,
    /// A passkey (a WebAuthn credential on a phone or computer).
    Passkey,
    /// A hardware security key (a roaming WebAuthn authenticator).
    SecurityKey,
    /// One-time codes sent by SMS.
    Sms,
    /// Printed single-use recovery codes.
    RecoveryCodes,
}

impl FactorKind {
    /// How the factor is named to a customer.
    pub fn label(self) -> &'static str {
        match self {
            FactorKind::Totp => "authenticator app",
            FactorKind::Passkey => "passkey",
            FactorKind::SecurityKey => "security key",
            FactorKind::Sms => "SMS codes",
            FactorKind::RecoveryCodes => "recovery codes",
        }
    }
}

/// A security event a customer is told about. Serialised with its [`kind`](Notification::kind) in the `"kind"`
/// field and timestamps as decimal strings (nanoseconds since the Unix epoch), as everywhere in Rampart's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notification {
    /// Confirm the email address of a new account (or a new address) by following the link.
    EmailVerification {
        /// The single-use verification link.
        link: SecretLink,
    },
    /// A sign-in with the right password from an unrecognised device waits for the customer to follow the link.
    NewDeviceConfirmation {
        /// The single-use link that confirms the sign-in.
        link: SecretLink,
        /// The device that is signing in.
        device: DeviceInfo,
    },
    /// The account was signed in from a device not seen before.
    SignInNewDevice {
        /// The new device.
        device: DeviceInfo,
    },
    /// The account was signed in from a country not seen before.
    SignInNewCountry {
        /// The device that signed in.
        device: DeviceInfo,
        /// The new country.
        country: String,
    },
    /// A second factor was added.
    FactorAdded {
        /// Which kind of factor (`"factor"` in JSON, since `"kind"` names the notification).
        #[serde(rename = "factor")]
        kind: FactorKind,
    },
    /// A second factor was removed.
    FactorRemoved {
        /// Which kind of factor (`"factor"` in JSON, since `"kind"` names the notification).
        #[serde(rename = "factor")]
        kind: FactorKind,
    },
    /// The password was changed by the signed-in customer.
    PasswordChanged,
    /// The password was reset through the forgotten-password flow.
    PasswordReset,
    /// The account's email address was changed; sent to the old address.
    EmailChanged {
        /// The new address, masked (see [`crate::mask_email`]).
        new_email_masked: String,
    },
    /// The anti-phishing code was set or changed.
    AntiPhishingCodeChanged,
    /// An API key was created.
    ApiKeyCreated {
        /// The key's public identifier (never its secret).
        key_id: String,
        /// What the key may do.
        scopes: Vec<String>,
    },
    /// An API key was revoked.
    ApiKeyRevoked {
        /// The key's public identifier.
        key_id: String,
    },
    /// A withdrawal address was added to or removed from the whitelist.
    WhitelistChanged {
        /// The address, masked (see [`crate::mask_address`]).
        address_masked: String,
        /// Whether it was added (`true`) or removed.
        added: bool,
    },
    /// A withdrawal was requested and has not been sent yet.
    WithdrawalRequested {
        /// The asset withdrawn.
        asset: AssetCode,
        /// The amount, already formatted as a decimal in the asset's unit (`"0.5"`).
        amount: String,
        /// The destination address, masked (see [`crate::mask_address`]).
        destination_masked: String,
    },
    /// A withdrawal was broadcast.
    WithdrawalSent {
        /// The asset withdrawn.
        asset: AssetCode,
        /// The amount sent, already formatted as a decimal in the asset's unit.
        amount: String,
        /// The transaction's id on its chain.
        txid: String,
    },
    /// Confirm a new whitelist address by following the link; it is usable after its cooling-off.
    WhitelistConfirmation {
        /// The single-use confirmation link.
        link: SecretLink,
        /// The address, masked (see [`crate::mask_address`]).
        address_masked: String,
        /// The customer's label for it.
        label: String,
    },
    /// A withdrawal moved: waiting for people, refused, cancelled, failed, expired or confirmed.
    WithdrawalStatus {
        /// The asset withdrawn.
        asset: AssetCode,
        /// The amount, formatted as a decimal in the asset's unit.
        amount: String,
        /// The new state (`awaiting_approval`, `rejected`, `confirmed`, …).
        status: String,
        /// Why, when there is a reason to give.
        detail: String,
    },
    /// The account is locked: nobody can sign in.
    AccountLocked {
        /// When the lock lifts by itself, or `None` if only support can lift it.
        #[serde(with = "opt_ns_string", default, skip_serializing_if = "Option::is_none")]
        until_ns: Option<u64>,
    },
    /// Account recovery was started: the link finishes it (with a second factor, or after support's checks).
    RecoveryStarted {
        /// The single-use recovery link.
        link: SecretLink,
    },
    /// Account recovery was completed; withdrawals are held for a while.
    RecoveryCompleted {
        /// When withdrawals are allowed again.
        #[serde(with = "ns_string")]
        lock_until_ns: u64,
    },
    /// A security-relevant change paused withdrawals for a while.
    SecurityLock {
        /// When withdrawals are allowed again.
        #[serde(with = "ns_string")]
        until_ns: u64,
    },
}

impl Notification {
    /// The notification's stable snake_case name: its `"kind"` in JSON, fit for metrics labels and templates.
    pub fn kind(&self) -> &'static str {
        match self {
            Notification::EmailVerification { .. } => "email_verification",
            Notification::NewDeviceConfirmation { .. } => "new_device_confirmation",
            Notification::SignInNewDevice { .. } => "sign_in_new_device",
            Notification::SignInNewCountry { .. } => "sign_in_new_country",
            Notification::FactorAdded { .. } => "factor_added",
            Notification::FactorRemoved { .. } => "factor_removed",
            Notification::PasswordChanged => "password_changed",
            Notification::PasswordReset => "password_reset",
            Notification::EmailChanged { .. } => "email_changed",
            Notification::AntiPhishingCodeChanged => "anti_phishing_code_changed",
            Notification::ApiKeyCreated { .. } => "api_key_created",
            Notification::ApiKeyRevoked { .. } => "api_key_revoked",
            Notification::WhitelistChanged { .. } => "whitelist_changed",
            Notification::WithdrawalRequested { .. } => "withdrawal_requested",
            Notification::WithdrawalSent { .. } => "withdrawal_sent",
            Notification::WhitelistConfirmation { .. } => "whitelist_confirmation",
            Notification::WithdrawalStatus { .. } => "withdrawal_status",
            Notification::AccountLocked { .. } => "account_locked",
            Notification::RecoveryStarted { .. } => "recovery_started",
            Notification::RecoveryCompleted { .. } => "recovery_completed",
            Notification::SecurityLock { .. } => "security_lock",
        }
    }

    /// A short title for the in-app list and the email subject. It is plain text (escape it where markup is made);
    /// it never contains a link, and values from outside appear in it only cleaned and shortened.
    pub fn title(&self) -> String {
        match self {
            Notification::EmailVerification { .. } => "Confirm your email address".to_owned(),
            Notification::NewDeviceConfirmation { .. } => "Confirm a sign-in from a new device".to_owned(),
            Notification::SignInNewDevice { .. } => "New sign-in from an unrecognised device".to_owned(),
            Notification::SignInNewCountry { .. } => "Sign-in from a new country".to_owned(),
            Notification::FactorAdded { kind } => format!("Two-factor method added: {}", kind.label()),
            Notification::FactorRemoved { kind } => format!("Two-factor method removed: {}", kind.label()),
            Notification::PasswordChanged => "Your password was changed".to_owned(),
            Notification::PasswordReset => "Your password was reset".to_owned(),
            Notification::EmailChanged { .. } => "Your email address was changed".to_owned(),
            Notification::AntiPhishingCodeChanged => "Your anti-phishing code was changed".to_owned(),
            Notification::ApiKeyCreated { .. } => "API key created".to_owned(),
            Notification::ApiKeyRevoked { .. } => "API key revoked".to_owned(),
            Notification::WhitelistChanged { added: true, .. } => "Withdrawal address whitelisted".to_owned(),
            Notification::WhitelistChanged { added: false, .. } => {
                "Withdrawal address removed from whitelist".to_owned()
            }
            Notification::WithdrawalRequested { asset, amount, .. } => {
                format!("Withdrawal requested: {} {asset}", clean(amount, VALUE_CHARS_MAX))
            }
            Notification::WithdrawalSent { asset, amount, .. } => {
                format!("Withdrawal sent: {} {asset}", clean(amount, VALUE_CHARS_MAX))
            }
            Notification::WhitelistConfirmation { .. } => "Confirm a new withdrawal address".to_owned(),
            Notification::WithdrawalStatus { asset, amount, status, .. } => format!(
                "Withdrawal of {} {asset}: {}",
                clean(amount, VALUE_CHARS_MAX),
                clean(&status.replace('_', " "), VALUE_CHARS_MAX)
            ),
            Notification::AccountLocked { .. } => "Your account is locked".to_owned(),
            Notification::RecoveryStarted { .. } => "Account recovery started".to_owned(),
            Notification::RecoveryCompleted { .. } => "Account recovery completed".to_owned(),
            Notification::SecurityLock { .. } => "Withdrawals paused after a security change".to_owned(),
        }
    }
}

/// Serde for a nanosecond timestamp as a decimal string.
mod ns_string {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(ns: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(ns)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse(&s).map_err(de::Error::custom)
    }

    /// Strict decimal digits, as the rest of Rampart writes them: no sign, no spaces, no empty string.
    pub(super) fn parse(s: &str) -> Result<u64, &'static str> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a timestamp must be a string of decimal digits");
        }
        s.parse().map_err(|_| "a timestamp must fit in 64 bits")
    }
}

/// Serde for an optional nanosecond timestamp as a decimal string or `null`.
mod opt_ns_string {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(ns: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match ns {
            Some(ns) => serializer.collect_str(ns),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(s) => super::ns_string::parse(&s).map(Some).map_err(de::Error::custom),
            None => Ok(None),
        }
    }
}
