//! Where the exchange's keys live and how they sign. This first slice holds the parts every later piece stands on:
//! a cold wallet's key is a FROST threshold key (RFC 9591, `frost-secp256k1-tr`, BIP-340 Schnorr over secp256k1 with
//! the BIP-341 tweak), its coins sit in a Taproot output of that key, a spend is signed by a quorum of custodians in
//! two rounds, the server checks every signature share on its own (naming a cheating custodian) before it aggregates,
//! and a finished transaction must pass Bitcoin Core's own script interpreter (`bitcoinconsensus`, given every spent
//! output) before it may leave.
//!
//! Pure: no I/O, no clock. Randomness comes from the operating system only where a protocol needs fresh secrets
//! (polynomials, nonces). A custodian's side of the distributed key generation, with a confirmation round in which
//! everyone signs what they saw, is here; refresh, repair, the ceremonies' transport, key files and the chains arrive
//! next (see `docs/design/custody.md`).

pub mod devchain;
pub mod dkg;
pub mod envelope;
pub mod hotkey;
pub mod keyfile;
pub mod policy;
pub mod refresh;
pub mod repair;
pub mod signing;
pub mod summary;
pub mod taproot;

pub use dkg::CeremonyKind;
pub use dkg::{Confirmation, Participant};
pub use envelope::{Identity, PublicIdentity};
pub use frost_secp256k1_tr as frost;
pub use hotkey::{DEPOSIT_BRANCH, HOT_BRANCH, HotKey, WatchOnly};
pub use policy::{Balances, Plan, RebalancePolicy};
pub use refresh::RefreshParticipant;
pub use signing::{SigningRound, custodian_commit, custodian_sign};
pub use taproot::{attach_key_spend_signatures, key_spend_sighashes, output_script, verify_spend};

/// Why a custody operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustodyError {
    /// A FROST operation failed (a malformed package, too few signers, …).
    #[error("threshold signing: {0}")]
    Frost(String),
    /// A custodian's signature share does not verify against their share of the key: they cheated, or signed with a
    /// share from before a refresh.
    #[error("the signature share of custodian {0} is invalid")]
    BadShare(String),
    /// A custodian who is not among the round's signers, or who already answered.
    #[error("custodian {0} is not expected in this round")]
    UnexpectedCustodian(String),
    /// The round is not ready for that step (commitments or shares missing).
    #[error("the signing round is not ready: {0}")]
    NotReady(&'static str),
    /// The transaction cannot be hashed for signing (an input without its spent output, …).
    #[error("the transaction cannot be signed: {0}")]
    Sighash(String),
    /// A key file that does not open (wrong passphrase, damage) or cannot be made.
    #[error("key file: {0}")]
    KeyFile(&'static str),
    /// Bitcoin Core's interpreter refused the spend of this input.
    #[error("input {input} fails Bitcoin's consensus rules: {reason}")]
    Consensus {
        /// The input.
        input: usize,
        /// What the interpreter said.
        reason: String,
    },
    /// A hot key or account xpub that cannot be read or derived from.
    #[error("hot key: {0}")]
    HotKey(String),
    /// An input whose spent output does not pay to the key asked to sign it: a key never signs for coins that are
    /// not its own.
    #[error("input {0} does not spend an output of this key")]
    ForeignInput(usize),
    /// A sealed message that does not open (wrong recipient, sender or context, or altered), or a malformed identity.
    #[error("envelope: {0}")]
    Envelope(&'static str),
    /// Rebalancing parameters that contradict each other.
    #[error("rebalancing policy: {0}")]
    Policy(&'static str),
    /// A refresh produced a different group key: the new shares belong to another key and are dropped.
    #[error("the refresh changed the group key")]
    GroupKeyChanged,
}

impl From<frost::Error> for CustodyError {
    fn from(e: frost::Error) -> CustodyError {
        CustodyError::Frost(e.to_string())
    }
}
