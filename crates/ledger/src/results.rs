//! Result codes: every business rejection is one of these values.

use serde::Serialize;

macro_rules! result_codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// The stable snake_case code.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// Every code, for documentation.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

result_codes! {
    /// The outcome of one account in a `create_accounts` batch.
    CreateAccountResult {
        /// Created.
        Ok => "ok",
        /// The id is zero.
        IdMustNotBeZero => "id_must_not_be_zero",
        /// The id is 2^128 - 1, reserved.
        IdMustNotBeIntMax => "id_must_not_be_int_max",
        /// Both balance constraints at once would freeze the account.
        FlagsAreMutuallyExclusive => "flags_are_mutually_exclusive",
        /// An account with this id exists with the same fields: the retry changed nothing.
        Exists => "exists",
        /// An account with this id exists with other fields.
        ExistsWithDifferentFields => "exists_with_different_fields",
    }
}

result_codes! {
    /// The outcome of one transfer in a `create_transfers` batch.
    CreateTransferResult {
        /// Applied.
        Ok => "ok",
        /// Another transfer of its linked chain failed, so this one was not applied.
        LinkedEventFailed => "linked_event_failed",
        /// The batch ended inside a linked chain.
        LinkedEventChainOpen => "linked_event_chain_open",
        /// The id is zero.
        IdMustNotBeZero => "id_must_not_be_zero",
        /// The id is 2^128 - 1, reserved.
        IdMustNotBeIntMax => "id_must_not_be_int_max",
        /// Incompatible flags, such as pending with post.
        FlagsAreMutuallyExclusive => "flags_are_mutually_exclusive",
        /// The debit account id is zero.
        DebitAccountIdMustNotBeZero => "debit_account_id_must_not_be_zero",
        /// The credit account id is zero.
        CreditAccountIdMustNotBeZero => "credit_account_id_must_not_be_zero",
        /// The same account on both sides.
        AccountsMustBeDifferent => "accounts_must_be_different",
        /// A pending id on a transfer that neither posts nor voids.
        PendingIdMustBeZero => "pending_id_must_be_zero",
        /// A post or void without a pending id.
        PendingIdMustNotBeZero => "pending_id_must_not_be_zero",
        /// A post or void naming itself.
        PendingIdMustBeDifferent => "pending_id_must_be_different",
        /// A timeout on a transfer that is not pending.
        TimeoutReservedForPendingTransfer => "timeout_reserved_for_pending_transfer",
        /// A zero amount on a transfer that is not a post or void.
        AmountMustNotBeZero => "amount_must_not_be_zero",
        /// No account with the debit account id.
        DebitAccountNotFound => "debit_account_not_found",
        /// No account with the credit account id.
        CreditAccountNotFound => "credit_account_not_found",
        /// The two accounts hold different assets.
        AccountsMustHaveTheSameAsset => "accounts_must_have_the_same_asset",
        /// The transfer's asset is not its accounts' asset.
        TransferMustHaveTheSameAssetAsAccounts => "transfer_must_have_the_same_asset_as_accounts",
        /// No transfer with the pending id.
        PendingTransferNotFound => "pending_transfer_not_found",
        /// The transfer named by the pending id is not a pending transfer.
        PendingTransferNotPending => "pending_transfer_not_pending",
        /// The debit account differs from the pending transfer's.
        PendingTransferHasDifferentDebitAccountId => "pending_transfer_has_different_debit_account_id",
        /// The credit account differs from the pending transfer's.
        PendingTransferHasDifferentCreditAccountId => "pending_transfer_has_different_credit_account_id",
        /// The asset differs from the pending transfer's.
        PendingTransferHasDifferentAsset => "pending_transfer_has_different_asset",
        /// The code differs from the pending transfer's.
        PendingTransferHasDifferentCode => "pending_transfer_has_different_code",
        /// A post for more than the pending amount.
        ExceedsPendingTransferAmount => "exceeds_pending_transfer_amount",
        /// A void naming an amount other than the pending amount.
        PendingTransferHasDifferentAmount => "pending_transfer_has_different_amount",
        /// The pending transfer was already posted.
        PendingTransferAlreadyPosted => "pending_transfer_already_posted",
        /// The pending transfer was already voided.
        PendingTransferAlreadyVoided => "pending_transfer_already_voided",
        /// The pending transfer's timeout has passed.
        PendingTransferExpired => "pending_transfer_expired",
        /// A transfer with this id exists with the same fields: the retry changed nothing.
        Exists => "exists",
        /// A transfer with this id exists with other fields.
        ExistsWithDifferentFields => "exists_with_different_fields",
        /// The debit account's pending debits would overflow.
        OverflowsDebitsPending => "overflows_debits_pending",
        /// The credit account's pending credits would overflow.
        OverflowsCreditsPending => "overflows_credits_pending",
        /// The debit account's posted debits would overflow.
        OverflowsDebitsPosted => "overflows_debits_posted",
        /// The credit account's posted credits would overflow.
        OverflowsCreditsPosted => "overflows_credits_posted",
        /// The debit account's pending plus posted debits would overflow.
        OverflowsDebits => "overflows_debits",
        /// The credit account's pending plus posted credits would overflow.
        OverflowsCredits => "overflows_credits",
        /// The expiry instant would overflow.
        OverflowsTimeout => "overflows_timeout",
        /// The debit account's debits would exceed its credits (an overdraft).
        ExceedsCredits => "exceeds_credits",
        /// The credit account's credits would exceed its debits.
        ExceedsDebits => "exceeds_debits",
    }
}

impl CreateTransferResult {
    /// Whether the request is now recorded: applied now, or by an earlier identical request.
    pub fn is_recorded(self) -> bool {
        matches!(self, CreateTransferResult::Ok | CreateTransferResult::Exists)
    }
}
