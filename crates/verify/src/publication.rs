//! The publication of a private tree (§8.3): what a verifier downloads once per snapshot. Beyond the root, the totals
//! and the total blindings, it holds the commitments of every node at the proven levels `b` and above, with
//! aggregated range proofs that each commits to a value in `[0, 2^64)`; a user's proof then range-proves only the
//! sibling commitments below `b` and points, above, at these. [`PrivatePublication::verify`] checks it once and
//! returns the [`VerifiedPublication`] that [`crate::private::PrivateProof::verify`] requires.
#![cfg(feature = "private")]

use crate::Error;
use crate::codec::Reader;
use crate::params::Params;
use crate::private::{
    CompressedRistretto, FORM_PRIVATE, PrivateFailure, RANGE_BITS, RangeProof, RistrettoPoint, Scalar, commit,
    decode_range_proof, generators, group_offsets, pedersen_gens, range_proof_len, run_groups, top_groups, top_index,
    top_transcript, top_values, validate_params,
};

/// The first bytes of a publication.
pub const PUBLICATION_MAGIC: &[u8; 4] = b"RPOP";
/// The publication encoding's version.
pub const PUBLICATION_VERSION: u8 = 1;

/// A private tree's publication (§8.3).
#[derive(Clone)]
pub struct PrivatePublication {
    pub params: Params,
    /// The tree's root.
    pub root: [u8; 32],
    /// `b`, 1 to the height: the nodes at levels `b` to `height − 1` are published and range-proved here; users'
    /// proofs range-prove the sibling commitments of levels `0..b`. `b = height` publishes no node.
    pub proven_levels: u8,
    /// Every asset's total liabilities, in tree order.
    pub totals: Vec<u64>,
    /// Every asset's total blinding, the sum of every leaf's, in tree order.
    pub total_blindings: Vec<Scalar>,
    /// The published nodes' commitments: levels from `proven_levels` up, nodes by index within a level, assets in tree
    /// order within a node ([`top_index`]).
    pub top_commitments: Vec<CompressedRistretto>,
    /// The aggregated range proofs of `top_commitments`, grouped as [`top_groups`] says.
    pub range_proofs: Vec<RangeProof>,
}

impl PartialEq for PrivatePublication {
    fn eq(&self, other: &Self) -> bool {
        self.params == other.params
            && self.root == other.root
            && self.proven_levels == other.proven_levels
            && self.totals == other.totals
            && self.total_blindings == other.total_blindings
            && self.top_commitments == other.top_commitments
            && self.range_proofs.len() == other.range_proofs.len()
            && self.range_proofs.iter().zip(&other.range_proofs).all(|(a, b)| a.to_bytes() == b.to_bytes())
    }
}

impl Eq for PrivatePublication {}

impl std::fmt::Debug for PrivatePublication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePublication")
            .field("snapshot", &self.params.snapshot)
            .field("root", &hex::encode(self.root))
            .field("proven_levels", &self.proven_levels)
            .field("totals", &self.totals)
            .field("top_commitments", &self.top_commitments.len())
            .finish_non_exhaustive()
    }
}

/// A publication whose top range proofs, node sums and totals were checked against an expected root: only
/// [`PrivatePublication::verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPublication {
    publication: PrivatePublication,
}

impl VerifiedPublication {
    /// The verified publication.
    pub fn publication(&self) -> &PrivatePublication {
        &self.publication
    }
}

impl PrivatePublication {
    /// The published commitment of asset `asset` of node `index` at level `level`, if that node is published
    /// (`proven_levels ≤ level < height`).
    pub fn node(&self, level: usize, index: u64, asset: usize) -> Option<&CompressedRistretto> {
        let (h, b, k) = (self.params.height, self.proven_levels, self.params.assets.len());
        if level < usize::from(b) || level >= usize::from(h) || index >> (usize::from(h) - level) != 0 || asset >= k {
            return None;
        }
        self.top_commitments.get(top_index(k, h, b, level, index, asset))
    }

    /// The binary encoding (§8.3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + 64 * self.totals.len() + 32 * self.top_commitments.len());
        out.extend_from_slice(PUBLICATION_MAGIC);
        out.push(PUBLICATION_VERSION);
        out.push(FORM_PRIVATE);
        self.params.encode(&mut out);
        out.extend_from_slice(&self.root);
        out.push(self.proven_levels);
        for t in &self.totals {
            out.extend_from_slice(&t.to_be_bytes());
        }
        for r in &self.total_blindings {
            out.extend_from_slice(r.as_bytes());
        }
        for c in &self.top_commitments {
            out.extend_from_slice(c.as_bytes());
        }
        for proof in &self.range_proofs {
            out.extend_from_slice(&proof.to_bytes());
        }
        out
    }

    /// Decodes a publication, refusing anything but the canonical encoding of a well-formed one: another magic,
    /// version or form, bad parameters (or maxima too large for the private form), proven levels outside
    /// `1..=height` or publishing more than [`TOP_VALUES_MAX`](crate::private::TOP_VALUES_MAX) commitments, a total
    /// above what `2^height` users at the maximum could hold, a scalar that is not reduced, a point that is not a
    /// canonical Ristretto encoding, a range proof that is not canonical, a short or long input.
    pub fn decode(bytes: &[u8]) -> Result<PrivatePublication, Error> {
        let mut r = Reader::new(bytes);
        if r.take(4, "magic")? != PUBLICATION_MAGIC {
            return Err(Error::Decode("not a Rampart reserves publication (bad magic)".into()));
        }
        let version = r.u8("version")?;
        if version != PUBLICATION_VERSION {
            return Err(Error::Decode(format!("unknown publication version {version}")));
        }
        let form = r.u8("form")?;
        if form != FORM_PRIVATE {
            return Err(Error::Decode(format!("publication form {form} is not the private form {FORM_PRIVATE}")));
        }
        let params = Params::decode(&mut r)?;
        validate_params(&params)?;
        let (k, h) = (params.assets.len(), params.height);
        let root = r.hash("root")?;
        let proven_levels = r.u8("proven levels")?;
        let values = top_values(k, h, proven_levels).ok_or_else(|| {
            Error::Decode(format!(
                "proven levels {proven_levels} are outside 1 to the height {h} or publish too many commitments"
            ))
        })?;
        let mut totals = Vec::with_capacity(k);
        for asset in &params.assets {
            let total = r.u64("total")?;
            // The maxima are validated: max << h fits 64 bits.
            if u128::from(total) > asset.max << h {
                return Err(Error::Decode(format!("the total of {} is more than its users could hold", asset.code)));
            }
            totals.push(total);
        }
        let mut total_blindings = Vec::with_capacity(k);
        for _ in 0..k {
            let raw: [u8; 32] = r.hash("total blinding")?;
            let scalar = Option::<Scalar>::from(Scalar::from_canonical_bytes(raw))
                .ok_or_else(|| Error::Decode("a total blinding is not a reduced scalar".into()))?;
            total_blindings.push(scalar);
        }
        let mut top_commitments = Vec::with_capacity(values);
        for _ in 0..values {
            let c = CompressedRistretto(r.hash("published node commitment")?);
            if c.decompress().is_none() {
                return Err(Error::Decode("a published node commitment is not a canonical Ristretto point".into()));
            }
            top_commitments.push(c);
        }
        let mut range_proofs = Vec::new();
        for m in top_groups(values) {
            let raw = r.take(range_proof_len(m), "published range proof")?;
            range_proofs.push(decode_range_proof(raw)?);
        }
        r.finish("publication")?;
        Ok(PrivatePublication { params, root, proven_levels, totals, total_blindings, top_commitments, range_proofs })
    }

    /// Checks the publication against the expected root, with its range proofs on as many threads as the machine has
    /// cores.
    pub fn verify(&self, expected_root: &[u8; 32]) -> Result<VerifiedPublication, PrivateFailure> {
        self.verify_with_threads(expected_root, std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Checks the publication against the expected root, with its range proofs on up to `threads` threads: the root
    /// is the expected one; every published node's commitment is the sum of its two children's where both are
    /// published; the two nodes of level `height − 1` add up to `T_a·B + ρ_a·B̃` for every asset; and every
    /// aggregated range proof shows its published commitments to commit to values in `[0, 2^64)`. Run once per
    /// snapshot; proofs are then verified against the result.
    pub fn verify_with_threads(
        &self,
        expected_root: &[u8; 32],
        threads: usize,
    ) -> Result<VerifiedPublication, PrivateFailure> {
        let params = &self.params;
        validate_params(params).map_err(|e| PrivateFailure::Malformed(e.to_string()))?;
        let (k, h, b) = (params.assets.len(), params.height, self.proven_levels);
        let values = top_values(k, h, b)
            .ok_or_else(|| PrivateFailure::Malformed(format!("proven levels {b} are outside 1 to the height {h}")))?;
        let groups = top_groups(values);
        if self.totals.len() != k
            || self.total_blindings.len() != k
            || self.top_commitments.len() != values
            || self.range_proofs.len() != groups.len()
        {
            return Err(PrivateFailure::Malformed("the publication's parts have the wrong sizes".into()));
        }
        if self.root != *expected_root {
            return Err(PrivateFailure::PublicationRoot { root: self.root });
        }
        let points = self
            .top_commitments
            .iter()
            .map(|c| c.decompress())
            .collect::<Option<Vec<RistrettoPoint>>>()
            .ok_or_else(|| PrivateFailure::Malformed("a published commitment is not a Ristretto point".into()))?;
        let (height, proven) = (usize::from(h), usize::from(b));
        let at = |level: usize, index: u64, asset: usize| points[top_index(k, h, b, level, index, asset)];
        // Each published node above level b is the sum of its children; the top node's children open the totals.
        for level in proven + 1..height {
            for index in 0..1u64 << (height - level) {
                for asset in 0..k {
                    if at(level, index, asset) != at(level - 1, 2 * index, asset) + at(level - 1, 2 * index + 1, asset)
                    {
                        return Err(PrivateFailure::TopSum { level, index, asset });
                    }
                }
            }
        }
        if proven < height {
            for asset in 0..k {
                let top = commit(self.totals[asset], &self.total_blindings[asset]);
                if top != at(height - 1, 0, asset) + at(height - 1, 1, asset) {
                    return Err(PrivateFailure::TotalsMismatch(format!(
                        "the published nodes of level {} do not add up to the total of {}",
                        height - 1,
                        params.assets[asset].code
                    )));
                }
            }
        }

        let p = params.digest();
        let offsets = group_offsets(&groups);
        let gens = generators(groups.iter().copied().max().unwrap_or(1));
        let results = run_groups(&groups, threads, |g| {
            let (m, offset) = (groups[g], offsets[g]);
            let mut t = top_transcript(&p, &self.root, b, g, offset);
            self.range_proofs[g]
                .verify_multiple(&gens, pedersen_gens(), &mut t, &self.top_commitments[offset..offset + m], RANGE_BITS)
                .is_ok()
        });
        // A group whose thread panicked verified nothing: it fails.
        if let Some(g) = results.iter().position(|ok| *ok != Some(true)) {
            return Err(PrivateFailure::TopRangeProof { group: g, first: offsets[g], count: groups[g] });
        }
        Ok(VerifiedPublication { publication: self.clone() })
    }
}
