//! The private form (form 1): every user's proof verifies and the published totals open the top commitments; forged
//! publications (negative or oversized subtrees, moved leaves, other snapshots, the revealed form's root, altered
//! bytes) are rejected; and a proof carries no other user's balance.

use proptest::prelude::*;
use rampart_reserves::private::PrivateTree;
use rampart_reserves::{BuildError, Holding, Reveal, Tree, TreeSecret, height_for};
use rampart_verify::Proof;
use rampart_verify::hash::user_commitment;
use rampart_verify::params::{Asset, Params};
use rampart_verify::private::{
    CompressedRistretto, PrivateFailure, PrivateLevel, PrivateProof, RANGE_BITS, RangeProof, RistrettoPoint, Scalar,
    asset_digest, blinding, commit, commitments_digest, generators, leaf_hash, node_hash, padding_hash, pedersen_gens,
    range_groups, root_hash, totals_digest, transcript,
};

const SNAPSHOT: &str = "2026-12-04/ledger-1000";

fn params(assets: usize, height: u8, snapshot: &str) -> Params {
    Params {
        exchange: "Rampart Test Exchange".into(),
        snapshot: snapshot.into(),
        height,
        assets: (0..assets).map(|i| Asset { code: format!("A{i}"), max: 1_000_000_000_000 }).collect(),
    }
}

fn holding(id: &str, balances: &[(u16, u128)]) -> Holding {
    Holding { user_id: id.as_bytes().to_vec(), balances: balances.to_vec() }
}

fn build(params: Params, holdings: Vec<Holding>) -> PrivateTree {
    PrivateTree::build(params, holdings, &TreeSecret::new([7; 32]), 2).unwrap()
}

/// Verifies a proof after an encoding round trip, and checks the publication against it.
fn verify(tree: &PrivateTree, proof: &PrivateProof) -> Result<(), PrivateFailure> {
    let decoded = PrivateProof::decode(&proof.encode()).unwrap();
    assert_eq!(&decoded, proof);
    let verified = decoded.verify(&tree.root())?;
    verified.check_totals(tree.params(), tree.totals(), tree.total_blindings())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random small ledgers: every user's proof (revealing the assets they hold, and for one user every asset)
    /// verifies, the totals are the ledger's and open the top commitments, and the tree does not depend on the number
    /// of threads.
    #[test]
    fn every_users_private_proof_verifies(
        assets in 1usize..=3,
        extra_height in 0u8..=2,
        ledger in prop::collection::vec(prop::collection::vec((0u16..3, 0u128..=1_000_000_000_000), 0..=3), 0..=10),
        threads in 1usize..=3,
    ) {
        let holdings: Vec<Holding> = ledger
            .iter()
            .enumerate()
            .map(|(i, balances)| {
                let mut seen = Vec::new();
                let balances = balances
                    .iter()
                    .map(|&(a, b)| (a % assets as u16, b))
                    .filter(|&(a, _)| if seen.contains(&a) { false } else { seen.push(a); true })
                    .collect();
                Holding { user_id: format!("user-{i}").into_bytes(), balances }
            })
            .collect();
        let mut expected = vec![0u64; assets];
        for h in &holdings {
            for &(a, b) in &h.balances {
                expected[usize::from(a)] += b as u64;
            }
        }
        let p = params(assets, height_for(holdings.len(), 1) + extra_height, SNAPSHOT);
        let tree = PrivateTree::build(p.clone(), holdings.clone(), &TreeSecret::new([3; 32]), threads).unwrap();
        prop_assert_eq!(tree.totals(), expected.as_slice());
        let single = PrivateTree::build(p, holdings.clone(), &TreeSecret::new([3; 32]), 1).unwrap();
        prop_assert_eq!(tree.root(), single.root());
        for (i, h) in holdings.iter().enumerate() {
            let proof = tree.proof(i, Reveal::Held).unwrap();
            let mut held: Vec<(u16, u64)> =
                h.balances.iter().filter(|&&(_, b)| b != 0).map(|&(a, b)| (a, b as u64)).collect();
            held.sort();
            prop_assert_eq!(&proof.balances, &held);
            prop_assert_eq!(verify(&tree, &proof), Ok(()));
        }
        if !holdings.is_empty() {
            let all = tree.proof(0, Reveal::All).unwrap();
            prop_assert_eq!(all.revealed.len(), assets);
            prop_assert_eq!(verify(&tree, &all), Ok(()));
        }
    }
}

/// The published totals and total blindings open the top commitments; any other total or blinding does not.
#[test]
fn published_totals_open_the_top_commitments() {
    let tree = build(
        params(2, 2, SNAPSHOT),
        vec![holding("u0", &[(0, 5), (1, 7)]), holding("u1", &[(0, 11)]), holding("u2", &[(1, 13)])],
    );
    assert_eq!(tree.totals(), &[16, 20]);
    let verified = tree.proof(1, Reveal::Held).unwrap().verify(&tree.root()).unwrap();
    assert_eq!(totals_digest(tree.totals(), tree.total_blindings()), verified.top_digest);
    let (params, blindings) = (tree.params(), tree.total_blindings());
    verified.check_totals(params, tree.totals(), blindings).unwrap();
    for (a, c) in &verified.top_commitments {
        assert_eq!(commit(tree.totals()[*a], &blindings[*a]).compress(), *c);
    }
    // Understated: asset 0's total is revealed on the path and on the digest; asset 1's on the digest alone.
    for wrong in [[15, 20], [16, 19]] {
        assert!(matches!(verified.check_totals(params, &wrong, blindings), Err(PrivateFailure::TotalsMismatch(_))));
    }
    let mut other = blindings.to_vec();
    other[1] += Scalar::ONE;
    assert!(matches!(verified.check_totals(params, tree.totals(), &other), Err(PrivateFailure::TotalsMismatch(_))));
}

/// A value as a scalar: negative values wrap around the group order, as a forger's would.
fn scalar(v: i128) -> Scalar {
    if v >= 0 { Scalar::from(v as u128) } else { -Scalar::from(v.unsigned_abs()) }
}

/// A leaf as a forger lays it out: any values (negative, or beyond 2^64), hashed for any position.
#[derive(Clone)]
enum Leaf {
    User { id: Vec<u8>, salt: [u8; 32], seed: [u8; 32], values: Vec<i128>, hashed_at: u64 },
    Padding { secret: [u8; 32], seed: [u8; 32] },
}

fn user(id: &str, values: Vec<i128>, hashed_at: u64) -> Leaf {
    Leaf::User {
        id: id.as_bytes().to_vec(),
        salt: [id.len() as u8; 32],
        seed: [id.as_bytes()[0]; 32],
        values,
        hashed_at,
    }
}

fn padding(n: u8) -> Leaf {
    Leaf::Padding { secret: [n; 32], seed: [n ^ 0x80; 32] }
}

struct Node {
    hash: [u8; 32],
    commitments: Vec<RistrettoPoint>,
    values: Vec<i128>,
    blindings: Vec<Scalar>,
}

impl Node {
    fn digest(&self) -> [u8; 32] {
        let slots: Vec<[u8; 32]> = self.commitments.iter().map(|c| asset_digest(&c.compress())).collect();
        commitments_digest(&slots, &[], None)
    }
}

/// A private tree built from the specification's public functions, with any leaves: the forger's.
struct Forged {
    params: Params,
    leaves: Vec<Leaf>,
    nodes: Vec<Vec<Node>>,
}

fn forge(params: &Params, leaves: Vec<Leaf>) -> Forged {
    let p = params.digest();
    let k = params.assets.len();
    assert_eq!(leaves.len(), 1 << params.height);
    let mut level: Vec<Node> = leaves
        .iter()
        .enumerate()
        .map(|(pos, leaf)| {
            let (hash, seed, values) = match leaf {
                Leaf::User { id, salt, seed, values, hashed_at } => {
                    (leaf_hash(&p, *hashed_at, &user_commitment(&p, id, salt)), seed, values.clone())
                }
                Leaf::Padding { secret, seed } => (padding_hash(&p, pos as u64, secret), seed, vec![0; k]),
            };
            let blindings: Vec<Scalar> = (0..k).map(|a| blinding(seed, a as u16)).collect();
            let commitments =
                values.iter().zip(&blindings).map(|(&v, r)| pedersen_gens().commit(scalar(v), *r)).collect();
            Node { hash, commitments, values, blindings }
        })
        .collect();
    let mut nodes = Vec::new();
    for _ in 0..params.height {
        let up = level
            .chunks(2)
            .map(|pair| {
                let (l, r) = (&pair[0], &pair[1]);
                Node {
                    hash: node_hash(&l.hash, &l.digest(), &r.hash, &r.digest()),
                    commitments: l.commitments.iter().zip(&r.commitments).map(|(a, b)| a + b).collect(),
                    values: l.values.iter().zip(&r.values).map(|(a, b)| a + b).collect(),
                    blindings: l.blindings.iter().zip(&r.blindings).map(|(a, b)| a + b).collect(),
                }
            })
            .collect();
        nodes.push(level);
        level = up;
    }
    nodes.push(level);
    Forged { params: params.clone(), leaves, nodes }
}

impl Forged {
    fn root(&self) -> [u8; 32] {
        let top = &self.nodes[usize::from(self.params.height)][0];
        root_hash(&self.params.digest(), &top.hash, &top.digest())
    }

    /// The proof of the user at `index`, claiming position `position`, every asset revealed. The forger's range
    /// proofs prove what it can: each sibling value cut to 64 bits (`v mod 2^64`), with the sibling's real blinding.
    fn proof(&self, index: usize, position: u64) -> PrivateProof {
        let Leaf::User { id, salt, seed, values, .. } = &self.leaves[index] else { panic!("not a user") };
        let k = self.params.assets.len();
        let height = usize::from(self.params.height);
        let mut levels = Vec::new();
        let (mut range_values, mut range_blindings) = (Vec::new(), Vec::new());
        for (l, nodes) in self.nodes.iter().enumerate().take(height) {
            let sibling = &nodes[(index >> l) ^ 1];
            levels.push(PrivateLevel {
                sibling: sibling.hash,
                sibling_commitments: sibling.commitments.iter().map(|c| c.compress()).collect(),
                sibling_hints: Vec::new(),
                parent_hints: Vec::new(),
            });
            range_values.extend(sibling.values.iter().map(|&v| v as u64));
            range_blindings.extend_from_slice(&sibling.blindings);
        }
        let (p, root) = (self.params.digest(), self.root());
        let mut range_proofs = Vec::new();
        let mut offset = 0;
        for (g, m) in range_groups(range_values.len()).into_iter().enumerate() {
            let (proof, _) = RangeProof::prove_multiple(
                &generators(m),
                pedersen_gens(),
                &mut transcript(&p, &root, position, g, offset),
                &range_values[offset..offset + m],
                &range_blindings[offset..offset + m],
                RANGE_BITS,
            )
            .unwrap();
            range_proofs.push(proof);
            offset += m;
        }
        PrivateProof {
            params: self.params.clone(),
            user_id: id.clone(),
            salt: *salt,
            position,
            blinding_seed: *seed,
            balances: values.iter().enumerate().filter(|(_, v)| **v != 0).map(|(a, &v)| (a as u16, v as u64)).collect(),
            revealed: (0..k as u16).collect(),
            levels,
            range_proofs,
        }
    }
}

/// The forger's honest trees verify: it builds what the specification says.
#[test]
fn an_honest_forged_tree_verifies() {
    let p = params(2, 2, SNAPSHOT);
    let forged =
        forge(&p, vec![user("u0", vec![1, 0], 0), padding(1), user("u2", vec![5, 9], 2), user("u3", vec![0, 4], 3)]);
    for i in [0, 2, 3] {
        forged.proof(i, i as u64).verify(&forged.root()).unwrap();
    }
}

/// A negative balance (an account the exchange made up to offset real ones): its neighbour's range proof cannot show
/// the sibling commitment in range at level 0, nor the next user's at level 1 where it is summed in.
#[test]
fn a_negative_balance_is_caught_by_the_range_proofs() {
    let p = params(1, 2, SNAPSHOT);
    let forged =
        forge(&p, vec![user("u0", vec![100], 0), user("evil", vec![-250], 1), user("u2", vec![400], 2), padding(3)]);
    // The published total understates the liabilities: 250 (u0 and u2 hold 500).
    assert_eq!(forged.nodes[2][0].values, vec![250]);
    let root = forged.root();
    assert_eq!(
        forged.proof(0, 0).verify(&root),
        Err(PrivateFailure::RangeProof { group: 0, first_level: 0, last_level: 1 })
    );
    assert!(matches!(forged.proof(2, 2).verify(&root), Err(PrivateFailure::RangeProof { .. })));
    // The forger's own proof for the negative account cannot even state its balance: balances are unsigned.
    assert_eq!(forged.proof(1, 1).balances, vec![(0, (-250i128) as u64)]);
    assert!(PrivateProof::decode(&forged.proof(1, 1).encode()).is_err());
}

/// A sibling whose value is beyond 2^64 (so that sums could wrap the group order): no range proof shows it.
#[test]
fn a_sibling_out_of_range_is_caught() {
    let p = params(1, 1, SNAPSHOT);
    let huge = (1i128 << 64) + 5;
    let forged = forge(&p, vec![user("u0", vec![1], 0), user("whale", vec![huge], 1)]);
    assert!(matches!(forged.proof(0, 0).verify(&forged.root()), Err(PrivateFailure::RangeProof { group: 0, .. })));
    // At the top of the range the same proof verifies.
    let fine = forge(&p, vec![user("u0", vec![1], 0), user("whale", vec![i128::from(u64::MAX)], 1)]);
    fine.proof(0, 0).verify(&fine.root()).unwrap();
}

/// A maximum that lets 2^height users overflow 64 bits, or a balance above its maximum, is refused at build; at the
/// largest maximum allowed, a full tree of users at the maximum builds and proves.
#[test]
fn maxima_too_large_for_the_private_form_are_refused() {
    let mut p = params(1, 3, SNAPSHOT);
    let max = u64::MAX >> 3;
    p.assets[0].max = u128::from(max) + 1;
    let err = PrivateTree::build(p.clone(), vec![], &TreeSecret::new([0; 32]), 1).unwrap_err();
    assert!(matches!(err, BuildError::Params(_)), "{err}");
    p.assets[0].max -= 1;
    let full: Vec<Holding> = (0..8).map(|i| holding(&format!("u{i}"), &[(0, u128::from(max))])).collect();
    let tree = PrivateTree::build(p, full, &TreeSecret::new([0; 32]), 1).unwrap();
    assert_eq!(tree.totals(), &[max * 8]);
    verify(&tree, &tree.proof(5, Reveal::Held).unwrap()).unwrap();
    let over = vec![holding("u0", &[(0, 1_000_000_000_001)])];
    let err = PrivateTree::build(params(1, 2, SNAPSHOT), over, &TreeSecret::new([0; 32]), 1).unwrap_err();
    assert!(matches!(err, BuildError::Balance { index: 0, .. }), "{err}");
}

/// A proof from the previous snapshot against this snapshot's root, even with identical balances.
#[test]
fn a_proof_from_another_snapshot_is_rejected() {
    let holdings = vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)])];
    let old = build(params(1, 2, "2026-11-04/ledger-900"), holdings.clone());
    let new = build(params(1, 2, SNAPSHOT), holdings);
    let proof = old.proof(0, Reveal::Held).unwrap();
    proof.verify(&old.root()).unwrap();
    assert!(matches!(proof.verify(&new.root()), Err(PrivateFailure::RootMismatch { .. })));
}

/// A leaf hashed for one position and placed at another: whichever position the proof names, it fails; and an honest
/// proof whose position is changed fails too.
#[test]
fn a_leaf_moved_to_another_position_is_rejected() {
    let p = params(1, 2, SNAPSHOT);
    let moved = forge(&p, vec![user("u0", vec![1], 2), user("u1", vec![2], 1), padding(2), padding(3)]);
    let root = moved.root();
    assert!(matches!(moved.proof(0, 0).verify(&root), Err(PrivateFailure::RootMismatch { .. })));
    assert!(matches!(moved.proof(0, 2).verify(&root), Err(PrivateFailure::RootMismatch { .. })));
    moved.proof(1, 1).verify(&root).unwrap();

    let tree = build(p, vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)])]);
    let mut proof = tree.proof(0, Reveal::Held).unwrap();
    let honest = proof.position;
    for other in (0..4).filter(|&q| q != honest) {
        proof.position = other;
        assert!(proof.verify(&tree.root()).is_err(), "position {other}");
    }
}

/// A range proof made for another user's path does not verify in this one (the transcript binds the position).
#[test]
fn a_range_proof_from_another_path_is_rejected() {
    let tree = build(
        params(1, 2, SNAPSHOT),
        vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)]), holding("u2", &[(0, 3)])],
    );
    let a = tree.proof(0, Reveal::Held).unwrap();
    let b = tree.proof(1, Reveal::Held).unwrap();
    let mut swapped = a.clone();
    swapped.range_proofs = b.range_proofs.clone();
    assert!(matches!(swapped.verify(&tree.root()), Err(PrivateFailure::RangeProof { group: 0, .. })));
}

/// Any changed byte of a proof makes it undecodable or failing; so do a missing or an extra byte, and a point that
/// is not a canonical Ristretto encoding.
#[test]
fn a_changed_byte_anywhere_is_rejected() {
    let tree = build(params(1, 1, SNAPSHOT), vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)])]);
    let root = tree.root();
    let bytes = tree.proof(0, Reveal::Held).unwrap().encode();
    PrivateProof::decode(&bytes).unwrap().verify(&root).unwrap();
    for at in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[at] ^= 0x41;
        if let Ok(proof) = PrivateProof::decode(&changed) {
            assert!(proof.verify(&root).is_err(), "byte {at} changed and the proof still verifies");
        }
    }
    assert!(PrivateProof::decode(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(PrivateProof::decode(&longer).is_err());

    // 2^255 − 19 + 1, an unreduced encoding of 1: not canonical. The sibling commitment sits right after the sibling
    // hash, 32 + 672 bytes before the end (one level, one asset, one 672-byte range proof).
    let mut unreduced = [0xffu8; 32];
    unreduced[0] = 0xee;
    unreduced[31] = 0x7f;
    assert!(CompressedRistretto(unreduced).decompress().is_none());
    let at = bytes.len() - 672 - 32;
    let mut changed = bytes.clone();
    changed[at..at + 32].copy_from_slice(&unreduced);
    assert!(PrivateProof::decode(&changed).is_err());
    // The range proof's first point (A), then its t_x scalar replaced by the group order (unreduced).
    let mut changed = bytes.clone();
    changed[at + 32..at + 64].copy_from_slice(&unreduced);
    assert!(PrivateProof::decode(&changed).is_err());
    let order = Scalar::ZERO - Scalar::ONE;
    let mut l = order.to_bytes();
    l[0] = l[0].wrapping_add(1);
    let mut changed = bytes.clone();
    changed[at + 32 + 4 * 32..at + 32 + 5 * 32].copy_from_slice(&l);
    assert!(PrivateProof::decode(&changed).is_err());
}

/// The revealed form's root does not accept a private proof, and neither form's decoder takes the other's proofs.
#[test]
fn a_root_of_the_revealed_form_is_rejected() {
    let (p, holdings) = (params(1, 2, SNAPSHOT), vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)])]);
    let revealed = Tree::build(p.clone(), holdings.clone(), &TreeSecret::new([7; 32]), 2).unwrap();
    let private = build(p, holdings);
    assert_ne!(revealed.root(), private.root());
    let proof = private.proof(0, Reveal::Held).unwrap();
    assert!(matches!(proof.verify(&revealed.root()), Err(PrivateFailure::RootMismatch { .. })));
    assert!(PrivateProof::decode(&revealed.proof(0, Reveal::Held).encode()).is_err());
    assert!(Proof::decode(&proof.encode()).is_err());
}

/// A proof holds its user's balances and nothing from which another user's can be read: no other user's balance, nor
/// any sum of two of them, appears in its bytes (in either byte order); only commitments, hashes and range proofs do.
#[test]
fn a_proof_shows_no_other_users_balance() {
    let balances: Vec<u64> = (0..6u64).map(|i| 0x0000_0083_5a00_0000 + 0x0101_0101 * (i + 1) + (i << 32)).collect();
    let holdings: Vec<Holding> =
        balances.iter().enumerate().map(|(i, &b)| holding(&format!("user-{i}"), &[(0, u128::from(b))])).collect();
    let tree = build(params(1, 3, SNAPSHOT), holdings);
    let contains = |haystack: &[u8], v: u64| haystack.windows(8).any(|w| w == v.to_be_bytes() || w == v.to_le_bytes());
    for (i, &own) in balances.iter().enumerate() {
        let proof = tree.proof(i, Reveal::Held).unwrap();
        let bytes = proof.encode();
        assert!(contains(&bytes, own), "the user's own balance is in their proof");
        for (j, &other) in balances.iter().enumerate().filter(|&(j, _)| j != i) {
            assert!(!contains(&bytes, other), "user {i}'s proof shows user {j}'s balance");
            for (_, &third) in balances.iter().enumerate().filter(|&(m, _)| m != i && m > j) {
                assert!(!contains(&bytes, other + third), "user {i}'s proof shows a sum of two others' balances");
            }
        }
        let shown = format!("{proof:?}");
        assert!(
            !shown.contains(&format!("{:?}", proof.salt)) && !shown.contains(&format!("{:?}", proof.blinding_seed))
        );
    }
}
