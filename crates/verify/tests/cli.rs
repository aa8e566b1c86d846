//! The `rampart-verify` binary on the published vectors: every proof case gives its expected exit status, the leaf
//! file recomputes the published root, and bad usage is a clear error with status 2.

use std::path::PathBuf;
use std::process::Command;

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
