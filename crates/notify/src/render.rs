//! Rendering a [`Notification`] into an email: a subject, a plain-text body and an HTML body.
//!
//! Both bodies are built from one [`Content`], so they always say the same thing. Values that came from outside
//! (user agents, countries, key ids, amounts, addresses) are cleaned of control and bidirectional-override characters
//! and shortened before they are placed anywhere, and escaped for HTML in the HTML body.

use std::fmt::{self, Write as _};

use crate::notification::{DeviceInfo, Notification, SecretLink};

/// The longest outside value shown, in characters; longer ones are cut and end with `…`.
pub(crate) const VALUE_CHARS_MAX: usize = 200;
/// The longest link shown. Links are ours and are never cut (a cut link is useless); one longer than this is a bug
/// upstream and is shown only as text.
const LINK_CHARS_MAX: usize = 4096;
/// How the brand is named in messages.
const BRAND: &str = "Rampart";

/// An email ready for a [`crate::Mailer`]. `Debug` shows only the recipient and subject: the bodies may carry a
/// verification link and the anti-phishing code.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailMessage {
    /// The recipient's address.
    pub to: String,
    /// The subject line (plain text, no line breaks).
    pub subject: String,
    /// The plain-text body; its first line is always the anti-phishing line.
    pub text_body: String,
    /// The HTML body; it always starts with the anti-phishing box.
    pub html_body: String,
}

impl fmt::Debug for EmailMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailMessage")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text_body", &format_args!("<{} bytes>", self.text_body.len()))
            .field("html_body", &format_args!("<{} bytes>", self.html_body.len()))
            .finish()
    }
}

/// Replaces control characters (line breaks included) and the invisible characters that reorder or hide text
/// (bidirectional overrides and isolates, zero-width characters) with U+FFFD, and cuts the result to `max_chars`.
/// What remains cannot start a new line, fake a header or disguise the order of what is shown.
pub(crate) fn clean(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars));
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        let hidden =
            matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
        out.push(if c.is_control() || hidden { '\u{FFFD}' } else { c });
    }
    out
}

/// Escapes text for an HTML element's content or a double- or single-quoted attribute value.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Formats a nanosecond Unix timestamp as `YYYY-MM-DD hh:mm:ss UTC`, to the second.
pub fn format_time_utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01: the count is shifted to start on 0000-03-01, so
/// that the leap day ends each year, and split into 400-year eras of 146 097 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March, so that February is last: 0 = March, …, 11 = February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// What an email says, before it becomes text or HTML. Every string is plain text, already cleaned.
struct Content {
    /// The first paragraph: what happened.
    headline: String,
    /// Labelled facts, shown as a list (text) or a table (HTML).
    facts: Vec<(&'static str, String)>,
    /// A button (HTML) or a labelled line (text) with a link.
    action: Option<(&'static str, String)>,
    /// A paragraph after the facts.
    note: Option<String>,
    /// The closing paragraph: what to do if the customer did not do this.
    if_not_you: &'static str,
}

fn device_facts(facts: &mut Vec<(&'static str, String)>, device: &DeviceInfo) {
    facts.push(("Device", clean(&device.user_agent, VALUE_CHARS_MAX)));
    facts.push(("IP address", device.ip.to_string()));
    if let Some(country) = &device.country {
        facts.push(("Location", clean(country, VALUE_CHARS_MAX)));
    }
}

fn link_text(link: &SecretLink) -> String {
    clean(link.expose(), LINK_CHARS_MAX)
}

/// Only web links become clickable, so that a mistaken or hostile value can never be a `javascript:` or `data:` URL.
fn is_web_link(link: &str) -> bool {
    let lower = link.get(..8).unwrap_or(link).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")) && !link.ends_with('…')
}

const IF_NOT_YOU_ACCOUNT: &str = "If this wasn't you, someone may have access to your account: change your \
     password now, sign out of every session and lock your account from Security settings, then contact support.";

fn content(n: &Notification, time_ns: u64) -> Content {
    let mut facts = vec![("Time", format_time_utc(time_ns))];
    let mut action = None;
    let mut note = None;
    let (headline, if_not_you): (String, &'static str) = match n {
        Notification::EmailVerification { link } => {
            action = Some(("Confirm email address", link_text(link)));
            note = Some("The link works once. Do not forward this email: whoever has the link can use it.".to_owned());
            (
                format!("Please confirm your email address to finish setting up your {BRAND} account."),
                "If this wasn't you, ignore this email: nothing happens unless the link is used.",
            )
        }
        Notification::NewDeviceConfirmation { link, device } => {
            device_facts(&mut facts, device);
            action = Some(("Yes, this was me", link_text(link)));
            note = Some("The link works once. Do not forward this email: whoever has the link can use it.".to_owned());
            (
                "Someone signed in to your account with your password from a device we don't recognise. \
                 If it was you, confirm it with the link below to finish signing in."
                    .to_owned(),
                "If this wasn't you, do not use the link: someone knows your password. Change it now and check \
                 your two-factor methods in Security settings, then contact support.",
            )
        }
        Notification::SignInNewDevice { device } => {
            device_facts(&mut facts, device);
            ("Your account was signed in from a device we haven't seen before.".to_owned(), IF_NOT_YOU_ACCOUNT)
        }
        Notification::SignInNewCountry { device, country } => {
            facts.push(("Country", clean(country, VALUE_CHARS_MAX)));
            device_facts(&mut facts, device);
            (
                "Your account was signed in from a country you haven't signed in from before.".to_owned(),
                IF_NOT_YOU_ACCOUNT,
            )
        }
        Notification::FactorAdded { kind } => {
            facts.push(("Method", kind.label().to_owned()));
            (
                format!("A two-factor method was added to your account: {}.", kind.label()),
                "If this wasn't you, someone controls your account: lock it from Security settings and contact \
                 support at once.",
            )
        }
        Notification::FactorRemoved { kind } => {
            facts.push(("Method", kind.label().to_owned()));
            (
                format!("A two-factor method was removed from your account: {}.", kind.label()),
                "If this wasn't you, someone controls your account: lock it from Security settings and contact \
                 support at once.",
            )
        }
        Notification::PasswordChanged => (
            "The password of your account was changed.".to_owned(),
            "If this wasn't you, reset your password now with \"Forgot password\", lock your account from Security \
             settings and contact support.",
        ),
        Notification::PasswordReset => (
            "The password of your account was reset with a link sent to this address.".to_owned(),
            "If this wasn't you, someone can read this mailbox: secure your email account, then reset your \
             password again and contact support.",
        ),
        Notification::EmailChanged { new_email_masked } => {
            facts.push(("New address", clean(new_email_masked, VALUE_CHARS_MAX)));
            (
                "The email address of your account was changed. Security emails now go to the new address.".to_owned(),
                "If this wasn't you, contact support at once from this address: someone may have taken over your \
                 account.",
            )
        }
        Notification::AntiPhishingCodeChanged => (
            "The anti-phishing code of your account was changed. From now on, genuine emails from us show the new \
             code at the top."
                .to_owned(),
            "If this wasn't you, treat every email showing the new code as suspect, lock your account from \
             Security settings and contact support.",
        ),
        Notification::ApiKeyCreated { key_id, scopes } => {
            facts.push(("Key ID", clean(key_id, VALUE_CHARS_MAX)));
            let scopes = if scopes.is_empty() { "none".to_owned() } else { scopes.join(", ") };
            facts.push(("Permissions", clean(&scopes, VALUE_CHARS_MAX)));
            (
                "A new API key was created for your account.".to_owned(),
                "If this wasn't you, revoke the key in API settings now, change your password and contact support.",
            )
        }
        Notification::ApiKeyRevoked { key_id } => {
            facts.push(("Key ID", clean(key_id, VALUE_CHARS_MAX)));
            (
                "An API key was revoked. Applications that used it can no longer reach your account.".to_owned(),
                IF_NOT_YOU_ACCOUNT,
            )
        }
        Notification::WhitelistChanged { address_masked, added } => {
            facts.push(("Address", clean(address_masked, VALUE_CHARS_MAX)));
            let headline = if *added {
                "A withdrawal address was added to your whitelist."
            } else {
                "A withdrawal address was removed from your whitelist."
            };
            (
                headline.to_owned(),
                "If this wasn't you, lock your account from Security settings now, so that nothing can be \
                 withdrawn, and contact support.",
            )
        }
        Notification::WithdrawalRequested { asset, amount, destination_masked } => {
            facts.push(("Amount", format!("{} {asset}", clean(amount, VALUE_CHARS_MAX))));
            facts.push(("To", clean(destination_masked, VALUE_CHARS_MAX)));
            (
                "A withdrawal was requested from your account.".to_owned(),
                "If this wasn't you, lock your account from Security settings now: a withdrawal can still be \
                 stopped until it is sent. Then contact support.",
            )
        }
        Notification::WithdrawalSent { asset, amount, txid } => {
            facts.push(("Amount", format!("{} {asset}", clean(amount, VALUE_CHARS_MAX))));
            facts.push(("Transaction", clean(txid, VALUE_CHARS_MAX)));
            (
                "Your withdrawal was sent.".to_owned(),
                "If this wasn't you, lock your account from Security settings and contact support at once: a sent \
                 transaction cannot be reversed, but further withdrawals can be stopped.",
            )
        }
        Notification::WhitelistConfirmation { link, address_masked, label } => {
            facts.push(("Address", clean(address_masked, VALUE_CHARS_MAX)));
            facts.push(("Label", clean(label, VALUE_CHARS_MAX)));
            action = Some(("Confirm this address", link_text(link)));
            note = Some(
                "The link works once. After you confirm, the address can be used once its cooling-off period ends."
                    .to_owned(),
            );
            (
                "You asked to add a withdrawal address to your whitelist.".to_owned(),
                "If this wasn't you, do not use the link: lock your account from Security settings now and contact \
                 support.",
            )
        }
        Notification::WithdrawalStatus { asset, amount, status, detail } => {
            facts.push(("Amount", format!("{} {asset}", clean(amount, VALUE_CHARS_MAX))));
            facts.push(("Status", clean(&status.replace('_', " "), VALUE_CHARS_MAX)));
            if !detail.is_empty() {
                facts.push(("Detail", clean(detail, VALUE_CHARS_MAX)));
            }
            (
                "A withdrawal from your account changed status.".to_owned(),
                "If this wasn't you, lock your account from Security settings now and contact support.",
            )
        }
        Notification::AccountLocked { until_ns } => {
            let until = match until_ns {
                Some(ns) => format_time_utc(*ns),
                None => "until you contact support".to_owned(),
            };
            facts.push(("Locked until", until));
            (
                "Your account is locked for your protection: nobody can sign in to it for now.".to_owned(),
                "If this wasn't you, someone may be trying to get into your account: contact support, and change \
                 your password once you can sign in again.",
            )
        }
        Notification::RecoveryStarted { link } => {
            action = Some(("Recover my account", link_text(link)));
            note = Some("The link works once and for an hour. Do not forward this email.".to_owned());
            (
                "Recovery of your account was started. Finishing it sets a new password, ends every session and \
                 pauses withdrawals for 48 hours."
                    .to_owned(),
                "If this wasn't you, ignore this email and contact support: nothing happens unless the link is used \
                 together with your second factor.",
            )
        }
        Notification::RecoveryCompleted { lock_until_ns } => {
            facts.push(("Withdrawals paused until", format_time_utc(*lock_until_ns)));
            (
                "Recovery of your account is complete. As a precaution, withdrawals are paused for a while.".to_owned(),
                "If this wasn't you, contact support at once: nothing can be withdrawn before the pause ends.",
            )
        }
        Notification::SecurityLock { until_ns } => {
            facts.push(("Withdrawals paused until", format_time_utc(*until_ns)));
            (
                "A security setting of your account changed, so withdrawals are paused for a while as a precaution."
                    .to_owned(),
                "If this wasn't you, lock your account from Security settings and contact support: nothing can be \
                 withdrawn before the pause ends.",
            )
        }
    };
    Content { headline, facts, action, note, if_not_you }
}

const NO_CODE_TEXT: &str = "not set. Set one in Security settings: our emails will then show it here, and fakes \
     cannot.";
const REMINDER_WITH_CODE: &str = "Check that the anti-phishing code above is the one you chose before you act on \
     this email. We will never ask for your password, two-factor codes or anti-phishing code.";
const REMINDER_WITHOUT_CODE: &str = "We will never ask for your password or two-factor codes.";

/// Renders a notification as an email to `to`, for an event at `time_ns`.
///
/// The anti-phishing line comes first in both bodies: `Anti-phishing code: <code>` as the first line of the text
/// body and a highlighted box at the top of the HTML body. Without a code, the same place says how to set one, so
/// the place is never empty and a customer learns to look there. The code should have gone through
/// [`crate::parse_anti_phishing_code`]; anything else is still cleaned and escaped, never trusted. The last paragraph
/// tells the customer what to do if this wasn't them.
pub fn render_email(n: &Notification, anti_phishing_code: Option<&str>, to: &str, time_ns: u64) -> EmailMessage {
    let content = content(n, time_ns);
    let title = n.title();
    let subject = format!("{BRAND}: {title}");
    let code = anti_phishing_code.map(|code| clean(code, crate::ANTI_PHISHING_CODE_LEN_MAX));
    let to_shown = clean(to, VALUE_CHARS_MAX);
    EmailMessage {
        to: to.to_owned(),
        text_body: text_body(&content, &title, code.as_deref(), &to_shown),
        html_body: html_body(&content, &subject, &title, code.as_deref(), &to_shown),
        subject,
    }
}

fn text_body(content: &Content, title: &str, code: Option<&str>, to: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail, so the results of `writeln!` are ignored here and below.
    let _ = writeln!(out, "Anti-phishing code: {}", code.unwrap_or(NO_CODE_TEXT));
    let _ = writeln!(out, "\n{title}\n\n{}\n", content.headline);
    for (label, value) in &content.facts {
        let _ = writeln!(out, "{label}: {value}");
    }
    if let Some((label, link)) = &content.action {
        let _ = writeln!(out, "\n{label}:\n{link}");
    }
    if let Some(note) = &content.note {
        let _ = writeln!(out, "\n{note}");
    }
    let reminder = if code.is_some() { REMINDER_WITH_CODE } else { REMINDER_WITHOUT_CODE };
    let _ = writeln!(out, "\n{reminder}\n\nThis email was sent to {to} by {BRAND} Security.\n\n{}", content.if_not_you);
    out
}

const STYLE_BODY: &str = "margin:0;padding:24px;background:#f4f5f7;font-family:Arial,Helvetica,sans-serif;\
     color:#1f2933;font-size:15px;line-height:1.5;";
const STYLE_CARD: &str = "max-width:600px;margin:0 auto;background:#ffffff;padding:24px;";
const STYLE_CODE_BOX: &str = "border:3px solid #0b5cad;background:#e8f1fb;padding:14px 18px;margin:0 0 24px 0;\
     font-size:16px;";
const STYLE_CODE: &str = "font-family:Consolas,Menlo,monospace;font-size:22px;letter-spacing:1px;color:#0b3d75;";
const STYLE_BUTTON: &str = "display:inline-block;background:#0b5cad;color:#ffffff;padding:10px 18px;\
     text-decoration:none;border-radius:4px;font-weight:bold;";
const STYLE_SMALL: &str = "font-size:13px;color:#52606d;";

fn html_body(content: &Content, subject: &str, title: &str, code: Option<&str>, to: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title></head>\n\
         <body style=\"{STYLE_BODY}\">\n<div style=\"{STYLE_CARD}\">\n",
        escape_html(subject)
    );
    let _ = write!(out, "<div id=\"anti-phishing-code\" style=\"{STYLE_CODE_BOX}\">Anti-phishing code: ");
    match code {
        Some(code) => {
            let _ = writeln!(out, "<strong style=\"{STYLE_CODE}\">{}</strong></div>", escape_html(code));
        }
        None => {
            let _ = writeln!(out, "<strong>{}</strong></div>", escape_html(NO_CODE_TEXT));
        }
    }
    let _ = writeln!(out, "<h1 style=\"font-size:20px;\">{}</h1>", escape_html(title));
    let _ = writeln!(out, "<p>{}</p>", escape_html(&content.headline));
    let _ = writeln!(out, "<table role=\"presentation\" style=\"border-collapse:collapse;margin:16px 0;\">");
    for (label, value) in &content.facts {
        let _ = writeln!(
            out,
            "<tr><td style=\"padding:4px 16px 4px 0;color:#52606d;vertical-align:top;\">{}</td>\
             <td style=\"padding:4px 0;word-break:break-all;\">{}</td></tr>",
            escape_html(label),
            escape_html(value)
        );
    }
    let _ = writeln!(out, "</table>");
    if let Some((label, link)) = &content.action {
        let link_html = escape_html(link);
        if is_web_link(link) {
            let _ = writeln!(
                out,
                "<p><a href=\"{link_html}\" style=\"{STYLE_BUTTON}\">{}</a></p>\n\
                 <p style=\"{STYLE_SMALL}word-break:break-all;\">Or copy this link into your browser: {link_html}</p>",
                escape_html(label)
            );
        } else {
            let _ = writeln!(out, "<p>{}: {link_html}</p>", escape_html(label));
        }
    }
    if let Some(note) = &content.note {
        let _ = writeln!(out, "<p>{}</p>", escape_html(note));
    }
    let reminder = if code.is_some() { REMINDER_WITH_CODE } else { REMINDER_WITHOUT_CODE };
    let _ = writeln!(out, "<p style=\"{STYLE_SMALL}\">{}</p>", escape_html(reminder));
    let _ =
        writeln!(out, "<p style=\"{STYLE_SMALL}\">This email was sent to {} by {BRAND} Security.</p>", escape_html(to));
    let _ = writeln!(out, "<p><strong>{}</strong></p>\n</div>\n</body>\n</html>", escape_html(content.if_not_you));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use rampart_core::AssetCode;

    use super::*;
    use crate::notification::FactorKind;

    const T: u64 = 1_767_323_045_123_456_789; // 2026-01-02 03:04:05.123456789 UTC

    fn device() -> DeviceInfo {
        DeviceInfo {
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".to_owned(),
            ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            country: Some("France".to_owned()),
        }
    }

    /// One value of every variant. The `match` has no wildcard, so a new variant does not compile until it is
    /// added here too.
    fn samples() -> Vec<Notification> {
        let all = vec![
            Notification::EmailVerification { link: SecretLink::new("https://rampart.example/verify?t=tok_abc") },
            Notification::NewDeviceConfirmation {
                link: SecretLink::new("https://rampart.example/confirm?t=tok_def"),
                device: device(),
            },
            Notification::SignInNewDevice { device: device() },
            Notification::SignInNewCountry {
                device: DeviceInfo { country: None, ip: IpAddr::V6(Ipv6Addr::LOCALHOST), ..device() },
                country: "Japan".to_owned(),
            },
            Notification::FactorAdded { kind: FactorKind::Passkey },
            Notification::FactorRemoved { kind: FactorKind::Totp },
            Notification::PasswordChanged,
            Notification::PasswordReset,
            Notification::EmailChanged { new_email_masked: "b***@example.org".to_owned() },
            Notification::AntiPhishingCodeChanged,
            Notification::ApiKeyCreated {
                key_id: "ak_01HZX".to_owned(),
                scopes: vec!["read".to_owned(), "trade".to_owned()],
            },
            Notification::ApiKeyRevoked { key_id: "ak_01HZX".to_owned() },
            Notification::WhitelistChanged { address_masked: "bc1qxy…0wlh".to_owned(), added: true },
            Notification::WithdrawalRequested {
                asset: AssetCode::BTC,
                amount: "0.5".to_owned(),
                destination_masked: "bc1qxy…0wlh".to_owned(),
            },
            Notification::WithdrawalSent { asset: AssetCode::ETH, amount: "1.25".to_owned(), txid: "0xabc".to_owned() },
            Notification::WhitelistConfirmation {
                link: SecretLink::new("https://rampart.example/confirm-address?t=tok_wl"),
                address_masked: "bc1qxy…0wlh".to_owned(),
                label: "cold storage".to_owned(),
            },
            Notification::WithdrawalStatus {
                asset: AssetCode::BTC,
                amount: "0.5".to_owned(),
                status: "awaiting_approval".to_owned(),
                detail: "three approvals needed".to_owned(),
            },
            Notification::AccountLocked { until_ns: Some(T + 3_600_000_000_000) },
            Notification::RecoveryStarted { link: SecretLink::new("https://rampart.example/recover?t=tok_rec") },
            Notification::RecoveryCompleted { lock_until_ns: T + 86_400_000_000_000 },
            Notification::SecurityLock { until_ns: T + 86_400_000_000_000 },
        ];
        for n in &all {
            match n {
                Notification::EmailVerification { .. }
                | Notification::NewDeviceConfirmation { .. }
                | Notification::SignInNewDevice { .. }
                | Notification::SignInNewCountry { .. }
                | Notification::FactorAdded { .. }
                | Notification::FactorRemoved { .. }
                | Notification::PasswordChanged
                | Notification::PasswordReset
                | Notification::EmailChanged { .. }
                | Notification::AntiPhishingCodeChanged
                | Notification::ApiKeyCreated { .. }
                | Notification::ApiKeyRevoked { .. }
                | Notification::WhitelistChanged { .. }
                | Notification::WithdrawalRequested { .. }
                | Notification::WithdrawalSent { .. }
                | Notification::WhitelistConfirmation { .. }
                | Notification::WithdrawalStatus { .. }
                | Notification::AccountLocked { .. }
                | Notification::RecoveryStarted { .. }
                | Notification::RecoveryCompleted { .. }
                | Notification::SecurityLock { .. } => {}
            }
        }
        let kinds: BTreeSet<&str> = all.iter().map(Notification::kind).collect();
        assert_eq!(kinds.len(), 21, "one sample per variant");
        all
    }

    #[test]
    fn every_variant_renders_with_a_code() {
        for n in samples() {
            let m = render_email(&n, Some("Blue-Falcon_42"), "alice@example.com", T);
            assert_eq!(m.to, "alice@example.com");
            assert_eq!(m.subject, format!("Rampart: {}", n.title()));
            assert_eq!(m.text_body.lines().next(), Some("Anti-phishing code: Blue-Falcon_42"), "{}", n.kind());
            let box_start = m.html_body.find("id=\"anti-phishing-code\"").expect("the box");
            let code_at = m.html_body.find("Blue-Falcon_42").expect("the code in the HTML");
            assert!(box_start < code_at);
            // The box is the first thing in the body: no content of the message comes before it.
            assert!(box_start < m.html_body.find("<h1").unwrap());
            assert_eq!(m.html_body.matches("Blue-Falcon_42").count(), 1);
            assert!(m.text_body.contains("Time: 2026-01-02 03:04:05 UTC"), "{}", n.kind());
            assert!(m.text_body.contains("sent to alice@example.com"));
            assert!(m.text_body.contains("the one you chose"));
            // The guidance is the last paragraph of both bodies.
            let last = m.text_body.trim_end().rsplit("\n\n").next().unwrap();
            assert!(last.starts_with("If this wasn't you, "), "{}: {last}", n.kind());
            assert!(m.html_body.contains(&format!("<p><strong>{}</strong></p>\n</div>", escape_html(last))));
            assert!(!m.subject.contains('\n') && !m.subject.contains('\r'));
        }
    }

    #[test]
    fn every_variant_renders_without_a_code() {
        for n in samples() {
            let m = render_email(&n, None, "alice@example.com", T);
            let first = m.text_body.lines().next().unwrap();
            assert!(first.starts_with("Anti-phishing code: not set. Set one in Security settings"), "{first}");
            assert!(m.html_body.contains("id=\"anti-phishing-code\""));
            assert!(m.html_body.contains("<strong>not set. Set one in Security settings"));
            assert!(!m.text_body.contains("the one you chose"));
            assert!(m.text_body.trim_end().rsplit("\n\n").next().unwrap().starts_with("If this wasn't you, "));
        }
    }

    #[test]
    fn links_are_shown_and_clickable() {
        let n = Notification::EmailVerification { link: SecretLink::new("https://rampart.example/verify?t=a&b=c") };
        let m = render_email(&n, None, "alice@example.com", T);
        assert!(m.text_body.contains("\nhttps://rampart.example/verify?t=a&b=c\n"));
        assert!(m.html_body.contains("<a href=\"https://rampart.example/verify?t=a&amp;b=c\""));
    }

    #[test]
    fn a_link_that_is_not_a_web_link_is_not_clickable() {
        for link in ["javascript:alert(1)", "data:text/html,<script>x</script>", " https://x", "JAVASCRIPT:x"] {
            let n = Notification::EmailVerification { link: SecretLink::new(link) };
            let m = render_email(&n, None, "alice@example.com", T);
            assert!(!m.html_body.contains("<a "), "{link}");
            assert!(!m.html_body.contains("<script"), "{link}");
        }
        let upper = Notification::EmailVerification { link: SecretLink::new("HTTPS://rampart.example/v") };
        assert!(render_email(&upper, None, "a@b.c", T).html_body.contains("<a href=\"HTTPS://rampart.example/v\""));
    }

    #[test]
    fn hostile_values_are_escaped_and_cannot_add_lines() {
        let hostile = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>\r\nAnti-phishing code: FAKE\u{202e}";
        let n = Notification::SignInNewCountry {
            device: DeviceInfo { user_agent: hostile.to_owned(), ip: IpAddr::V4(Ipv4Addr::LOCALHOST), country: None },
            country: "<b>Narnia</b>".to_owned(),
        };
        let m = render_email(&n, Some("REAL-CODE"), "<x>@example.com", T);
        assert!(!m.html_body.contains("<script"));
        assert!(!m.html_body.contains("<img"));
        assert!(!m.html_body.contains("<b>"));
        assert!(m.html_body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;&lt;img"));
        assert!(m.html_body.contains("&lt;b&gt;Narnia&lt;/b&gt;"));
        assert!(m.html_body.contains("&lt;x&gt;@example.com"));
        // The fake anti-phishing line stays on the device's line instead of starting one of its own.
        assert_eq!(m.text_body.lines().filter(|l| l.starts_with("Anti-phishing code:")).count(), 1);
        assert!(m.text_body.contains("\u{FFFD}\u{FFFD}Anti-phishing code: FAKE\u{FFFD}"));
        assert!(!m.text_body.contains('\u{202e}') && !m.html_body.contains('\u{202e}'));
    }

    #[test]
    fn an_unparsed_code_is_still_made_harmless() {
        let m = render_email(&Notification::PasswordChanged, Some("<b>x</b>\r\nBcc: y"), "a@b.c", T);
        assert!(m.html_body.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(!m.html_body.contains("<b>x"));
        assert_eq!(m.text_body.lines().next(), Some("Anti-phishing code: <b>x</b>\u{FFFD}\u{FFFD}Bcc: y"));
    }

    #[test]
    fn long_values_are_cut() {
        let n = Notification::SignInNewDevice { device: DeviceInfo { user_agent: "A".repeat(10_000), ..device() } };
        let m = render_email(&n, None, "a@b.c", T);
        assert!(m.text_body.contains(&format!("Device: {}…\n", "A".repeat(VALUE_CHARS_MAX))));
        assert!(!m.text_body.contains(&"A".repeat(VALUE_CHARS_MAX + 1)));
    }

    #[test]
    fn a_lock_without_end_says_so() {
        let m = render_email(&Notification::AccountLocked { until_ns: None }, None, "a@b.c", T);
        assert!(m.text_body.contains("Locked until: until you contact support"));
        let m = render_email(&Notification::AccountLocked { until_ns: Some(T) }, None, "a@b.c", T);
        assert!(m.text_body.contains("Locked until: 2026-01-02 03:04:05 UTC"));
    }

    #[test]
    fn debug_hides_bodies_and_links() {
        let n = Notification::EmailVerification { link: SecretLink::new("https://rampart.example/verify?t=tok_abc") };
        assert!(!format!("{n:?}").contains("tok_abc"));
        let m = render_email(&n, Some("SECRETCODE"), "alice@example.com", T);
        let debug = format!("{m:?}");
        assert!(!debug.contains("tok_abc") && !debug.contains("SECRETCODE"));
        assert!(debug.contains("alice@example.com"));
    }

    #[test]
    fn json_round_trips_with_the_kind_as_tag() {
        for n in samples() {
            let json = serde_json::to_value(&n).unwrap();
            assert_eq!(json["kind"], n.kind(), "{json}");
            let back: Notification = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(back, n, "{json}");
        }
        let json = serde_json::to_value(Notification::FactorAdded { kind: FactorKind::SecurityKey }).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "factor_added", "factor": "security_key"}));
        let json = serde_json::to_value(Notification::SecurityLock { until_ns: u64::MAX }).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "security_lock", "until_ns": "18446744073709551615"}));
        let json = serde_json::to_value(Notification::AccountLocked { until_ns: None }).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "account_locked"}));
        let json = serde_json::to_value(Notification::PasswordChanged).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "password_changed"}));
        let link = serde_json::to_value(Notification::EmailVerification { link: SecretLink::new("https://x/y") });
        assert_eq!(link.unwrap(), serde_json::json!({"kind": "email_verification", "link": "https://x/y"}));
    }

    #[test]
    fn json_refuses_bad_timestamps_and_kinds() {
        for bad in [
            r#"{"kind":"security_lock","until_ns":5}"#,
            r#"{"kind":"security_lock","until_ns":"-5"}"#,
            r#"{"kind":"security_lock","until_ns":""}"#,
            r#"{"kind":"security_lock","until_ns":"18446744073709551616"}"#,
            r#"{"kind":"security_lock"}"#,
            r#"{"kind":"account_locked","until_ns":" 1"}"#,
            r#"{"kind":"no_such_kind"}"#,
            r#"{"until_ns":"1"}"#,
        ] {
            assert!(serde_json::from_str::<Notification>(bad).is_err(), "{bad}");
        }
        let n: Notification = serde_json::from_str(r#"{"kind":"account_locked","until_ns":null}"#).unwrap();
        assert_eq!(n, Notification::AccountLocked { until_ns: None });
    }

    #[test]
    fn times() {
        assert_eq!(format_time_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time_utc(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time_utc(951_868_799 * 1_000_000_000 + 999_999_999), "2000-02-29 23:59:59 UTC");
        assert_eq!(format_time_utc(4_107_542_400 * 1_000_000_000), "2100-03-01 00:00:00 UTC");
        assert_eq!(format_time_utc(T), "2026-01-02 03:04:05 UTC");
        assert_eq!(format_time_utc(u64::MAX), "2554-07-21 23:34:33 UTC");
    }

    #[test]
    fn the_cleaner_keeps_ordinary_text() {
        assert_eq!(clean("Zürich, Côte d'Ivoire 日本", 200), "Zürich, Côte d'Ivoire 日本");
        assert_eq!(clean("ab\tc\u{200b}d", 200), "ab\u{FFFD}c\u{FFFD}d");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("abc", 3), "abc");
    }
}
