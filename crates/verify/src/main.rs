//! `rampart-verify`: checks a proof of reserves offline.
//!
//!     rampart-verify proof FILE --root HEX [--totals N,N,…] [--user-id ID]
//!     rampart-verify leaves FILE [--root HEX]
//!
//! A proof FILE may be the binary proof, its hex, or a JSON object with a `proof` field in hex (what the service's
//! `GET /v1/reserves/{snapshot}/proof` answers). Exit status: 0 verified, 1 not verified, 2 a usage or reading error.

use std::process::ExitCode;

use rampart_verify::{LeafFile, Proof};

const USAGE: &str = "usage:
  rampart-verify proof FILE --root HEX [--totals N,N,...] [--user-id ID]
      checks one user's inclusion proof against the published root (and the published totals, one per asset in
      the tree's order); --user-id also checks that the proof is for that user
  rampart-verify leaves FILE [--root HEX]
      recomputes the root and the totals from a full leaf file";

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
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut it = args.iter();
    let command = it.next().ok_or(USAGE)?.clone();
    if command == "--help" || command == "-h" {
        return Err(USAGE.into());
    }
    let file = it.next().ok_or(USAGE)?.clone();
    let mut options = Options { command, file, root: None, totals: None, user_id: None };
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

fn run(args: &[String]) -> Result<bool, String> {
    let options = parse(args)?;
    let raw = std::fs::read(&options.file).map_err(|e| format!("cannot read {}: {e}", options.file))?;
    match options.command.as_str() {
        "proof" => {
            let root = options.root.ok_or("proof needs --root (the published root)")?;
            let proof = Proof::decode(&proof_bytes(&raw)?).map_err(|e| e.to_string())?;
            let params = &proof.params;
            println!("exchange {}, snapshot {}, tree height {}", params.exchange, params.snapshot, params.height);
            println!("user {} at position {}", String::from_utf8_lossy(&proof.user_id), proof.position);
            for &(i, amount) in &proof.balances {
                println!("  balance {amount} {}", params.assets[usize::from(i)].code);
            }
            if let Some(expected) = &options.user_id
                && expected.as_bytes() != proof.user_id.as_slice()
            {
                println!("NOT VERIFIED: the proof is for another user");
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
        other => Err(format!("unknown command {other}\n{USAGE}")),
    }
}
