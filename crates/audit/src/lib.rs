//! The audit log: every privileged action and security event, in a hash chain that nobody can quietly rewrite; and
//! the staff roles and permissions whose every decision it records.
//!
//! Pure: hashing, signing messages and verification take their inputs as arguments. The store appends entries in
//! the same database transaction as the change they record; the keyring (under the seal) signs checkpoints.

mod chain;
mod roles;

pub use chain::{
    AuditEntry, AuditRecord, Checkpoint, Finding, FindingKind, GENESIS_HASH, Outcome, SignedHead, Verifier,
    VerifyReport, checkpoint_message, entry_hash, head_message,
};
pub use roles::{Permission, Role, separation_violation};
