//! The double-entry ledger of Rampart, modelled on TigerBeetle's accounts and transfers.
//!
//! The [`Ledger`] is a pure state machine: it performs no I/O and never reads a clock; the caller passes the time in.
//! Every business rejection is a result code ([`CreateTransferResult`], [`CreateAccountResult`]), never an error or
//! a panic. Bugs, on the other hand, are assertions that stay on in release builds: if Σ debits ever differed from
//! Σ credits the process stops rather than keep moving money.
//!
//! The same state machine serves two masters. Held entirely in memory it is the reference model for property tests,
//! the simulation and the benchmark. Hydrated with only the records one request touches it is the decision core of
//! `rampart-store`, which loads those records inside a database transaction, lets the ledger decide, and writes back
//! what the [`Journal`] says changed.

mod account;
mod ledger;
mod results;
mod transfer;

pub use account::{Account, AccountFlags, NewAccount};
pub use ledger::{AssetTotals, InvariantViolation, Journal, Ledger, TransferDependencies, WideSum};
pub use results::{CreateAccountResult, CreateTransferResult};
pub use transfer::{NewTransfer, PendingState, PendingStatus, Transfer, TransferFlags};

/// Nanoseconds in one second, for converting transfer timeouts to expiry instants.
pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The latest instant the ledger records, in nanoseconds since the Unix epoch (2^63 - 1, in the year 2262), so that
/// every timestamp fits a signed 64-bit database column. An expiry beyond it answers `overflows_timeout`.
pub const TIMESTAMP_MAX_NS: u64 = i64::MAX as u64;
