//! A forger: builds trees the way a dishonest exchange might (any leaves, any rule for a parent's sums) and proofs
//! from them, so that tests can show the verifier rejecting what they publish.
#![allow(dead_code)]

use rampart_verify::hash::{
    ChunkSet, chunk_slots, hint_count, leaf_hash, node_hash, padding_hash, root_hash, sums_digest, user_commitment,
};
use rampart_verify::params::{Asset, CHUNK_LEN, Params};
use rampart_verify::{Level, Proof};

pub fn params(assets: usize, height: u8, snapshot: &str) -> Params {
    Params {
        exchange: "Rampart Test Exchange".into(),
        snapshot: snapshot.into(),
        height,
        assets: (0..assets).map(|i| Asset { code: format!("A{i}"), max: 1_000_000_000_000 }).collect(),
    }
}

/// A leaf as the forger lays it out.
#[derive(Clone)]
pub enum ForgedLeaf {
    User { id: Vec<u8>, salt: [u8; 32], balances: Vec<u128>, hashed_at: u64 },
    Padding { secret: [u8; 32] },
}

pub fn user(id: &str, balances: Vec<u128>, hashed_at: u64) -> ForgedLeaf {
    let mut salt = [0u8; 32];
    salt[..id.len().min(32)].copy_from_slice(&id.as_bytes()[..id.len().min(32)]);
    ForgedLeaf::User { id: id.as_bytes().to_vec(), salt, balances, hashed_at }
}

pub fn padding(n: u8) -> ForgedLeaf {
    ForgedLeaf::Padding { secret: [n; 32] }
}

pub struct Forged {
    pub params: Params,
    pub leaves: Vec<ForgedLeaf>,
    /// `nodes[level][index] = (hash, sums)`.
    pub nodes: Vec<Vec<([u8; 32], Vec<u128>)>>,
}

/// How a forger sums two children into their parent.
pub type Combine<'a> = &'a dyn Fn(&[u128], &[u128]) -> Vec<u128>;

/// Builds a tree with `combine` deciding each parent's sums (honest: element-wise addition).
pub fn forge(params: &Params, leaves: Vec<ForgedLeaf>, combine: Combine<'_>) -> Forged {
    let p = params.digest();
    let k = params.assets.len();
    assert_eq!(leaves.len(), 1 << params.height);
    let mut level: Vec<([u8; 32], Vec<u128>)> = leaves
        .iter()
        .enumerate()
        .map(|(pos, leaf)| match leaf {
            ForgedLeaf::User { id, salt, balances, hashed_at } => {
                let u = user_commitment(&p, id, salt);
                let _ = pos;
                (leaf_hash(&p, *hashed_at, &u), balances.clone())
            }
            ForgedLeaf::Padding { secret } => (padding_hash(&p, pos as u64, secret), vec![0; k]),
        })
        .collect();
    let mut nodes = vec![level.clone()];
    for _ in 0..params.height {
        level = level
            .chunks(2)
            .map(|pair| {
                let (l, r) = (&pair[0], &pair[1]);
                let hash = node_hash(&l.0, &digest(&l.1), &r.0, &digest(&r.1));
                (hash, combine(&l.1, &r.1))
            })
            .collect();
        nodes.push(level.clone());
    }
    Forged { params: params.clone(), leaves, nodes }
}

pub fn add(l: &[u128], r: &[u128]) -> Vec<u128> {
    l.iter().zip(r).map(|(a, b)| a + b).collect()
}

pub fn digest(sums: &[u128]) -> [u8; 32] {
    sums_digest(sums, CHUNK_LEN, ChunkSet::default(), None)
}

impl Forged {
    pub fn root(&self) -> [u8; 32] {
        let top = &self.nodes[usize::from(self.params.height)][0];
        root_hash(&self.params.digest(), &top.0, &digest(&top.1))
    }

    pub fn totals(&self) -> Vec<u128> {
        self.nodes[usize::from(self.params.height)][0].1.clone()
    }

    /// The proof the forger hands the user at leaf `index`, claiming `position`, revealing every chunk.
    pub fn proof(&self, index: usize, position: u64) -> Proof {
        let ForgedLeaf::User { id, salt, balances, .. } = &self.leaves[index] else { panic!("padding has no proof") };
        let chunks = self.params.chunks();
        let revealed = ChunkSet::all(chunks);
        assert_eq!(hint_count(chunk_slots(chunks), revealed), 0);
        let levels = (0..usize::from(self.params.height))
            .map(|l| {
                let (hash, sums) = &self.nodes[l][(index >> l) ^ 1];
                Level { sibling: *hash, sibling_sums: sums.clone(), sibling_hints: vec![], parent_hints: vec![] }
            })
            .collect();
        Proof {
            params: self.params.clone(),
            user_id: id.clone(),
            salt: *salt,
            position,
            balances: balances.iter().enumerate().filter(|(_, b)| **b != 0).map(|(i, b)| (i as u16, *b)).collect(),
            revealed,
            levels,
        }
    }
}
