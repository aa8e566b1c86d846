//! The private form of the liabilities tree (form 1, §8 of `docs/reserves-spec.md`): DAPOL+-style Pedersen
//! commitments to every node's per-asset values, summed homomorphically, and per proof aggregated Bulletproofs that
//! every sibling commitment on the user's path commits to a value in `[0, 2^64)`. A proof reveals the user's own
//! balances and blindings and nothing about any other user's; the published totals (and the total blindings that
//! open the top commitments) are public.
//!
//! The salts, padding secrets and placement are the revealed form's (§6); each leaf's blinding factors come from a
//! per-position seed `HMAC-SHA256(k, "blinding" ‖ P ‖ position:u64)`, which the leaf's user receives in their proof.
//! The tree is built on every core like [`crate::Tree::build`]. Only levels from [`COMMITMENTS_FROM_LEVEL`] (or the
//! proven levels, if lower) up are kept; a proof recomputes the leaves of its block.
//!
//! The build also range-proves, once, every node at the **proven levels** `b` and above (§8.3), in aggregated groups
//! made on every thread: they are published with the totals, so that a user's proof range-proves only its `b` lowest
//! sibling commitments. [`proven_levels_for`] picks `b` so that the publication stays within [`TOP_VALUES_BUDGET`]
//! commitments.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use curve25519_dalek::ristretto::RistrettoBasepointTable;
use curve25519_dalek::traits::Identity;
use hmac::{Hmac, Mac};
use rampart_verify::hash::user_commitment;
use rampart_verify::params::Params;
use rampart_verify::private::{
    CompressedRistretto, PrivateLevel, PrivateProof, PrivatePublication, RANGE_BITS, RANGE_VALUES_MAX, RangeProof,
    RistrettoPoint, Scalar, TOP_VALUES_MAX, Transcript, asset_digest, blinding, commitments_digest, generators,
    group_offsets, hint_count, leaf_hash, node_hash, padding_hash, pedersen_gens, proof_groups, root_hash, run_groups,
    top_groups, top_transcript, top_values, transcript, validate_params,
};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::{BuildError, Holding, PADDING, Reveal, TreeSecret, padding_secret, salt};

/// Levels below this one are not kept: a proof recomputes the `2^4` leaves of its block, which costs far less than
/// its range proof and saves most of the memory (commitments, values and blinding sums of every node).
pub const COMMITMENTS_FROM_LEVEL: usize = 4;

/// The automatic choice of proven levels keeps a publication's node commitments (assets × nodes) at most this many:
/// at one asset, 8,190 (proven levels 8 at height 20), some 260 KB of commitments and a minute of one core's range
/// proofs at build, against the 12 per-user range proofs it saves every proof.
pub const TOP_VALUES_BUDGET: usize = 8_192;

/// The proven levels `b` the builder picks for `assets` assets at height `height`: the lowest `b` (from 1) whose
/// publication holds at most [`TOP_VALUES_BUDGET`] node commitments (`assets · (2^(height − b + 1) − 2)`), and
/// `height` (no published node) when none does.
pub fn proven_levels_for(assets: usize, height: u8) -> u8 {
    (1..=height).find(|&b| top_values(assets, height, b).is_some_and(|n| n <= TOP_VALUES_BUDGET)).unwrap_or(height)
}

/// Why a private proof could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// No user has this index.
    UnknownUser { index: usize },
    /// The proof would range-prove more commitments (height × revealed assets) than a verifier accepts.
    TooManyValues { values: usize, max: usize },
    /// The range proof could not be made (a value out of range, which validated maxima rule out).
    RangeProof(String),
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProofError::UnknownUser { index } => write!(f, "no user has index {index}"),
            ProofError::TooManyValues { values, max } => {
                write!(f, "the proof would range-prove {values} commitments, more than the limit of {max}")
            }
            ProofError::RangeProof(m) => write!(f, "range proof: {m}"),
        }
    }
}

impl std::error::Error for ProofError {}

/// The Pedersen generators halved, as fixed-base tables: a leaf's commitment is computed as `C/2 = v·(B/2) + r·(B̃/2)`
/// so that a whole level's commitments are compressed in one batch (`double_and_compress_batch` encodes `2·(C/2)`
/// with one inversion for the batch instead of an inverse square root per point).
struct HalfBases {
    value: RistrettoBasepointTable,
    blinding: RistrettoBasepointTable,
}

fn half_bases() -> &'static HalfBases {
    static BASES: OnceLock<HalfBases> = OnceLock::new();
    BASES.get_or_init(|| {
        let half = Scalar::from(2u8).invert();
        let pc = pedersen_gens();
        HalfBases {
            value: RistrettoBasepointTable::create(&(pc.B * half)),
            blinding: RistrettoBasepointTable::create(&(pc.B_blinding * half)),
        }
    })
}

/// The nodes of one level: hashes, commitments digests, and per node `K` compressed commitments, values and
/// blinding sums.
#[derive(Default)]
struct Nodes {
    hashes: Vec<[u8; 32]>,
    digests: Vec<[u8; 32]>,
    commitments: Vec<CompressedRistretto>,
    values: Vec<u64>,
    blindings: Vec<Scalar>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.blindings.zeroize();
    }
}

impl Nodes {
    fn with_capacity(nodes: usize, k: usize) -> Self {
        Nodes {
            hashes: Vec::with_capacity(nodes),
            digests: Vec::with_capacity(nodes),
            commitments: Vec::new(),
            values: Vec::with_capacity(nodes * k),
            blindings: Vec::with_capacity(nodes * k),
        }
    }

    /// Compresses the level's halved commitments (doubling them back) in one batch and hashes each node's
    /// commitments digest.
    fn finish(&mut self, halves: &[RistrettoPoint], k: usize) {
        self.commitments = RistrettoPoint::double_and_compress_batch(halves);
        self.digests = self.commitments.chunks(k).map(digest_of).collect();
    }
}

/// A node's commitments digest from its `K` commitments.
fn digest_of(commitments: &[CompressedRistretto]) -> [u8; 32] {
    if let [only] = commitments {
        return asset_digest(only);
    }
    let slots: Vec<[u8; 32]> = commitments.iter().map(asset_digest).collect();
    commitments_digest(&slots, &[], None)
}

/// Checked addition of two node values; validated maxima make an overflow impossible, and one is recorded.
fn add(a: u64, b: u64, overflow: &AtomicBool) -> u64 {
    a.checked_add(b).unwrap_or_else(|| {
        overflow.store(true, Ordering::Relaxed);
        0
    })
}

/// What a block of leaves is computed from: shared by the build and the proofs.
struct Leaves<'a> {
    params_digest: &'a [u8; 32],
    key: &'a Hmac<Sha256>,
    owners: &'a [u32],
    holdings: &'a [Holding],
    k: usize,
}

/// Levels `0..=base` of the block of `2^base` leaves starting at `first`, bottom up, and its top node's halved
/// commitments.
struct Block {
    levels: Vec<Nodes>,
    top_halves: Vec<RistrettoPoint>,
}

impl Leaves<'_> {
    fn block(&self, first: u64, base: usize, overflow: &AtomicBool) -> Block {
        let (p, key, k) = (self.params_digest, self.key, self.k);
        let width = 1usize << base;
        let bases = half_bases();
        let mut halves = Vec::with_capacity(width * k);
        let mut leaf = Nodes::with_capacity(width, k);
        for i in 0..width {
            let position = first + i as u64;
            let start = leaf.values.len();
            leaf.values.resize(start + k, 0);
            let owner = self.owners[position as usize];
            let hash = if owner == PADDING {
                padding_hash(p, position, &padding_secret(key, p, position))
            } else {
                let h = &self.holdings[owner as usize];
                for &(a, v) in &h.balances {
                    // Validated at build: at most the asset's maximum, itself below 2^64 >> height.
                    leaf.values[start + usize::from(a)] = v as u64;
                }
                leaf_hash(p, position, &user_commitment(p, &h.user_id, &salt(key, p, &h.user_id)))
            };
            leaf.hashes.push(hash);
            let seed = blinding_seed(key, p, position);
            for a in 0..k {
                let r = blinding(&seed, a as u16);
                let v = leaf.values[start + a];
                // Constant-time table multiplications; skipping the value's for a zero balance shows only whether a
                // balance is zero, and only to someone timing the build on the exchange's machine.
                let mut half = &bases.blinding * &r;
                if v != 0 {
                    half += &bases.value * &Scalar::from(v);
                }
                halves.push(half);
                leaf.blindings.push(r);
            }
        }
        leaf.finish(&halves, k);
        let mut levels = vec![leaf];
        for _ in 0..base {
            let below = levels.last().expect("the leaves' level exists");
            let n = below.hashes.len() / 2;
            let mut up = Nodes::with_capacity(n, k);
            let mut next = Vec::with_capacity(n * k);
            for j in 0..n {
                let (l, r) = (2 * j, 2 * j + 1);
                up.hashes.push(node_hash(&below.hashes[l], &below.digests[l], &below.hashes[r], &below.digests[r]));
                for a in 0..k {
                    next.push(halves[l * k + a] + halves[r * k + a]);
                    up.values.push(add(below.values[l * k + a], below.values[r * k + a], overflow));
                    up.blindings.push(below.blindings[l * k + a] + below.blindings[r * k + a]);
                }
            }
            up.finish(&next, k);
            halves = next;
            levels.push(up);
        }
        Block { levels, top_halves: halves }
    }
}

/// A built private liabilities tree.
pub struct PrivateTree {
    params: Params,
    params_digest: [u8; 32],
    holdings: Vec<Holding>,
    /// Each user's position, by their index in `holdings`.
    positions: Vec<u64>,
    /// Each position's user index, or `PADDING`.
    owners: Vec<u32>,
    /// Levels `base` to `height` (the top node).
    upper: Vec<Nodes>,
    base: usize,
    key: Hmac<Sha256>,
    /// Whether `holdings` are in increasing user id order.
    sorted: bool,
    /// The publication: root, totals, total blindings, and the nodes at the proven levels and above with their range
    /// proofs.
    publication: PrivatePublication,
}

impl fmt::Debug for PrivateTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateTree")
            .field("snapshot", &self.params.snapshot)
            .field("height", &self.params.height)
            .field("users", &self.holdings.len())
            .finish_non_exhaustive()
    }
}

impl PrivateTree {
    /// Builds the private tree of `holdings` under `params` on up to `threads` threads, and its publication with the
    /// proven levels [`proven_levels_for`] picks. Beyond [`crate::Tree::build`]'s rules, every asset's maximum must
    /// be at most `(2^64 − 1) >> height` ([`validate_params`]), so that every node's value fits the 64-bit range
    /// proofs.
    pub fn build(
        params: Params,
        holdings: Vec<Holding>,
        secret: &TreeSecret,
        threads: usize,
    ) -> Result<PrivateTree, BuildError> {
        let proven_levels = proven_levels_for(params.assets.len(), params.height);
        Self::build_with_proven_levels(params, holdings, secret, threads, proven_levels)
    }

    /// [`PrivateTree::build`] with the proven levels `b` given: 1 to the height, publishing at most
    /// [`TOP_VALUES_MAX`] node commitments. `b = height` publishes no node (every proof range-proves every level).
    pub fn build_with_proven_levels(
        params: Params,
        mut holdings: Vec<Holding>,
        secret: &TreeSecret,
        threads: usize,
        proven_levels: u8,
    ) -> Result<PrivateTree, BuildError> {
        validate_params(&params).map_err(|e| BuildError::Params(e.to_string()))?;
        let Some(top_count) = top_values(params.assets.len(), params.height, proven_levels) else {
            return Err(BuildError::Params(format!(
                "proven levels {proven_levels}: from 1 to the height {}, publishing at most {TOP_VALUES_MAX} node \
                 commitments",
                params.height
            )));
        };
        crate::check_holdings(&params, &mut holdings)?;
        let p = params.digest();
        let key = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key length");
        let threads = threads.max(1);
        let positions_len = 1u64 << params.height;

        // Placement: the revealed form's (§6).
        let (positions, owners) = crate::place(&key, &p, holdings.len(), positions_len);

        let k = params.assets.len();
        let base = usize::from(params.height).min(COMMITMENTS_FROM_LEVEL).min(usize::from(proven_levels));
        let blocks = (positions_len >> base) as usize;
        let overflow = AtomicBool::new(false);
        let leaves = Leaves { params_digest: &p, key: &key, owners: &owners, holdings: &holdings, k };

        // Level `base`, a block of 2^base leaves at a time, on every thread.
        let mut level = Nodes {
            hashes: vec![[0; 32]; blocks],
            digests: vec![[0; 32]; blocks],
            commitments: vec![CompressedRistretto::default(); blocks * k],
            values: vec![0; blocks * k],
            blindings: vec![Scalar::ZERO; blocks * k],
        };
        let mut halves = vec![RistrettoPoint::identity(); blocks * k];
        let per = blocks.div_ceil(threads);
        std::thread::scope(|s| {
            let parts = level
                .hashes
                .chunks_mut(per)
                .zip(level.digests.chunks_mut(per))
                .zip(level.commitments.chunks_mut(per * k))
                .zip(level.values.chunks_mut(per * k))
                .zip(level.blindings.chunks_mut(per * k))
                .zip(halves.chunks_mut(per * k));
            for (t, (((((hashes, digests), commitments), values), blindings), halves)) in parts.enumerate() {
                let (leaves, overflow) = (&leaves, &overflow);
                s.spawn(move || {
                    for b in 0..hashes.len() {
                        let first = ((t * per + b) as u64) << base;
                        let block = leaves.block(first, base, overflow);
                        let top = block.levels.last().expect("a block has a top");
                        hashes[b] = top.hashes[0];
                        digests[b] = top.digests[0];
                        commitments[b * k..(b + 1) * k].copy_from_slice(&top.commitments);
                        values[b * k..(b + 1) * k].copy_from_slice(&top.values);
                        blindings[b * k..(b + 1) * k].copy_from_slice(&top.blindings);
                        halves[b * k..(b + 1) * k].copy_from_slice(&block.top_halves);
                    }
                });
            }
        });
        let mut upper = vec![level];

        // Levels above `base`, each from the one below, on every thread.
        for _ in base..usize::from(params.height) {
            let below = upper.last().expect("level base exists");
            let width = below.hashes.len() / 2;
            let mut up = Nodes {
                hashes: vec![[0; 32]; width],
                digests: vec![[0; 32]; width],
                commitments: vec![CompressedRistretto::default(); width * k],
                values: vec![0; width * k],
                blindings: vec![Scalar::ZERO; width * k],
            };
            let mut up_halves = vec![RistrettoPoint::identity(); width * k];
            let per = width.div_ceil(threads).max(1);
            std::thread::scope(|s| {
                let parts = up
                    .hashes
                    .chunks_mut(per)
                    .zip(up.digests.chunks_mut(per))
                    .zip(up.commitments.chunks_mut(per * k))
                    .zip(up.values.chunks_mut(per * k))
                    .zip(up.blindings.chunks_mut(per * k))
                    .zip(up_halves.chunks_mut(per * k));
                for (t, (((((hashes, digests), commitments), values), blindings), up_halves)) in parts.enumerate() {
                    let (overflow, halves) = (&overflow, &halves);
                    s.spawn(move || {
                        for j in 0..hashes.len() {
                            let (l, r) = (2 * (t * per + j), 2 * (t * per + j) + 1);
                            hashes[j] =
                                node_hash(&below.hashes[l], &below.digests[l], &below.hashes[r], &below.digests[r]);
                            for a in 0..k {
                                up_halves[j * k + a] = halves[l * k + a] + halves[r * k + a];
                                values[j * k + a] = add(below.values[l * k + a], below.values[r * k + a], overflow);
                                blindings[j * k + a] = below.blindings[l * k + a] + below.blindings[r * k + a];
                            }
                        }
                        commitments.copy_from_slice(&RistrettoPoint::double_and_compress_batch(&*up_halves));
                        for (d, cs) in digests.iter_mut().zip(commitments.chunks(k)) {
                            *d = digest_of(cs);
                        }
                    });
                }
            });
            halves = up_halves;
            upper.push(up);
        }
        // Unreachable with validated maxima (max · 2^height < 2^64), and kept as an assertion on money.
        assert!(!overflow.into_inner(), "values overflowed despite the published maxima");
        let sorted = holdings.windows(2).all(|w| w[0].user_id < w[1].user_id);

        // The publication: the top node opened by the totals and total blindings, and every node of the proven levels
        // and above range-proved, in groups on every thread.
        let top = upper.last().expect("a tree has a top");
        let root = root_hash(&p, &top.hashes[0], &top.digests[0]);
        let (totals, total_blindings) = (top.values.clone(), top.blindings.clone());
        let height = usize::from(params.height);
        let (mut values, mut blindings, mut top_commitments) =
            (Vec::with_capacity(top_count), Vec::with_capacity(top_count), Vec::with_capacity(top_count));
        for nodes in &upper[usize::from(proven_levels) - base..height - base] {
            values.extend_from_slice(&nodes.values);
            blindings.extend_from_slice(&nodes.blindings);
            top_commitments.extend_from_slice(&nodes.commitments);
        }
        assert_eq!(values.len(), top_count, "the published nodes are counted as the specification says");
        let range_proofs =
            prove_groups(&values, &blindings, &top_commitments, &top_groups(top_count), threads, |g, o| {
                top_transcript(&p, &root, proven_levels, g, o)
            })
            .expect("the published nodes' values fit 64 bits (validated maxima)");
        blindings.zeroize();
        let publication = PrivatePublication {
            params: params.clone(),
            root,
            proven_levels,
            totals,
            total_blindings,
            top_commitments,
            range_proofs,
        };
        Ok(PrivateTree { params, params_digest: p, holdings, positions, owners, upper, base, key, sorted, publication })
    }

    /// The publication (§8.3): what a verifier downloads once per snapshot to verify any user's proof.
    pub fn publication(&self) -> &PrivatePublication {
        &self.publication
    }

    /// The proven levels `b` of the publication.
    pub fn proven_levels(&self) -> u8 {
        self.publication.proven_levels
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn users(&self) -> usize {
        self.holdings.len()
    }

    fn top(&self) -> &Nodes {
        self.upper.last().expect("a tree has a top")
    }

    /// The published root.
    pub fn root(&self) -> [u8; 32] {
        self.publication.root
    }

    /// Every asset's total liabilities, in the tree's asset order (published).
    pub fn totals(&self) -> &[u64] {
        &self.top().values
    }

    /// Every asset's total blinding, the sum of all leaves' blinding factors (published with the totals, so that
    /// anyone can open the top commitments).
    pub fn total_blindings(&self) -> &[Scalar] {
        &self.top().blindings
    }

    /// The index of the user with this id: a binary search when the holdings were given sorted by user id, else a
    /// scan.
    pub fn user_index(&self, user_id: &[u8]) -> Option<usize> {
        if self.sorted {
            self.holdings.binary_search_by(|h| h.user_id.as_slice().cmp(user_id)).ok()
        } else {
            self.holdings.iter().position(|h| h.user_id == user_id)
        }
    }

    /// The private inclusion proof of user `index` (their position in the holdings given to [`PrivateTree::build`]),
    /// made on the caller's thread: the path's sibling hashes and commitments of the revealed assets, and the
    /// aggregated range proofs of those below the proven levels. Takes about 6–7 ms of one core per range-proven
    /// commitment (proven levels × revealed assets).
    pub fn proof(&self, index: usize, reveal: Reveal) -> Result<PrivateProof, ProofError> {
        self.proof_with_threads(index, reveal, 1)
    }

    /// [`PrivateTree::proof`] with its range proofs (two halves, [`proof_groups`]) made on up to `threads` threads.
    pub fn proof_with_threads(&self, index: usize, reveal: Reveal, threads: usize) -> Result<PrivateProof, ProofError> {
        let holding = self.holdings.get(index).ok_or(ProofError::UnknownUser { index })?;
        let position = self.positions[index];
        let k = self.params.assets.len();
        let height = usize::from(self.params.height);
        let revealed: Vec<u16> = match reveal {
            Reveal::All => (0..k as u16).collect(),
            Reveal::Held => holding.balances.iter().map(|&(a, _)| a).collect(),
        };
        let count = height * revealed.len();
        if count > RANGE_VALUES_MAX {
            return Err(ProofError::TooManyValues { values: count, max: RANGE_VALUES_MAX });
        }
        let first = position >> self.base << self.base;
        let leaves = Leaves {
            params_digest: &self.params_digest,
            key: &self.key,
            owners: &self.owners,
            holdings: &self.holdings,
            k,
        };
        let block = leaves.block(first, self.base, &AtomicBool::new(false));
        let node = |level: usize, index: u64| -> (&Nodes, usize) {
            if level < self.base {
                (&block.levels[level], (index - (first >> level)) as usize)
            } else {
                (&self.upper[level - self.base], index as usize)
            }
        };
        let hidden = hint_count(k, &revealed) > 0;
        let hints = |nodes: &Nodes, i: usize| -> Vec<[u8; 32]> {
            let mut out = Vec::new();
            if hidden {
                let slots: Vec<[u8; 32]> = nodes.commitments[i * k..(i + 1) * k].iter().map(asset_digest).collect();
                commitments_digest(&slots, &revealed, Some(&mut out));
            }
            out
        };

        let proven = usize::from(self.proven_levels());
        let mut levels = Vec::with_capacity(height);
        let mut values = Vec::with_capacity(count);
        let mut blindings = Vec::with_capacity(count);
        let mut commitments = Vec::with_capacity(count);
        for l in 0..height {
            let (sibling, si) = node(l, (position >> l) ^ 1);
            let (parent, pi) = node(l + 1, position >> (l + 1));
            let sibling_commitments: Vec<CompressedRistretto> =
                revealed.iter().map(|&a| sibling.commitments[si * k + usize::from(a)]).collect();
            // Above the proven levels the sibling is published and range-proved in the publication.
            if l < proven {
                for &a in &revealed {
                    values.push(sibling.values[si * k + usize::from(a)]);
                    blindings.push(sibling.blindings[si * k + usize::from(a)]);
                }
                commitments.extend_from_slice(&sibling_commitments);
            }
            levels.push(PrivateLevel {
                sibling: sibling.hashes[si],
                sibling_commitments,
                sibling_hints: hints(sibling, si),
                parent_hints: hints(parent, pi),
            });
        }

        let (root, p, b) = (self.root(), &self.params_digest, self.proven_levels());
        let groups = proof_groups(values.len());
        let range_proofs = prove_groups(&values, &blindings, &commitments, &groups, threads, |g, offset| {
            transcript(p, &root, position, b, g, offset)
        })?;
        blindings.zeroize();
        Ok(PrivateProof {
            params: self.params.clone(),
            user_id: holding.user_id.clone(),
            salt: salt(&self.key, &self.params_digest, &holding.user_id),
            position,
            blinding_seed: blinding_seed(&self.key, &self.params_digest, position),
            proven_levels: b,
            // Validated at build: each at most its asset's maximum, below 2^64.
            balances: holding.balances.iter().map(|&(a, v)| (a, v as u64)).collect(),
            revealed,
            levels,
            range_proofs,
        })
    }
}

/// Aggregated range proofs of `values` (with their `blindings`, committing to `commitments`) in groups of `sizes`,
/// each with the transcript `transcript(group, offset)`, made on up to `threads` threads. Checks that each proof's
/// commitments are the tree's.
fn prove_groups(
    values: &[u64],
    blindings: &[Scalar],
    commitments: &[CompressedRistretto],
    sizes: &[usize],
    threads: usize,
    transcript: impl Fn(usize, usize) -> Transcript + Sync,
) -> Result<Vec<RangeProof>, ProofError> {
    let gens = generators(sizes.iter().copied().max().unwrap_or(1));
    let offsets = group_offsets(sizes);
    run_groups(sizes, threads, |g| {
        let (m, offset) = (sizes[g], offsets[g]);
        let (proof, made) = RangeProof::prove_multiple(
            &gens,
            pedersen_gens(),
            &mut transcript(g, offset),
            &values[offset..offset + m],
            &blindings[offset..offset + m],
            RANGE_BITS,
        )
        .map_err(|e| ProofError::RangeProof(e.to_string()))?;
        if made != commitments[offset..offset + m] {
            return Err(ProofError::RangeProof("the commitments proved are not the tree's".into()));
        }
        Ok(proof)
    })
    .into_iter()
    .map(|r| r.unwrap_or_else(|| Err(ProofError::RangeProof("a proving thread panicked".into()))))
    .collect()
}

/// The seed of a leaf's blinding factors: `HMAC-SHA256(secret, "blinding" ‖ P ‖ position64)`.
fn blinding_seed(key: &Hmac<Sha256>, p: &[u8; 32], position: u64) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(b"blinding");
    mac.update(p);
    mac.update(&position.to_be_bytes());
    mac.finalize().into_bytes().into()
}
