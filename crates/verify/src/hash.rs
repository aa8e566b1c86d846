//! The hashes of §3: SHA-256 over a one-byte domain tag and fixed-width fields, never truncated.

use sha2::{Digest, Sha256};

/// The domain tag each hash input begins with; no two kinds of hash share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Leaf = 0x00,
    Node = 0x01,
    Padding = 0x02,
    Chunk = 0x03,
    ChunkNode = 0x04,
    Root = 0x05,
    Params = 0x06,
    User = 0x07,
    /// The private form's (§8) user leaf: `H(0x08 ‖ P ‖ position:u64 ‖ U)`.
    PrivateLeaf = 0x08,
    /// The private form's inner node: `H(0x09 ‖ left.hash ‖ left.E ‖ right.hash ‖ right.E)`.
    PrivateNode = 0x09,
    /// The private form's padding leaf: `H(0x0A ‖ P ‖ position:u64 ‖ secret:32)`.
    PrivatePadding = 0x0A,
    /// The private form's root: `H(0x0B ‖ P ‖ top.hash ‖ top.E)`.
    PrivateRoot = 0x0B,
    /// One asset's Pedersen commitment in a commitments digest: `H(0x0C ‖ C:32)`; an empty slot is `H(0x0C)`.
    Commitments = 0x0C,
    /// An inner node of a commitments digest's tree: `H(0x0D ‖ left:32 ‖ right:32)`.
    CommitmentsNode = 0x0D,
    /// The first byte of the SHA-512 input a leaf's blinding factor is reduced from (not a SHA-256 hash).
    Blinding = 0x0E,
}

/// SHA-256 of the tag byte followed by `parts`.
pub fn hash_parts(tag: Tag, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([tag as u8]);
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// The user commitment `U = H(0x07 ‖ P ‖ len16(id) ‖ id ‖ salt)`.
pub fn user_commitment(params_digest: &[u8; 32], user_id: &[u8], salt: &[u8; 32]) -> [u8; 32] {
    let len = (user_id.len() as u16).to_be_bytes();
    hash_parts(Tag::User, &[params_digest, &len, user_id, salt])
}

/// A user's leaf hash `H(0x00 ‖ P ‖ position64 ‖ U)`.
pub fn leaf_hash(params_digest: &[u8; 32], position: u64, user: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::Leaf, &[params_digest, &position.to_be_bytes(), user])
}

/// A padding leaf's hash `H(0x02 ‖ P ‖ position64 ‖ secret)`.
pub fn padding_hash(params_digest: &[u8; 32], position: u64, secret: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::Padding, &[params_digest, &position.to_be_bytes(), secret])
}

/// An inner node's hash `H(0x01 ‖ left.hash ‖ left.D ‖ right.hash ‖ right.D)`.
pub fn node_hash(left: &[u8; 32], left_d: &[u8; 32], right: &[u8; 32], right_d: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::Node, &[left, left_d, right, right_d])
}

/// The root `R = H(0x05 ‖ P ‖ top.hash ‖ top.D)`.
pub fn root_hash(params_digest: &[u8; 32], top: &[u8; 32], top_d: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::Root, &[params_digest, top, top_d])
}

/// A chunk's digest: `H(0x03 ‖ sum_0 ‖ … ‖ sum_{n-1})`, each sum 16 bytes big-endian. An empty chunk (a slot past
/// the last real chunk) is `H(0x03)`.
pub fn chunk_digest(sums: &[u128]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([Tag::Chunk as u8]);
    for s in sums {
        h.update(s.to_be_bytes());
    }
    h.finalize().into()
}

/// `H(0x04 ‖ left ‖ right)`, an inner node of a sums digest's chunk tree.
pub fn chunk_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    hash_parts(Tag::ChunkNode, &[left, right])
}

/// Slots of the chunk tree: the chunk count rounded up to a power of two.
pub fn chunk_slots(chunks: usize) -> usize {
    chunks.next_power_of_two()
}

/// A set of chunk indices (there are at most 32 chunks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkSet(pub u64);

impl ChunkSet {
    pub fn all(chunks: usize) -> Self {
        ChunkSet(if chunks >= 64 { u64::MAX } else { (1u64 << chunks) - 1 })
    }
    pub fn contains(self, c: usize) -> bool {
        c < 64 && self.0 >> c & 1 == 1
    }
    pub fn insert(&mut self, c: usize) {
        self.0 |= 1 << c;
    }
    /// Whether any member lies in `lo..lo + len`.
    pub fn meets(self, lo: usize, len: usize) -> bool {
        (lo..lo + len).any(|c| self.contains(c))
    }
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |&c| self.contains(c))
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// How many hints a sums digest needs when the chunks of `revealed` are known: one per maximal subtree of the chunk
/// tree that holds no revealed chunk (§3.4).
pub fn hint_count(slots: usize, revealed: ChunkSet) -> usize {
    fn count(lo: usize, len: usize, revealed: ChunkSet) -> usize {
        if !revealed.meets(lo, len) {
            1
        } else if len == 1 {
            0
        } else {
            count(lo, len / 2, revealed) + count(lo + len / 2, len / 2, revealed)
        }
    }
    count(0, slots, revealed)
}

/// The sums digest `D` computed from the revealed chunks' digests and the hints for the rest, in order; `None` when
/// the hints run out. `chunk(c)` gives revealed chunk `c`'s digest.
pub fn digest_with_hints(
    slots: usize,
    revealed: ChunkSet,
    chunk: &mut dyn FnMut(usize) -> [u8; 32],
    hints: &mut dyn Iterator<Item = [u8; 32]>,
) -> Option<[u8; 32]> {
    fn walk(
        lo: usize,
        len: usize,
        revealed: ChunkSet,
        chunk: &mut dyn FnMut(usize) -> [u8; 32],
        hints: &mut dyn Iterator<Item = [u8; 32]>,
    ) -> Option<[u8; 32]> {
        if !revealed.meets(lo, len) {
            return hints.next();
        }
        if len == 1 {
            return Some(chunk(lo));
        }
        let left = walk(lo, len / 2, revealed, chunk, hints)?;
        let right = walk(lo + len / 2, len / 2, revealed, chunk, hints)?;
        Some(chunk_node(&left, &right))
    }
    walk(0, slots, revealed, chunk, hints)
}

/// Every chunk digest of a full sums vector (`sums.len()` = K), then the chunk tree: returns `D` and, when `hints` is
/// given, appends the hints a proof revealing `revealed` needs for this node.
pub fn sums_digest(sums: &[u128], chunk_len: usize, revealed: ChunkSet, hints: Option<&mut Vec<[u8; 32]>>) -> [u8; 32] {
    let chunks = sums.len().div_ceil(chunk_len);
    if chunks == 1 {
        let d = chunk_digest(sums);
        if let Some(h) = hints
            && !revealed.contains(0)
        {
            h.push(d);
        }
        return d;
    }
    let slots = chunk_slots(chunks);
    let empty = chunk_digest(&[]);
    let leaves: Vec<[u8; 32]> =
        (0..slots)
            .map(|c| {
                if c < chunks {
                    chunk_digest(&sums[c * chunk_len..((c + 1) * chunk_len).min(sums.len())])
                } else {
                    empty
                }
            })
            .collect();
    fn subtree(
        lo: usize,
        len: usize,
        leaves: &[[u8; 32]],
        revealed: ChunkSet,
        hints: &mut Option<&mut Vec<[u8; 32]>>,
        emit: bool,
    ) -> [u8; 32] {
        // `emit`: this subtree's caller is still on the revealed frontier, so a hidden subtree here is a hint.
        let hidden = !revealed.meets(lo, len);
        let d = if len == 1 {
            leaves[lo]
        } else {
            let go = emit && !hidden;
            let l = subtree(lo, len / 2, leaves, revealed, hints, go);
            let r = subtree(lo + len / 2, len / 2, leaves, revealed, hints, go);
            chunk_node(&l, &r)
        };
        if emit
            && hidden
            && let Some(h) = hints.as_mut()
        {
            h.push(d);
        }
        d
    }
    let mut hints = hints;
    subtree(0, slots, &leaves, revealed, &mut hints, true)
}
