//! The reserves' side of a publication and the signed report (docs/reserves-spec.md §9).
//!
//! Every address of the exchange's wallets that held coins at the block a snapshot names is listed with its balance
//! there, the outputs that make it, and a BIP-340 signature by the address's own key (a Taproot output key) over a
//! statement naming the exchange, the snapshot, the asset, the block and the address: whoever made the signature
//! controls the coins, and the statement cannot be replayed for another exchange, snapshot or block. The report puts
//! those beside the liabilities the tree totals, computes the ratio and the cold share, and is signed by the
//! service's key (Ed25519) over its exact bytes.
//!
//! What this module cannot check offline: that the listed outputs really were unspent at that block. Anyone with a
//! node checks that (`gettxout`, or the block's spends), and the report lists every outpoint for it.

use std::collections::BTreeSet;

use bech32::Hrp;
use k256::schnorr::signature::hazmat::PrehashVerifier;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Failure;

/// The BIP-340 tag of a control statement's hash.
pub const CONTROL_TAG: &[u8] = b"rampart-por-v1/control";
/// What the report's Ed25519 signature covers, before the report's bytes.
pub const REPORT_CONTEXT: &[u8] = b"rampart-por-v1 report\0";
/// The report's `format` field.
pub const REPORT_FORMAT: &str = "rampart-por-v1 report";

/// What a reserve address's key signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement<'a> {
    pub exchange: &'a str,
    pub snapshot: &'a str,
    pub asset: &'a str,
    /// The block's height.
    pub height: u64,
    /// The block's hash in the byte order Bitcoin displays it.
    pub block_hash: [u8; 32],
    /// The address's output script.
    pub script_pubkey: &'a [u8],
}

fn length_prefixed(h: &mut Sha256, part: &[u8]) {
    let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
    h.update(len.to_be_bytes());
    h.update(&part[..usize::from(len)]);
}

/// The 32-byte message a reserve address's key signs (§9.1): the BIP-340 tagged hash, tag `rampart-por-v1/control`,
/// of `exchange`, `snapshot`, `asset` (each a `u16` big-endian length and its bytes), `height` (`u64` big-endian),
/// the block hash (32 bytes, display order) and the output script (`u16` length, bytes).
pub fn control_message(s: &Statement<'_>) -> [u8; 32] {
    let tag = Sha256::digest(CONTROL_TAG);
    let mut h = Sha256::new();
    h.update(tag);
    h.update(tag);
    length_prefixed(&mut h, s.exchange.as_bytes());
    length_prefixed(&mut h, s.snapshot.as_bytes());
    length_prefixed(&mut h, s.asset.as_bytes());
    h.update(s.height.to_be_bytes());
    h.update(s.block_hash);
    length_prefixed(&mut h, s.script_pubkey);
    h.finalize().into()
}

/// The x-only output key of a Taproot (segwit v1, 32-byte program) output script.
pub fn taproot_key(script: &[u8]) -> Option<[u8; 32]> {
    match script {
        [0x51, 0x20, key @ ..] if key.len() == 32 => key.try_into().ok(),
        _ => None,
    }
}

/// Checks a reserve address's BIP-340 signature over its statement, under the key of its output script.
pub fn verify_control(s: &Statement<'_>, signature: &[u8]) -> Result<(), Failure> {
    let key = taproot_key(s.script_pubkey)
        .ok_or_else(|| Failure::Malformed("a reserve address that is not a Taproot output".into()))?;
    let key = k256::schnorr::VerifyingKey::from_bytes(&key)
        .map_err(|_| Failure::Signature("the address's key is not a point of secp256k1".into()))?;
    let signature = k256::schnorr::Signature::try_from(signature)
        .map_err(|_| Failure::Signature("a malformed BIP-340 signature".into()))?;
    key.verify_prehash(&control_message(s), &signature)
        .map_err(|_| Failure::Signature(format!("the {} address's signature does not verify", s.asset)))
}

/// Checks the report's Ed25519 signature (over [`REPORT_CONTEXT`] then the report's exact bytes).
pub fn verify_report_signature(report: &[u8], signature: &[u8], key: &[u8]) -> Result<(), Failure> {
    let key: [u8; 32] = key.try_into().map_err(|_| Failure::Signature("a public key is 32 bytes".into()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| Failure::Signature("the public key is not an Ed25519 key".into()))?;
    let signature = ed25519_dalek::Signature::from_slice(signature)
        .map_err(|_| Failure::Signature("an Ed25519 signature is 64 bytes".into()))?;
    let mut message = REPORT_CONTEXT.to_vec();
    message.extend_from_slice(report);
    key.verify_strict(&message, &signature)
        .map_err(|_| Failure::Signature("the report's signature does not verify under the key".into()))
}

/// The address the Bitcoin network `network` shows for a Taproot output key.
pub fn taproot_address(network: &str, key: &[u8; 32]) -> Result<String, Failure> {
    let hrp = match network {
        "bitcoin" => "bc",
        "testnet" | "testnet4" | "signet" => "tb",
        "regtest" => "bcrt",
        other => return Err(Failure::Malformed(format!("unknown network {other:?}"))),
    };
    let hrp = Hrp::parse(hrp).map_err(|e| Failure::Malformed(e.to_string()))?;
    bech32::segwit::encode(hrp, bech32::segwit::VERSION_1, key).map_err(|e| Failure::Malformed(e.to_string()))
}

/// One asset of a checked report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetSummary {
    pub code: String,
    pub decimals: u8,
    pub liabilities: u128,
    /// `None` when the report attests no reserves for the asset (no wallet on a chain).
    pub reserves: Option<u128>,
    pub cold: u128,
    pub hot: u128,
    pub deposit: u128,
    /// Reserves over liabilities in basis points, rounded down.
    pub ratio_bps: Option<u128>,
    /// The cold wallet's part of the reserves in basis points, rounded down.
    pub cold_share_bps: Option<u128>,
    /// Addresses whose signatures verified.
    pub addresses: usize,
    /// The block the balances are read at.
    pub chain: Option<(u64, String)>,
}

/// A checked report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSummary {
    pub exchange: String,
    pub snapshot: String,
    /// The liabilities tree's root (hex).
    pub root: String,
    pub assets: Vec<AssetSummary>,
}

fn malformed(m: impl Into<String>) -> Failure {
    Failure::Malformed(m.into())
}

fn text<'a>(v: &'a Value, field: &str, at: &str) -> Result<&'a str, Failure> {
    v.get(field).and_then(Value::as_str).ok_or_else(|| malformed(format!("{at}: no text field {field:?}")))
}

fn amount(v: &Value, field: &str, at: &str) -> Result<u128, Failure> {
    let t = text(v, field, at)?;
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || (t.len() > 1 && t.starts_with('0')) {
        return Err(malformed(format!("{at}: {field} is not a decimal amount")));
    }
    t.parse().map_err(|_| malformed(format!("{at}: {field} is out of range")))
}

fn optional_number(v: &Value, field: &str, at: &str) -> Result<Option<u128>, Failure> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => {
            n.as_u64().map(|n| Some(u128::from(n))).ok_or_else(|| malformed(format!("{at}: {field} is not a number")))
        }
    }
}

fn bps(part: u128, whole: u128) -> Option<u128> {
    (whole > 0).then(|| part.saturating_mul(10_000) / whole)
}

fn hex32(t: &str, what: &str) -> Result<[u8; 32], Failure> {
    hex::decode(t)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed(format!("{what} is not 32 bytes of hex")))
}

/// Checks a report (the JSON of §9.2) on its own: every address's signature over its statement, every balance the
/// sum of its outputs, no output or address counted twice, and the reserves, wallet sums, ratio and cold share what
/// the addresses and liabilities give. The caller checks the report's own signature ([`verify_report_signature`])
/// and compares the root with the one their proofs lead to.
pub fn check_report(report: &Value) -> Result<ReportSummary, Failure> {
    if report.get("format").and_then(Value::as_str) != Some(REPORT_FORMAT) {
        return Err(malformed(format!("not a report: format is not {REPORT_FORMAT:?}")));
    }
    let exchange = text(report, "exchange", "report")?;
    let snapshot = text(report, "snapshot", "report")?;
    let root = text(report, "root", "report")?;
    hex32(root, "the root")?;
    let network = text(report, "network", "report")?;
    let assets = report.get("assets").and_then(Value::as_array).ok_or_else(|| malformed("report: no assets"))?;
    let mut outpoints = BTreeSet::new();
    let mut codes = BTreeSet::new();
    let mut summaries = Vec::with_capacity(assets.len());
    for a in assets {
        let code = text(a, "code", "an asset")?;
        if !codes.insert(code.to_owned()) {
            return Err(malformed(format!("asset {code} is listed twice")));
        }
        let at = format!("asset {code}");
        let decimals = a
            .get("decimals")
            .and_then(Value::as_u64)
            .and_then(|d| u8::try_from(d).ok())
            .ok_or_else(|| malformed(format!("{at}: no decimals")))?;
        let liabilities = amount(a, "liabilities", &at)?;
        let addresses =
            a.get("addresses").and_then(Value::as_array).ok_or_else(|| malformed(format!("{at}: no addresses")))?;
        let chain = match a.get("chain") {
            None | Some(Value::Null) => None,
            Some(c) => {
                let height =
                    c.get("height").and_then(Value::as_u64).ok_or_else(|| malformed(format!("{at}: no height")))?;
                let hash = text(c, "block_hash", &at)?;
                Some((height, hash.to_owned(), hex32(hash, "a block hash")?))
            }
        };
        let (mut cold, mut hot, mut deposit) = (0u128, 0u128, 0u128);
        let mut scripts = BTreeSet::new();
        for address in addresses {
            let Some((height, _, block_hash)) = &chain else {
                return Err(malformed(format!("{at}: addresses without a block")));
            };
            let shown = text(address, "address", &at)?;
            let script = hex::decode(text(address, "script_pubkey", &at)?)
                .map_err(|_| malformed(format!("{at}: a script is not hex")))?;
            let key =
                taproot_key(&script).ok_or_else(|| malformed(format!("{at}: {shown} is not a Taproot output")))?;
            if taproot_address(network, &key)? != shown {
                return Err(malformed(format!("{at}: {shown} is not the address of its script")));
            }
            if !scripts.insert(script.clone()) {
                return Err(malformed(format!("{at}: {shown} is listed twice")));
            }
            let balance = amount(address, "balance", &at)?;
            let outputs = address
                .get("outputs")
                .and_then(Value::as_array)
                .filter(|o| !o.is_empty())
                .ok_or_else(|| malformed(format!("{at}: {shown} lists no outputs")))?;
            let mut sum = 0u128;
            for o in outputs {
                let (Some(outpoint), Some(value)) = (o.get(0).and_then(Value::as_str), o.get(1)) else {
                    return Err(malformed(format!("{at}: an output of {shown} is not [outpoint, value]")));
                };
                let value = amount(&serde_json::json!({ "v": value }), "v", &at)?;
                if !outpoints.insert(outpoint.to_owned()) {
                    return Err(malformed(format!("{at}: output {outpoint} is counted twice")));
                }
                sum = sum.checked_add(value).ok_or_else(|| malformed("a balance overflows"))?;
            }
            if sum != balance {
                return Err(malformed(format!("{at}: {shown} holds {sum} in its outputs, not {balance}")));
            }
            let signature = hex::decode(text(address, "signature", &at)?)
                .map_err(|_| malformed(format!("{at}: the signature of {shown} is not hex")))?;
            let statement = Statement {
                exchange,
                snapshot,
                asset: code,
                height: *height,
                block_hash: *block_hash,
                script_pubkey: &script,
            };
            verify_control(&statement, &signature)
                .map_err(|_| Failure::Signature(format!("{at}: the signature of {shown} does not verify")))?;
            let bucket = match text(address, "wallet", &at)? {
                "cold" => &mut cold,
                "hot" => &mut hot,
                "deposit" => &mut deposit,
                other => return Err(malformed(format!("{at}: unknown wallet {other:?}"))),
            };
            *bucket = bucket.checked_add(balance).ok_or_else(|| malformed("a sum overflows"))?;
        }
        let reserves = match (&chain, a.get("reserves")) {
            (Some(_), _) => Some(amount(a, "reserves", &at)?),
            (None, None | Some(Value::Null)) => None,
            (None, Some(_)) => return Err(malformed(format!("{at}: reserves without a block"))),
        };
        let counted = cold.checked_add(hot).and_then(|s| s.checked_add(deposit));
        let expected = chain.as_ref().map(|_| counted.ok_or_else(|| malformed("a sum overflows"))).transpose()?;
        if reserves != expected {
            return Err(Failure::TotalsMismatch(format!("{at}: the reserves are not the sum of the addresses")));
        }
        for (field, value) in [("cold", cold), ("hot", hot), ("deposit", deposit)] {
            if chain.is_some() && amount(a, field, &at)? != value {
                return Err(Failure::TotalsMismatch(format!("{at}: {field} is not the sum of its addresses")));
            }
        }
        let ratio_bps = reserves.and_then(|r| bps(r, liabilities));
        let cold_share_bps = reserves.and_then(|r| bps(cold, r));
        if optional_number(a, "ratio_bps", &at)? != ratio_bps {
            return Err(Failure::TotalsMismatch(format!("{at}: the ratio is not reserves over liabilities")));
        }
        if optional_number(a, "cold_share_bps", &at)? != cold_share_bps {
            return Err(Failure::TotalsMismatch(format!("{at}: the cold share is not cold over reserves")));
        }
        summaries.push(AssetSummary {
            code: code.to_owned(),
            decimals,
            liabilities,
            reserves,
            cold,
            hot,
            deposit,
            ratio_bps,
            cold_share_bps,
            addresses: addresses.len(),
            chain: chain.map(|(h, hash, _)| (h, hash)),
        });
    }
    Ok(ReportSummary {
        exchange: exchange.to_owned(),
        snapshot: snapshot.to_owned(),
        root: root.to_owned(),
        assets: summaries,
    })
}

/// Checks a report's bytes: its signature under `key`, then [`check_report`].
pub fn verify_report(report: &[u8], signature: &[u8], key: &[u8]) -> Result<ReportSummary, Failure> {
    verify_report_signature(report, signature, key)?;
    let value: Value = serde_json::from_slice(report).map_err(|e| malformed(format!("the report is not JSON: {e}")))?;
    check_report(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taproot_keys_come_only_from_segwit_v1_programs_of_32_bytes() {
        let mut script = vec![0x51, 0x20];
        script.extend([7u8; 32]);
        assert_eq!(taproot_key(&script), Some([7u8; 32]));
        assert_eq!(taproot_key(&script[..33]), None);
        script[0] = 0x00;
        assert_eq!(taproot_key(&script), None);
    }

    #[test]
    fn every_part_of_the_statement_changes_the_message() {
        let script = [0x51u8, 0x20, 1, 2, 3];
        let base = Statement {
            exchange: "Rampart",
            snapshot: "s1",
            asset: "BTC",
            height: 7,
            block_hash: [9; 32],
            script_pubkey: &script,
        };
        let m = control_message(&base);
        let other = [0x51u8, 0x20, 1, 2, 4];
        for changed in [
            Statement { exchange: "Rampart2", ..base.clone() },
            Statement { snapshot: "s2", ..base.clone() },
            Statement { asset: "ETH", ..base.clone() },
            Statement { height: 8, ..base.clone() },
            Statement { block_hash: [8; 32], ..base.clone() },
            Statement { script_pubkey: &other, ..base.clone() },
            // Length prefixes: moving a byte from one field to the next changes the message.
            Statement { exchange: "Rampar", snapshot: "ts1", ..base.clone() },
        ] {
            assert_ne!(control_message(&changed), m, "{changed:?}");
        }
    }

    #[test]
    fn ratios_round_down_and_need_a_whole() {
        assert_eq!(bps(1, 3), Some(3333));
        assert_eq!(bps(5, 0), None);
        assert_eq!(bps(20_000, 10_000), Some(20_000));
    }
}
