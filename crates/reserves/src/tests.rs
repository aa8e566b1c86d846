use rampart_verify::params::Asset;
use rampart_verify::{LeafFile, Proof};

use super::*;

pub(crate) fn params(assets: usize, height: u8) -> Params {
    Params {
        exchange: "Rampart Test Exchange".into(),
        snapshot: "2026-12-04T00:00:00Z/ledger-42".into(),
        height,
        assets: (0..assets).map(|i| Asset { code: format!("A{i}"), max: 1u128 << 90 }).collect(),
    }
}

/// Deterministic pseudo-random holdings: each user holds one to three assets.
pub(crate) fn holdings(users: usize, assets: usize, seed: u64) -> Vec<Holding> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..users)
        .map(|u| {
            let held = 1 + next() % 3;
            let mut balances: Vec<(u16, u128)> = Vec::new();
            for _ in 0..held {
                let a = (next() % assets as u64) as u16;
                if balances.iter().all(|&(i, _)| i != a) {
                    balances.push((a, u128::from(next() % 1_000_000_000) * 1_000_000_000 + 1));
                }
            }
            Holding { user_id: format!("user-{u}").into_bytes(), balances }
        })
        .collect()
}

fn secret() -> TreeSecret {
    TreeSecret::new([7; 32])
}

fn expected_totals(holdings: &[Holding], assets: usize) -> Vec<u128> {
    let mut t = vec![0u128; assets];
    for h in holdings {
        for &(i, b) in &h.balances {
            t[usize::from(i)] += b;
        }
    }
    t
}

#[test]
fn every_proof_verifies_and_the_totals_are_the_ledgers() {
    for (assets, users) in [(1, 1), (3, 5), (16, 40), (20, 37), (70, 33)] {
        let hs = holdings(users, assets, 99 + users as u64);
        let height = height_for(users, 3);
        let tree = Tree::build(params(assets, height), hs.clone(), &secret(), 2).unwrap();
        let totals = expected_totals(&hs, assets);
        assert_eq!(tree.totals(), totals.as_slice());
        let root = tree.root();
        for index in 0..users {
            for reveal in [Reveal::Held, Reveal::All] {
                let proof = tree.proof(index, reveal);
                let bytes = proof.encode();
                let decoded = Proof::decode(&bytes).unwrap();
                assert_eq!(decoded, proof);
                let verified = decoded.verify(&root).unwrap_or_else(|e| panic!("{assets} assets, user {index}: {e}"));
                verified.check_totals(tree.params(), &totals).unwrap();
                if reveal == Reveal::All {
                    assert_eq!(verified.totals.len(), assets);
                }
            }
        }
        let leaf_file = LeafFile::decode(&tree.leaf_file().encode()).unwrap();
        let recomputed = leaf_file.recompute().unwrap();
        assert_eq!(recomputed.root, root);
        assert_eq!(recomputed.totals, totals);
        assert_eq!(recomputed.users, users as u64);
    }
}

#[test]
fn holdings_round_trip_sorted_and_users_are_found() {
    let hs = holdings(50, 20, 9);
    let bytes = encode_holdings(&hs);
    let decoded = decode_holdings(&bytes).unwrap();
    assert_eq!(decoded.len(), 50);
    assert!(decoded.windows(2).all(|w| w[0].user_id < w[1].user_id));
    let tree = Tree::build(params(20, 6), decoded, &secret(), 2).unwrap();
    for h in &hs {
        let index = tree.user_index(&h.user_id).unwrap();
        assert_eq!(tree.proof(index, Reveal::Held).user_id, h.user_id);
    }
    assert_eq!(tree.user_index(b"nobody"), None);
    assert!(decode_holdings(&bytes[..bytes.len() - 1]).is_none());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_holdings(&longer).is_none());
}

#[test]
fn threads_do_not_change_the_tree() {
    let hs = holdings(100, 20, 5);
    let one = Tree::build(params(20, 8), hs.clone(), &secret(), 1).unwrap();
    let three = Tree::build(params(20, 8), hs, &secret(), 3).unwrap();
    assert_eq!(one.root(), three.root());
}

#[test]
fn a_held_proof_of_a_few_assets_is_small_among_many_assets() {
    let mut hs = holdings(50, 500, 11);
    hs[0].balances = vec![(3, 10)];
    let tree = Tree::build(params(500, 6), hs, &secret(), 2).unwrap();
    let held = tree.proof(0, Reveal::Held).encode().len();
    let all = tree.proof(0, Reveal::All).encode().len();
    // The parameters (every asset code and maximum, about 10 KB here) are in both; the path is what shrinks.
    assert!(held * 4 < all, "held {held} bytes, all {all} bytes");
}

#[test]
fn salts_differ_per_user_and_per_snapshot() {
    let hs = holdings(4, 2, 3);
    let a = Tree::build(params(2, 3), hs.clone(), &secret(), 1).unwrap();
    let mut later = params(2, 3);
    later.snapshot = "2026-12-05T00:00:00Z/ledger-43".into();
    let b = Tree::build(later, hs, &secret(), 1).unwrap();
    assert_ne!(a.proof(0, Reveal::Held).salt, a.proof(1, Reveal::Held).salt);
    assert_ne!(a.proof(0, Reveal::Held).salt, b.proof(0, Reveal::Held).salt);
    // The proof of one snapshot does not verify against the next one's root.
    assert!(a.proof(0, Reveal::Held).verify(&b.root()).is_err());
}

#[test]
fn bad_inputs_are_refused() {
    let p = params(2, 2);
    let many = holdings(5, 2, 1);
    assert!(matches!(Tree::build(p.clone(), many, &secret(), 1), Err(BuildError::TooManyUsers { .. })));
    let mut dup = holdings(2, 2, 1);
    dup[1].user_id = dup[0].user_id.clone();
    assert!(matches!(Tree::build(p.clone(), dup, &secret(), 1), Err(BuildError::DuplicateUser { index: 1 })));
    let mut over = holdings(2, 2, 1);
    over[0].balances = vec![(0, (1u128 << 90) + 1)];
    assert!(matches!(Tree::build(p.clone(), over, &secret(), 1), Err(BuildError::Balance { index: 0, .. })));
    let mut unknown = holdings(2, 2, 1);
    unknown[0].balances = vec![(9, 1)];
    assert!(matches!(Tree::build(p.clone(), unknown, &secret(), 1), Err(BuildError::Balance { .. })));
    let mut huge = params(2, 2);
    huge.assets[0].max = u128::MAX;
    assert!(matches!(Tree::build(huge, holdings(2, 2, 1), &secret(), 1), Err(BuildError::Params(_))));
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let s = format!("{:?}", TreeSecret::new([0xab; 32]));
    assert!(!s.contains("171") && !s.contains("ab"), "{s}");
    let tree = Tree::build(params(2, 2), holdings(3, 2, 1), &secret(), 1).unwrap();
    let proof = format!("{:?}", tree.proof(0, Reveal::Held));
    assert!(proof.contains("<private>"));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn random_ledgers_prove_every_user(users in 1usize..60, assets in 1usize..40, seed in any::<u64>()) {
            let hs = holdings(users, assets, seed);
            let tree = Tree::build(params(assets, height_for(users, 1)), hs.clone(), &secret(), 2).unwrap();
            let totals = expected_totals(&hs, assets);
            prop_assert_eq!(tree.totals(), totals.as_slice());
            let root = tree.root();
            for index in 0..users {
                let proof = tree.proof(index, Reveal::Held);
                prop_assert!(Proof::decode(&proof.encode()).unwrap().verify(&root).is_ok());
            }
        }

        #[test]
        fn any_changed_byte_fails_the_proof(seed in any::<u64>(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let hs = holdings(9, 20, seed);
            let tree = Tree::build(params(20, 4), hs, &secret(), 1).unwrap();
            let root = tree.root();
            let mut bytes = tree.proof((seed % 9) as usize, Reveal::Held).encode();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            let outcome = Proof::decode(&bytes).map(|p| p.verify(&root));
            prop_assert!(!matches!(outcome, Ok(Ok(_))), "byte {} changed and the proof still verifies", i);
        }
    }
}
