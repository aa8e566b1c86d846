//! The standalone verifier of Rampart's proof of reserves.
//!
//! A published reserves snapshot is a Merkle sum tree over every customer's balances in every asset: each leaf commits
//! to a salted hash of a user's id and their balances; each inner node commits to both children's hashes and to each
//! child's per-asset sums. This crate holds the byte encodings of `docs/reserves-spec.md` and checks a user's
//! inclusion proof against a published root ([`Proof::verify`]), or recomputes the root and the totals from a full
//! leaf file ([`LeafFile::recompute`]). It performs no I/O; the `rampart-verify` binary reads files.

mod codec;
pub mod hash;
pub mod leaves;
pub mod params;
pub mod private;
pub mod proof;
pub mod publication;
#[cfg(feature = "report")]
pub mod report;

use std::fmt;

pub use leaves::{LeafEntry, LeafFile, Recomputed};
pub use params::{Asset, Params};
pub use proof::{Level, Proof, Verified};

/// An input that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Bytes that are not a well-formed encoding.
    Decode(String),
    /// Parameters no tree may have.
    Params(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Decode(m) => write!(f, "malformed input: {m}"),
            Error::Params(m) => write!(f, "bad parameters: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Why a well-formed proof, leaf file or report does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The proof's parts do not fit together.
    Malformed(String),
    /// A sibling's sum exceeds what its subtree's users could hold at the asset's maximum.
    SumOutOfRange { level: usize, asset: String },
    /// Adding the sums overflowed 128 bits.
    Overflow { level: usize },
    /// The path leads to another root.
    RootMismatch { computed: [u8; 32] },
    /// The published totals are not the tree's.
    TotalsMismatch(String),
    /// A leaf file lists the same user commitment twice.
    DuplicateUser { first: u64, second: u64 },
    /// A leaf's balance is above its asset's maximum.
    BalanceOutOfRange { position: u64, asset: String },
    /// A signature of the report or of a reserve address does not verify.
    Signature(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Malformed(m) => write!(f, "malformed: {m}"),
            Failure::SumOutOfRange { level, asset } => {
                write!(f, "the sibling's {asset} sum at level {level} is more than its users could hold")
            }
            Failure::Overflow { level } => write!(f, "the sums overflow at level {level}"),
            Failure::RootMismatch { computed } => {
                write!(f, "the proof leads to root {}, not the published one", hex::encode(computed))
            }
            Failure::TotalsMismatch(m) => write!(f, "totals: {m}"),
            Failure::DuplicateUser { first, second } => {
                write!(f, "the leaves at positions {first} and {second} commit to the same user")
            }
            Failure::BalanceOutOfRange { position, asset } => {
                write!(f, "the leaf at position {position} holds more {asset} than the published maximum")
            }
            Failure::Signature(m) => write!(f, "signature: {m}"),
        }
    }
}

impl std::error::Error for Failure {}
