//! A publication's parameters: who publishes, which snapshot, the tree's height, and the assets with their bounds.

use crate::Error;
use crate::hash::{Tag, hash_parts};

/// The version string every parameter digest begins with.
pub const VERSION: &[u8] = b"rampart-por-v1";
/// At most this many assets in one tree.
pub const ASSETS_MAX: usize = 500;
/// Assets are grouped in chunks of this many; a proof reveals whole chunks.
pub const CHUNK_LEN: usize = 16;
/// The tallest tree: 2^40 leaf positions.
pub const HEIGHT_MAX: u8 = 40;
/// Longest exchange name and snapshot name, in bytes.
pub const NAME_LEN_MAX: usize = 255;
/// Longest asset code, in bytes.
pub const ASSET_CODE_LEN_MAX: usize = 16;

/// One asset of a tree: its code and the largest balance a single user may hold in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asset {
    pub code: String,
    pub max: u128,
}

/// What every hash of one tree is bound to (§2 of the specification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub exchange: String,
    pub snapshot: String,
    /// The tree has `2^height` leaf positions.
    pub height: u8,
    pub assets: Vec<Asset>,
}

impl Params {
    /// Refuses parameters no tree may have: empty or long names, a height outside 1..=40, no assets or more than 500,
    /// an asset code that is empty, long, repeated or not `[A-Za-z0-9._-]`, or a maximum that is zero or so large that
    /// `2^height` balances at the maximum would overflow 128 bits.
    pub fn validate(&self) -> Result<(), Error> {
        for (what, name) in [("exchange", &self.exchange), ("snapshot", &self.snapshot)] {
            if name.is_empty() || name.len() > NAME_LEN_MAX {
                return Err(Error::Params(format!("the {what} name must be 1 to {NAME_LEN_MAX} bytes")));
            }
        }
        if self.height == 0 || self.height > HEIGHT_MAX {
            return Err(Error::Params(format!("the height must be 1 to {HEIGHT_MAX}, not {}", self.height)));
        }
        if self.assets.is_empty() || self.assets.len() > ASSETS_MAX {
            return Err(Error::Params(format!("a tree has 1 to {ASSETS_MAX} assets, not {}", self.assets.len())));
        }
        for (i, asset) in self.assets.iter().enumerate() {
            let code = asset.code.as_bytes();
            if code.is_empty()
                || code.len() > ASSET_CODE_LEN_MAX
                || !code.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(Error::Params(format!(
                    "asset {i}: the code {:?} is not 1 to 16 of [A-Za-z0-9._-]",
                    asset.code
                )));
            }
            if self.assets[..i].iter().any(|a| a.code == asset.code) {
                return Err(Error::Params(format!("asset {i}: the code {} appears twice", asset.code)));
            }
            if asset.max == 0 || asset.max > u128::MAX >> self.height {
                return Err(Error::Params(format!(
                    "asset {}: the maximum balance must be 1 to 2^(128 - height) - 1 so that no sum can overflow",
                    asset.code
                )));
            }
        }
        Ok(())
    }

    /// The parameter digest `P` (§2).
    pub fn digest(&self) -> [u8; 32] {
        let mut parts: Vec<Vec<u8>> = vec![
            VERSION.to_vec(),
            len_prefixed_u8(self.exchange.as_bytes()),
            len_prefixed_u8(self.snapshot.as_bytes()),
            vec![self.height],
            (self.assets.len() as u16).to_be_bytes().to_vec(),
        ];
        for asset in &self.assets {
            parts.push(len_prefixed_u8(asset.code.as_bytes()));
            parts.push(asset.max.to_be_bytes().to_vec());
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        hash_parts(Tag::Params, &refs)
    }

    /// Number of asset chunks, `ceil(K / 16)`.
    pub fn chunks(&self) -> usize {
        self.assets.len().div_ceil(CHUNK_LEN)
    }

    /// The asset indices of chunk `c`.
    pub fn chunk_assets(&self, c: usize) -> std::ops::Range<usize> {
        let start = c * CHUNK_LEN;
        start..(start + CHUNK_LEN).min(self.assets.len())
    }

    /// Index of the asset with this code.
    pub fn asset_index(&self, code: &str) -> Option<usize> {
        self.assets.iter().position(|a| a.code == code)
    }

    /// Appends the parameters' encoding (§4.1) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&len_prefixed_u8(self.exchange.as_bytes()));
        out.extend_from_slice(&len_prefixed_u8(self.snapshot.as_bytes()));
        out.push(self.height);
        out.extend_from_slice(&(self.assets.len() as u16).to_be_bytes());
        for asset in &self.assets {
            out.extend_from_slice(&len_prefixed_u8(asset.code.as_bytes()));
            out.extend_from_slice(&asset.max.to_be_bytes());
        }
    }

    /// Reads parameters from a decoder and validates them.
    pub(crate) fn decode(r: &mut crate::codec::Reader<'_>) -> Result<Self, Error> {
        let exchange = r.string_u8("exchange")?;
        let snapshot = r.string_u8("snapshot")?;
        let height = r.u8("height")?;
        let count = usize::from(r.u16("asset count")?);
        if count == 0 || count > ASSETS_MAX {
            return Err(Error::Params(format!("a tree has 1 to {ASSETS_MAX} assets, not {count}")));
        }
        let mut assets = Vec::with_capacity(count);
        for _ in 0..count {
            let code = r.string_u8("asset code")?;
            let max = r.u128("asset maximum")?;
            assets.push(Asset { code, max });
        }
        let params = Params { exchange, snapshot, height, assets };
        params.validate()?;
        Ok(params)
    }
}

fn len_prefixed_u8(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
    out
}
