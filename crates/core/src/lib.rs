//! Shared vocabulary of Rampart: identifiers, exact money and the clock.
//!
//! Nothing here performs I/O. Every other crate of the workspace depends on this one, so it stays small and has no
//! dependencies of ours.

mod amount;
mod asset;
mod clock;
mod decimal;
mod id;

pub use amount::Amount;
pub use asset::{Asset, AssetCode, AssetCodeError, AssetConfig, AssetRegistry, AssetRegistryError, UnknownAsset};
pub use clock::{Clock, ManualClock, SystemClock};
pub use decimal::{AmountParseError, format_amount, parse_amount};
pub use id::{AccountId, IdParseError, TransferId};
