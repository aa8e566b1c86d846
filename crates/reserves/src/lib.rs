//! Proof of reserves, the exchange's side: a multi-asset Merkle sum tree of every user's balances at one snapshot,
//! built on every core, the users' inclusion proofs and the auditors' full leaf file, in the encodings of
//! `rampart-verify` (`docs/reserves-spec.md`).
//!
//! The tree is pure: the snapshot's balances and a 32-byte secret go in; the secret derives each user's salt (per user
//! and per snapshot, so leaves cannot be linked across snapshots), the padding leaves' secrets, and the random order
//! in which users are placed among the `2^height` positions, so the padding hides how many users there are.

use std::collections::HashSet;
use std::fmt;

use hmac::{Hmac, Mac};
use rampart_verify::hash::{
    ChunkSet, chunk_slots, hint_count, leaf_hash, node_hash, padding_hash, root_hash, sums_digest, user_commitment,
};
use rampart_verify::leaves::{LeafEntry, LeafFile};
use rampart_verify::params::{CHUNK_LEN, Params};
use rampart_verify::proof::{Level, Proof, USER_ID_LEN_MAX};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub mod private;

/// One user's balances at the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The user's unique public id (for Rampart, the customer's handle).
    pub user_id: Vec<u8>,
    /// Non-zero balances as (asset index, amount), in any order; zeros are dropped.
    pub balances: Vec<(u16, u128)>,
}

/// The secret a tree's salts, padding and placement come from. Never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TreeSecret([u8; 32]);

impl TreeSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        TreeSecret(bytes)
    }
}

impl fmt::Debug for TreeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TreeSecret(<redacted>)")
    }
}

/// Why a tree could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    Params(String),
    /// More users than the height's positions.
    TooManyUsers {
        users: usize,
        positions: u64,
    },
    UserId {
        index: usize,
    },
    DuplicateUser {
        index: usize,
    },
    Balance {
        index: usize,
        reason: String,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Params(m) => write!(f, "bad parameters: {m}"),
            BuildError::TooManyUsers { users, positions } => {
                write!(f, "{users} users do not fit a tree of {positions} positions")
            }
            BuildError::UserId { index } => write!(f, "user {index}: a user id is 1 to {USER_ID_LEN_MAX} bytes"),
            BuildError::DuplicateUser { index } => write!(f, "user {index}: the same user id appears twice"),
            BuildError::Balance { index, reason } => write!(f, "user {index}: {reason}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// Which chunks a proof reveals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reveal {
    /// Only the chunks holding the user's non-zero balances: the smallest proof.
    Held,
    /// Every chunk: the proof shows every asset's total.
    All,
}

/// The smallest height whose positions hold `users`, but never below `height_min`.
pub fn height_for(users: usize, height_min: u8) -> u8 {
    let needed = users.max(1).next_power_of_two().trailing_zeros() as u8;
    needed.max(height_min).max(1)
}

/// Levels below this one keep only their hashes: their sums are added up from the leaves when a proof needs them (at
/// most 2^4 leaves), which saves most of the memory of a tree of many users.
const SUMS_FROM_LEVEL: usize = 4;

/// One level of nodes: hashes, and `K` sums per node from level `base` up.
struct Nodes {
    hashes: Vec<[u8; 32]>,
    sums: Vec<u128>,
}

/// A built liabilities tree.
pub struct Tree {
    params: Params,
    params_digest: [u8; 32],
    holdings: Vec<Holding>,
    /// Each user's position, by their index in `holdings`.
    positions: Vec<u64>,
    /// Each position's user index, or `u32::MAX` for padding.
    owners: Vec<u32>,
    /// Level 0 (leaves) to level `height` (the top node).
    levels: Vec<Nodes>,
    /// The lowest level whose sums are stored.
    base: usize,
    top_digest: [u8; 32],
    salt_key: Hmac<Sha256>,
    /// Whether `holdings` are in increasing user id order.
    sorted: bool,
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("snapshot", &self.params.snapshot)
            .field("height", &self.params.height)
            .field("users", &self.holdings.len())
            .finish_non_exhaustive()
    }
}

const PADDING: u32 = u32::MAX;

impl Tree {
    /// Builds the tree of `holdings` under `params` (whose height must leave room for every user), on up to
    /// `threads` threads.
    pub fn build(
        params: Params,
        mut holdings: Vec<Holding>,
        secret: &TreeSecret,
        threads: usize,
    ) -> Result<Tree, BuildError> {
        params.validate().map_err(|e| BuildError::Params(e.to_string()))?;
        let positions_len = 1u64 << params.height;
        check_holdings(&params, &mut holdings)?;

        let p = params.digest();
        let key = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key length");
        let threads = threads.max(1);

        let (positions, owners) = place(&key, &p, holdings.len(), positions_len);

        let k = params.assets.len();
        let all = ChunkSet::all(params.chunks());
        let width = positions_len as usize;
        let base = usize::from(params.height).min(SUMS_FROM_LEVEL);
        let block = 1usize << base;
        let blocks = width >> base;

        // Levels 0 to `base`, a block of 2^base leaves at a time: only hashes are kept below `base`.
        let mut levels: Vec<Nodes> =
            (0..base).map(|l| Nodes { hashes: vec![[0; 32]; width >> l], sums: Vec::new() }).collect();
        let mut top = Nodes { hashes: vec![[0; 32]; blocks], sums: vec![0; blocks * k] };
        let mut digests = vec![[0u8; 32]; blocks];
        let per = blocks.div_ceil(threads);
        let mut lower: Vec<Vec<&mut [[u8; 32]]>> = (0..blocks.div_ceil(per)).map(|_| Vec::new()).collect();
        for (l, nodes) in levels.iter_mut().enumerate() {
            for (t, part) in nodes.hashes.chunks_mut((per * block) >> l).enumerate() {
                lower[t].push(part);
            }
        }
        let overflow = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let parts = lower
                .into_iter()
                .zip(top.hashes.chunks_mut(per))
                .zip(digests.chunks_mut(per))
                .zip(top.sums.chunks_mut(per * k));
            for (t, (((mut lower, hashes), digests), sums)) in parts.enumerate() {
                let (owners, holdings, key, p, overflow) = (&owners, &holdings, &key, &p, &overflow);
                s.spawn(move || {
                    let mut hs = vec![[0u8; 32]; block];
                    let mut ds = vec![[0u8; 32]; block];
                    let mut ss = vec![0u128; block * k];
                    for b in 0..hashes.len() {
                        let first = ((t * per + b) * block) as u64;
                        ss.fill(0);
                        for i in 0..block {
                            let position = first + i as u64;
                            let row = &mut ss[i * k..(i + 1) * k];
                            let owner = owners[position as usize];
                            if owner == PADDING {
                                hs[i] = padding_hash(p, position, &padding_secret(key, p, position));
                            } else {
                                let h = &holdings[owner as usize];
                                for &(a, v) in &h.balances {
                                    row[usize::from(a)] = v;
                                }
                                hs[i] =
                                    leaf_hash(p, position, &user_commitment(p, &h.user_id, &salt(key, p, &h.user_id)));
                            }
                            ds[i] = sums_digest(row, CHUNK_LEN, all, None);
                        }
                        lower[0][b * block..(b + 1) * block].copy_from_slice(&hs);
                        // `l` is the level: it sizes the level's nodes as well as naming its slice of `lower`.
                        #[allow(clippy::needless_range_loop)]
                        for l in 1..=base {
                            let n = block >> l;
                            for j in 0..n {
                                let hash = node_hash(&hs[2 * j], &ds[2 * j], &hs[2 * j + 1], &ds[2 * j + 1]);
                                for a in 0..k {
                                    match ss[2 * j * k + a].checked_add(ss[(2 * j + 1) * k + a]) {
                                        Some(v) => ss[j * k + a] = v,
                                        None => overflow.store(true, std::sync::atomic::Ordering::Relaxed),
                                    }
                                }
                                hs[j] = hash;
                                ds[j] = sums_digest(&ss[j * k..(j + 1) * k], CHUNK_LEN, all, None);
                            }
                            if l < base {
                                lower[l][b * n..(b + 1) * n].copy_from_slice(&hs[..n]);
                            }
                        }
                        hashes[b] = hs[0];
                        digests[b] = ds[0];
                        sums[b * k..(b + 1) * k].copy_from_slice(&ss[..k]);
                    }
                });
            }
        });
        levels.push(top);

        // Levels above `base`, each from the one below, on every thread.
        for _ in base..usize::from(params.height) {
            let below = levels.last().expect("level base exists");
            let width = below.hashes.len() / 2;
            let mut up = Nodes { hashes: vec![[0; 32]; width], sums: vec![0; width * k] };
            let mut up_digests = vec![[0u8; 32]; width];
            let per = width.div_ceil(threads).max(1);
            std::thread::scope(|s| {
                let parts = up
                    .hashes
                    .chunks_mut(per)
                    .zip(up_digests.chunks_mut(per))
                    .zip(up.sums.chunks_mut(per * k))
                    .enumerate();
                for (t, ((hashes, up_digests), sums)) in parts {
                    let (overflow, digests) = (&overflow, &digests);
                    s.spawn(move || {
                        for j in 0..hashes.len() {
                            let (l, r) = (2 * (t * per + j), 2 * (t * per + j) + 1);
                            hashes[j] = node_hash(&below.hashes[l], &digests[l], &below.hashes[r], &digests[r]);
                            let row = &mut sums[j * k..(j + 1) * k];
                            for (a, out) in row.iter_mut().enumerate() {
                                match below.sums[l * k + a].checked_add(below.sums[r * k + a]) {
                                    Some(v) => *out = v,
                                    None => overflow.store(true, std::sync::atomic::Ordering::Relaxed),
                                }
                            }
                            up_digests[j] = sums_digest(row, CHUNK_LEN, all, None);
                        }
                    });
                }
            });
            digests = up_digests;
            levels.push(up);
        }
        // Unreachable with validated maxima (max · 2^height < 2^128), and kept as an assertion on money.
        assert!(!overflow.into_inner(), "sums overflowed despite the published maxima");
        let top_digest = digests[0];
        let sorted = holdings.windows(2).all(|w| w[0].user_id < w[1].user_id);
        Ok(Tree {
            params,
            params_digest: p,
            holdings,
            positions,
            owners,
            levels,
            base,
            top_digest,
            salt_key: key,
            sorted,
        })
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn users(&self) -> usize {
        self.holdings.len()
    }

    /// The published root.
    pub fn root(&self) -> [u8; 32] {
        let top = self.levels.last().expect("a tree has a top");
        root_hash(&self.params_digest, &top.hashes[0], &self.top_digest)
    }

    /// Every asset's total liabilities, in the tree's asset order.
    pub fn totals(&self) -> &[u128] {
        &self.levels.last().expect("a tree has a top").sums
    }

    /// The index of the user with this id: a binary search when the holdings were given sorted by user id (as
    /// [`decode_holdings`] gives them), else a scan.
    pub fn user_index(&self, user_id: &[u8]) -> Option<usize> {
        if self.sorted {
            self.holdings.binary_search_by(|h| h.user_id.as_slice().cmp(user_id)).ok()
        } else {
            self.holdings.iter().position(|h| h.user_id == user_id)
        }
    }

    /// The inclusion proof of user `index` (their position in the holdings given to [`Tree::build`]).
    pub fn proof(&self, index: usize, reveal: Reveal) -> Proof {
        let holding = &self.holdings[index];
        let position = self.positions[index];
        let k = self.params.assets.len();
        let chunks = self.params.chunks();
        let revealed = match reveal {
            Reveal::All => ChunkSet::all(chunks),
            Reveal::Held => {
                let mut s = ChunkSet::default();
                for &(i, _) in &holding.balances {
                    s.insert(usize::from(i) / CHUNK_LEN);
                }
                s
            }
        };
        let assets: Vec<usize> = revealed.iter().flat_map(|c| self.params.chunk_assets(c)).collect();
        let hidden = hint_count(chunk_slots(chunks), revealed) > 0;
        let hints = |sums: &[u128]| -> Vec<[u8; 32]> {
            let mut out = Vec::new();
            if hidden {
                sums_digest(sums, CHUNK_LEN, revealed, Some(&mut out));
            }
            out
        };
        let mut levels = Vec::with_capacity(usize::from(self.params.height));
        let mut sibling_sums = vec![0u128; k];
        let mut parent_sums = vec![0u128; k];
        for level in 0..usize::from(self.params.height) {
            let sibling = (position >> level ^ 1) as usize;
            self.node_sums(level, sibling, &mut sibling_sums);
            let parent_hints = if hidden {
                self.node_sums(level + 1, (position >> (level + 1)) as usize, &mut parent_sums);
                hints(&parent_sums)
            } else {
                Vec::new()
            };
            levels.push(Level {
                sibling: self.levels[level].hashes[sibling],
                sibling_sums: assets.iter().map(|&a| sibling_sums[a]).collect(),
                sibling_hints: hints(&sibling_sums),
                parent_hints,
            });
        }
        Proof {
            params: self.params.clone(),
            user_id: holding.user_id.clone(),
            salt: salt(&self.salt_key, &self.params_digest, &holding.user_id),
            position,
            balances: holding.balances.clone(),
            revealed,
            levels,
        }
    }

    /// Node `index` of `level`'s sums, into `out` (K long): stored from level `base` up, added up from the leaves
    /// below it.
    fn node_sums(&self, level: usize, index: usize, out: &mut [u128]) {
        let k = self.params.assets.len();
        if level >= self.base {
            out.copy_from_slice(&self.levels[level].sums[index * k..(index + 1) * k]);
            return;
        }
        out.fill(0);
        for position in index << level..(index + 1) << level {
            let owner = self.owners[position];
            if owner != PADDING {
                for &(a, v) in &self.holdings[owner as usize].balances {
                    // Bounded by the published maxima, as in the build.
                    out[usize::from(a)] = out[usize::from(a)].checked_add(v).expect("sums fit 128 bits");
                }
            }
        }
    }

    /// The full leaf file, for auditors: user commitments (not ids), balances and the padding secrets.
    pub fn leaf_file(&self) -> LeafFile {
        let p = &self.params_digest;
        let entries = self
            .owners
            .iter()
            .enumerate()
            .map(|(position, &owner)| {
                if owner == PADDING {
                    LeafEntry::Padding { secret: padding_secret(&self.salt_key, p, position as u64) }
                } else {
                    let h = &self.holdings[owner as usize];
                    LeafEntry::User {
                        commitment: user_commitment(p, &h.user_id, &salt(&self.salt_key, p, &h.user_id)),
                        balances: h.balances.clone(),
                    }
                }
            })
            .collect();
        LeafFile { params: self.params.clone(), entries }
    }
}

/// Holdings as the service stores them with a snapshot: a `u32` count, then per user a `u8` id length, the id, a
/// `u16` count of balances and each balance as a `u16` asset index and a `u128` amount, big-endian. Sorted by user id.
pub fn encode_holdings(holdings: &[Holding]) -> Vec<u8> {
    let mut sorted: Vec<&Holding> = holdings.iter().collect();
    sorted.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    let mut out = Vec::with_capacity(4 + holdings.len() * 40);
    out.extend_from_slice(&(holdings.len() as u32).to_be_bytes());
    for h in sorted {
        out.push(h.user_id.len() as u8);
        out.extend_from_slice(&h.user_id);
        out.extend_from_slice(&(h.balances.len() as u16).to_be_bytes());
        for (i, b) in &h.balances {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(&b.to_be_bytes());
        }
    }
    out
}

/// Reads what [`encode_holdings`] wrote; `None` when the bytes are not such an encoding.
pub fn decode_holdings(bytes: &[u8]) -> Option<Vec<Holding>> {
    fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
        let out = bytes.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(out)
    }
    let mut at = 0;
    let count = u32::from_be_bytes(take(bytes, &mut at, 4)?.try_into().ok()?) as usize;
    let mut holdings = Vec::with_capacity(count.min(bytes.len() / 3));
    for _ in 0..count {
        let len = usize::from(take(bytes, &mut at, 1)?[0]);
        let user_id = take(bytes, &mut at, len)?.to_vec();
        let n = usize::from(u16::from_be_bytes(take(bytes, &mut at, 2)?.try_into().ok()?));
        let mut balances = Vec::with_capacity(n);
        for _ in 0..n {
            let i = u16::from_be_bytes(take(bytes, &mut at, 2)?.try_into().ok()?);
            let b = u128::from_be_bytes(take(bytes, &mut at, 16)?.try_into().ok()?);
            balances.push((i, b));
        }
        holdings.push(Holding { user_id, balances });
    }
    (at == bytes.len()).then_some(holdings)
}

/// A user's salt: `HMAC-SHA256(secret, "salt" ‖ P ‖ len16(id) ‖ id)`.
fn salt(key: &Hmac<Sha256>, p: &[u8; 32], user_id: &[u8]) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(b"salt");
    mac.update(p);
    mac.update(&(user_id.len() as u16).to_be_bytes());
    mac.update(user_id);
    mac.finalize().into_bytes().into()
}

/// A padding leaf's secret: `HMAC-SHA256(secret, "padding" ‖ P ‖ position64)`.
fn padding_secret(key: &Hmac<Sha256>, p: &[u8; 32], position: u64) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(b"padding");
    mac.update(p);
    mac.update(&position.to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// Where each of `users` users sits among `positions_len` positions (§6): a partial Fisher–Yates shuffle of the
/// positions from a ChaCha20 stream seeded by `HMAC(secret, "placement" ‖ P)`. Answers each user's position and each
/// position's user (or [`PADDING`]). Both forms of the tree place users the same way.
pub(crate) fn place(key: &Hmac<Sha256>, p: &[u8; 32], users: usize, positions_len: u64) -> (Vec<u64>, Vec<u32>) {
    let mut seed_mac = key.clone();
    seed_mac.update(b"placement");
    seed_mac.update(p);
    let mut rng = ChaCha20Rng::from_seed(seed_mac.finalize().into_bytes().into());
    let mut order: Vec<u32> = (0..positions_len).map(|x| x as u32).collect();
    for i in 0..users {
        let j = i as u64 + uniform(&mut rng, positions_len - i as u64);
        order.swap(i, j as usize);
    }
    let positions: Vec<u64> = order[..users].iter().map(|&x| u64::from(x)).collect();
    let mut owners = vec![PADDING; positions_len as usize];
    for (user, &pos) in positions.iter().enumerate() {
        owners[pos as usize] = user as u32;
    }
    (positions, owners)
}

/// A uniform integer below `bound` (> 0), by rejection.
fn uniform(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % bound;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests;

/// The rules for the holdings of both forms of the tree: room for every user, ids of 1 to 255 bytes and unique, balances of
/// assets of the tree, at most one per asset, at most the asset's maximum. Drops zero balances and sorts the rest by
/// asset.
pub(crate) fn check_holdings(params: &Params, holdings: &mut [Holding]) -> Result<(), BuildError> {
    let positions = 1u64 << params.height;
    if holdings.len() as u64 > positions || holdings.len() >= PADDING as usize {
        return Err(BuildError::TooManyUsers { users: holdings.len(), positions });
    }
    let mut ids = HashSet::with_capacity(holdings.len());
    for (index, h) in holdings.iter_mut().enumerate() {
        if h.user_id.is_empty() || h.user_id.len() > USER_ID_LEN_MAX {
            return Err(BuildError::UserId { index });
        }
        if !ids.insert(h.user_id.as_slice()) {
            return Err(BuildError::DuplicateUser { index });
        }
        h.balances.retain(|&(_, b)| b != 0);
        h.balances.sort_unstable_by_key(|&(i, _)| i);
        for (j, &(i, b)) in h.balances.iter().enumerate() {
            let asset = params
                .assets
                .get(usize::from(i))
                .ok_or_else(|| BuildError::Balance { index, reason: format!("asset index {i} is not in the tree") })?;
            if j > 0 && h.balances[j - 1].0 == i {
                return Err(BuildError::Balance { index, reason: format!("two balances of {}", asset.code) });
            }
            if b > asset.max {
                return Err(BuildError::Balance {
                    index,
                    reason: format!("a balance of {} above the published maximum", asset.code),
                });
            }
        }
    }
    Ok(())
}
