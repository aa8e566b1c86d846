//! The full leaf file (§5): every position of the tree, for auditors who recompute the root and the totals.

use std::collections::HashMap;

use crate::codec::Reader;
use crate::hash::{ChunkSet, leaf_hash, node_hash, padding_hash, root_hash, sums_digest};
use crate::params::{CHUNK_LEN, Params};
use crate::{Error, Failure};

/// The first bytes of a leaf file.
pub const MAGIC: &[u8; 4] = b"RPOL";
/// The leaf file's version.
pub const FORMAT_VERSION: u8 = 1;
/// The tallest tree a leaf file may describe (2^28 positions, 268 million).
pub const LEAF_FILE_HEIGHT_MAX: u8 = 28;

/// One position of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafEntry {
    /// A user's leaf: their commitment `U` and non-zero balances (asset index, amount), indices increasing.
    User { commitment: [u8; 32], balances: Vec<(u16, u128)> },
    /// A padding leaf and the secret that makes its hash.
    Padding { secret: [u8; 32] },
}

/// Every leaf of one tree, in position order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafFile {
    pub params: Params,
    pub entries: Vec<LeafEntry>,
}

/// What a leaf file recomputes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recomputed {
    pub root: [u8; 32],
    /// Per asset, in the tree's order.
    pub totals: Vec<u128>,
    pub users: u64,
}

impl LeafFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        self.params.encode(&mut out);
        for entry in &self.entries {
            match entry {
                LeafEntry::User { commitment, balances } => {
                    out.push(0);
                    out.extend_from_slice(commitment);
                    out.extend_from_slice(&(balances.len() as u16).to_be_bytes());
                    for (i, b) in balances {
                        out.extend_from_slice(&i.to_be_bytes());
                        out.extend_from_slice(&b.to_be_bytes());
                    }
                }
                LeafEntry::Padding { secret } => {
                    out.push(1);
                    out.extend_from_slice(secret);
                }
            }
        }
        out
    }

    /// Decodes a leaf file: exactly `2^height` entries, balances in increasing asset order and non-zero.
    pub fn decode(bytes: &[u8]) -> Result<LeafFile, Error> {
        let mut r = Reader::new(bytes);
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::Decode("not a Rampart reserves leaf file (bad magic)".into()));
        }
        let version = r.u8("version")?;
        if version != FORMAT_VERSION {
            return Err(Error::Decode(format!("unknown leaf file version {version}")));
        }
        let params = Params::decode(&mut r)?;
        if params.height > LEAF_FILE_HEIGHT_MAX {
            return Err(Error::Decode(format!("a leaf file's tree is at most {LEAF_FILE_HEIGHT_MAX} high")));
        }
        let positions = 1usize << params.height;
        let mut entries = Vec::with_capacity(positions.min(1 << 20));
        for _ in 0..positions {
            match r.u8("leaf kind")? {
                0 => {
                    let commitment = r.hash("user commitment")?;
                    let count = usize::from(r.u16("balance count")?);
                    if count > params.assets.len() {
                        return Err(Error::Decode(format!("a leaf at byte {} lists too many balances", r.position())));
                    }
                    let mut balances: Vec<(u16, u128)> = Vec::with_capacity(count);
                    for _ in 0..count {
                        let index = r.u16("asset index")?;
                        let amount = r.u128("balance")?;
                        if usize::from(index) >= params.assets.len()
                            || balances.last().is_some_and(|&(p, _)| p >= index)
                            || amount == 0
                        {
                            return Err(Error::Decode(format!(
                                "a leaf's balances at byte {} are not non-zero amounts of increasing asset indices",
                                r.position()
                            )));
                        }
                        balances.push((index, amount));
                    }
                    entries.push(LeafEntry::User { commitment, balances });
                }
                1 => entries.push(LeafEntry::Padding { secret: r.hash("padding secret")? }),
                other => return Err(Error::Decode(format!("unknown leaf kind {other}"))),
            }
        }
        r.finish("leaf file")?;
        Ok(LeafFile { params, entries })
    }

    /// Recomputes the root and the totals, refusing a file in which two leaves commit to the same user or a balance
    /// exceeds its asset's maximum.
    pub fn recompute(&self) -> Result<Recomputed, Failure> {
        let params = &self.params;
        params.validate().map_err(|e| Failure::Malformed(e.to_string()))?;
        if self.entries.len() != 1usize << params.height {
            return Err(Failure::Malformed("the file does not list every position of the tree".into()));
        }
        let k = params.assets.len();
        let all = ChunkSet::all(params.chunks());
        let p = params.digest();
        let mut seen: HashMap<[u8; 32], u64> = HashMap::new();
        let mut users = 0u64;
        let mut hashes = Vec::with_capacity(self.entries.len());
        let mut digests = Vec::with_capacity(self.entries.len());
        let mut sums = vec![0u128; self.entries.len() * k];
        for (position, entry) in self.entries.iter().enumerate() {
            let position = position as u64;
            match entry {
                LeafEntry::User { commitment, balances } => {
                    if let Some(&first) = seen.get(commitment) {
                        return Err(Failure::DuplicateUser { first, second: position });
                    }
                    seen.insert(*commitment, position);
                    users += 1;
                    let row = &mut sums[position as usize * k..(position as usize + 1) * k];
                    for &(i, b) in balances {
                        let asset = params
                            .assets
                            .get(usize::from(i))
                            .ok_or_else(|| Failure::Malformed("asset index".into()))?;
                        if b > asset.max {
                            return Err(Failure::BalanceOutOfRange { position, asset: asset.code.clone() });
                        }
                        row[usize::from(i)] = b;
                    }
                    hashes.push(leaf_hash(&p, position, commitment));
                    digests.push(sums_digest(row, CHUNK_LEN, all, None));
                }
                LeafEntry::Padding { secret } => {
                    hashes.push(padding_hash(&p, position, secret));
                    digests.push(sums_digest(
                        &sums[position as usize * k..(position as usize + 1) * k],
                        CHUNK_LEN,
                        all,
                        None,
                    ));
                }
            }
        }
        for level in 0..params.height {
            let n = hashes.len() / 2;
            let mut next_hashes = Vec::with_capacity(n);
            let mut next_digests = Vec::with_capacity(n);
            let mut next_sums = vec![0u128; n * k];
            for j in 0..n {
                next_hashes.push(node_hash(&hashes[2 * j], &digests[2 * j], &hashes[2 * j + 1], &digests[2 * j + 1]));
                let row = &mut next_sums[j * k..(j + 1) * k];
                for a in 0..k {
                    row[a] = sums[2 * j * k + a]
                        .checked_add(sums[(2 * j + 1) * k + a])
                        .ok_or(Failure::Overflow { level: usize::from(level) })?;
                }
                next_digests.push(sums_digest(row, CHUNK_LEN, all, None));
            }
            hashes = next_hashes;
            digests = next_digests;
            sums = next_sums;
        }
        Ok(Recomputed { root: root_hash(&p, &hashes[0], &digests[0]), totals: sums, users })
    }
}
