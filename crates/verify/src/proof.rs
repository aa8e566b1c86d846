//! An inclusion proof with the sibling sums revealed (§4): its encoding, its decoder (which refuses anything but a
//! canonical encoding) and its verification against a published root.

use crate::codec::Reader;
use crate::hash::{
    ChunkSet, chunk_digest, chunk_slots, digest_with_hints, hint_count, leaf_hash, node_hash, root_hash, sums_digest,
    user_commitment,
};
use crate::params::{CHUNK_LEN, Params};
use crate::{Error, Failure};

/// The first bytes of every proof.
pub const MAGIC: &[u8; 4] = b"RPOR";
/// The encoding's version.
pub const FORMAT_VERSION: u8 = 1;
/// The form byte of a proof whose sibling sums are revealed.
pub const FORM_REVEALED: u8 = 0;
/// Longest user id, in bytes.
pub const USER_ID_LEN_MAX: usize = 255;

/// One level of a proof, from the leaf's level up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    /// The sibling's hash.
    pub sibling: [u8; 32],
    /// The sibling's sums of every asset of the revealed chunks, chunk by chunk.
    pub sibling_sums: Vec<u128>,
    /// Hints for the sibling's sums digest (its hidden chunks).
    pub sibling_hints: Vec<[u8; 32]>,
    /// Hints for the parent's sums digest (the path's own node one level up).
    pub parent_hints: Vec<[u8; 32]>,
}

/// A user's inclusion proof.
#[derive(Clone, PartialEq, Eq)]
pub struct Proof {
    pub params: Params,
    pub user_id: Vec<u8>,
    /// The per-user, per-snapshot salt of the user commitment. Private to the user.
    pub salt: [u8; 32],
    pub position: u64,
    /// The user's non-zero balances: (asset index, amount), indices increasing.
    pub balances: Vec<(u16, u128)>,
    /// Chunks whose sums the proof reveals along the path.
    pub revealed: ChunkSet,
    pub levels: Vec<Level>,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proof")
            .field("snapshot", &self.params.snapshot)
            .field("position", &self.position)
            .field("balances", &self.balances)
            .field("salt", &"<private>")
            .finish_non_exhaustive()
    }
}

/// What a proof proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The root the proof leads to (equal to the expected one).
    pub root: [u8; 32],
    /// The top node's sums digest, which the published totals must hash to.
    pub top_digest: [u8; 32],
    /// For each asset of the revealed chunks: its index and the tree's total, as the path computes it.
    pub totals: Vec<(usize, u128)>,
}

impl Proof {
    /// The binary encoding (§4).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.levels.len() * (32 + 16 * 16));
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.push(FORM_REVEALED);
        self.params.encode(&mut out);
        out.extend_from_slice(&(self.user_id.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.user_id);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&(self.balances.len() as u16).to_be_bytes());
        for (i, b) in &self.balances {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(&b.to_be_bytes());
        }
        out.push(self.revealed.len() as u8);
        for c in self.revealed.iter() {
            out.push(c as u8);
        }
        for level in &self.levels {
            out.extend_from_slice(&level.sibling);
            for s in &level.sibling_sums {
                out.extend_from_slice(&s.to_be_bytes());
            }
            for h in level.sibling_hints.iter().chain(&level.parent_hints) {
                out.extend_from_slice(h);
            }
        }
        out
    }

    /// Decodes a proof, refusing any encoding that is not exactly what [`Proof::encode`] writes for a well-formed
    /// proof: bad parameters, a balance of zero, above its asset's maximum or out of order, a position outside the
    /// tree, a non-zero balance whose chunk is not revealed, a short or long input.
    pub fn decode(bytes: &[u8]) -> Result<Proof, Error> {
        let mut r = Reader::new(bytes);
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::Decode("not a Rampart reserves proof (bad magic)".into()));
        }
        let version = r.u8("version")?;
        if version != FORMAT_VERSION {
            return Err(Error::Decode(format!("unknown proof version {version}")));
        }
        let form = r.u8("form")?;
        if form != FORM_REVEALED {
            return Err(Error::Decode(format!("unknown proof form {form}")));
        }
        let params = Params::decode(&mut r)?;
        let id_len = usize::from(r.u16("user id length")?);
        let user_id = r.take(id_len, "user id")?.to_vec();
        let salt = r.hash("salt")?;
        let position = r.u64("position")?;
        let count = usize::from(r.u16("balance count")?);
        if count > params.assets.len() {
            return Err(Error::Decode(format!("{count} balances for {} assets", params.assets.len())));
        }
        let mut balances = Vec::with_capacity(count);
        for _ in 0..count {
            let index = r.u16("balance's asset index")?;
            let amount = r.u128("balance")?;
            balances.push((index, amount));
        }
        let chunks = params.chunks();
        let revealed_count = usize::from(r.u8("revealed chunk count")?);
        if revealed_count > chunks {
            return Err(Error::Decode(format!("{revealed_count} revealed chunks of {chunks}")));
        }
        let mut revealed = ChunkSet::default();
        let mut last = None;
        for _ in 0..revealed_count {
            let c = usize::from(r.u8("revealed chunk")?);
            if c >= chunks || last.is_some_and(|l| l >= c) {
                return Err(Error::Decode("revealed chunks must be increasing chunk indices of the tree".into()));
            }
            last = Some(c);
            revealed.insert(c);
        }
        let revealed_assets: usize = revealed.iter().map(|c| params.chunk_assets(c).len()).sum();
        let hints = hint_count(chunk_slots(chunks), revealed);
        let mut levels = Vec::with_capacity(usize::from(params.height));
        for _ in 0..params.height {
            let sibling = r.hash("sibling hash")?;
            let mut sibling_sums = Vec::with_capacity(revealed_assets);
            for _ in 0..revealed_assets {
                sibling_sums.push(r.u128("sibling sum")?);
            }
            let mut sibling_hints = Vec::with_capacity(hints);
            for _ in 0..hints {
                sibling_hints.push(r.hash("sibling hint")?);
            }
            let mut parent_hints = Vec::with_capacity(hints);
            for _ in 0..hints {
                parent_hints.push(r.hash("parent hint")?);
            }
            levels.push(Level { sibling, sibling_sums, sibling_hints, parent_hints });
        }
        r.finish("proof")?;
        let proof = Proof { params, user_id, salt, position, balances, revealed, levels };
        proof.check_shape().map_err(Error::Decode)?;
        Ok(proof)
    }

    /// The rules of §4 that do not depend on hashes: parameters, user id, position, balances (non-zero, at most the
    /// asset's maximum, in increasing asset order, in revealed chunks), revealed chunks, and the levels' sizes.
    fn check_shape(&self) -> Result<(), String> {
        let params = &self.params;
        params.validate().map_err(|e| e.to_string())?;
        if self.user_id.is_empty() || self.user_id.len() > USER_ID_LEN_MAX {
            return Err(format!("a user id is 1 to {USER_ID_LEN_MAX} bytes, not {}", self.user_id.len()));
        }
        if self.position >> params.height != 0 {
            return Err(format!("position {} is outside a tree of height {}", self.position, params.height));
        }
        let chunks = params.chunks();
        if self.revealed.iter().any(|c| c >= chunks) {
            return Err("a revealed chunk is not in the tree".into());
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
            if amount > asset.max {
                return Err(format!("the balance of {} is above its published maximum", asset.code));
            }
            if !self.revealed.contains(usize::from(index) / CHUNK_LEN) {
                return Err("a non-zero balance lies in a chunk the proof does not reveal".into());
            }
        }
        if self.levels.len() != usize::from(params.height) {
            return Err("the proof's levels do not match the tree's height".into());
        }
        let revealed_assets: usize = self.revealed.iter().map(|c| params.chunk_assets(c).len()).sum();
        let hints = hint_count(chunk_slots(chunks), self.revealed);
        for (l, level) in self.levels.iter().enumerate() {
            if level.sibling_sums.len() != revealed_assets
                || level.sibling_hints.len() != hints
                || level.parent_hints.len() != hints
            {
                return Err(format!("level {l} has the wrong number of sums or hints"));
            }
        }
        Ok(())
    }

    /// Verifies the proof against the published root: recomputes the user's leaf from their id, salt and balances,
    /// walks up the path adding the sibling sums with checked arithmetic (each sibling's sum bounded by its subtree's
    /// `2^level` users at the asset's maximum), and compares the root.
    pub fn verify(&self, expected_root: &[u8; 32]) -> Result<Verified, Failure> {
        self.check_shape().map_err(Failure::Malformed)?;
        let params = &self.params;
        let k = params.assets.len();
        let chunks = params.chunks();
        let slots = chunk_slots(chunks);
        let p = params.digest();
        let user = user_commitment(&p, &self.user_id, &self.salt);
        let mut hash = leaf_hash(&p, self.position, &user);

        let mut leaf = vec![0u128; k];
        for &(i, b) in &self.balances {
            *leaf.get_mut(usize::from(i)).ok_or_else(|| Failure::Malformed("asset index".into()))? = b;
        }
        let mut digest = sums_digest(&leaf, CHUNK_LEN, ChunkSet::all(chunks), None);
        // The path's running sums, kept for the revealed chunks' assets only.
        let assets: Vec<usize> = self.revealed.iter().flat_map(|c| params.chunk_assets(c)).collect();
        let mut sums: Vec<u128> = assets.iter().map(|&a| leaf[a]).collect();

        for (level, step) in self.levels.iter().enumerate() {
            if step.sibling_sums.len() != assets.len() {
                return Err(Failure::Malformed(format!("level {level}: wrong number of sibling sums")));
            }
            for (j, &a) in assets.iter().enumerate() {
                let bound = params.assets[a].max << level;
                if step.sibling_sums[j] > bound {
                    return Err(Failure::SumOutOfRange { level, asset: params.assets[a].code.clone() });
                }
            }
            let sibling_digest =
                partial_digest(params, slots, self.revealed, &assets, &step.sibling_sums, &step.sibling_hints)
                    .ok_or_else(|| Failure::Malformed(format!("level {level}: wrong number of sibling hints")))?;
            let (left, left_d, right, right_d) = if self.position >> level & 1 == 0 {
                (&hash, &digest, &step.sibling, &sibling_digest)
            } else {
                (&step.sibling, &sibling_digest, &hash, &digest)
            };
            let parent = node_hash(left, left_d, right, right_d);
            for (s, &t) in sums.iter_mut().zip(&step.sibling_sums) {
                *s = s.checked_add(t).ok_or(Failure::Overflow { level })?;
            }
            digest = partial_digest(params, slots, self.revealed, &assets, &sums, &step.parent_hints)
                .ok_or_else(|| Failure::Malformed(format!("level {level}: wrong number of parent hints")))?;
            hash = parent;
        }
        let root = root_hash(&p, &hash, &digest);
        if root != *expected_root {
            return Err(Failure::RootMismatch { computed: root });
        }
        Ok(Verified { root, top_digest: digest, totals: assets.into_iter().zip(sums).collect() })
    }
}

/// A node's sums digest from the revealed chunks' sums (`values`, in the order of `assets`) and the hints; `None` when
/// the number of hints is wrong.
fn partial_digest(
    params: &Params,
    slots: usize,
    revealed: ChunkSet,
    assets: &[usize],
    values: &[u128],
    hints: &[[u8; 32]],
) -> Option<[u8; 32]> {
    let mut it = hints.iter().copied();
    let mut chunk = |c: usize| {
        let range = params.chunk_assets(c);
        let from = assets.iter().position(|&a| a == range.start).expect("revealed chunk's assets are listed");
        chunk_digest(&values[from..from + range.len()])
    };
    let d = digest_with_hints(slots, revealed, &mut chunk, &mut it)?;
    if it.next().is_some() {
        return None;
    }
    Some(d)
}

impl Verified {
    /// Checks the published per-asset totals (all K, in the tree's asset order) against what the proof proved: they
    /// must hash to the top node's sums digest, and agree with the totals the path computed.
    pub fn check_totals(&self, params: &Params, totals: &[u128]) -> Result<(), Failure> {
        if totals.len() != params.assets.len() {
            return Err(Failure::TotalsMismatch("the report lists a different number of assets".into()));
        }
        for &(a, t) in &self.totals {
            if totals[a] != t {
                return Err(Failure::TotalsMismatch(format!(
                    "the report's total of {} is {}, the proof's path sums to {}",
                    params.assets[a].code, totals[a], t
                )));
            }
        }
        let d = sums_digest(totals, CHUNK_LEN, ChunkSet::default(), None);
        if d != self.top_digest {
            return Err(Failure::TotalsMismatch("the report's totals are not the tree's".into()));
        }
        Ok(())
    }
}
