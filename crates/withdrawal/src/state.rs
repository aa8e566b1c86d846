//! The states of a withdrawal and the moves allowed between them.
//!
//! ```text
//! requested ─► screened ─┬─► approved ──────────────┬─► signing ─► broadcast ─► confirmed
//!                        ├─► awaiting_approval ─────┤      │            │
//!                        ├─► awaiting_review ───────┤      └─► failed ◄─┘
//!                        ├─► frozen ────────────────┘  (queued for funds: approved ─► queued ─► signing)
//!                        └─► rejected
//! cancelled: by the customer from any state before signing; expired: a request left waiting for people (approvals,
//! a review, a risk decision) past its time limit.
//! ```
//!
//! A `queued` withdrawal never expires: the policy and the people it asked have approved it, and only the exchange's
//! own treasury (a refill from cold storage, or a cold signing ceremony) keeps it waiting. Letting it lapse would turn
//! the exchange's delay into the customer's refusal; the customer may cancel it instead, at any time before signing.
//!
//! A withdrawal never skips a state and never enters one twice: the only moves are those [`State::can_move_to`]
//! lists, and none leads back. Every end but `confirmed` voids the ledger hold; `confirmed` posts it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a withdrawal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded, its funds held in the ledger; not yet through the gates.
    Requested,
    /// Through the whitelist, limit, sanctions and risk gates; the policy decides next.
    Screened,
    /// The policy requires staff approvals it does not have yet.
    AwaitingApproval,
    /// Waiting for the three-level compliance review, or for a risk reviewer (a risk hold).
    AwaitingReview,
    /// The risk engine froze the account; a reviewer releases or rejects.
    Frozen,
    /// Refused by a gate, the policy or a person. Funds returned.
    Rejected,
    /// May be signed: the policy allowed it, automatically or with its quorum.
    Approved,
    /// Approved, but the hot wallet cannot pay it yet: waiting for a refill from cold storage.
    Queued,
    /// Being signed: a transaction may have been built and recorded, not yet accepted by the chain.
    Signing,
    /// Accepted by the chain's mempool; waiting for confirmations.
    Broadcast,
    /// Confirmed on chain; the hold is posted.
    Confirmed,
    /// Cancelled by the customer before signing. Funds returned.
    Cancelled,
    /// The chain refused the transaction, or it was dropped. Funds returned.
    Failed,
    /// Waited for approvals or review past its time limit. Funds returned.
    Expired,
}

/// A move the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a withdrawal cannot move from {from} to {to}")]
pub struct TransitionError {
    /// The state it is in.
    pub from: State,
    /// The state asked for.
    pub to: State,
}

impl State {
    /// Every state, in the order of the pipeline.
    pub const ALL: [State; 14] = [
        State::Requested,
        State::Screened,
        State::AwaitingApproval,
        State::AwaitingReview,
        State::Frozen,
        State::Rejected,
        State::Approved,
        State::Queued,
        State::Signing,
        State::Broadcast,
        State::Confirmed,
        State::Cancelled,
        State::Failed,
        State::Expired,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Screened => "screened",
            State::AwaitingApproval => "awaiting_approval",
            State::AwaitingReview => "awaiting_review",
            State::Frozen => "frozen",
            State::Rejected => "rejected",
            State::Approved => "approved",
            State::Queued => "queued",
            State::Signing => "signing",
            State::Broadcast => "broadcast",
            State::Confirmed => "confirmed",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
            State::Expired => "expired",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// The states this one may move to.
    pub fn next(self) -> &'static [State] {
        use State::*;
        match self {
            Requested => &[Screened, Rejected, Cancelled],
            Screened => &[Approved, AwaitingApproval, AwaitingReview, Frozen, Rejected, Cancelled],
            AwaitingApproval => &[Approved, Rejected, Cancelled, Expired],
            // A review that passes goes on to the policy's approvals, or straight to approved.
            AwaitingReview => &[AwaitingApproval, Approved, Rejected, Cancelled, Expired],
            Frozen => &[AwaitingReview, AwaitingApproval, Approved, Rejected, Cancelled, Expired],
            Approved => &[Queued, Signing, Cancelled],
            // Never `expired`: see the module's documentation.
            Queued => &[Signing, Cancelled],
            Signing => &[Broadcast, Failed],
            Broadcast => &[Confirmed, Failed],
            Rejected | Confirmed | Cancelled | Failed | Expired => &[],
        }
    }

    /// Whether the move to `to` is allowed.
    pub fn can_move_to(self, to: State) -> bool {
        self.next().contains(&to)
    }

    /// The move to `to`, checked.
    pub fn move_to(self, to: State) -> Result<State, TransitionError> {
        if self.can_move_to(to) { Ok(to) } else { Err(TransitionError { from: self, to }) }
    }

    /// Whether nothing more happens to it.
    pub fn is_final(self) -> bool {
        self.next().is_empty()
    }

    /// Whether the customer may still cancel it (nothing has been signed).
    pub fn is_cancellable(self) -> bool {
        self.can_move_to(State::Cancelled)
    }

    /// Whether its funds count against the customer's limits: everything but the ends that returned them.
    pub fn counts_against_limits(self) -> bool {
        !matches!(self, State::Rejected | State::Cancelled | State::Failed | State::Expired)
    }

    /// Whether it waits for people (and so has a time limit). A `queued` withdrawal waits for the exchange's treasury,
    /// not for a decision, and has none.
    pub fn waits_for_people(self) -> bool {
        matches!(self, State::AwaitingApproval | State::AwaitingReview | State::Frozen)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("paid"), None);
    }

    /// No move leads back to a state already passed: following moves from `requested` never revisits one, so no
    /// state is entered twice.
    #[test]
    fn the_moves_form_no_cycle() {
        fn visit(s: State, path: &mut Vec<State>) {
            assert!(!path.contains(&s), "cycle through {s}: {path:?}");
            path.push(s);
            for &n in s.next() {
                visit(n, path);
            }
            path.pop();
        }
        visit(State::Requested, &mut Vec::new());
    }

    #[test]
    fn every_state_is_reachable_and_every_path_ends() {
        let mut seen = vec![State::Requested];
        let mut i = 0;
        while i < seen.len() {
            for &n in seen[i].next() {
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
            i += 1;
        }
        assert_eq!(seen.len(), State::ALL.len());
        let ends: Vec<State> = State::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(ends, [State::Rejected, State::Confirmed, State::Cancelled, State::Failed, State::Expired]);
    }

    /// Only waits for people expire; a queued withdrawal, approved and waiting for the treasury, stays until it is
    /// paid or the customer cancels it.
    #[test]
    fn a_queued_withdrawal_never_expires_but_can_be_cancelled() {
        assert_eq!(State::Queued.next(), &[State::Signing, State::Cancelled]);
        assert!(State::Queued.is_cancellable());
        assert!(!State::Queued.waits_for_people());
        for s in State::ALL {
            assert_eq!(s.can_move_to(State::Expired), s.waits_for_people(), "{s}");
        }
    }

    #[test]
    fn nothing_signed_is_cancelled_and_nothing_skips_screening() {
        assert!(State::Approved.is_cancellable());
        assert!(!State::Signing.is_cancellable());
        assert!(!State::Broadcast.is_cancellable());
        assert_eq!(
            State::Requested.move_to(State::Approved),
            Err(TransitionError { from: State::Requested, to: State::Approved })
        );
        assert!(State::Screened.move_to(State::Signing).is_err());
        assert!(State::AwaitingApproval.move_to(State::Signing).is_err());
        // Only `signing` reaches `broadcast`, and only `approved` or `queued` reach `signing`.
        for s in State::ALL {
            assert_eq!(s.can_move_to(State::Broadcast), s == State::Signing, "{s}");
            assert_eq!(s.can_move_to(State::Signing), matches!(s, State::Approved | State::Queued), "{s}");
        }
    }
}
