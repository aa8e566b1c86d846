//! The private form (form 1): every publication verifies, every user's proof verifies against it and the published
//! totals open the top commitments; forged trees and publications (negative or oversized subtrees, below or among the
//! published nodes, published nodes other than the tree's, range proofs of other nodes, values, roots or domains,
//! moved leaves, other snapshots, the revealed form's root, altered bytes) are rejected; and neither a proof nor the
//! publication carries another user's balance.

use proptest::prelude::*;
use rampart_reserves::private::{PrivateTree, TOP_VALUES_BUDGET, proven_levels_for};
use rampart_reserves::{BuildError, Holding, Reveal, Tree, TreeSecret, height_for};
use rampart_verify::Proof;
use rampart_verify::hash::user_commitment;
use rampart_verify::params::{Asset, Params};
use rampart_verify::private::{
    CompressedRistretto, PrivateFailure, PrivateLevel, PrivateProof, PrivatePublication, PrivateVerified, RANGE_BITS,
    RangeProof, RistrettoPoint, Scalar, Transcript, VerifiedPublication, asset_digest, blinding, commit,
    commitments_digest, generators, group_offsets, leaf_hash, node_hash, padding_hash, pedersen_gens, proof_groups,
    root_hash, top_groups, top_transcript, top_values, totals_digest, transcript,
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

fn build_at(params: Params, holdings: Vec<Holding>, proven_levels: u8) -> PrivateTree {
    PrivateTree::build_with_proven_levels(params, holdings, &TreeSecret::new([7; 32]), 2, proven_levels).unwrap()
}

/// The tree's publication after an encoding round trip, verified against the tree's root.
fn published(tree: &PrivateTree) -> VerifiedPublication {
    let decoded = PrivatePublication::decode(&tree.publication().encode()).unwrap();
    assert_eq!(&decoded, tree.publication());
    decoded.verify(&tree.root()).unwrap()
}

/// Verifies a proof after an encoding round trip against a verified publication (which holds the totals).
fn verify(publication: &VerifiedPublication, proof: &PrivateProof) -> Result<PrivateVerified, PrivateFailure> {
    let decoded = PrivateProof::decode(&proof.encode()).unwrap();
    assert_eq!(&decoded, proof);
    decoded.verify(publication)
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
        proven in 1u8..=8,
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
        let proven = proven.min(p.height);
        let secret = TreeSecret::new([3; 32]);
        let tree =
            PrivateTree::build_with_proven_levels(p.clone(), holdings.clone(), &secret, threads, proven).unwrap();
        prop_assert_eq!(tree.totals(), expected.as_slice());
        prop_assert_eq!(tree.proven_levels(), proven);
        let single = PrivateTree::build_with_proven_levels(p, holdings.clone(), &secret, 1, proven).unwrap();
        prop_assert_eq!(tree.root(), single.root());
        prop_assert_eq!(&tree.publication().top_commitments, &single.publication().top_commitments);
        let publication = published(&tree);
        for (i, h) in holdings.iter().enumerate() {
            let proof = tree.proof_with_threads(i, Reveal::Held, threads).unwrap();
            let mut held: Vec<(u16, u64)> =
                h.balances.iter().filter(|&&(_, b)| b != 0).map(|&(a, b)| (a, b as u64)).collect();
            held.sort();
            prop_assert_eq!(&proof.balances, &held);
            prop_assert_eq!(proof.proven_levels, proven);
            prop_assert_eq!(proof.range_values(), usize::from(proven) * held.len());
            prop_assert!(verify(&publication, &proof).is_ok());
            // The single tree's publication is another, equally valid one of the same tree.
            prop_assert!(proof.verify(&published(&single)).is_ok());
        }
        if !holdings.is_empty() {
            let all = tree.proof(0, Reveal::All).unwrap();
            prop_assert_eq!(all.revealed.len(), assets);
            prop_assert!(verify(&publication, &all).is_ok());
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
    assert_eq!(tree.publication().totals, vec![16, 20]);
    let verified = verify(&published(&tree), &tree.proof(1, Reveal::Held).unwrap()).unwrap();
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

/// The builder's choice of proven levels keeps the publication within its budget: 8 at height 20 and one asset (8,190
/// published commitments), and the publication holds exactly the nodes of those levels and above.
#[test]
fn the_proven_levels_keep_the_publication_within_its_budget() {
    assert_eq!(proven_levels_for(1, 20), 8);
    assert_eq!(top_values(1, 20, 8), Some(8190));
    assert_eq!(proven_levels_for(4, 17), 7);
    assert_eq!(proven_levels_for(1, 10), 1);
    assert_eq!(proven_levels_for(500, 40), 37);
    assert_eq!(proven_levels_for(1, 1), 1);
    for (k, h) in [(1usize, 20u8), (4, 17), (16, 20), (500, 40), (3, 9)] {
        let b = proven_levels_for(k, h);
        assert!(top_values(k, h, b).unwrap() <= TOP_VALUES_BUDGET);
        assert!(b == 1 || top_values(k, h, b - 1).is_none_or(|n| n > TOP_VALUES_BUDGET));
    }

    let holdings: Vec<Holding> = (0..20).map(|i| holding(&format!("u{i}"), &[(0, 1 + i), (1, 2 * i)])).collect();
    let tree = build(params(2, 5, SNAPSHOT), holdings);
    assert_eq!(tree.proven_levels(), 1);
    let publication = tree.publication();
    assert_eq!(publication.top_commitments.len(), 2 * 30);
    assert_eq!(publication.range_proofs.len(), top_groups(60).len());
    let verified = published(&tree);
    for i in [0, 7, 19] {
        let proof = tree.proof_with_threads(i, Reveal::Held, 2).unwrap();
        assert_eq!(proof.range_values(), proof.revealed.len());
        verify(&verified, &proof).unwrap();
    }
    // Explicit proven levels out of 1..=height are refused.
    for b in [0, 6] {
        let err =
            PrivateTree::build_with_proven_levels(params(1, 5, SNAPSHOT), vec![], &TreeSecret::new([0; 32]), 1, b)
                .unwrap_err();
        assert!(matches!(err, BuildError::Params(_)), "{err}");
    }
}

/// Proven levels equal to the height publish no node: every proof range-proves every level, as before publications
/// held nodes; and a proof does not verify against a publication of other proven levels.
#[test]
fn proven_levels_at_the_height_still_work() {
    let holdings: Vec<Holding> = (0..6).map(|i| holding(&format!("u{i}"), &[(0, 10 + i)])).collect();
    let full = build_at(params(1, 3, SNAPSHOT), holdings.clone(), 3);
    assert!(full.publication().top_commitments.is_empty() && full.publication().range_proofs.is_empty());
    let verified = published(&full);
    for i in 0..6 {
        let proof = full.proof_with_threads(i, Reveal::Held, 2).unwrap();
        assert_eq!((proof.range_values(), proof.range_proofs.len()), (3, 2));
        verify(&verified, &proof).unwrap();
    }
    let lower = build_at(params(1, 3, SNAPSHOT), holdings, 2);
    assert_eq!(lower.root(), full.root());
    let proof = lower.proof(0, Reveal::Held).unwrap();
    verify(&published(&lower), &proof).unwrap();
    assert!(matches!(proof.verify(&verified), Err(PrivateFailure::PublicationMismatch(_))));
    assert!(matches!(
        full.proof(0, Reveal::Held).unwrap().verify(&published(&lower)),
        Err(PrivateFailure::PublicationMismatch(_))
    ));
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

/// The forger's range proofs of `values` (with `blindings`) in groups of `sizes`: each value cut to 64 bits
/// (`v mod 2^64`), so that a negative or oversized value gets a proof of another commitment than its own.
fn forged_range_proofs(
    values: &[i128],
    blindings: &[Scalar],
    sizes: &[usize],
    transcript: impl Fn(usize, usize) -> Transcript,
) -> Vec<RangeProof> {
    let cut: Vec<u64> = values.iter().map(|&v| v as u64).collect();
    sizes
        .iter()
        .zip(group_offsets(sizes))
        .enumerate()
        .map(|(g, (&m, offset))| {
            RangeProof::prove_multiple(
                &generators(m),
                pedersen_gens(),
                &mut transcript(g, offset),
                &cut[offset..offset + m],
                &blindings[offset..offset + m],
                RANGE_BITS,
            )
            .unwrap()
            .0
        })
        .collect()
}

impl Forged {
    fn root(&self) -> [u8; 32] {
        let top = &self.nodes[usize::from(self.params.height)][0];
        root_hash(&self.params.digest(), &top.hash, &top.digest())
    }

    fn k(&self) -> usize {
        self.params.assets.len()
    }

    /// The nodes of levels `b` and above below the top, in publication order, with their values and blindings.
    fn top_nodes(&self, b: u8) -> (Vec<CompressedRistretto>, Vec<i128>, Vec<Scalar>) {
        let (mut commitments, mut values, mut blindings) = (Vec::new(), Vec::new(), Vec::new());
        for nodes in &self.nodes[usize::from(b)..usize::from(self.params.height)] {
            for node in nodes {
                commitments.extend(node.commitments.iter().map(|c| c.compress()));
                values.extend_from_slice(&node.values);
                blindings.extend_from_slice(&node.blindings);
            }
        }
        (commitments, values, blindings)
    }

    /// The forger's publication of proven levels `b`: the tree's own top nodes, with the range proofs it can make.
    fn publication(&self, b: u8) -> PrivatePublication {
        let (commitments, values, blindings) = self.top_nodes(b);
        self.publication_of(b, commitments, &values, &blindings)
    }

    /// A publication of proven levels `b` with any node commitments, range-proved as the forger can from `values`
    /// and `blindings`.
    fn publication_of(
        &self,
        b: u8,
        top_commitments: Vec<CompressedRistretto>,
        values: &[i128],
        blindings: &[Scalar],
    ) -> PrivatePublication {
        let top = &self.nodes[usize::from(self.params.height)][0];
        let (p, root) = (self.params.digest(), self.root());
        let range_proofs = forged_range_proofs(values, blindings, &top_groups(values.len()), |g, o| {
            top_transcript(&p, &root, b, g, o)
        });
        PrivatePublication {
            params: self.params.clone(),
            root,
            proven_levels: b,
            totals: top.values.iter().map(|&v| v as u64).collect(),
            total_blindings: top.blindings.clone(),
            top_commitments,
            range_proofs,
        }
    }

    /// The proof of the user at `index`, claiming position `position`, every asset revealed, range-proving the levels
    /// below `b` as the forger can: each sibling value cut to 64 bits, with the sibling's real blinding.
    fn proof(&self, index: usize, position: u64, b: u8) -> PrivateProof {
        let Leaf::User { id, salt, seed, values, .. } = &self.leaves[index] else { panic!("not a user") };
        let k = self.k();
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
            if l < usize::from(b) {
                range_values.extend_from_slice(&sibling.values);
                range_blindings.extend_from_slice(&sibling.blindings);
            }
        }
        let (p, root) = (self.params.digest(), self.root());
        let range_proofs =
            forged_range_proofs(&range_values, &range_blindings, &proof_groups(range_values.len()), |g, o| {
                transcript(&p, &root, position, b, g, o)
            });
        PrivateProof {
            params: self.params.clone(),
            user_id: id.clone(),
            salt: *salt,
            position,
            blinding_seed: *seed,
            proven_levels: b,
            balances: values.iter().enumerate().filter(|(_, v)| **v != 0).map(|(a, &v)| (a as u16, v as u64)).collect(),
            revealed: (0..k as u16).collect(),
            levels,
            range_proofs,
        }
    }

    /// The forger's publication of proven levels `b`, verified.
    fn published(&self, b: u8) -> VerifiedPublication {
        self.publication(b).verify(&self.root()).unwrap()
    }
}

/// The forger's honest trees verify, at every proven level: it builds what the specification says.
#[test]
fn an_honest_forged_tree_verifies() {
    let p = params(2, 2, SNAPSHOT);
    let forged =
        forge(&p, vec![user("u0", vec![1, 0], 0), padding(1), user("u2", vec![5, 9], 2), user("u3", vec![0, 4], 3)]);
    for b in [1, 2] {
        let publication = forged.published(b);
        for i in [0, 2, 3] {
            verify(&publication, &forged.proof(i, i as u64, b)).unwrap();
        }
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
    let publication = forged.published(2);
    assert_eq!(
        forged.proof(0, 0, 2).verify(&publication),
        Err(PrivateFailure::RangeProof { group: 0, first_level: 0, last_level: 0 })
    );
    assert!(matches!(forged.proof(2, 2, 2).verify(&publication), Err(PrivateFailure::RangeProof { .. })));
    // The forger's own proof for the negative account cannot even state its balance: balances are unsigned.
    assert_eq!(forged.proof(1, 1, 2).balances, vec![(0, (-250i128) as u64)]);
    assert!(PrivateProof::decode(&forged.proof(1, 1, 2).encode()).is_err());
}

/// A sibling whose value is beyond 2^64 (so that sums could wrap the group order): no range proof shows it.
#[test]
fn a_sibling_out_of_range_is_caught() {
    let p = params(1, 1, SNAPSHOT);
    let huge = (1i128 << 64) + 5;
    let forged = forge(&p, vec![user("u0", vec![1], 0), user("whale", vec![huge], 1)]);
    let publication = forged.published(1);
    assert!(matches!(forged.proof(0, 0, 1).verify(&publication), Err(PrivateFailure::RangeProof { group: 0, .. })));
    // Near the top of the range (so that the total still fits 64 bits) the same proof verifies.
    let fine = forge(&p, vec![user("u0", vec![1], 0), user("whale", vec![i128::from(u64::MAX) - 1], 1)]);
    fine.proof(0, 0, 1).verify(&fine.published(1)).unwrap();
}

/// A negative node among the published ones (the exchange hides a negative subtree above the proven levels): its
/// published range proof cannot show it in range, so the publication does not verify, and no proof can use it. The
/// builder cannot make one: node values are sums of unsigned balances, checked not to overflow.
#[test]
fn a_negative_published_node_cannot_be_published() {
    let p = params(1, 3, SNAPSHOT);
    let mut leaves = vec![user("u0", vec![100], 0), user("u1", vec![50], 1), user("e0", vec![-300], 2), padding(3)];
    leaves.extend([user("u4", vec![400], 4), padding(5), padding(6), user("u7", vec![7], 7)]);
    let forged = forge(&p, leaves);
    // Level 1: node 1 (e0 and padding) is negative; level 2: node 0 is too (100 + 50 − 300).
    assert_eq!(forged.nodes[1][1].values, vec![-300]);
    assert_eq!(forged.nodes[2][0].values, vec![-150]);
    for b in [1, 2] {
        let failure = forged.publication(b).verify(&forged.root()).unwrap_err();
        assert!(matches!(failure, PrivateFailure::TopRangeProof { .. }), "proven levels {b}: {failure}");
    }
    // The forger's honest-looking alternative: the same root, published nodes that are all in range and add up (to
    // the same total), but are not the tree's. The publication verifies, yet every proof whose path passes a
    // replaced node is refused: its sibling commitment is not the published one.
    let (mut commitments, mut values, blindings) = forged.top_nodes(1);
    // Level 1 nodes 0..4 are values 0..4, level 2 nodes 0..2 are 4..6; replace nodes (1, 0), (1, 1) and (2, 0).
    values[0] = 0;
    values[1] = 0;
    values[4] = 0;
    let pc = pedersen_gens();
    for i in [0, 1, 4] {
        commitments[i] = pc.commit(Scalar::from(values[i] as u64), blindings[i]).compress();
    }
    // Node (2, 1) absorbs the difference, so that the top still opens to the totals: 257 = 0 + 257.
    let top_value = forged.nodes[3][0].values[0];
    values[5] = top_value;
    let top_blinding = forged.nodes[3][0].blindings[0];
    let (b4, b5) = (blindings[4], top_blinding - blindings[4]);
    let mut adjusted = blindings.clone();
    adjusted[5] = b5;
    commitments[5] = pc.commit(Scalar::from(top_value as u64), b5).compress();
    // Keep level 1 consistent with level 2: nodes (1, 2) and (1, 3) must add up to node (2, 1).
    values[2] = top_value - values[3];
    adjusted[2] = b5 - blindings[3];
    commitments[2] = pc.commit(Scalar::from(values[2] as u64), adjusted[2]).compress();
    assert_eq!(b4, blindings[0] + blindings[1]);
    let publication = forged.publication_of(1, commitments, &values, &adjusted);
    let publication = publication.verify(&forged.root()).unwrap();
    for (index, level) in [(4usize, 2usize), (7, 1), (0, 1), (1, 1)] {
        assert_eq!(
            forged.proof(index, index as u64, 1).verify(&publication),
            Err(PrivateFailure::TopCommitment { level, asset: 0 }),
            "user {index}"
        );
    }
}

/// A publication whose range proofs are for other nodes, other values, another root, or are per-user range proofs of
/// the same values, does not verify; nor does a per-user proof carrying a published range proof.
#[test]
fn a_top_range_proof_for_another_node_value_root_or_domain_fails() {
    let p = params(1, 2, SNAPSHOT);
    let forged =
        forge(&p, vec![user("u0", vec![3], 0), user("u1", vec![5], 1), user("u2", vec![7], 2), user("u3", vec![9], 3)]);
    let (root, digest) = (forged.root(), p.digest());
    let honest = forged.publication(1);
    honest.verify(&root).unwrap();
    let top_failure = |publication: &PrivatePublication| {
        let failure = publication.verify(&root).unwrap_err();
        assert!(matches!(failure, PrivateFailure::TopRangeProof { group: 0, first: 0, count: 2 }), "{failure}");
    };
    // Another node: the two nodes of level 1 swapped (they still add up to the total).
    let mut swapped = honest.clone();
    swapped.top_commitments.swap(0, 1);
    top_failure(&swapped);
    // Other values: one unit moved from one node to the other.
    let mut moved = honest.clone();
    let b = pedersen_gens().B;
    let (n0, n1) = (moved.top_commitments[0].decompress().unwrap(), moved.top_commitments[1].decompress().unwrap());
    moved.top_commitments[0] = (n0 + b).compress();
    moved.top_commitments[1] = (n1 - b).compress();
    top_failure(&moved);
    // Another root: the same range proofs, claimed for another tree (whose own publication verifies).
    let other = forge(&p, vec![user("u0", vec![3], 0), user("u1", vec![5], 1), user("u2", vec![7], 2), padding(3)]);
    let other_root = other.root();
    other.published(1);
    let mut replayed = honest.clone();
    replayed.root = other_root;
    assert!(matches!(replayed.verify(&other_root), Err(PrivateFailure::TopRangeProof { .. })));
    assert_eq!(honest.verify(&other_root), Err(PrivateFailure::PublicationRoot { root }));
    // Another domain: a per-user range proof of exactly the published values (position 0's transcript).
    let (_, values, blindings) = forged.top_nodes(1);
    let mut per_user = honest.clone();
    per_user.range_proofs =
        forged_range_proofs(&values, &blindings, &[2], |g, o| transcript(&digest, &root, 0, 1, g, o));
    top_failure(&per_user);
    // And the reverse: a top-transcript range proof of the level-0 sibling in a user's proof.
    let publication = honest.verify(&root).unwrap();
    let mut proof = forged.proof(0, 0, 1);
    verify(&publication, &proof).unwrap();
    proof.range_proofs = forged_range_proofs(&[5], &[forged.nodes[0][1].blindings[0]], &[1], |g, o| {
        top_transcript(&digest, &root, 1, g, o)
    });
    assert!(matches!(proof.verify(&publication), Err(PrivateFailure::RangeProof { group: 0, .. })));
}

/// A publication whose nodes do not add up (to each other or to the totals) is refused even with valid range proofs.
#[test]
fn published_nodes_must_add_up() {
    let p = params(1, 3, SNAPSHOT);
    let leaves = (0..8).map(|i| user(&format!("u{i}"), vec![i + 1], i as u64)).collect();
    let forged = forge(&p, leaves);
    let (mut commitments, mut values, blindings) = forged.top_nodes(1);
    // Level 1 nodes are 0..4, level 2 nodes 4..6: node (1, 0) one unit higher, range-proved as such.
    values[0] += 1;
    commitments[0] = pedersen_gens().commit(Scalar::from(values[0] as u64), blindings[0]).compress();
    let publication = forged.publication_of(1, commitments, &values, &blindings);
    assert_eq!(publication.verify(&forged.root()), Err(PrivateFailure::TopSum { level: 2, index: 0, asset: 0 }));
    // The totals: one more than the top nodes add up to.
    let mut inflated = forged.publication(1);
    inflated.totals[0] += 1;
    assert!(matches!(inflated.verify(&forged.root()), Err(PrivateFailure::TotalsMismatch(_))));
}

/// A balance above its maximum, or a maximum that lets 2^height users overflow 64 bits, is refused at build; at the
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
    verify(&published(&tree), &tree.proof(5, Reveal::Held).unwrap()).unwrap();
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
    verify(&published(&old), &proof).unwrap();
    assert!(matches!(proof.verify(&published(&new)), Err(PrivateFailure::PublicationMismatch(_))));
    // Nor does the old publication verify against the new root.
    assert!(matches!(old.publication().verify(&new.root()), Err(PrivateFailure::PublicationRoot { .. })));
}

/// A leaf hashed for one position and placed at another: whichever position the proof names, it fails; and an honest
/// proof whose position is changed fails too.
#[test]
fn a_leaf_moved_to_another_position_is_rejected() {
    let p = params(1, 2, SNAPSHOT);
    let moved = forge(&p, vec![user("u0", vec![1], 2), user("u1", vec![2], 1), padding(2), padding(3)]);
    let publication = moved.published(2);
    assert!(matches!(moved.proof(0, 0, 2).verify(&publication), Err(PrivateFailure::RootMismatch { .. })));
    assert!(matches!(moved.proof(0, 2, 2).verify(&publication), Err(PrivateFailure::RootMismatch { .. })));
    moved.proof(1, 1, 2).verify(&publication).unwrap();

    let tree = build(p, vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)])]);
    let publication = published(&tree);
    let mut proof = tree.proof(0, Reveal::Held).unwrap();
    let honest = proof.position;
    for other in (0..4).filter(|&q| q != honest) {
        proof.position = other;
        assert!(proof.verify(&publication).is_err(), "position {other}");
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
    assert!(matches!(swapped.verify(&published(&tree)), Err(PrivateFailure::RangeProof { group: 0, .. })));
}

/// Any changed byte of a proof makes it undecodable or failing; so do a missing or an extra byte, and a point that
/// is not a canonical Ristretto encoding.
#[test]
fn a_changed_byte_anywhere_is_rejected() {
    let tree = build(params(1, 1, SNAPSHOT), vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)])]);
    let publication = published(&tree);
    let bytes = tree.proof(0, Reveal::Held).unwrap().encode();
    PrivateProof::decode(&bytes).unwrap().verify(&publication).unwrap();
    for at in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[at] ^= 0x41;
        if let Ok(proof) = PrivateProof::decode(&changed) {
            assert!(proof.verify(&publication).is_err(), "byte {at} changed and the proof still verifies");
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

/// With published nodes: any changed byte of the publication makes it undecodable or failing against the root, and
/// any changed byte of a proof (whose upper sibling commitments are the published ones) makes it fail against the
/// publication; a missing or an extra byte of the publication is refused.
#[test]
fn a_changed_byte_of_a_publication_or_of_its_proofs_is_rejected() {
    let holdings = vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)]), holding("u2", &[(0, 3)])];
    let tree = build_at(params(1, 2, SNAPSHOT), holdings, 1);
    let root = tree.root();
    let bytes = tree.publication().encode();
    assert_eq!(tree.publication().top_commitments.len(), 2);
    let publication = PrivatePublication::decode(&bytes).unwrap().verify(&root).unwrap();
    for at in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[at] ^= 0x41;
        if let Ok(publication) = PrivatePublication::decode(&changed) {
            assert!(publication.verify(&root).is_err(), "byte {at} changed and the publication still verifies");
        }
    }
    assert!(PrivatePublication::decode(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(PrivatePublication::decode(&longer).is_err());
    // The total blinding (after the header, parameters, root, proven levels and total) replaced by the group order.
    let at = bytes.len() - 32 * 2 - 736 - 32;
    assert_eq!(&bytes[at..at + 32], tree.total_blindings()[0].as_bytes());
    let mut l = (Scalar::ZERO - Scalar::ONE).to_bytes();
    l[0] = l[0].wrapping_add(1);
    let mut changed = bytes.clone();
    changed[at..at + 32].copy_from_slice(&l);
    assert!(PrivatePublication::decode(&changed).is_err());

    let proof = tree.proof(2, Reveal::Held).unwrap().encode();
    verify(&publication, &PrivateProof::decode(&proof).unwrap()).unwrap();
    for at in 0..proof.len() {
        let mut changed = proof.clone();
        changed[at] ^= 0x41;
        if let Ok(decoded) = PrivateProof::decode(&changed) {
            assert!(decoded.verify(&publication).is_err(), "byte {at} changed and the proof still verifies");
        }
    }
}

/// The revealed form's root does not accept a private proof, and neither form's decoder takes the other's proofs.
#[test]
fn a_root_of_the_revealed_form_is_rejected() {
    let (p, holdings) = (params(1, 2, SNAPSHOT), vec![holding("u0", &[(0, 1)]), holding("u1", &[(0, 2)])]);
    let revealed = Tree::build(p.clone(), holdings.clone(), &TreeSecret::new([7; 32]), 2).unwrap();
    // Proven levels at the height: no published range proof binds the publication to its root.
    let private = build_at(p, holdings, 2);
    assert_ne!(revealed.root(), private.root());
    let proof = private.proof(0, Reveal::Held).unwrap();
    assert!(matches!(private.publication().verify(&revealed.root()), Err(PrivateFailure::PublicationRoot { .. })));
    let mut claimed = private.publication().clone();
    claimed.root = revealed.root();
    let claimed = claimed.verify(&revealed.root()).unwrap();
    assert!(matches!(proof.verify(&claimed), Err(PrivateFailure::RootMismatch { .. })));
    assert!(PrivateProof::decode(&revealed.proof(0, Reveal::Held).encode()).is_err());
    assert!(Proof::decode(&proof.encode()).is_err());
    assert!(PrivatePublication::decode(&proof.encode()).is_err());
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
    // The publication holds the total and commitments, and no user's balance nor a sum of two.
    let publication = tree.publication().encode();
    assert!(tree.proven_levels() < 3 && !tree.publication().top_commitments.is_empty());
    for (j, &one) in balances.iter().enumerate() {
        assert!(!contains(&publication, one), "the publication shows user {j}'s balance");
        for &two in &balances[j + 1..] {
            assert!(!contains(&publication, one + two), "the publication shows a sum of two balances");
        }
    }
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
