//! Withdrawals, in their pure parts: the states a withdrawal passes through and which moves between them are
//! allowed ([`state`]), and the policy engine that decides whether one may be signed, must wait for people, or is
//! refused ([`policy`]). Nothing here reads a clock or does I/O: the service passes in the facts and the time.
//!
//! The one way to a signature is a [`PolicyApproved`] value, which only [`Policy::evaluate`] (for an automatic
//! allow) and [`Policy::approved`] (for a request whose approvals meet the rule's quorum) can make.

pub mod policy;
pub mod state;

pub use policy::{
    Action, Approval, ApprovalRefused, Decision, Destination, Facts, Initiator, Policy, PolicyApproved, PolicyError,
    Requirement, RiskBand, Rule, When,
};
pub use state::{State, TransitionError};
