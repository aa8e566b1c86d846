//! The private form of the inclusion proof (form 1, §8 of the specification): every node holds, per asset, a Pedersen
//! commitment `C = v·B + r·B̃` on Ristretto instead of a revealed sum; a parent's commitments are its children's added
//! point by point (so their values and blindings add), and a proof shows, with aggregated Bulletproofs, that every
//! sibling commitment on the path commits to a value in `[0, 2^64)`. A user learns their own balances and blindings,
//! and nothing else but the published totals.
//!
//! The hashes are those of §3 under their own domain tags (`0x08` to `0x0E`), so no hash of one form is ever an input
//! of the other; the user commitment `U` and the parameters `P` are the revealed form's.
#![cfg(feature = "private")]

use std::sync::{Arc, Mutex, OnceLock};

pub use bulletproofs::{BulletproofGens, PedersenGens, RangeProof};
pub use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
pub use curve25519_dalek::scalar::Scalar;
pub use merlin::Transcript;
use sha2::{Digest, Sha512};

use crate::Error;
use crate::codec::Reader;
use crate::hash::{Tag, hash_parts, user_commitment};
use crate::params::Params;
use crate::proof::{MAGIC, USER_ID_LEN_MAX};
pub use crate::publication::{PrivatePublication, VerifiedPublication};

/// The form byte of a private proof and of a private publication.
pub const FORM_PRIVATE: u8 = 1;
/// The version byte of a private proof (form 1). Version 1 range-proved every level and had no proven-levels field;
/// it is no longer accepted.
pub const PRIVATE_PROOF_VERSION: u8 = 2;
/// Every range proof shows a value lies in `[0, 2^RANGE_BITS)`.
pub const RANGE_BITS: usize = 64;
/// At most this many sibling commitments (height × revealed assets) in one proof: it bounds the values a proof
/// range-proves, the generators a verifier derives (about 23 ms and 330 KB per 16 values) and the time a proof takes
/// to make.
pub const RANGE_VALUES_MAX: usize = 4096;
/// The label every per-user range proof's transcript starts with.
pub const TRANSCRIPT_LABEL: &[u8] = b"rampart-por-v1 private range proof";
/// The label every published (top) range proof's transcript starts with: a distinct label, so that no per-user range
/// proof is ever accepted as a top one, nor the reverse.
pub const TOP_TRANSCRIPT_LABEL: &[u8] = b"rampart-por-v1 private top range proof";
/// The published nodes' values are range-proved in aggregated groups of this many (the last values by the binary
/// expansion of what is left).
pub const TOP_GROUP_VALUES: usize = 256;
/// At most this many published node commitments (assets × nodes at the proven levels and above) in a publication:
/// about 2 MB of commitments and, at 6–7 ms of a core per value, some seven core-minutes of range proofs.
pub const TOP_VALUES_MAX: usize = 65_536;

/// Why a well-formed private proof or publication does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivateFailure {
    /// The proof's parts do not fit together (wrong counts, a point that is not a canonical Ristretto encoding).
    Malformed(String),
    /// The path leads to another root.
    RootMismatch { computed: [u8; 32] },
    /// An aggregated range proof does not verify: some sibling commitment of these levels (inclusive) is not shown to
    /// commit to a value in `[0, 2^64)` (a negative or oversized subtree), or the proof was made for another path.
    RangeProof { group: usize, first_level: usize, last_level: usize },
    /// The published totals and blindings do not open the tree's top commitments.
    TotalsMismatch(String),
    /// The proof and the publication are not of the same tree: other parameters or proven levels.
    PublicationMismatch(String),
    /// A sibling commitment at a level at or above the proven levels is not the one published for that node, so the
    /// publication's range proofs do not cover it.
    TopCommitment { level: usize, asset: usize },
    /// The publication is for another root than the expected one.
    PublicationRoot { root: [u8; 32] },
    /// A published node's commitment is not the sum of its two published children's.
    TopSum { level: usize, index: u64, asset: usize },
    /// A published range proof does not verify: some published node commitment among the values `first` to
    /// `first + count − 1` (in the order of §8.3) is not shown to commit to a value in `[0, 2^64)`, or the proof was
    /// made for another tree or other values.
    TopRangeProof { group: usize, first: usize, count: usize },
}

impl std::fmt::Display for PrivateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivateFailure::Malformed(m) => write!(f, "malformed: {m}"),
            PrivateFailure::RootMismatch { computed } => {
                write!(f, "the proof leads to root {}, not the published one", hex::encode(computed))
            }
            PrivateFailure::RangeProof { group, first_level, last_level } => write!(
                f,
                "range proof {group} does not show the sibling commitments of levels {first_level} to {last_level} \
                 to be in [0, 2^64)"
            ),
            PrivateFailure::TotalsMismatch(m) => write!(f, "totals: {m}"),
            PrivateFailure::PublicationMismatch(m) => write!(f, "the proof is not of the publication's tree: {m}"),
            PrivateFailure::TopCommitment { level, asset } => write!(
                f,
                "the sibling commitment of asset {asset} at level {level} is not the published one, so no published \
                 range proof covers it"
            ),
            PrivateFailure::PublicationRoot { root } => {
                write!(f, "the publication is for root {}, not the expected one", hex::encode(root))
            }
            PrivateFailure::TopSum { level, index, asset } => write!(
                f,
                "the published commitment of asset {asset} of node {index} at level {level} is not the sum of its \
                 children's"
            ),
            PrivateFailure::TopRangeProof { group, first, count } => write!(
                f,
                "published range proof {group} does not show the published commitments {first} to {} to be in \
                 [0, 2^64)",
                first + count - 1
            ),
        }
    }
}

impl std::error::Error for PrivateFailure {}

/// Refuses parameters the private form cannot hold: those [`Params::validate`] refuses, and any asset whose maximum
/// is above `(2^64 − 1) >> height`, so that every node's value (at most `2^height` users at the maximum) lies in
/// `[0, 2^64)`, the range the proofs show.
pub fn validate_params(params: &Params) -> Result<(), Error> {
    params.validate()?;
    let bound = u128::from(u64::MAX >> params.height);
    if let Some(asset) = params.assets.iter().find(|a| a.max > bound) {
        return Err(Error::Params(format!(
            "asset {}: in the private form the maximum balance must be at most (2^64 - 1) >> height = {bound}, so \
             that every subtree's total fits the 64-bit range proofs",
            asset.code
        )));
    }
    Ok(())
}

/// The Pedersen generators: `B` is the Ristretto basepoint, `B̃` is `RistrettoPoint::hash_from_bytes::<Sha3_512>` of
/// the basepoint's encoding (the `bulletproofs` crate's `PedersenGens::default()`).
pub fn pedersen_gens() -> &'static PedersenGens {
    static GENS: OnceLock<PedersenGens> = OnceLock::new();
    GENS.get_or_init(PedersenGens::default)
}

/// Bulletproofs generators for aggregated proofs of up to `parties` values (rounded up to a power of two), derived
/// once per process and shared; a larger request replaces the cache with a superset.
pub fn generators(parties: usize) -> Arc<BulletproofGens> {
    static CACHE: Mutex<Option<Arc<BulletproofGens>>> = Mutex::new(None);
    let parties = parties.max(1).next_power_of_two();
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(gens) = cache.as_ref()
        && gens.party_capacity >= parties
    {
        return gens.clone();
    }
    let gens = Arc::new(BulletproofGens::new(RANGE_BITS, parties));
    *cache = Some(gens.clone());
    gens
}

/// A leaf's blinding factor for `asset`: `SHA-512(0x0E ‖ seed ‖ asset:u16)` reduced modulo the group order.
pub fn blinding(seed: &[u8; 32], asset: u16) -> Scalar {
    let mut h = Sha512::new();
    h.update([Tag::Blinding as u8]);
    h.update(seed);
    h.update(asset.to_be_bytes());
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// The commitment `value·B + blinding·B̃`, in variable time: for verifiers, whose inputs are the user's own.
pub fn commit(value: u64, blinding: &Scalar) -> RistrettoPoint {
    RistrettoPoint::vartime_double_scalar_mul_basepoint(blinding, &pedersen_gens().B_blinding, &Scalar::from(value))
}

/// A user's leaf hash `H(0x08 ‖ P ‖ position:u64 ‖ U)`.
pub fn leaf_hash(params_digest: &[u8; 32], position: u64, user: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::PrivateLeaf, &[params_digest, &position.to_be_bytes(), user])
}

/// A padding leaf's hash `H(0x0A ‖ P ‖ position:u64 ‖ secret)`.
pub fn padding_hash(params_digest: &[u8; 32], position: u64, secret: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::PrivatePadding, &[params_digest, &position.to_be_bytes(), secret])
}

/// An inner node's hash `H(0x09 ‖ left.hash ‖ left.E ‖ right.hash ‖ right.E)`: both children's commitments digests,
/// never only the parent's.
pub fn node_hash(left: &[u8; 32], left_e: &[u8; 32], right: &[u8; 32], right_e: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::PrivateNode, &[left, left_e, right, right_e])
}

/// The root `R = H(0x0B ‖ P ‖ top.hash ‖ top.E)`.
pub fn root_hash(params_digest: &[u8; 32], top: &[u8; 32], top_e: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::PrivateRoot, &[params_digest, top, top_e])
}

/// One asset's slot in a commitments digest: `H(0x0C ‖ C)`, `C` the 32-byte compressed commitment.
pub fn asset_digest(commitment: &CompressedRistretto) -> [u8; 32] {
    hash_parts(Tag::Commitments, &[commitment.as_bytes()])
}

/// A slot past the last asset: `H(0x0C)`.
pub fn empty_slot() -> [u8; 32] {
    hash_parts(Tag::Commitments, &[])
}

fn commitments_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::CommitmentsNode, &[left, right])
}

/// Whether any of `revealed` (increasing) lies in `lo..lo + len`.
fn meets(revealed: &[u16], lo: usize, len: usize) -> bool {
    let i = revealed.partition_point(|&a| usize::from(a) < lo);
    revealed.get(i).is_some_and(|&a| usize::from(a) < lo + len)
}

/// A node's commitments digest `E` from every asset's slot digest ([`asset_digest`], `K` of them): the root of the
/// binary tree over `M = next_pow2(K)` slots (`E` is the single slot's digest when `K = 1`). When `hints` is given,
/// appends the hashes a proof revealing the assets `revealed` (increasing) gives for this node: one per maximal
/// subtree holding no revealed asset, left to right.
pub fn commitments_digest(slots: &[[u8; 32]], revealed: &[u16], hints: Option<&mut Vec<[u8; 32]>>) -> [u8; 32] {
    fn subtree(
        lo: usize,
        len: usize,
        slots: &[[u8; 32]],
        revealed: &[u16],
        hints: &mut Option<&mut Vec<[u8; 32]>>,
        emit: bool,
    ) -> [u8; 32] {
        let hidden = !meets(revealed, lo, len);
        let d = if len == 1 {
            slots.get(lo).copied().unwrap_or_else(empty_slot)
        } else {
            let go = emit && !hidden;
            let l = subtree(lo, len / 2, slots, revealed, hints, go);
            let r = subtree(lo + len / 2, len / 2, slots, revealed, hints, go);
            commitments_node(&l, &r)
        };
        if emit
            && hidden
            && let Some(h) = hints.as_mut()
        {
            h.push(d);
        }
        d
    }
    if slots.len() == 1 && hints.is_none() {
        return slots[0];
    }
    let mut hints = hints;
    subtree(0, slots.len().max(1).next_power_of_two(), slots, revealed, &mut hints, true)
}

/// How many hints a commitments digest of `assets` slots needs when the assets `revealed` are known.
pub fn hint_count(assets: usize, revealed: &[u16]) -> usize {
    fn count(lo: usize, len: usize, revealed: &[u16]) -> usize {
        if !meets(revealed, lo, len) {
            1
        } else if len == 1 {
            0
        } else {
            count(lo, len / 2, revealed) + count(lo + len / 2, len / 2, revealed)
        }
    }
    count(0, assets.max(1).next_power_of_two(), revealed)
}

/// A commitments digest from the revealed assets' slot digests (`revealed_slots[j]` for asset `revealed[j]`) and the
/// hints, in order; `None` when the hints are too few or too many.
pub fn digest_with_hints(
    assets: usize,
    revealed: &[u16],
    revealed_slots: &[[u8; 32]],
    hints: &[[u8; 32]],
) -> Option<[u8; 32]> {
    fn walk(
        lo: usize,
        len: usize,
        revealed: &[u16],
        revealed_slots: &[[u8; 32]],
        hints: &mut std::slice::Iter<'_, [u8; 32]>,
    ) -> Option<[u8; 32]> {
        if !meets(revealed, lo, len) {
            return hints.next().copied();
        }
        if len == 1 {
            let j = revealed.iter().position(|&a| usize::from(a) == lo)?;
            return revealed_slots.get(j).copied();
        }
        let l = walk(lo, len / 2, revealed, revealed_slots, hints)?;
        let r = walk(lo + len / 2, len / 2, revealed, revealed_slots, hints)?;
        Some(commitments_node(&l, &r))
    }
    let mut it = hints.iter();
    let d = walk(0, assets.max(1).next_power_of_two(), revealed, revealed_slots, &mut it)?;
    it.next().is_none().then_some(d)
}

/// The commitments digest of the top node opened by the published totals and total blindings (all `K`, in tree
/// order): what a proof's path must lead to.
pub fn totals_digest(totals: &[u64], blindings: &[Scalar]) -> [u8; 32] {
    let slots: Vec<[u8; 32]> =
        totals.iter().zip(blindings).map(|(&t, r)| asset_digest(&commit(t, r).compress())).collect();
    commitments_digest(&slots, &[], None)
}

/// The binary expansion of `values`: its powers of two, largest first (20 values are 16 then 4).
pub fn range_groups(values: usize) -> Vec<usize> {
    (0..usize::BITS).rev().filter(|b| values >> b & 1 == 1).map(|b| 1usize << b).collect()
}

/// The sizes of a proof's aggregated range proofs of `values` commitments, in order: two halves (the first
/// `⌈values/2⌉`, then the other `⌊values/2⌋`), each split by its binary expansion ([`range_groups`]), so that two
/// cores can each make or check one half. No padding: proving time is linear in the values proved (8 values are 4
/// then 4; 20 are 8, 2, 8, 2).
pub fn proof_groups(values: usize) -> Vec<usize> {
    let mut groups = range_groups(values.div_ceil(2));
    groups.extend(range_groups(values / 2));
    groups
}

/// The sizes of a publication's aggregated range proofs of `values` published commitments, in order: groups of
/// [`TOP_GROUP_VALUES`], then the binary expansion of what is left ([`range_groups`]).
pub fn top_groups(values: usize) -> Vec<usize> {
    let mut groups = vec![TOP_GROUP_VALUES; values / TOP_GROUP_VALUES];
    groups.extend(range_groups(values % TOP_GROUP_VALUES));
    groups
}

/// How many node commitments a publication of proven levels `proven_levels` holds for `assets` assets in a tree of
/// height `height`: every node at levels `proven_levels` to `height − 1`, per asset, `assets · (2^(height −
/// proven_levels + 1) − 2)`. `None` when `proven_levels` is not in `1..=height` or the count is beyond
/// [`TOP_VALUES_MAX`].
pub fn top_values(assets: usize, height: u8, proven_levels: u8) -> Option<usize> {
    if proven_levels == 0 || proven_levels > height {
        return None;
    }
    let nodes = (1u64 << (height - proven_levels + 1)) - 2;
    let values = nodes.checked_mul(assets as u64)?;
    (values <= TOP_VALUES_MAX as u64).then_some(values as usize)
}

/// The index, among a publication's node commitments, of asset `asset` of node `index` at level `level`
/// (`proven_levels ≤ level < height`): levels from `proven_levels` up, nodes by index within a level, assets in tree
/// order within a node.
pub fn top_index(assets: usize, height: u8, proven_levels: u8, level: usize, index: u64, asset: usize) -> usize {
    let (h, b) = (usize::from(height), usize::from(proven_levels));
    let below = (1usize << (h - b + 1)) - (1usize << (h - level + 1));
    (below + index as usize) * assets + asset
}

/// The encoded length of an aggregated range proof of `parties` values (a power of two): `(2·log2(64·m) + 9) × 32`.
pub fn range_proof_len(parties: usize) -> usize {
    let lg = (RANGE_BITS * parties).trailing_zeros() as usize;
    (2 * lg + 9) * 32
}

/// The transcript of a proof's range proof `group`, whose first value is the `offset`-th range-proven sibling
/// commitment of the path of `position` in the tree of root `root` published with `proven_levels`: a proof made for
/// another path, tree or snapshot does not verify.
pub fn transcript(
    params_digest: &[u8; 32],
    root: &[u8; 32],
    position: u64,
    proven_levels: u8,
    group: usize,
    offset: usize,
) -> Transcript {
    let mut t = Transcript::new(TRANSCRIPT_LABEL);
    t.append_message(b"P", params_digest);
    t.append_message(b"root", root);
    t.append_u64(b"position", position);
    t.append_u64(b"proven levels", u64::from(proven_levels));
    t.append_u64(b"group", group as u64);
    t.append_u64(b"offset", offset as u64);
    t
}

/// The transcript of a publication's range proof `group`, whose first value is the `offset`-th published node
/// commitment of the tree of root `root` published with `proven_levels`. Its label is not a proof's, and it names no
/// position.
pub fn top_transcript(
    params_digest: &[u8; 32],
    root: &[u8; 32],
    proven_levels: u8,
    group: usize,
    offset: usize,
) -> Transcript {
    let mut t = Transcript::new(TOP_TRANSCRIPT_LABEL);
    t.append_message(b"P", params_digest);
    t.append_message(b"root", root);
    t.append_message(b"top", b"published nodes");
    t.append_u64(b"proven levels", u64::from(proven_levels));
    t.append_u64(b"group", group as u64);
    t.append_u64(b"offset", offset as u64);
    t
}

/// The offset of each group's first value: the sizes' running sums.
pub fn group_offsets(sizes: &[usize]) -> Vec<usize> {
    sizes.iter().scan(0, |at, &m| Some(std::mem::replace(at, *at + m))).collect()
}

/// Runs `work(g)` for every group `g` (of `sizes[g]` values) on up to `threads` threads, the caller's included: the
/// groups, largest first, each go to the least loaded thread. Returns every group's result in group order; `None` for
/// a group whose thread panicked.
pub fn run_groups<T: Send>(sizes: &[usize], threads: usize, work: impl Fn(usize) -> T + Sync) -> Vec<Option<T>> {
    let threads = threads.clamp(1, sizes.len().max(1));
    if threads == 1 {
        return (0..sizes.len()).map(|g| Some(work(g))).collect();
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(sizes[g]));
    let mut shares: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for g in order {
        let least = shares.iter_mut().min_by_key(|(load, _)| *load).expect("at least one thread");
        least.0 += sizes[g];
        least.1.push(g);
    }
    let mut out: Vec<Option<T>> = (0..sizes.len()).map(|_| None).collect();
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares[1..]
            .iter()
            .map(|(_, share)| scope.spawn(move || share.iter().map(|&g| (g, work(g))).collect::<Vec<_>>()))
            .collect();
        for &g in &shares[0].1 {
            out[g] = Some(work(g));
        }
        for handle in handles {
            if let Ok(done) = handle.join() {
                for (g, result) in done {
                    out[g] = Some(result);
                }
            }
        }
    });
    out
}

/// One level of a private proof, from the leaf's level up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivateLevel {
    /// The sibling's hash.
    pub sibling: [u8; 32],
    /// The sibling's commitments of the revealed assets, in asset order.
    pub sibling_commitments: Vec<CompressedRistretto>,
    /// Hints for the sibling's commitments digest (its hidden assets).
    pub sibling_hints: Vec<[u8; 32]>,
    /// Hints for the parent's commitments digest.
    pub parent_hints: Vec<[u8; 32]>,
}

/// A user's private inclusion proof (form 1).
#[derive(Clone)]
pub struct PrivateProof {
    pub params: Params,
    pub user_id: Vec<u8>,
    /// The per-user, per-snapshot salt of the user commitment. Private to the user.
    pub salt: [u8; 32],
    pub position: u64,
    /// The seed of the leaf's blinding factors ([`blinding`]). Private to the user.
    pub blinding_seed: [u8; 32],
    /// The proven levels `b` of the tree's publication: the proof range-proves the sibling commitments of levels
    /// `0..b`, and those of levels `b..height` are the publication's, range-proved there.
    pub proven_levels: u8,
    /// The user's non-zero balances: (asset index, amount), indices increasing.
    pub balances: Vec<(u16, u64)>,
    /// The assets whose commitments the proof reveals along the path, increasing; every balance's asset among them.
    pub revealed: Vec<u16>,
    pub levels: Vec<PrivateLevel>,
    /// The aggregated range proofs of the sibling commitments of levels `0..proven_levels`, level by level and asset
    /// by asset within a level, grouped as [`proof_groups`] says.
    pub range_proofs: Vec<RangeProof>,
}

impl PartialEq for PrivateProof {
    fn eq(&self, other: &Self) -> bool {
        self.params == other.params
            && self.user_id == other.user_id
            && self.salt == other.salt
            && self.position == other.position
            && self.blinding_seed == other.blinding_seed
            && self.proven_levels == other.proven_levels
            && self.balances == other.balances
            && self.revealed == other.revealed
            && self.levels == other.levels
            && self.range_proofs.len() == other.range_proofs.len()
            && self.range_proofs.iter().zip(&other.range_proofs).all(|(a, b)| a.to_bytes() == b.to_bytes())
    }
}

impl Eq for PrivateProof {}

impl std::fmt::Debug for PrivateProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateProof")
            .field("snapshot", &self.params.snapshot)
            .field("position", &self.position)
            .field("proven_levels", &self.proven_levels)
            .field("balances", &self.balances)
            .field("revealed", &self.revealed)
            .field("salt", &"<private>")
            .field("blinding_seed", &"<private>")
            .finish_non_exhaustive()
    }
}

/// What a private proof proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivateVerified {
    /// The root the proof leads to (the publication's).
    pub root: [u8; 32],
    /// The top node's commitments digest, which the published totals and blindings open.
    pub top_digest: [u8; 32],
    /// For each revealed asset: its index and the top node's commitment to its total, as the path computes it.
    pub top_commitments: Vec<(usize, CompressedRistretto)>,
}

impl PrivateProof {
    /// The values this proof range-proves: the revealed assets' sibling commitments of the levels below the proven
    /// levels.
    pub fn range_values(&self) -> usize {
        usize::from(self.proven_levels).min(self.levels.len()) * self.revealed.len()
    }

    /// The binary encoding (§8.4).
    pub fn encode(&self) -> Vec<u8> {
        let s = self.revealed.len();
        let mut out = Vec::with_capacity(512 + self.levels.len() * (32 + 32 * s) + 1024 * self.range_proofs.len());
        out.extend_from_slice(MAGIC);
        out.push(PRIVATE_PROOF_VERSION);
        out.push(FORM_PRIVATE);
        self.params.encode(&mut out);
        out.extend_from_slice(&(self.user_id.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.user_id);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&self.blinding_seed);
        out.push(self.proven_levels);
        out.extend_from_slice(&(self.balances.len() as u16).to_be_bytes());
        for (i, b) in &self.balances {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(&b.to_be_bytes());
        }
        out.extend_from_slice(&(s as u16).to_be_bytes());
        for a in &self.revealed {
            out.extend_from_slice(&a.to_be_bytes());
        }
        for level in &self.levels {
            out.extend_from_slice(&level.sibling);
            for c in &level.sibling_commitments {
                out.extend_from_slice(c.as_bytes());
            }
            for h in level.sibling_hints.iter().chain(&level.parent_hints) {
                out.extend_from_slice(h);
            }
        }
        for proof in &self.range_proofs {
            out.extend_from_slice(&proof.to_bytes());
        }
        out
    }

    /// Decodes a private proof, refusing any encoding that is not exactly what [`PrivateProof::encode`] writes for a
    /// well-formed proof: another version, bad parameters (or maxima too large for the private form), proven levels
    /// outside `1..=height`, a balance of zero, above its asset's maximum or out of order, an unrevealed balance, a
    /// position outside the tree, a point that is not a canonical Ristretto encoding, a scalar that is not reduced,
    /// a range proof of the wrong size, a short or long input.
    pub fn decode(bytes: &[u8]) -> Result<PrivateProof, Error> {
        let mut r = Reader::new(bytes);
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::Decode("not a Rampart reserves proof (bad magic)".into()));
        }
        let version = r.u8("version")?;
        let form = r.u8("form")?;
        if form != FORM_PRIVATE {
            return Err(Error::Decode(format!("proof form {form} is not the private form {FORM_PRIVATE}")));
        }
        if version != PRIVATE_PROOF_VERSION {
            return Err(Error::Decode(format!(
                "private proof version {version} is not {PRIVATE_PROOF_VERSION}, the one this verifier reads"
            )));
        }
        let params = Params::decode(&mut r)?;
        validate_params(&params)?;
        let k = params.assets.len();
        let id_len = usize::from(r.u16("user id length")?);
        let user_id = r.take(id_len, "user id")?.to_vec();
        let salt = r.hash("salt")?;
        let position = r.u64("position")?;
        let blinding_seed = r.hash("blinding seed")?;
        let proven_levels = r.u8("proven levels")?;
        if proven_levels == 0 || proven_levels > params.height {
            return Err(Error::Decode(format!(
                "proven levels {proven_levels} outside 1 to the height {}",
                params.height
            )));
        }
        let count = usize::from(r.u16("balance count")?);
        if count > k {
            return Err(Error::Decode(format!("{count} balances for {k} assets")));
        }
        let mut balances = Vec::with_capacity(count);
        for _ in 0..count {
            let index = r.u16("balance's asset index")?;
            let amount = r.u64("balance")?;
            balances.push((index, amount));
        }
        let s = usize::from(r.u16("revealed asset count")?);
        if s > k {
            return Err(Error::Decode(format!("{s} revealed assets of {k}")));
        }
        let mut revealed = Vec::with_capacity(s);
        for _ in 0..s {
            revealed.push(r.u16("revealed asset")?);
        }
        if revealed.windows(2).any(|w| w[0] >= w[1]) || revealed.last().is_some_and(|&a| usize::from(a) >= k) {
            return Err(Error::Decode("revealed assets must be increasing asset indices of the tree".into()));
        }
        let height = usize::from(params.height);
        if height * s > RANGE_VALUES_MAX {
            return Err(Error::Decode(format!(
                "{} sibling commitments (height × revealed assets) exceed the limit of {RANGE_VALUES_MAX}",
                height * s
            )));
        }
        let hints = hint_count(k, &revealed);
        let mut levels = Vec::with_capacity(height);
        for _ in 0..height {
            let sibling = r.hash("sibling hash")?;
            let mut sibling_commitments = Vec::with_capacity(s);
            for _ in 0..s {
                let c = CompressedRistretto(r.hash("sibling commitment")?);
                if c.decompress().is_none() {
                    return Err(Error::Decode("a sibling commitment is not a canonical Ristretto point".into()));
                }
                sibling_commitments.push(c);
            }
            let mut sibling_hints = Vec::with_capacity(hints);
            for _ in 0..hints {
                sibling_hints.push(r.hash("sibling hint")?);
            }
            let mut parent_hints = Vec::with_capacity(hints);
            for _ in 0..hints {
                parent_hints.push(r.hash("parent hint")?);
            }
            levels.push(PrivateLevel { sibling, sibling_commitments, sibling_hints, parent_hints });
        }
        let mut range_proofs = Vec::new();
        for m in proof_groups(usize::from(proven_levels) * s) {
            let raw = r.take(range_proof_len(m), "range proof")?;
            range_proofs.push(decode_range_proof(raw)?);
        }
        r.finish("proof")?;
        let proof = PrivateProof {
            params,
            user_id,
            salt,
            position,
            blinding_seed,
            proven_levels,
            balances,
            revealed,
            levels,
            range_proofs,
        };
        proof.check_shape().map_err(Error::Decode)?;
        Ok(proof)
    }

    /// The rules of §8.4 that do not depend on hashes or curve points.
    fn check_shape(&self) -> Result<(), String> {
        let params = &self.params;
        validate_params(params).map_err(|e| e.to_string())?;
        let k = params.assets.len();
        if self.user_id.is_empty() || self.user_id.len() > USER_ID_LEN_MAX {
            return Err(format!("a user id is 1 to {USER_ID_LEN_MAX} bytes, not {}", self.user_id.len()));
        }
        if self.position >> params.height != 0 {
            return Err(format!("position {} is outside a tree of height {}", self.position, params.height));
        }
        if self.proven_levels == 0 || self.proven_levels > params.height {
            return Err(format!("proven levels {} outside 1 to the height {}", self.proven_levels, params.height));
        }
        if self.revealed.windows(2).any(|w| w[0] >= w[1]) || self.revealed.last().is_some_and(|&a| usize::from(a) >= k)
        {
            return Err("revealed assets must be increasing asset indices of the tree".into());
        }
        for (j, &(index, amount)) in self.balances.iter().enumerate() {
            let asset = params
                .assets
                .get(usize::from(index))
                .ok_or_else(|| format!("asset index {index} is not in the tree"))?;
            if j > 0 && self.balances[j - 1].0 >= index {
                return Err("balances are not in increasing asset order".into());
            }
            if amount == 0 {
                return Err(format!("a zero balance of {} is listed (only non-zero ones are)", asset.code));
            }
            if u128::from(amount) > asset.max {
                return Err(format!("the balance of {} is above its published maximum", asset.code));
            }
            if self.revealed.binary_search(&index).is_err() {
                return Err(format!("the balance of {} is not among the revealed assets", asset.code));
            }
        }
        let height = usize::from(params.height);
        if self.levels.len() != height {
            return Err("the proof's levels do not match the tree's height".into());
        }
        if height * self.revealed.len() > RANGE_VALUES_MAX {
            return Err(format!(
                "{} sibling commitments exceed the limit of {RANGE_VALUES_MAX}",
                height * self.revealed.len()
            ));
        }
        let hints = hint_count(k, &self.revealed);
        for (l, level) in self.levels.iter().enumerate() {
            if level.sibling_commitments.len() != self.revealed.len()
                || level.sibling_hints.len() != hints
                || level.parent_hints.len() != hints
            {
                return Err(format!("level {l} has the wrong number of commitments or hints"));
            }
        }
        if self.range_proofs.len() != proof_groups(self.range_values()).len() {
            return Err("the proof has the wrong number of range proofs".into());
        }
        Ok(())
    }

    /// Verifies the proof against a verified publication ([`PrivatePublication::verify`]), with its range proofs
    /// checked on as many threads as the machine has cores (at most one per range proof).
    pub fn verify(&self, publication: &VerifiedPublication) -> Result<PrivateVerified, PrivateFailure> {
        self.verify_with_threads(publication, std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Verifies the proof against a verified publication, with the range proofs checked on up to `threads` threads
    /// (1: on the caller's). Recomputes the user's leaf commitments from their balances and blinding seed; walks up
    /// the path adding the sibling commitments; compares the root with the publication's; checks that every sibling
    /// commitment at the proven levels and above is the published one of that node (range-proved by the
    /// publication) and that the proof's aggregated range proofs show every sibling commitment below them to commit
    /// to a value in `[0, 2^64)`; and checks that the published totals and total blindings open the top commitments.
    pub fn verify_with_threads(
        &self,
        publication: &VerifiedPublication,
        threads: usize,
    ) -> Result<PrivateVerified, PrivateFailure> {
        self.check_shape().map_err(PrivateFailure::Malformed)?;
        let published = publication.publication();
        let params = &self.params;
        if *params != published.params {
            return Err(PrivateFailure::PublicationMismatch("other parameters (exchange, snapshot or assets)".into()));
        }
        if self.proven_levels != published.proven_levels {
            return Err(PrivateFailure::PublicationMismatch(format!(
                "the proof has {} proven levels, the publication {}",
                self.proven_levels, published.proven_levels
            )));
        }
        let k = params.assets.len();
        let p = params.digest();
        let user = user_commitment(&p, &self.user_id, &self.salt);
        let mut hash = leaf_hash(&p, self.position, &user);

        let mut values = vec![0u64; k];
        for &(a, v) in &self.balances {
            values[usize::from(a)] = v;
        }
        let leaf: Vec<RistrettoPoint> =
            (0..k).map(|a| commit(values[a], &blinding(&self.blinding_seed, a as u16))).collect();
        let slots: Vec<[u8; 32]> = leaf.iter().map(|c| asset_digest(&c.compress())).collect();
        let mut digest = commitments_digest(&slots, &[], None);
        let mut running: Vec<RistrettoPoint> = self.revealed.iter().map(|&a| leaf[usize::from(a)]).collect();

        let proven = usize::from(self.proven_levels);
        let mut commitments = Vec::with_capacity(self.range_values());
        for (level, step) in self.levels.iter().enumerate() {
            let sibling_slots: Vec<[u8; 32]> = step.sibling_commitments.iter().map(asset_digest).collect();
            let sibling_digest = digest_with_hints(k, &self.revealed, &sibling_slots, &step.sibling_hints)
                .ok_or_else(|| PrivateFailure::Malformed(format!("level {level}: wrong number of sibling hints")))?;
            let (left, left_e, right, right_e) = if self.position >> level & 1 == 0 {
                (&hash, &digest, &step.sibling, &sibling_digest)
            } else {
                (&step.sibling, &sibling_digest, &hash, &digest)
            };
            let parent = node_hash(left, left_e, right, right_e);
            for (sum, c) in running.iter_mut().zip(&step.sibling_commitments) {
                let point = c.decompress().ok_or_else(|| {
                    PrivateFailure::Malformed(format!("level {level}: a sibling commitment is not a Ristretto point"))
                })?;
                *sum += point;
            }
            let parent_slots: Vec<[u8; 32]> = running.iter().map(|c| asset_digest(&c.compress())).collect();
            digest = digest_with_hints(k, &self.revealed, &parent_slots, &step.parent_hints)
                .ok_or_else(|| PrivateFailure::Malformed(format!("level {level}: wrong number of parent hints")))?;
            hash = parent;
            if level < proven {
                commitments.extend_from_slice(&step.sibling_commitments);
            }
        }
        let root = root_hash(&p, &hash, &digest);
        if root != published.root {
            return Err(PrivateFailure::RootMismatch { computed: root });
        }

        // At the proven levels and above, each sibling commitment must be the published one of its node: the
        // publication's range proofs cover those.
        for (level, step) in self.levels.iter().enumerate().skip(proven) {
            let index = (self.position >> level) ^ 1;
            for (&a, c) in self.revealed.iter().zip(&step.sibling_commitments) {
                if published.node(level, index, usize::from(a)) != Some(c) {
                    return Err(PrivateFailure::TopCommitment { level, asset: usize::from(a) });
                }
            }
        }

        // Group g covers the commitments offset..offset + m; the first failing group is reported.
        let groups = proof_groups(commitments.len());
        let gens = generators(groups.iter().copied().max().unwrap_or(1));
        let offsets = group_offsets(&groups);
        let (pb, position) = (self.proven_levels, self.position);
        let results = run_groups(&groups, threads, |g| {
            let (m, offset) = (groups[g], offsets[g]);
            let mut t = transcript(&p, &root, position, pb, g, offset);
            self.range_proofs[g]
                .verify_multiple(&gens, pedersen_gens(), &mut t, &commitments[offset..offset + m], RANGE_BITS)
                .is_ok()
        });
        // A group whose thread panicked verified nothing: it fails.
        if let Some(g) = results.iter().position(|ok| *ok != Some(true)) {
            let s = self.revealed.len();
            return Err(PrivateFailure::RangeProof {
                group: g,
                first_level: offsets[g] / s,
                last_level: (offsets[g] + groups[g] - 1) / s,
            });
        }
        let verified = PrivateVerified {
            root,
            top_digest: digest,
            top_commitments: self
                .revealed
                .iter()
                .map(|&a| usize::from(a))
                .zip(running.iter().map(|c| c.compress()))
                .collect(),
        };
        verified.check_totals(params, &published.totals, &published.total_blindings)?;
        Ok(verified)
    }
}

impl PrivateVerified {
    /// Checks totals and total blindings (all `K`, in tree order): each pair must open the top node's commitment
    /// (`total·B + blinding·B̃`), for the revealed assets as the path computed them, and all of them together must
    /// hash to the top node's commitments digest. [`PrivateProof::verify`] checks the publication's.
    pub fn check_totals(&self, params: &Params, totals: &[u64], blindings: &[Scalar]) -> Result<(), PrivateFailure> {
        if totals.len() != params.assets.len() || blindings.len() != params.assets.len() {
            return Err(PrivateFailure::TotalsMismatch("the report lists a different number of assets".into()));
        }
        for &(a, c) in &self.top_commitments {
            if commit(totals[a], &blindings[a]).compress() != c {
                return Err(PrivateFailure::TotalsMismatch(format!(
                    "the report's total of {} ({}) does not open the tree's top commitment",
                    params.assets[a].code, totals[a]
                )));
            }
        }
        if totals_digest(totals, blindings) != self.top_digest {
            return Err(PrivateFailure::TotalsMismatch("the report's totals are not the tree's".into()));
        }
        Ok(())
    }
}

/// A range proof's bytes, refused unless every point is a canonical Ristretto encoding and every scalar is reduced
/// (so that the encoding is canonical).
pub(crate) fn decode_range_proof(raw: &[u8]) -> Result<RangeProof, Error> {
    let elements = raw.len() / 32;
    if !raw.len().is_multiple_of(32) || elements < range_proof_len(1) / 32 {
        return Err(Error::Decode("a range proof has the wrong length".into()));
    }
    // A, S, T1, T2, then t_x, t_x_blinding, e_blinding, then L_i, R_i pairs, then the scalars a and b.
    for i in (0..4).chain(7..elements - 2) {
        let c = CompressedRistretto(raw[i * 32..(i + 1) * 32].try_into().expect("thirty-two bytes"));
        if c.decompress().is_none() {
            return Err(Error::Decode("a range proof holds a point that is not a canonical Ristretto encoding".into()));
        }
    }
    let proof = RangeProof::from_bytes(raw).map_err(|e| Error::Decode(format!("range proof: {e}")))?;
    if proof.to_bytes() != raw {
        return Err(Error::Decode("a range proof is not canonically encoded".into()));
    }
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_the_binary_expansion() {
        assert_eq!(range_groups(0), Vec::<usize>::new());
        assert_eq!(range_groups(1), vec![1]);
        assert_eq!(range_groups(20), vec![16, 4]);
        assert_eq!(range_groups(68), vec![64, 4]);
        assert_eq!(range_groups(RANGE_VALUES_MAX).iter().sum::<usize>(), RANGE_VALUES_MAX);
        assert_eq!(range_proof_len(1), 672);
        assert_eq!(range_proof_len(16), 928);
        assert_eq!(proof_groups(0), Vec::<usize>::new());
        assert_eq!(proof_groups(1), vec![1]);
        assert_eq!(proof_groups(8), vec![4, 4]);
        assert_eq!(proof_groups(20), vec![8, 2, 8, 2]);
        assert_eq!(proof_groups(7), vec![4, 2, 1]);
        assert_eq!(top_groups(8190), [vec![256; 31], vec![128, 64, 32, 16, 8, 4, 2]].concat());
        assert_eq!(top_groups(6), vec![4, 2]);
    }

    #[test]
    fn published_nodes_are_counted_and_indexed_level_by_level() {
        assert_eq!(top_values(1, 20, 8), Some(8190));
        assert_eq!(top_values(3, 2, 1), Some(6));
        assert_eq!(top_values(1, 5, 5), Some(0));
        assert_eq!(top_values(1, 5, 0), None);
        assert_eq!(top_values(1, 5, 6), None);
        assert_eq!(top_values(500, 40, 1), None);
        // Height 4, proven levels 2, two assets: level 2 holds nodes 0–3, level 3 nodes 0–1.
        assert_eq!(top_index(2, 4, 2, 2, 0, 0), 0);
        assert_eq!(top_index(2, 4, 2, 2, 3, 1), 7);
        assert_eq!(top_index(2, 4, 2, 3, 0, 0), 8);
        assert_eq!(top_index(2, 4, 2, 3, 1, 1), 11);
        assert_eq!(top_values(2, 4, 2), Some(12));
    }

    #[test]
    fn hints_rebuild_the_digest() {
        for k in 1..=9usize {
            let slots: Vec<[u8; 32]> = (0..k).map(|a| [a as u8 + 1; 32]).collect();
            let full = commitments_digest(&slots, &[], None);
            for mask in 0u32..(1 << k) {
                let revealed: Vec<u16> = (0..k as u16).filter(|&a| mask >> a & 1 == 1).collect();
                let mut hints = Vec::new();
                assert_eq!(commitments_digest(&slots, &revealed, Some(&mut hints)), full);
                assert_eq!(hints.len(), hint_count(k, &revealed));
                let shown: Vec<[u8; 32]> = revealed.iter().map(|&a| slots[usize::from(a)]).collect();
                assert_eq!(digest_with_hints(k, &revealed, &shown, &hints), Some(full));
                let mut extra = hints.clone();
                extra.push([0; 32]);
                assert_eq!(digest_with_hints(k, &revealed, &shown, &extra), None);
            }
        }
    }

    #[test]
    fn the_private_maximum_leaves_room_for_every_sum() {
        let mut params = Params {
            exchange: "x".into(),
            snapshot: "s".into(),
            height: 20,
            assets: vec![crate::Asset { code: "BTC".into(), max: u128::from(u64::MAX >> 20) }],
        };
        validate_params(&params).unwrap();
        params.assets[0].max += 1;
        assert!(matches!(validate_params(&params), Err(Error::Params(_))));
    }
}
