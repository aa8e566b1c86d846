//! Exact conversion between decimal strings in an asset's unit ("0.00012345" BTC) and [`Amount`]s
//! in its smallest unit (12345 satoshi).
//!
//! Both directions work digit by digit on integers and strings, never through a float: a float
//! cannot hold 0.1 exactly, and an amount that changes on its way through a parser is a loss of
//! funds. The parser is strict because its input is untrusted: anything that is not plainly
//! `digits` or `digits.digits` is refused with the reason, rather than guessed at.

use crate::Amount;

/// Why a string is not an amount of an asset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountParseError {
    /// The string was empty.
    #[error("an amount must not be empty")]
    Empty,
    /// The string contained whitespace somewhere, leading, trailing or inside.
    #[error("an amount must not contain whitespace")]
    Whitespace,
    /// The string started with `+` or `-`; amounts are unsigned and written without a sign.
    #[error("an amount must not have a sign")]
    Sign,
    /// The string used exponent notation such as `1e8`.
    #[error("an amount must not use exponent notation")]
    Exponent,
    /// A decimal point without digits on both sides, such as `.5`, `1.` or `.`.
    #[error("an amount needs digits on both sides of the decimal point")]
    MissingDigits,
    /// More than one decimal point, such as `1.2.3`.
    #[error("an amount must have at most one decimal point")]
    MultipleDecimalPoints,
    /// A character that is neither an ASCII digit nor the decimal point, such as `,` or `x`.
    #[error("invalid character {0:?} in amount")]
    InvalidCharacter(char),
    /// More fractional digits than the asset has decimals, trailing zeros included.
    #[error("too many decimal places: at most {decimals}")]
    TooManyDecimals {
        /// The number of decimals of the asset.
        decimals: u8,
    },
    /// The amount in smallest units does not fit in an [`Amount`].
    #[error("amount is too large")]
    Overflow,
}

/// Parses a decimal string in an asset's unit into an [`Amount`] of its smallest unit, where the
/// asset has `decimals` decimal places: `parse_amount("0.00012345", 8)` is `Amount::new(12345)`.
///
/// Accepted: one or more ASCII digits, optionally followed by a point and one or more ASCII digits,
/// with at most `decimals` of them. Leading zeros are allowed (`007.5`). Everything else is refused,
/// and the checks run in a fixed order so that the reason is predictable: empty, whitespace, sign,
/// exponent, the shape of the number, the number of decimals, and finally overflow.
///
/// Any `decimals` is accepted without panicking; beyond 38 even a whole unit exceeds `u128`, so
/// only amounts smaller than one unit can succeed there.
pub fn parse_amount(s: &str, decimals: u8) -> Result<Amount, AmountParseError> {
    if s.is_empty() {
        return Err(AmountParseError::Empty);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(AmountParseError::Whitespace);
    }
    if s.starts_with(['+', '-']) {
        return Err(AmountParseError::Sign);
    }
    if s.contains(['e', 'E']) {
        return Err(AmountParseError::Exponent);
    }
    if let Some(c) = s.chars().find(|&c| !c.is_ascii_digit() && c != '.') {
        return Err(AmountParseError::InvalidCharacter(c));
    }

    // From here on the string holds only ASCII digits and points.
    let (integer, fraction) = match s.split_once('.') {
        None => (s, ""),
        Some((_, rest)) if rest.contains('.') => {
            return Err(AmountParseError::MultipleDecimalPoints);
        }
        Some((integer, fraction)) => {
            if integer.is_empty() || fraction.is_empty() {
                return Err(AmountParseError::MissingDigits);
            }
            (integer, fraction)
        }
    };
    if fraction.len() > usize::from(decimals) {
        return Err(AmountParseError::TooManyDecimals { decimals });
    }

    // Accumulating digit by digit, rather than multiplying the integer part by 10^decimals, keeps
    // the arithmetic exact for any `decimals`: 10^39 does not fit in u128, but an amount whose
    // digits are all zero still needs no room at all.
    let mut units: u128 = 0;
    for digit in integer.bytes().chain(fraction.bytes()) {
        units = push_digit(units, digit - b'0')?;
    }
    for _ in fraction.len()..usize::from(decimals) {
        units = push_digit(units, 0)?;
    }
    Ok(Amount::new(units))
}

/// `units * 10 + digit`, or [`AmountParseError::Overflow`].
fn push_digit(units: u128, digit: u8) -> Result<u128, AmountParseError> {
    units.checked_mul(10).and_then(|u| u.checked_add(u128::from(digit))).ok_or(AmountParseError::Overflow)
}

/// Formats an [`Amount`] of an asset with `decimals` decimal places as an exact decimal string in
/// the asset's unit, in its shortest form: `format_amount(Amount::new(150_000_000), 8)` is `"1.5"`.
///
/// Trailing fractional zeros and a bare trailing point are left out, and there is always at least
/// one digit before the point (`"0.00012345"`). The result parses back to the same amount with
/// [`parse_amount`] and the same `decimals`.
pub fn format_amount(amount: Amount, decimals: u8) -> String {
    let digits = amount.units().to_string();
    let decimals = usize::from(decimals);
    if decimals == 0 {
        return digits;
    }
    // Left-pad with zeros so that there is at least one digit before the point.
    let padded = if digits.len() <= decimals { format!("{digits:0>width$}", width = decimals + 1) } else { digits };
    let (integer, fraction) = padded.split_at(padded.len() - decimals);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() { integer.to_owned() } else { format!("{integer}.{fraction}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str, decimals: u8) -> Result<u128, AmountParseError> {
        parse_amount(s, decimals).map(Amount::units)
    }

    #[test]
    fn parses_the_examples() {
        assert_eq!(parse_amount("0.00012345", 8), Ok(Amount::new(12345)));
        assert_eq!(parse("1", 8), Ok(100_000_000));
        assert_eq!(parse("1.5", 8), Ok(150_000_000));
        assert_eq!(parse("0", 8), Ok(0));
        assert_eq!(parse("0.0", 8), Ok(0));
        assert_eq!(parse("007.5", 8), Ok(750_000_000));
        assert_eq!(parse("1.00000000", 8), Ok(100_000_000));
        assert_eq!(parse("12345", 0), Ok(12345));
        assert_eq!(parse("0.000001", 6), Ok(1));
        assert_eq!(parse("1", 18), Ok(1_000_000_000_000_000_000));
    }

    #[test]
    fn parses_the_extremes() {
        assert_eq!(parse("340282366920938463463.374607431768211455", 18), Ok(u128::MAX));
        assert_eq!(parse("340282366920938463463374607431768211455", 0), Ok(u128::MAX));
        assert_eq!(parse("3.40282366920938463463374607431768211455", 38), Ok(u128::MAX));
        // Leading zeros never count towards overflow.
        let zeros = "0".repeat(1000);
        assert_eq!(parse(&format!("{zeros}1"), 8), Ok(100_000_000));
    }

    #[test]
    fn refuses_empty() {
        assert_eq!(parse("", 8), Err(AmountParseError::Empty));
    }

    #[test]
    fn refuses_whitespace_anywhere() {
        for s in [" 1", "1 ", "1 0", "\t1", "1\n", "1.\u{a0}5", " "] {
            assert_eq!(parse(s, 8), Err(AmountParseError::Whitespace), "{s:?}");
        }
    }

    #[test]
    fn refuses_signs() {
        for s in ["+1", "-1", "-0", "-", "+", "-1e5", "-.5"] {
            assert_eq!(parse(s, 8), Err(AmountParseError::Sign), "{s:?}");
        }
    }

    #[test]
    fn refuses_exponents() {
        for s in ["1e8", "1E8", "1e-8", "1.5e3", "e", "1x2e"] {
            assert_eq!(parse(s, 8), Err(AmountParseError::Exponent), "{s:?}");
        }
    }

    #[test]
    fn refuses_missing_digits() {
        for s in [".5", "1.", "."] {
            assert_eq!(parse(s, 8), Err(AmountParseError::MissingDigits), "{s:?}");
        }
    }

    #[test]
    fn refuses_multiple_decimal_points() {
        for s in ["1.2.3", "1..2", "..", "1.2."] {
            assert_eq!(parse(s, 8), Err(AmountParseError::MultipleDecimalPoints), "{s:?}");
        }
    }

    #[test]
    fn refuses_invalid_characters() {
        assert_eq!(parse("1,5", 8), Err(AmountParseError::InvalidCharacter(',')));
        assert_eq!(parse("0x10", 8), Err(AmountParseError::InvalidCharacter('x')));
        assert_eq!(parse("١", 8), Err(AmountParseError::InvalidCharacter('١')));
        assert_eq!(parse("1_000", 8), Err(AmountParseError::InvalidCharacter('_')));
        assert_eq!(parse("NaN", 8), Err(AmountParseError::InvalidCharacter('N')));
        assert_eq!(parse("inf", 8), Err(AmountParseError::InvalidCharacter('i')));
        assert_eq!(parse("1-2", 8), Err(AmountParseError::InvalidCharacter('-')));
    }

    #[test]
    fn refuses_too_many_decimals_even_trailing_zeros() {
        let err = AmountParseError::TooManyDecimals { decimals: 8 };
        assert_eq!(parse("1.000000000", 8), Err(err.clone()));
        assert_eq!(parse("0.000000001", 8), Err(err.clone()));
        assert_eq!(err.to_string(), "too many decimal places: at most 8");
        assert_eq!(parse("1.0", 0), Err(AmountParseError::TooManyDecimals { decimals: 0 }));
    }

    #[test]
    fn refuses_overflow() {
        assert_eq!(parse("340282366920938463463.374607431768211456", 18), Err(AmountParseError::Overflow));
        assert_eq!(parse("340282366920938463463374607431768211456", 0), Err(AmountParseError::Overflow));
        assert_eq!(parse("340282366920938463464", 18), Err(AmountParseError::Overflow));
        assert_eq!(parse(&"9".repeat(100), 0), Err(AmountParseError::Overflow));
    }

    #[test]
    fn decimals_beyond_38_do_not_panic() {
        assert_eq!(parse("1", 39), Err(AmountParseError::Overflow));
        assert_eq!(parse("1", u8::MAX), Err(AmountParseError::Overflow));
        assert_eq!(parse("0", u8::MAX), Ok(0));
        // One smallest unit still fits, however many decimals the asset has.
        let one_unit = format!("0.{}1", "0".repeat(38));
        assert_eq!(parse(&one_unit, 39), Ok(1));
    }

    #[test]
    fn every_error_says_why() {
        let messages = [
            AmountParseError::Empty,
            AmountParseError::Whitespace,
            AmountParseError::Sign,
            AmountParseError::Exponent,
            AmountParseError::MissingDigits,
            AmountParseError::MultipleDecimalPoints,
            AmountParseError::InvalidCharacter(','),
            AmountParseError::TooManyDecimals { decimals: 8 },
            AmountParseError::Overflow,
        ]
        .map(|e| e.to_string());
        for (i, m) in messages.iter().enumerate() {
            assert!(!m.is_empty());
            assert!(!messages[..i].contains(m), "duplicate message {m:?}");
        }
        assert_eq!(AmountParseError::InvalidCharacter(',').to_string(), "invalid character ',' in amount");
    }

    #[test]
    fn formats_the_examples() {
        assert_eq!(format_amount(Amount::new(12345), 8), "0.00012345");
        assert_eq!(format_amount(Amount::new(150_000_000), 8), "1.5");
        assert_eq!(format_amount(Amount::new(100_000_000), 8), "1");
        assert_eq!(format_amount(Amount::ZERO, 8), "0");
        assert_eq!(format_amount(Amount::new(1), 8), "0.00000001");
        assert_eq!(format_amount(Amount::new(10), 1), "1");
        assert_eq!(format_amount(Amount::MAX, 18), "340282366920938463463.374607431768211455");
        assert_eq!(format_amount(Amount::MAX, 0), "340282366920938463463374607431768211455");
        assert_eq!(format_amount(Amount::new(1200), 0), "1200");
        assert_eq!(format_amount(Amount::ZERO, 0), "0");
        assert_eq!(format_amount(Amount::MAX, 38), "3.40282366920938463463374607431768211455");
        assert_eq!(format_amount(Amount::MAX, 39), "0.340282366920938463463374607431768211455");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(units in any::<u128>(), decimals in 0u8..=38) {
            let amount = Amount::new(units);
            prop_assert_eq!(parse_amount(&format_amount(amount, decimals), decimals), Ok(amount));
        }

        #[test]
        fn format_then_parse_round_trips_for_any_decimals(units in any::<u128>(), decimals in any::<u8>()) {
            let amount = Amount::new(units);
            prop_assert_eq!(parse_amount(&format_amount(amount, decimals), decimals), Ok(amount));
        }

        #[test]
        fn small_amounts_round_trip(units in 0u128..1_000_000, decimals in 0u8..=38) {
            let amount = Amount::new(units);
            prop_assert_eq!(parse_amount(&format_amount(amount, decimals), decimals), Ok(amount));
        }

        #[test]
        fn formatting_is_shortest(units in any::<u128>(), decimals in 0u8..=38) {
            let s = format_amount(Amount::new(units), decimals);
            prop_assert!(!s.ends_with('.'));
            prop_assert!(!(s.contains('.') && s.ends_with('0')));
            prop_assert!(s == "0" || !s.starts_with('0') || s.starts_with("0."));
        }

        #[test]
        fn parsing_arbitrary_strings_never_panics(s in any::<String>(), decimals in any::<u8>()) {
            let _ = parse_amount(&s, decimals);
        }

        #[test]
        fn parsing_number_like_strings_never_panics(s in "[0-9.eE+\\- ]{0,48}", decimals in any::<u8>()) {
            let _ = parse_amount(&s, decimals);
        }
    }
}
