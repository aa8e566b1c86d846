//! Accounts and their balances.

use rampart_core::{AccountId, Amount, AssetCode};

/// Constraints an account enforces on every transfer that touches it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccountFlags {
    /// Pending plus posted debits may never exceed posted credits: a customer's liability account cannot go negative.
    pub debits_must_not_exceed_credits: bool,
    /// Pending plus posted credits may never exceed posted debits: an asset account cannot hold more than came in.
    pub credits_must_not_exceed_debits: bool,
}

impl AccountFlags {
    const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 0;
    const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 1;

    /// The flags as a bit set, for storage.
    pub fn to_bits(self) -> u16 {
        let mut bits = 0;
        if self.debits_must_not_exceed_credits {
            bits |= Self::DEBITS_MUST_NOT_EXCEED_CREDITS;
        }
        if self.credits_must_not_exceed_debits {
            bits |= Self::CREDITS_MUST_NOT_EXCEED_DEBITS;
        }
        bits
    }

    /// Flags from a stored bit set; `None` if an unknown bit is set.
    pub fn from_bits(bits: u16) -> Option<AccountFlags> {
        if bits & !(Self::DEBITS_MUST_NOT_EXCEED_CREDITS | Self::CREDITS_MUST_NOT_EXCEED_DEBITS) != 0 {
            return None;
        }
        Some(AccountFlags {
            debits_must_not_exceed_credits: bits & Self::DEBITS_MUST_NOT_EXCEED_CREDITS != 0,
            credits_must_not_exceed_debits: bits & Self::CREDITS_MUST_NOT_EXCEED_DEBITS != 0,
        })
    }
}

/// A request to create an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewAccount {
    /// Client-chosen id; also the idempotency key of the request.
    pub id: AccountId,
    /// The asset every transfer on this account moves.
    pub asset: AssetCode,
    /// What kind of account this is (customer, custody, fees, …), chosen by the caller.
    pub code: u16,
    /// Balance constraints.
    pub flags: AccountFlags,
    /// An opaque reference for the caller, such as the owning user's id.
    pub user_data: u128,
}

/// An account with its four balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    /// Client-chosen id.
    pub id: AccountId,
    /// The asset every transfer on this account moves.
    pub asset: AssetCode,
    /// What kind of account this is, chosen by the caller.
    pub code: u16,
    /// Balance constraints.
    pub flags: AccountFlags,
    /// An opaque reference for the caller.
    pub user_data: u128,
    /// Debits held by pending transfers.
    pub debits_pending: Amount,
    /// Debits of posted transfers.
    pub debits_posted: Amount,
    /// Credits held by pending transfers.
    pub credits_pending: Amount,
    /// Credits of posted transfers.
    pub credits_posted: Amount,
    /// When the account was created, in nanoseconds since the Unix epoch.
    pub timestamp: u64,
}

impl Account {
    /// A new account with zero balances.
    pub fn new(request: &NewAccount, timestamp: u64) -> Account {
        Account {
            id: request.id,
            asset: request.asset,
            code: request.code,
            flags: request.flags,
            user_data: request.user_data,
            debits_pending: Amount::ZERO,
            debits_posted: Amount::ZERO,
            credits_pending: Amount::ZERO,
            credits_posted: Amount::ZERO,
            timestamp,
        }
    }

    /// What a credit-normal account (a customer's balance) can still spend: posted credits minus posted and pending
    /// debits, or zero if the debits are larger.
    pub fn available(&self) -> Amount {
        let debits = self.debits_posted.checked_add(self.debits_pending).unwrap_or(Amount::MAX);
        self.credits_posted.saturating_sub(debits)
    }

    /// Whether the balances respect the account's flags.
    pub fn respects_flags(&self) -> bool {
        let debits = self.debits_pending.checked_add(self.debits_posted);
        let credits = self.credits_pending.checked_add(self.credits_posted);
        let debits_ok = !self.flags.debits_must_not_exceed_credits || debits.is_some_and(|d| d <= self.credits_posted);
        let credits_ok = !self.flags.credits_must_not_exceed_debits || credits.is_some_and(|c| c <= self.debits_posted);
        debits_ok && credits_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_through_bits_and_refuse_unknown_bits() {
        for bits in 0..4 {
            assert_eq!(AccountFlags::from_bits(bits).unwrap().to_bits(), bits);
        }
        assert_eq!(AccountFlags::from_bits(4), None);
    }
}
