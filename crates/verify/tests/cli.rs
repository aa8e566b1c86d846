//! The `rampart-verify` binary on the published vectors: every proof case gives its expected exit status, the leaf
//! file recomputes the published root, and bad usage is a clear error with status 2. A private proof (form 1) is
//! recognised from its bytes and verified with its publication; a publication is verified on its own.

use std::path::PathBuf;
use std::process::Command;

use rampart_reserves::private::PrivateTree;
use rampart_reserves::{Holding, Reveal, TreeSecret};
use rampart_verify::params::{Asset, Params};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rampart-verify-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn verify(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart-verify")).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_vector_case_gives_its_exit_status() {
    let v = vectors();
    for (i, case) in v["cases"].as_array().unwrap().iter().enumerate() {
        let hex_proof = case["proof"].as_str().unwrap();
        // Alternate the three accepted file forms: binary, hex text, JSON.
        let file = match i % 3 {
            0 => scratch(&format!("case{i}.bin"), &hex::decode(hex_proof).unwrap()),
            1 => scratch(&format!("case{i}.hex"), hex_proof.as_bytes()),
            _ => scratch(&format!("case{i}.json"), format!("{{\"proof\":\"{hex_proof}\"}}").as_bytes()),
        };
        let mut args = vec!["proof", file.to_str().unwrap(), "--root", case["root"].as_str().unwrap()];
        let totals;
        if let Some(t) = case["totals"].as_array() {
            totals = t.iter().map(|x| x.as_str().unwrap()).collect::<Vec<_>>().join(",");
            args.extend(["--totals", &totals]);
        }
        let (code, stdout, stderr) = verify(&args);
        let expected = if case["expect"] == "valid" { 0 } else { 1 };
        // An undecodable proof is a reading error (2); it is never accepted.
        assert!(code == expected || (expected == 1 && code == 2), "{}: exit {code}\n{stdout}{stderr}", case["name"]);
        if expected == 0 {
            assert!(stdout.contains("VERIFIED: these balances"), "{stdout}");
        }
    }
}

#[test]
fn the_leaf_file_recomputes_the_published_root() {
    let v = vectors();
    let file = scratch("leaves.bin", &hex::decode(v["tree"]["leaf_file"].as_str().unwrap()).unwrap());
    let root = v["tree"]["root"].as_str().unwrap();
    let (code, stdout, _) = verify(&["leaves", file.to_str().unwrap(), "--root", root]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(&format!("{} users; root {root}", v["tree"]["users"])), "{stdout}");
    let other = "00".repeat(32);
    let (code, stdout, _) = verify(&["leaves", file.to_str().unwrap(), "--root", &other]);
    assert_eq!(code, 1, "{stdout}");
}

#[test]
fn the_proof_must_be_the_users_own() {
    let v = vectors();
    let case = &v["cases"][0];
    let file = scratch("own.hex", case["proof"].as_str().unwrap().as_bytes());
    let root = case["root"].as_str().unwrap();
    let (code, _, _) = verify(&["proof", file.to_str().unwrap(), "--root", root, "--user-id", "customer-00"]);
    assert_eq!(code, 0);
    let (code, stdout, _) = verify(&["proof", file.to_str().unwrap(), "--root", root, "--user-id", "customer-01"]);
    assert_eq!(code, 1);
    assert!(stdout.contains("another user"), "{stdout}");
}

#[test]
fn bad_usage_is_a_clear_error() {
    let (code, _, stderr) = verify(&[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("usage"), "{stderr}");
    let file = scratch("x.hex", b"zz");
    let (code, _, stderr) = verify(&["proof", file.to_str().unwrap(), "--root", "abcd"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("32 bytes"), "{stderr}");
    let (code, _, stderr) = verify(&["proof", "/nonexistent/proof", "--root", &"00".repeat(32)]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

/// A private tree of five users at height 3, publishing the nodes of levels 1 and 2.
fn private_tree(snapshot: &str, extra: u128) -> PrivateTree {
    let params = Params {
        exchange: "Rampart CLI Exchange".into(),
        snapshot: snapshot.into(),
        height: 3,
        assets: vec![Asset { code: "BTC".into(), max: 1_000_000 }, Asset { code: "ETH".into(), max: 1_000_000 }],
    };
    let holdings = (0..5u128)
        .map(|i| Holding { user_id: format!("customer-{i}").into_bytes(), balances: vec![(0, 10 + i + extra), (1, i)] })
        .collect();
    PrivateTree::build_with_proven_levels(params, holdings, &TreeSecret::new([9; 32]), 2, 1).unwrap()
}

#[test]
fn a_private_proof_verifies_with_its_publication() {
    let tree = private_tree("2026-12-04/private", 0);
    assert_eq!(tree.proven_levels(), 1);
    let root = hex::encode(tree.root());
    let publication = scratch("private.pub", &tree.publication().encode());
    let publication_hex = scratch("private.pub.hex", hex::encode(tree.publication().encode()).as_bytes());
    let proof = tree.proof(3, Reveal::Held).unwrap().encode();
    let binary = scratch("private.bin", &proof);
    let json = scratch("private.json", format!("{{\"proof\":\"{}\"}}", hex::encode(&proof)).as_bytes());
    for (file, publication) in [(&binary, &publication), (&json, &publication_hex)] {
        let (code, stdout, stderr) =
            verify(&["proof", file.to_str().unwrap(), "--root", &root, "--publication", publication.to_str().unwrap()]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.contains("private form") && stdout.contains("balance 13 BTC"), "{stdout}");
        assert!(stdout.contains("total liabilities 60 BTC") && stdout.contains("VERIFIED: these balances"), "{stdout}");
    }
    let (binary, publication) = (binary.to_str().unwrap(), publication.to_str().unwrap());
    let base = ["proof", binary, "--root", root.as_str(), "--publication", publication];
    let with = |extra: &[&str]| verify(&[&base[..], extra].concat());
    assert_eq!(with(&["--user-id", "customer-3", "--totals", "60,10"]).0, 0);
    let (code, stdout, _) = with(&["--user-id", "customer-4"]);
    assert!(code == 1 && stdout.contains("another user"), "{stdout}");
    let (code, stdout, _) = with(&["--totals", "59,10"]);
    assert!(code == 1 && stdout.contains("NOT VERIFIED: totals"), "{stdout}");

    // Without the publication the proof cannot be verified; with another root or another tree's publication it
    // does not verify.
    let (code, _, stderr) = verify(&["proof", binary, "--root", &root]);
    assert!(code == 2 && stderr.contains("--publication"), "{stderr}");
    let other = "11".repeat(32);
    let (code, stdout, _) = verify(&["proof", binary, "--root", &other, "--publication", publication]);
    assert!(code == 1 && stdout.contains("NOT VERIFIED: publication"), "{stdout}");
    let next = private_tree("2026-12-04/private", 1);
    let next_publication = scratch("next.pub", &next.publication().encode());
    let next_root = hex::encode(next.root());
    let (code, stdout, _) =
        verify(&["proof", binary, "--root", &next_root, "--publication", next_publication.to_str().unwrap()]);
    assert!(code == 1 && stdout.contains("NOT VERIFIED: the proof leads to root"), "{stdout}");
    // Another snapshot's proof: other parameters than the publication's.
    let old = private_tree("2026-11-04/private", 0);
    let old_proof = scratch("old.bin", &old.proof(3, Reveal::Held).unwrap().encode());
    let (code, stdout, _) =
        verify(&["proof", old_proof.to_str().unwrap(), "--root", &root, "--publication", publication]);
    assert!(code == 1 && stdout.contains("not of the publication's tree"), "{stdout}");
}

#[test]
fn a_publication_is_verified_once_on_its_own() {
    let tree = private_tree("2026-12-04/private", 0);
    let root = hex::encode(tree.root());
    let bytes = tree.publication().encode();
    let file = scratch("alone.pub", &bytes);
    let (code, stdout, stderr) = verify(&["publication", file.to_str().unwrap(), "--root", &root]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("proven levels 1 (12 published node commitments)"), "{stdout}");
    assert!(stdout.contains("total liabilities 60 BTC") && stdout.contains("VERIFIED: the publication"), "{stdout}");
    let (code, stdout, _) = verify(&["publication", file.to_str().unwrap(), "--root", &"00".repeat(32)]);
    assert!(code == 1 && stdout.contains("NOT VERIFIED: publication"), "{stdout}");
    // A changed byte in the published commitments or in the range proofs: undecodable (2) or not verified (1).
    for at in [bytes.len() - 1, bytes.len() - 700, bytes.len() - 2000] {
        let mut changed = bytes.clone();
        changed[at] ^= 0x01;
        let file = scratch(&format!("changed{at}.pub"), &changed);
        let (code, stdout, _) = verify(&["publication", file.to_str().unwrap(), "--root", &root]);
        assert!(code == 1 || code == 2, "byte {at}: {stdout}");
    }
    let (code, _, stderr) = verify(&["publication", file.to_str().unwrap()]);
    assert!(code == 2 && stderr.contains("--root"), "{stderr}");
}
