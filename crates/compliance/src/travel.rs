//! The Travel Rule (FATF Recommendation 16): a transfer at or above a threshold (by default USD 1,000) carries who
//! sends it and who receives it, and for a hosted wallet the institution that hosts it.

use serde::{Deserialize, Serialize};

use crate::kyc::{Invalid, USD};

/// Transfers of at least this many micro-dollars carry Travel Rule data: USD 1,000.
pub const DEFAULT_THRESHOLD: u64 = 1_000 * USD;

/// Whether a transfer of `amount_usd` micro-dollars must carry the data.
pub fn required(amount_usd: u64, threshold: u64) -> bool {
    amount_usd >= threshold
}

/// One side of a transfer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// Full name (a person's or a company's).
    pub name: String,
    /// Their account: an account number at the exchange, or the wallet address.
    pub account: String,
    /// For a hosted wallet: the institution (a VASP's name or LEI). `None` for a self-hosted wallet.
    #[serde(default)]
    pub institution: Option<String>,
    /// Their address, national id or date and place of birth, when the sending side's rules ask for it.
    #[serde(default)]
    pub details: Option<String>,
}

/// The information a transfer carries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TravelRule {
    /// Who sends.
    pub originator: Party,
    /// Who receives.
    pub beneficiary: Party,
}

impl std::fmt::Debug for TravelRule {
    /// Personal data never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TravelRule { <redacted> }")
    }
}

fn field(name: &str, value: &str, max: usize) -> Result<(), Invalid> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Invalid { code: "missing_field", message: format!("{name} is required") });
    }
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(Invalid {
            code: "invalid_field",
            message: format!("{name} has at most {max} characters and no control characters"),
        });
    }
    Ok(())
}

impl TravelRule {
    /// Checks that both sides are named and have an account, and that a named institution is not empty.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (side, p) in [("originator", &self.originator), ("beneficiary", &self.beneficiary)] {
            field(&format!("{side}.name"), &p.name, 200)?;
            field(&format!("{side}.account"), &p.account, 200)?;
            if let Some(i) = &p.institution {
                field(&format!("{side}.institution"), i, 200)?;
            }
            if let Some(d) = &p.details {
                field(&format!("{side}.details"), d, 1000)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(name: &str) -> Party {
        Party { name: name.into(), account: "acct-1".into(), institution: None, details: None }
    }

    #[test]
    fn both_sides_must_be_named() {
        let ok = TravelRule { originator: party("Jane Public"), beneficiary: party("John Doe") };
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.beneficiary.name = "  ".into();
        assert_eq!(bad.validate().unwrap_err().code, "missing_field");
        let mut bad = ok.clone();
        bad.beneficiary.institution = Some(String::new());
        assert_eq!(bad.validate().unwrap_err().code, "missing_field");
        assert!(!format!("{ok:?}").contains("Jane"));
    }

    #[test]
    fn the_threshold_is_inclusive() {
        assert!(required(1_000 * USD, DEFAULT_THRESHOLD));
        assert!(!required(1_000 * USD - 1, DEFAULT_THRESHOLD));
    }
}
