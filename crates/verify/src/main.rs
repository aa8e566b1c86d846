//! `rampart-verify`: checks a proof of reserves offline.
//!
//!     rampart-verify proof FILE --root HEX [--publication PUBFILE] [--totals N,N,…] [--user-id ID]
//!     rampart-verify publication PUBFILE --root HEX
//!     rampart-verify leaves FILE [--root HEX]
//!     rampart-verify report FILE --signature SIGFILE --key HEX [--root HEX]
//!
//! A proof FILE may be the binary proof, its hex, or a JSON object with a `proof` field in hex (what the service's
//! `GET /v1/reserves/{snapshot}/proof` answers). A proof of the private form (form 1, spec §8) is recognised from its
//! bytes and needs the snapshot's publication (spec §8.3: binary or hex). Exit status: 0 verified, 1 not verified, 2 a
//! usage or reading error.

use std::process::ExitCode;

use rampart_verify::private::{FORM_PRIVATE, PrivateProof, PrivatePublication, VerifiedPublication};
use rampart_verify::publication::PUBLICATION_MAGIC;
use rampart_verify::{LeafFile, Proof};

const USAGE: &str = "usage:
  rampart-verify proof FILE --root HEX [--publication PUBFILE] [--totals N,N,...] [--user-id ID]
      checks one user's inclusion proof against the published root (and the published totals, one per asset in
      the tree's order); --user-id also checks that the proof is for that user. A private proof (form 1) needs
      the snapshot's publication file, which holds the totals
  rampart-verify publication PUBFILE --root HEX
      checks a private tree's publication (its range proofs of the top nodes, their sums and the totals) once
  rampart-verify leaves FILE [--root HEX]
      recomputes the root and the totals from a full leaf file
  rampart-verify report FILE --signature SIGFILE --key HEX [--root HEX]
      checks a reserves report (report.json): the service's signature (SIGFILE, hex) under its key, every reserve
      address's signature over its statement, every balance against its outputs, and the sums, ratios and cold
      shares; --root also checks that it is the report of the root your proof leads to";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("rampart-verify: {message}");
            ExitCode::from(2)
        }
    }
}

struct Options {
    command: String,
    file: String,
    root: Option<[u8; 32]>,
    totals: Option<Vec<u128>>,
    user_id: Option<String>,
    publication: Option<String>,
    signature: Option<String>,
    key: Option<Vec<u8>>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut it = args.iter();
    let command = it.next().ok_or(USAGE)?.clone();
    if command == "--help" || command == "-h" {
        return Err(USAGE.into());
    }
    let file = it.next().ok_or(USAGE)?.clone();
    let mut options = Options {
        command,
        file,
        root: None,
        totals: None,
        user_id: None,
        publication: None,
        signature: None,
        key: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--root" => {
                let bytes = hex::decode(value.trim()).map_err(|_| "--root is not hex".to_string())?;
                options.root =
                    Some(bytes.try_into().map_err(|_| "--root must be 32 bytes (64 hex digits)".to_string())?);
            }
            "--totals" => {
                let totals = value
                    .split(',')
                    .map(|t| t.trim().parse::<u128>().map_err(|_| format!("--totals: {t:?} is not an amount")))
                    .collect::<Result<Vec<_>, _>>()?;
                options.totals = Some(totals);
            }
            "--user-id" => options.user_id = Some(value.clone()),
            "--publication" => options.publication = Some(value.clone()),
            "--signature" => options.signature = Some(value.clone()),
            "--key" => {
                let key = hex::decode(value.trim()).map_err(|_| "--key is not hex".to_string())?;
                if key.len() != 32 {
                    return Err("--key must be 32 bytes (64 hex digits)".into());
                }
                options.key = Some(key);
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(options)
}

/// The proof's bytes from a binary file, a hex file, or a JSON object with a `proof` field.
fn proof_bytes(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.starts_with(rampart_verify::proof::MAGIC) {
        return Ok(raw.to_vec());
    }
    let text = std::str::from_utf8(raw).map_err(|_| "the proof file is neither a proof nor text".to_string())?.trim();
    if text.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("the proof file's JSON: {e}"))?;
        let hex_proof = value["proof"].as_str().ok_or("the JSON has no \"proof\" field")?;
        return hex::decode(hex_proof).map_err(|_| "the JSON's proof is not hex".into());
    }
    hex::decode(text).map_err(|_| "the proof file is neither a binary proof, hex, nor JSON".into())
}

/// A publication's bytes from a binary file or its hex.
fn publication_bytes(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.starts_with(PUBLICATION_MAGIC) {
        return Ok(raw.to_vec());
    }
    let text = std::str::from_utf8(raw).map_err(|_| "the publication file is neither a publication nor hex")?;
    hex::decode(text.trim()).map_err(|_| "the publication file is neither a binary publication nor hex".into())
}

/// Reads, decodes and verifies a publication against the root; `Ok(None)` (after saying why) when it does not verify.
fn publication(path: &str, root: &[u8; 32]) -> Result<Option<VerifiedPublication>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let publication = PrivatePublication::decode(&publication_bytes(&raw)?).map_err(|e| e.to_string())?;
    let params = &publication.params;
    println!(
        "publication: exchange {}, snapshot {}, tree height {}, proven levels {} ({} published node commitments)",
        params.exchange,
        params.snapshot,
        params.height,
        publication.proven_levels,
        publication.top_commitments.len()
    );
    match publication.verify(root) {
        Ok(verified) => Ok(Some(verified)),
        Err(failure) => {
            println!("NOT VERIFIED: publication: {failure}");
            Ok(None)
        }
    }
}

/// Prints whose proof it is and what it shows; `false` (after saying so) when `--user-id` names someone else.
fn show_holder(
    params: &rampart_verify::Params,
    form: &str,
    user_id: &[u8],
    position: u64,
    balances: &[(u16, u128)],
    options: &Options,
) -> bool {
    println!("exchange {}, snapshot {}, tree height {}{form}", params.exchange, params.snapshot, params.height);
    println!("user {} at position {position}", String::from_utf8_lossy(user_id));
    for &(i, amount) in balances {
        println!("  balance {amount} {}", params.assets[usize::from(i)].code);
    }
    if let Some(expected) = &options.user_id
        && expected.as_bytes() != user_id
    {
        println!("NOT VERIFIED: the proof is for another user");
        return false;
    }
    true
}

/// `proof` for a private proof (form 1), against a publication.
fn private_proof(bytes: &[u8], options: &Options, root: &[u8; 32]) -> Result<bool, String> {
    let proof = PrivateProof::decode(bytes).map_err(|e| e.to_string())?;
    let path =
        options.publication.as_deref().ok_or("a private proof needs --publication (the snapshot's publication)")?;
    let params = &proof.params;
    let balances: Vec<(u16, u128)> = proof.balances.iter().map(|&(i, a)| (i, u128::from(a))).collect();
    if !show_holder(params, " (private form)", &proof.user_id, proof.position, &balances, options) {
        return Ok(false);
    }
    let Some(published) = publication(path, root)? else { return Ok(false) };
    if let Err(failure) = proof.verify(&published) {
        println!("NOT VERIFIED: {failure}");
        return Ok(false);
    }
    let totals = &published.publication().totals;
    for (asset, total) in params.assets.iter().zip(totals) {
        println!("  total liabilities {total} {}", asset.code);
    }
    if let Some(expected) = &options.totals
        && !expected.iter().copied().eq(totals.iter().map(|&t| u128::from(t)))
    {
        println!("NOT VERIFIED: totals: the publication's totals are not the ones given");
        return Ok(false);
    }
    println!("VERIFIED: these balances are included in the liabilities of root {}", hex::encode(root));
    Ok(true)
}

fn run(args: &[String]) -> Result<bool, String> {
    let options = parse(args)?;
    let raw = std::fs::read(&options.file).map_err(|e| format!("cannot read {}: {e}", options.file))?;
    match options.command.as_str() {
        "publication" => {
            let root = options.root.ok_or("publication needs --root (the published root)")?;
            let Some(verified) = publication(&options.file, &root)? else { return Ok(false) };
            let published = verified.publication();
            for (asset, total) in published.params.assets.iter().zip(&published.totals) {
                println!("  total liabilities {total} {}", asset.code);
            }
            println!("VERIFIED: the publication of root {}", hex::encode(root));
            Ok(true)
        }
        "proof" => {
            let root = options.root.ok_or("proof needs --root (the published root)")?;
            let bytes = proof_bytes(&raw)?;
            // The form byte follows the magic and the version.
            if bytes.get(5) == Some(&FORM_PRIVATE) {
                return private_proof(&bytes, &options, &root);
            }
            let proof = Proof::decode(&bytes).map_err(|e| e.to_string())?;
            let params = &proof.params;
            if !show_holder(params, "", &proof.user_id, proof.position, &proof.balances, &options) {
                return Ok(false);
            }
            let verified = match proof.verify(&root) {
                Ok(v) => v,
                Err(failure) => {
                    println!("NOT VERIFIED: {failure}");
                    return Ok(false);
                }
            };
            for &(a, total) in &verified.totals {
                println!("  total liabilities {total} {}", params.assets[a].code);
            }
            if let Some(totals) = &options.totals
                && let Err(failure) = verified.check_totals(params, totals)
            {
                println!("NOT VERIFIED: {failure}");
                return Ok(false);
            }
            println!("VERIFIED: these balances are included in the liabilities of root {}", hex::encode(root));
            Ok(true)
        }
        "leaves" => {
            let file = LeafFile::decode(&raw).map_err(|e| e.to_string())?;
            let recomputed = match file.recompute() {
                Ok(r) => r,
                Err(failure) => {
                    println!("NOT VERIFIED: {failure}");
                    return Ok(false);
                }
            };
            println!("{} users; root {}", recomputed.users, hex::encode(recomputed.root));
            for (asset, total) in file.params.assets.iter().zip(&recomputed.totals) {
                println!("  total liabilities {total} {}", asset.code);
            }
            if let Some(root) = options.root
                && root != recomputed.root
            {
                println!("NOT VERIFIED: the leaves hash to another root than the published one");
                return Ok(false);
            }
            println!("VERIFIED");
            Ok(true)
        }
        "report" => report(&raw, &options),
        other => Err(format!("unknown command {other}\n{USAGE}")),
    }
}

/// `report`: the reserves report and its signature (spec §9.3).
fn report(raw: &[u8], options: &Options) -> Result<bool, String> {
    let path = options.signature.as_deref().ok_or("report needs --signature (the report's signature file)")?;
    let key = options.key.as_deref().ok_or("report needs --key (the service's public key, hex)")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let signature = hex::decode(text.trim()).map_err(|_| format!("{path} is not a hex signature"))?;
    let summary = match rampart_verify::report::verify_report(raw, &signature, key) {
        Ok(s) => s,
        Err(failure) => {
            println!("NOT VERIFIED: {failure}");
            return Ok(false);
        }
    };
    println!("exchange {}, snapshot {}, liabilities root {}", summary.exchange, summary.snapshot, summary.root);
    for a in &summary.assets {
        let bps = |b: Option<u128>| b.map_or_else(|| "-".to_owned(), |b| format!("{}.{:02} %", b / 100, b % 100));
        match (a.reserves, &a.chain) {
            (Some(reserves), Some((height, hash))) => println!(
                "  {}: liabilities {}, reserves {} (cold {}, hot {}, deposit {}) in {} signed addresses at block \
                 {height} {hash}: ratio {}, cold share {}",
                a.code,
                a.liabilities,
                reserves,
                a.cold,
                a.hot,
                a.deposit,
                a.addresses,
                bps(a.ratio_bps),
                bps(a.cold_share_bps)
            ),
            _ => println!("  {}: liabilities {}, no reserves attested", a.code, a.liabilities),
        }
    }
    if let Some(root) = options.root
        && hex::encode(root) != summary.root
    {
        println!("NOT VERIFIED: the report is for another root than the given one");
        return Ok(false);
    }
    println!("VERIFIED: signed by the key given; every address's signature, balance and sum checks");
    Ok(true)
}
