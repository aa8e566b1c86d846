//! Known attacks on proofs of liabilities, each a forged publication that the verifier must reject.

mod common;

use common::*;
use rampart_verify::leaves::{LeafEntry, LeafFile};
use rampart_verify::{Failure, Proof};

const SNAPSHOT: &str = "2026-12-04/ledger-1000";

/// Hu–Zhang–Guo on the Maxwell scheme: a parent that commits only to its own sum lets the exchange show each of its
/// two children a smaller sibling, so one account's balance is dropped from the total. Here both children's sums are
/// bound in the parent, so the forger must pick one parent: whichever it picks, one of the two users' proofs fails.
#[test]
fn dropping_an_account_under_a_parent_fails_one_of_its_users() {
    let p = params(1, 1, SNAPSHOT);
    let (a, b) = (700u128, 300u128);
    // The forger publishes a total of 700 (b dropped): it commits B's side as zero.
    let forged = forge(&p, vec![user("alice", vec![a], 0), user("bob", vec![0], 1)], &add);
    assert_eq!(forged.totals(), vec![a]);
    let root = forged.root();
    // Alice's proof (her sibling shown with 0) verifies...
    forged.proof(0, 0).verify(&root).unwrap();
    // ...but Bob, whose real balance is 300, recomputes his leaf with it and lands elsewhere, whatever sum of Alice's
    // side he is shown: her 700, or the 400 the Maxwell scheme would show him so that 300 + 400 = 700.
    for shown in [a, a - b] {
        let mut bob = forged.proof(1, 1);
        bob.balances = vec![(0, b)];
        bob.levels[0].sibling_sums = vec![shown];
        assert!(matches!(bob.verify(&root), Err(Failure::RootMismatch { .. })), "shown {shown}");
    }
}

/// A parent whose sum is the larger child's instead of the total (a "max" tree understates liabilities).
#[test]
fn a_maximum_instead_of_a_total_is_rejected() {
    let p = params(2, 2, SNAPSHOT);
    let leaves = vec![user("u0", vec![5, 1], 0), user("u1", vec![9, 0], 1), user("u2", vec![2, 2], 2), padding(3)];
    let max = |l: &[u128], r: &[u128]| l.iter().zip(r).map(|(a, b)| *a.max(b)).collect::<Vec<_>>();
    let forged = forge(&p, leaves, &max);
    let root = forged.root();
    for i in 0..3 {
        assert!(forged.proof(i, i as u64).verify(&root).is_err(), "user {i}");
    }
    // The same leaves summed honestly verify.
    let honest = forge(&p, forged.leaves.clone(), &add);
    for i in 0..3 {
        honest.proof(i, i as u64).verify(&honest.root()).unwrap();
    }
}

/// A negative balance (two's complement in 128 bits) or one above the published maximum, in a leaf or in a sibling's
/// sum; and sums large enough to overflow.
#[test]
fn negative_and_overflowing_balances_are_rejected() {
    let p = params(1, 2, SNAPSHOT);
    let max = p.assets[0].max;
    let negative = 0u128.wrapping_sub(250);
    // A user with a huge "negative" neighbour: the neighbour's sum is out of range at level 0.
    let leaves = vec![user("u0", vec![100], 0), user("evil", vec![negative], 1), user("u2", vec![400], 2), padding(3)];
    let forged = forge(&p, leaves, &|l, r| l.iter().zip(r).map(|(a, b)| a.wrapping_add(*b)).collect());
    let root = forged.root();
    assert!(matches!(forged.proof(0, 0).verify(&root), Err(Failure::SumOutOfRange { level: 0, .. })));
    assert!(matches!(forged.proof(2, 2).verify(&root), Err(Failure::SumOutOfRange { level: 1, .. })));
    // The negative account's own proof does not even decode.
    assert!(Proof::decode(&forged.proof(1, 1).encode()).is_err());
    // At the bound: a sibling sum of max · 2^level is allowed, one more is not.
    let at_bound = forge(&p, vec![user("u0", vec![1], 0), user("u1", vec![max], 1), padding(1), padding(2)], &add);
    at_bound.proof(0, 0).verify(&at_bound.root()).unwrap();
    let mut over = at_bound.proof(0, 0);
    over.levels[0].sibling_sums = vec![max + 1];
    assert!(matches!(over.verify(&at_bound.root()), Err(Failure::SumOutOfRange { level: 0, .. })));
    // A maximum that would let 2^height users overflow 128 bits is refused with the parameters.
    let mut huge = params(1, 2, SNAPSHOT);
    huge.assets[0].max = u128::MAX >> 1;
    assert!(huge.validate().is_err());
}

/// The same user listed twice (so that an auditor counting leaves is fooled, or two users share one leaf): the leaf
/// file is rejected, and a user shown someone else's leaf sees another user id.
#[test]
fn duplicate_users_are_rejected() {
    let p = params(1, 2, SNAPSHOT);
    let forged = forge(&p, vec![user("u0", vec![1], 0), user("u0", vec![1], 1), padding(2), padding(3)], &add);
    let file = LeafFile {
        params: p.clone(),
        entries: (0..4)
            .map(|i| match &forged.leaves[i] {
                ForgedLeaf::User { id, salt, balances, .. } => LeafEntry::User {
                    commitment: rampart_verify::hash::user_commitment(&p.digest(), id, salt),
                    balances: vec![(0, balances[0])],
                },
                ForgedLeaf::Padding { secret } => LeafEntry::Padding { secret: *secret },
            })
            .collect(),
    };
    assert!(matches!(file.recompute(), Err(Failure::DuplicateUser { first: 0, second: 1 })));
    let proof = forged.proof(1, 1);
    assert_eq!(proof.user_id, b"u0");
}

/// A hash cut to 16 bytes anywhere in a proof makes it undecodable.
#[test]
fn a_truncated_hash_is_rejected() {
    let p = params(1, 2, SNAPSHOT);
    let forged = forge(&p, vec![user("u0", vec![1], 0), user("u1", vec![2], 1), padding(2), padding(3)], &add);
    let bytes = forged.proof(0, 0).encode();
    let sibling_at = bytes.len() - 2 * (32 + 16);
    let mut cut = bytes[..sibling_at + 16].to_vec();
    cut.extend_from_slice(&bytes[sibling_at + 32..]);
    assert!(Proof::decode(&cut).is_err());
    assert!(Proof::decode(&bytes[..bytes.len() - 16]).is_err());
    Proof::decode(&bytes).unwrap().verify(&forged.root()).unwrap();
}

/// A proof from the previous snapshot against this snapshot's root, even with identical balances.
#[test]
fn a_proof_from_a_previous_snapshot_is_rejected() {
    let leaves = vec![user("u0", vec![1], 0), user("u1", vec![2], 1), padding(2), padding(3)];
    let old = forge(&params(1, 2, "2026-11-04/ledger-900"), leaves.clone(), &add);
    let new = forge(&params(1, 2, SNAPSHOT), leaves, &add);
    old.proof(0, 0).verify(&old.root()).unwrap();
    assert!(matches!(old.proof(0, 0).verify(&new.root()), Err(Failure::RootMismatch { .. })));
}

/// A leaf hashed for one position and placed at another (say, to make two users' paths share it): whether the proof
/// names the position the leaf was hashed for or the one it sits at, it fails.
#[test]
fn a_leaf_moved_to_another_position_is_rejected() {
    let p = params(1, 2, SNAPSHOT);
    let moved = forge(&p, vec![padding(0), user("u1", vec![2], 1), user("u0", vec![1], 0), padding(3)], &add);
    let root = moved.root();
    assert!(moved.proof(2, 2).verify(&root).is_err());
    assert!(moved.proof(2, 0).verify(&root).is_err());
    moved.proof(1, 1).verify(&root).unwrap();
}
