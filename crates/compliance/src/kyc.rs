//! Know your customer: the verification levels and their withdrawal limits, what a submission must carry at each
//! level, and how its personal data is masked for those who may not see it.
//!
//! Level 0 is an account with a verified email; level 1 has proved an identity (name, date of birth, nationality
//! and an identity document); level 2 has proved an address and the source of funds besides (enhanced due
//! diligence). Limits are in USD micro-dollars, per day and per calendar month.

use serde::{Deserialize, Serialize};

use crate::countries;

/// A verification level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Level {
    /// Email verified.
    Zero,
    /// Identity verified.
    One,
    /// Address and source of funds verified (enhanced).
    Two,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Zero, Level::One, Level::Two];

    /// The level's number.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The level numbered `n`.
    pub fn from_number(n: u8) -> Option<Level> {
        Level::ALL.get(usize::from(n)).copied()
    }
}

impl From<Level> for u8 {
    fn from(level: Level) -> u8 {
        level.number()
    }
}

impl TryFrom<u8> for Level {
    type Error = String;
    fn try_from(n: u8) -> Result<Level, String> {
        Level::from_number(n).ok_or_else(|| format!("there is no KYC level {n}: levels are 0, 1 and 2"))
    }
}

/// One level's withdrawal limits, in USD micro-dollars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Over any calendar day (UTC).
    pub daily: u64,
    /// Over any calendar month (UTC).
    pub monthly: u64,
}

/// USD in micro-dollars.
pub const USD: u64 = 1_000_000;

/// The limits of every level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelLimits(pub [Limits; 3]);

impl Default for LevelLimits {
    /// Level 0: USD 1,000 a day, 5,000 a month; level 1: 50,000 and 500,000; level 2: 2,000,000 and 20,000,000.
    fn default() -> LevelLimits {
        LevelLimits([
            Limits { daily: 1_000 * USD, monthly: 5_000 * USD },
            Limits { daily: 50_000 * USD, monthly: 500_000 * USD },
            Limits { daily: 2_000_000 * USD, monthly: 20_000_000 * USD },
        ])
    }
}

/// A withdrawal over a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct OverLimit {
    /// `daily` or `monthly`.
    pub window: &'static str,
    /// The limit.
    pub limit: u64,
    /// What may still be withdrawn in that window.
    pub remaining: u64,
}

impl LevelLimits {
    /// The limits of `level`.
    pub fn of(&self, level: Level) -> Limits {
        self.0[usize::from(level.number())]
    }

    /// Checks that the limits never shrink as the level rises and that a day's never exceeds a month's.
    pub fn validate(&self) -> Result<(), String> {
        for (i, l) in self.0.iter().enumerate() {
            if l.daily > l.monthly {
                return Err(format!("KYC level {i}: the daily limit exceeds the monthly limit"));
            }
        }
        for w in self.0.windows(2) {
            if w[1].daily < w[0].daily || w[1].monthly < w[0].monthly {
                return Err("KYC limits must not fall as the level rises".into());
            }
        }
        Ok(())
    }

    /// Whether `amount` may be withdrawn by a customer of `level` who has withdrawn `today` and `this_month` already
    /// (all in micro-dollars).
    pub fn check(&self, level: Level, today: u64, this_month: u64, amount: u64) -> Result<(), OverLimit> {
        let l = self.of(level);
        for (window, limit, used) in [("daily", l.daily, today), ("monthly", l.monthly, this_month)] {
            let remaining = limit.saturating_sub(used);
            if amount > remaining {
                return Err(OverLimit { window, limit, remaining });
            }
        }
        Ok(())
    }
}

/// What a document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// A passport.
    Passport,
    /// A national identity card.
    IdCard,
    /// A driving licence.
    DrivingLicence,
    /// A photograph of the person holding the document.
    Selfie,
    /// A utility bill or bank statement proving the address.
    ProofOfAddress,
    /// Payslips, a sale contract, statements: where the money comes from.
    SourceOfFunds,
}

impl DocumentKind {
    fn proves_identity(self) -> bool {
        matches!(self, DocumentKind::Passport | DocumentKind::IdCard | DocumentKind::DrivingLicence)
    }
}

/// The largest document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 10 * 1024 * 1024;

/// The document formats accepted, recognised by their first bytes (not by what the client says they are).
pub fn document_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]) {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else {
        None
    }
}

/// A postal address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Street and number.
    pub line1: String,
    /// Flat, building (optional).
    #[serde(default)]
    pub line2: String,
    /// City.
    pub city: String,
    /// Postcode.
    pub postcode: String,
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
}

/// The personal data of a submission (documents travel beside it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The level applied for.
    pub level: Level,
    /// Full legal name.
    pub legal_name: String,
    /// `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// ISO 3166-1 alpha-2 code.
    pub nationality: String,
    /// Residential address (level 2).
    #[serde(default)]
    pub address: Option<Address>,
    /// Where the funds come from, in the customer's words (level 2).
    #[serde(default)]
    pub source_of_funds: Option<String>,
}

impl std::fmt::Debug for Identity {
    /// Personal data never reaches logs: only the level shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("level", &self.level).finish_non_exhaustive()
    }
}

/// Why a submission is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// A stable code.
    pub code: &'static str,
    /// What is wrong, for the customer.
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { code, message: message.into() }
}

fn text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid("missing_field", format!("{field} is required")));
    }
    if value.chars().count() > max {
        return Err(invalid("field_too_long", format!("{field} has at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("invalid_field", format!("{field} contains control characters")));
    }
    Ok(())
}

fn country(field: &str, code: &str) -> Result<(), Invalid> {
    if countries::is_code(code) {
        Ok(())
    } else {
        Err(invalid("invalid_country", format!("{field} is an ISO 3166-1 alpha-2 code such as GB or SG")))
    }
}

/// A date `YYYY-MM-DD` as (year, month, day), checked against the calendar.
pub fn parse_date(s: &str) -> Option<(u16, u8, u8)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u16> {
        let part = &s[r];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d == 0 || d > days {
        return None;
    }
    Some((y, u8::try_from(m).ok()?, u8::try_from(d).ok()?))
}

/// Checks a submission: the fields its level needs, well formed, a date of birth of an adult (`today` is
/// `YYYY-MM-DD`), and among `documents` those its level needs.
pub fn validate(identity: &Identity, documents: &[DocumentKind], today: &str) -> Result<(), Invalid> {
    if identity.level == Level::Zero {
        return Err(invalid("invalid_level", "level 0 needs no submission: apply for level 1 or 2"));
    }
    text("legal_name", &identity.legal_name, 200)?;
    let born = parse_date(&identity.date_of_birth)
        .ok_or_else(|| invalid("invalid_date_of_birth", "date_of_birth is a date YYYY-MM-DD"))?;
    let now = parse_date(today).ok_or_else(|| invalid("invalid_date", "today is not a date"))?;
    let age = now.0.saturating_sub(born.0) - u16::from((now.1, now.2) < (born.1, born.2));
    if born > now || age < 18 {
        return Err(invalid("underage", "customers must be at least 18 years old"));
    }
    if age > 130 {
        return Err(invalid("invalid_date_of_birth", "date_of_birth is too long ago"));
    }
    country("nationality", &identity.nationality)?;
    if !documents.iter().any(|d| d.proves_identity()) {
        return Err(invalid("document_required", "a passport, identity card or driving licence is required"));
    }
    if identity.level == Level::Two {
        let address =
            identity.address.as_ref().ok_or_else(|| invalid("missing_field", "address is required for level 2"))?;
        text("address.line1", &address.line1, 200)?;
        if !address.line2.is_empty() {
            text("address.line2", &address.line2, 200)?;
        }
        text("address.city", &address.city, 100)?;
        text("address.postcode", &address.postcode, 20)?;
        country("address.country", &address.country)?;
        text("source_of_funds", identity.source_of_funds.as_deref().unwrap_or(""), 2000)?;
        for (kind, what) in [
            (DocumentKind::ProofOfAddress, "a proof of address"),
            (DocumentKind::SourceOfFunds, "a source-of-funds document"),
        ] {
            if !documents.contains(&kind) {
                return Err(invalid("document_required", format!("{what} is required for level 2")));
            }
        }
    }
    Ok(())
}

/// Masks a name: the first letter of each word (`Jane Q. Public` → `J*** Q*** P***`).
pub fn mask_name(name: &str) -> String {
    name.split_whitespace()
        .map(|w| w.chars().next().map_or_else(String::new, |c| format!("{c}***")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Masks a date of birth to its year (`1980-04-17` → `1980-**-**`).
pub fn mask_date(date: &str) -> String {
    match date.get(..4) {
        Some(year) if date.len() == 10 => format!("{year}-**-**"),
        _ => "****-**-**".into(),
    }
}

/// Masks free text whole, keeping its length class only.
pub fn mask_text(text: &str) -> String {
    if text.is_empty() { String::new() } else { "***".into() }
}

impl Identity {
    /// The same identity with every personal field masked (for staff whose role does not show personal data).
    pub fn masked(&self) -> Identity {
        Identity {
            level: self.level,
            legal_name: mask_name(&self.legal_name),
            date_of_birth: mask_date(&self.date_of_birth),
            nationality: self.nationality.clone(),
            address: self.address.as_ref().map(|a| Address {
                line1: mask_text(&a.line1),
                line2: mask_text(&a.line2),
                city: mask_text(&a.city),
                postcode: mask_text(&a.postcode),
                country: a.country.clone(),
            }),
            source_of_funds: self.source_of_funds.as_deref().map(mask_text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(level: Level) -> Identity {
        Identity {
            level,
            legal_name: "Jane Quinn Public".into(),
            date_of_birth: "1980-04-17".into(),
            nationality: "GB".into(),
            address: Some(Address {
                line1: "1 High Street".into(),
                line2: String::new(),
                city: "London".into(),
                postcode: "N1 1AA".into(),
                country: "GB".into(),
            }),
            source_of_funds: Some("salary".into()),
        }
    }

    #[test]
    fn limits_say_which_window_is_exceeded_and_what_remains() {
        let limits = LevelLimits::default();
        assert_eq!(limits.check(Level::Zero, 0, 0, 1_000 * USD), Ok(()));
        let over = limits.check(Level::Zero, 600 * USD, 600 * USD, 500 * USD).unwrap_err();
        assert_eq!((over.window, over.remaining), ("daily", 400 * USD));
        let over = limits.check(Level::Zero, 0, 4_900 * USD, 500 * USD).unwrap_err();
        assert_eq!((over.window, over.remaining), ("monthly", 100 * USD));
        assert_eq!(limits.check(Level::One, 0, 4_900 * USD, 500 * USD), Ok(()));
        assert!(limits.validate().is_ok());
        let mut shrinking = limits;
        shrinking.0[2].daily = 1;
        assert!(shrinking.validate().is_err());
    }

    #[test]
    fn each_level_needs_its_fields_and_documents() {
        let id_doc = [DocumentKind::Passport];
        assert_eq!(validate(&identity(Level::One), &id_doc, "2026-12-03"), Ok(()));
        assert_eq!(
            validate(&identity(Level::One), &[DocumentKind::Selfie], "2026-12-03").unwrap_err().code,
            "document_required"
        );
        assert_eq!(validate(&identity(Level::Two), &id_doc, "2026-12-03").unwrap_err().code, "document_required");
        let all = [DocumentKind::IdCard, DocumentKind::ProofOfAddress, DocumentKind::SourceOfFunds];
        assert_eq!(validate(&identity(Level::Two), &all, "2026-12-03"), Ok(()));
        let mut no_address = identity(Level::Two);
        no_address.address = None;
        assert_eq!(validate(&no_address, &all, "2026-12-03").unwrap_err().code, "missing_field");
        let mut young = identity(Level::One);
        young.date_of_birth = "2008-12-04".into();
        assert_eq!(validate(&young, &id_doc, "2026-12-03").unwrap_err().code, "underage");
        young.date_of_birth = "2008-12-03".into();
        assert_eq!(validate(&young, &id_doc, "2026-12-03"), Ok(()));
        let mut bad = identity(Level::One);
        bad.date_of_birth = "1980-02-30".into();
        assert_eq!(validate(&bad, &id_doc, "2026-12-03").unwrap_err().code, "invalid_date_of_birth");
        bad.date_of_birth = "1980-04-17".into();
        bad.nationality = "XX".into();
        assert_eq!(validate(&bad, &id_doc, "2026-12-03").unwrap_err().code, "invalid_country");
        bad.nationality = "GB".into();
        bad.legal_name = " ".into();
        assert_eq!(validate(&bad, &id_doc, "2026-12-03").unwrap_err().code, "missing_field");
        assert_eq!(validate(&identity(Level::Zero), &id_doc, "2026-12-03").unwrap_err().code, "invalid_level");
    }

    #[test]
    fn masking_hides_personal_data_and_debug_shows_none() {
        let m = identity(Level::Two).masked();
        assert_eq!(m.legal_name, "J*** Q*** P***");
        assert_eq!(m.date_of_birth, "1980-**-**");
        assert_eq!(m.address.as_ref().map(|a| a.line1.as_str()), Some("***"));
        assert_eq!(m.nationality, "GB");
        let debug = format!("{:?}", identity(Level::Two));
        assert!(!debug.contains("Jane") && !debug.contains("1980") && !debug.contains("High"), "{debug}");
    }

    #[test]
    fn documents_are_recognised_by_their_bytes() {
        assert_eq!(document_format(b"%PDF-1.7\n..."), Some("application/pdf"));
        assert_eq!(document_format(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(document_format(b"<html>"), None);
    }
}
