//! Real-time risk scoring for Rampart: every sign-in, request, security change, deposit and withdrawal is an
//! [`Event`], scored against the user's [`Profile`] and the velocity counters by a declarative [`RuleSet`], and
//! answered with a [`Decision`] that carries its reasons.
//!
//! Pure: nothing here reads a clock, does I/O or draws randomness. The service feeds events in, persists snapshots
//! and enforces decisions.

pub mod engine;
pub mod event;
pub mod expr;
pub mod features;
pub mod geo;
pub mod profile;
pub mod rules;
mod sharded;
mod small;
pub mod window;

pub use engine::{Decision, Engine, Reason, Sizes, SnapshotError};
pub use event::{Change, Country, Event, EventKind, Factor, Kind, MICRO_USD_PER_USD, UserId};
pub use expr::{Condition, ExprError};
pub use profile::Profile;
pub use rules::{DEFAULT_RULES, Mode, Outcome, Rule, RuleSet, RulesError};
