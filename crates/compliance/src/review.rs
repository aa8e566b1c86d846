//! The three-level compliance review of large transfers: a transfer above the threshold (by default USD 10,000) is
//! approved by a level-1 reviewer, then a level-2, then a level-3 (the money-laundering reporting officer), in that
//! order, by three different people, none of them the one who asked for it. Any level may reject, which ends it.

use serde::{Deserialize, Serialize};

use crate::kyc::USD;

/// The levels a transfer passes.
pub const LEVELS: u8 = 3;

/// Transfers above this many micro-dollars are reviewed: USD 10,000.
pub const DEFAULT_THRESHOLD: u64 = 10_000 * USD;

/// Whether a transfer of `amount_usd` micro-dollars needs the review.
pub fn needed(amount_usd: u64, threshold: u64) -> bool {
    amount_usd > threshold
}

/// Where a review stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    /// Waiting for the level named.
    Pending {
        /// The next level to decide, 1 to 3.
        level: u8,
    },
    /// Every level approved.
    Approved,
    /// A level rejected.
    Rejected {
        /// The level that did.
        level: u8,
    },
}

/// One decision already taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The level decided.
    pub level: u8,
    /// Who decided.
    pub reviewer: String,
    /// Approved or not.
    pub approve: bool,
}

/// Why a decision is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The review has ended.
    Closed,
    /// The reviewer asked for the transfer.
    Requester,
    /// The reviewer decided an earlier level of this review.
    AlreadyDecided {
        /// That level.
        level: u8,
    },
    /// The reviewer does not hold the role of the level waiting.
    WrongLevel {
        /// The level waiting.
        level: u8,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Closed => write!(f, "this review has ended"),
            Refused::Requester => write!(f, "whoever asked for a transfer may not review it"),
            Refused::AlreadyDecided { level } => {
                write!(f, "you decided level {level} of this review: each level needs a different reviewer")
            }
            Refused::WrongLevel { level } => {
                write!(f, "this review waits for level {level}, which your roles do not cover")
            }
        }
    }
}

/// The state after `decisions`, in order.
pub fn state(decisions: &[Decision]) -> State {
    let mut level = 1;
    for d in decisions {
        if !d.approve {
            return State::Rejected { level: d.level };
        }
        level = d.level + 1;
    }
    if level > LEVELS { State::Approved } else { State::Pending { level } }
}

/// Decides the waiting level: `reviewer` holds the review roles of `levels`; `requester` asked for the transfer.
/// Answers the decision to record (the caller stores it with the others).
pub fn decide(
    decisions: &[Decision],
    requester: &str,
    reviewer: &str,
    levels: &[u8],
    approve: bool,
) -> Result<Decision, Refused> {
    let State::Pending { level } = state(decisions) else { return Err(Refused::Closed) };
    if reviewer == requester {
        return Err(Refused::Requester);
    }
    if let Some(d) = decisions.iter().find(|d| d.reviewer == reviewer) {
        return Err(Refused::AlreadyDecided { level: d.level });
    }
    if !levels.contains(&level) {
        return Err(Refused::WrongLevel { level });
    }
    Ok(Decision { level, reviewer: reviewer.to_owned(), approve })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: &[(&str, &[u8], bool)]) -> (Vec<Decision>, Vec<Result<(), Refused>>) {
        let mut decisions = Vec::new();
        let mut results = Vec::new();
        for (who, levels, approve) in steps {
            match decide(&decisions, "req", who, levels, *approve) {
                Ok(d) => {
                    decisions.push(d);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        (decisions, results)
    }

    #[test]
    fn three_levels_in_order_by_three_people() {
        let (d, r) = run(&[("a", &[1], true), ("b", &[2], true), ("c", &[3], true)]);
        assert!(r.iter().all(Result::is_ok));
        assert_eq!(state(&d), State::Approved);
        assert_eq!(decide(&d, "req", "e", &[1, 2, 3], true), Err(Refused::Closed));
    }

    #[test]
    fn nobody_skips_a_level_decides_twice_or_reviews_their_own_request() {
        let (d, r) = run(&[
            ("b", &[2], true),   // level 1 waits
            ("req", &[1], true), // the requester
            ("a", &[1, 2, 3], true),
            ("a", &[1, 2, 3], true), // level 2 by the same person
            ("b", &[2], true),
        ]);
        assert_eq!(r[0], Err(Refused::WrongLevel { level: 1 }));
        assert_eq!(r[1], Err(Refused::Requester));
        assert_eq!(r[3], Err(Refused::AlreadyDecided { level: 1 }));
        assert!(r[2].is_ok() && r[4].is_ok());
        assert_eq!(state(&d), State::Pending { level: 3 });
    }

    #[test]
    fn a_rejection_ends_the_review() {
        let (d, _) = run(&[("a", &[1], true), ("b", &[2], false)]);
        assert_eq!(state(&d), State::Rejected { level: 2 });
        assert_eq!(decide(&d, "req", "c", &[3], true), Err(Refused::Closed));
    }

    #[test]
    fn the_threshold_is_strict() {
        assert!(!needed(10_000 * USD, DEFAULT_THRESHOLD));
        assert!(needed(10_000 * USD + 1, DEFAULT_THRESHOLD));
    }
}
