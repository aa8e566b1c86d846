//! Transfers and the state of pending transfers.

use rampart_core::{AccountId, Amount, AssetCode, TransferId};

/// What kind of transfer this is and how it relates to its neighbours in a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransferFlags {
    /// This transfer succeeds or fails together with the next one in the batch; a chain ends at the first transfer
    /// without this flag.
    pub linked: bool,
    /// A hold: the amount is reserved as pending until posted, voided or expired.
    pub pending: bool,
    /// Posts (in full or in part) the pending transfer named by `pending_id`.
    pub post_pending_transfer: bool,
    /// Voids the pending transfer named by `pending_id`, releasing the whole hold.
    pub void_pending_transfer: bool,
}

impl TransferFlags {
    const LINKED: u16 = 1 << 0;
    const PENDING: u16 = 1 << 1;
    const POST: u16 = 1 << 2;
    const VOID: u16 = 1 << 3;

    /// The flags as a bit set, for storage.
    pub fn to_bits(self) -> u16 {
        let mut bits = 0;
        for (set, bit) in [
            (self.linked, Self::LINKED),
            (self.pending, Self::PENDING),
            (self.post_pending_transfer, Self::POST),
            (self.void_pending_transfer, Self::VOID),
        ] {
            if set {
                bits |= bit;
            }
        }
        bits
    }

    /// Flags from a stored bit set; `None` if an unknown bit is set.
    pub fn from_bits(bits: u16) -> Option<TransferFlags> {
        if bits & !(Self::LINKED | Self::PENDING | Self::POST | Self::VOID) != 0 {
            return None;
        }
        Some(TransferFlags {
            linked: bits & Self::LINKED != 0,
            pending: bits & Self::PENDING != 0,
            post_pending_transfer: bits & Self::POST != 0,
            void_pending_transfer: bits & Self::VOID != 0,
        })
    }

    /// Whether this transfer resolves an earlier pending transfer.
    pub fn resolves_pending(self) -> bool {
        self.post_pending_transfer || self.void_pending_transfer
    }
}

/// A request to create a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTransfer {
    /// Client-chosen id; also the idempotency key of the request.
    pub id: TransferId,
    /// The account debited. When posting or voiding it may be zero, meaning "the pending transfer's".
    pub debit_account_id: AccountId,
    /// The account credited. When posting or voiding it may be zero, meaning "the pending transfer's".
    pub credit_account_id: AccountId,
    /// How much moves. When posting, zero means the whole pending amount; when voiding it must be zero or the
    /// pending amount.
    pub amount: Amount,
    /// The pending transfer this one posts or voids.
    pub pending_id: Option<TransferId>,
    /// The asset moved; it must be the asset of both accounts.
    pub asset: AssetCode,
    /// Why the money moved (deposit, withdrawal, fee, …), chosen by the caller. When posting or voiding it may be
    /// zero, meaning "the pending transfer's".
    pub code: u16,
    /// Kind and linkage.
    pub flags: TransferFlags,
    /// For a pending transfer, seconds after which it expires if not resolved; zero means never.
    pub timeout_s: u32,
    /// An opaque reference for the caller, such as a withdrawal id.
    pub user_data: u128,
}

/// A transfer as recorded. Transfers are immutable: mistakes are corrected by new transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Client-chosen id.
    pub id: TransferId,
    /// The account debited.
    pub debit_account_id: AccountId,
    /// The account credited.
    pub credit_account_id: AccountId,
    /// The amount moved (for a post, the amount actually posted; for a void, the amount released).
    pub amount: Amount,
    /// The pending transfer this one posts or voids.
    pub pending_id: Option<TransferId>,
    /// The asset moved.
    pub asset: AssetCode,
    /// Why the money moved.
    pub code: u16,
    /// Kind and linkage.
    pub flags: TransferFlags,
    /// For a pending transfer, its timeout in seconds (zero: never expires).
    pub timeout_s: u32,
    /// An opaque reference for the caller.
    pub user_data: u128,
    /// When the ledger applied it, in nanoseconds since the Unix epoch.
    pub timestamp: u64,
}

/// Where a pending transfer stands. It leaves `Pending` at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PendingStatus {
    /// Still holding its amount.
    Pending,
    /// Posted, in full or in part.
    Posted,
    /// Voided: the hold was released.
    Voided,
    /// Its timeout passed: the hold was released.
    Expired,
}

impl PendingStatus {
    /// A stable name, for storage and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingStatus::Pending => "pending",
            PendingStatus::Posted => "posted",
            PendingStatus::Voided => "voided",
            PendingStatus::Expired => "expired",
        }
    }

    /// The status named `s`, as written by [`PendingStatus::as_str`].
    pub fn parse(s: &str) -> Option<PendingStatus> {
        Some(match s {
            "pending" => PendingStatus::Pending,
            "posted" => PendingStatus::Posted,
            "voided" => PendingStatus::Voided,
            "expired" => PendingStatus::Expired,
            _ => return None,
        })
    }
}

/// The mutable side of a pending transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingState {
    /// Where it stands.
    pub status: PendingStatus,
    /// When it expires, in nanoseconds since the Unix epoch; `None` if it never does.
    pub expires_at_ns: Option<u64>,
}
