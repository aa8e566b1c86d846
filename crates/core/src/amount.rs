//! `Amount`: an unsigned quantity of one asset in its smallest unit.

use std::fmt;

/// A quantity of an asset in the asset's smallest unit (satoshi, wei, …).
///
/// `u128` because an ETH balance in wei already passes 2^64. Arithmetic is checked only: there is deliberately no
/// `Add` or `Sub` implementation, so an overflow is always a value the caller must handle, never a panic or a wrap.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

impl Amount {
    /// Nothing.
    pub const ZERO: Amount = Amount(0);
    /// The largest representable amount.
    pub const MAX: Amount = Amount(u128::MAX);

    /// An amount of `units` smallest units.
    pub const fn new(units: u128) -> Amount {
        Amount(units)
    }

    /// The number of smallest units.
    pub const fn units(self) -> u128 {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, other: Amount) -> Option<Amount> {
        match self.0.checked_add(other.0) {
            Some(v) => Some(Amount(v)),
            None => None,
        }
    }

    /// `self - other`, or `None` if `other` is larger.
    #[must_use]
    pub const fn checked_sub(self, other: Amount) -> Option<Amount> {
        match self.0.checked_sub(other.0) {
            Some(v) => Some(Amount(v)),
            None => None,
        }
    }

    /// `self - other`, or zero if `other` is larger.
    #[must_use]
    pub const fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

/// Displays the raw number of smallest units; use [`crate::format_amount`] for a decimal in the asset's unit.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Amount::MAX.checked_add(Amount::new(1)), None);
        assert_eq!(Amount::ZERO.checked_sub(Amount::new(1)), None);
        assert_eq!(Amount::new(2).checked_add(Amount::new(3)), Some(Amount::new(5)));
        assert_eq!(Amount::new(5).checked_sub(Amount::new(3)), Some(Amount::new(2)));
        assert_eq!(Amount::new(1).saturating_sub(Amount::new(3)), Amount::ZERO);
    }
}
