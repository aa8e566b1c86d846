//! The report checker on reports made here with keys of our own (docs/reserves-spec.md §9): an honest report
//! verifies, and each rule of §9.3 broken on its own is caught.

#![cfg(feature = "report")]

use ed25519_dalek::Signer;
use rampart_verify::Failure;
use rampart_verify::report::{
    REPORT_CONTEXT, Statement, check_report, control_message, taproot_address, verify_control, verify_report,
};
use serde_json::{Value, json};

const BLOCK: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";

/// A Taproot key of our own: the signing key and its output script.
fn wallet(seed: u8) -> (k256::schnorr::SigningKey, Vec<u8>) {
    let key = k256::schnorr::SigningKey::from_bytes(&[seed; 32]).expect("a scalar");
    let mut script = vec![0x51, 0x20];
    script.extend_from_slice(&key.verifying_key().to_bytes());
    (key, script)
}

fn address(seed: u8, kind: &str, outputs: &[(&str, u64)], snapshot: &str) -> Value {
    let (key, script) = wallet(seed);
    let statement = Statement {
        exchange: "Rampart",
        snapshot,
        asset: "BTC",
        height: 812,
        block_hash: hex::decode(BLOCK).unwrap().try_into().unwrap(),
        script_pubkey: &script,
    };
    let signature = key.sign_raw(&control_message(&statement), &[seed; 32]).expect("a signature");
    let x_only: [u8; 32] = script[2..].try_into().unwrap();
    json!({
        "address": taproot_address("regtest", &x_only).unwrap(),
        "wallet": kind,
        "script_pubkey": hex::encode(&script),
        "balance": outputs.iter().map(|o| o.1).sum::<u64>().to_string(),
        "outputs": outputs.iter().map(|(o, v)| json!([o, v.to_string()])).collect::<Vec<_>>(),
        "signature": hex::encode(signature.to_bytes()),
    })
}

/// Liabilities 1,000,000 sat; reserves 960,000 cold + 50,000 hot = 1,010,000.
fn honest() -> Value {
    json!({
        "format": "rampart-por-v1 report",
        "exchange": "Rampart",
        "snapshot": "s-1",
        "root": "11".repeat(32),
        "form": "revealed_sums",
        "ledger_seq": 7,
        "created_at_ns": "1",
        "network": "regtest",
        "assets": [
            {
                "code": "BTC", "decimals": 8, "liabilities": "1000000",
                "reserves": "1010000", "cold": "960000", "hot": "50000", "deposit": "0",
                "ratio_bps": 10100, "cold_share_bps": 9504,
                "chain": {"height": 812, "block_hash": BLOCK},
                "addresses": [
                    address(1, "cold", &[("aa:0", 900_000), ("aa:1", 60_000)], "s-1"),
                    address(2, "hot", &[("bb:0", 50_000)], "s-1"),
                ],
            },
            {
                "code": "ETH", "decimals": 18, "liabilities": "5",
                "reserves": null, "ratio_bps": null, "cold_share_bps": null, "chain": null, "addresses": [],
            },
        ],
    })
}

#[test]
fn an_honest_report_verifies_with_its_figures() {
    let summary = check_report(&honest()).expect("honest");
    let btc = &summary.assets[0];
    assert_eq!((btc.liabilities, btc.reserves, btc.cold, btc.hot), (1_000_000, Some(1_010_000), 960_000, 50_000));
    assert_eq!((btc.ratio_bps, btc.cold_share_bps, btc.addresses), (Some(10_100), Some(9_504), 2));
    assert_eq!(summary.assets[1].reserves, None);
}

#[test]
fn every_rule_broken_on_its_own_is_caught() {
    type Change = fn(&mut Value);
    let cases: Vec<(&str, Change)> = vec![
        ("a balance above its outputs", |r| r["assets"][0]["addresses"][0]["balance"] = json!("960001")),
        ("an output's value changed", |r| r["assets"][0]["addresses"][1]["outputs"][0][1] = json!("50001")),
        ("reserves inflated", |r| r["assets"][0]["reserves"] = json!("1010001")),
        ("cold not its addresses' sum", |r| r["assets"][0]["cold"] = json!("960001")),
        ("a ratio rounded up", |r| r["assets"][0]["ratio_bps"] = json!(10101)),
        ("a cold share made up", |r| r["assets"][0]["cold_share_bps"] = json!(9600)),
        ("an address counted twice", |r| {
            let a = r["assets"][0]["addresses"][1].clone();
            r["assets"][0]["addresses"].as_array_mut().unwrap().push(a);
        }),
        ("an output counted under two addresses", |r| {
            r["assets"][0]["addresses"][1]["outputs"][0][0] = json!("aa:0");
        }),
        ("signatures swapped", |r| {
            let a = r["assets"][0]["addresses"][0]["signature"].clone();
            r["assets"][0]["addresses"][0]["signature"] = r["assets"][0]["addresses"][1]["signature"].clone();
            r["assets"][0]["addresses"][1]["signature"] = a;
        }),
        ("another snapshot", |r| r["snapshot"] = json!("s-2")),
        ("another exchange", |r| r["exchange"] = json!("Elsewhere")),
        ("another block", |r| r["assets"][0]["chain"]["height"] = json!(813)),
        ("an address that is not its script's", |r| {
            r["assets"][0]["addresses"][0]["address"] = r["assets"][0]["addresses"][1]["address"].clone();
        }),
        ("an address that is not Taproot", |r| {
            r["assets"][0]["addresses"][0]["script_pubkey"] = json!(format!("0014{}", "22".repeat(20)));
        }),
        ("an unknown wallet", |r| r["assets"][0]["addresses"][1]["wallet"] = json!("friend")),
        ("reserves claimed without a block", |r| r["assets"][1]["reserves"] = json!("5")),
        ("a negative amount", |r| r["assets"][0]["liabilities"] = json!("-1")),
        ("a leading zero", |r| r["assets"][0]["liabilities"] = json!("01000000")),
        ("not a report", |r| r["format"] = json!("something else")),
    ];
    for (what, change) in cases {
        let mut report = honest();
        change(&mut report);
        assert!(check_report(&report).is_err(), "{what} was accepted");
    }
}

#[test]
fn a_statement_signed_for_one_snapshot_does_not_serve_another() {
    let mut report = honest();
    report["assets"][0]["addresses"][0] = address(1, "cold", &[("aa:0", 900_000), ("aa:1", 60_000)], "s-0");
    assert!(matches!(check_report(&report), Err(Failure::Signature(_))));
}

#[test]
fn the_report_signature_covers_every_byte() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let text = serde_json::to_string_pretty(&honest()).unwrap();
    let mut signed = REPORT_CONTEXT.to_vec();
    signed.extend_from_slice(text.as_bytes());
    let signature = key.sign(&signed).to_bytes();
    let public = key.verifying_key().to_bytes();
    assert!(verify_report(text.as_bytes(), &signature, &public).is_ok());
    for at in [0, text.len() / 2, text.len() - 1] {
        let mut changed = text.clone().into_bytes();
        changed[at] ^= 1;
        assert!(verify_report(&changed, &signature, &public).is_err(), "byte {at}");
    }
    let other = ed25519_dalek::SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes();
    assert!(verify_report(text.as_bytes(), &signature, &other).is_err());
    // Without the context, the same key's signature over the bare bytes is not a report signature.
    let bare = key.sign(text.as_bytes()).to_bytes();
    assert!(verify_report(text.as_bytes(), &bare, &public).is_err());
}

#[test]
fn a_control_signature_checks_under_the_scripts_key_only() {
    let (key, script) = wallet(3);
    let (_, other) = wallet(4);
    let statement = Statement {
        exchange: "Rampart",
        snapshot: "s-1",
        asset: "BTC",
        height: 1,
        block_hash: [0; 32],
        script_pubkey: &script,
    };
    let signature = key.sign_raw(&control_message(&statement), &[0; 32]).unwrap().to_bytes();
    assert!(verify_control(&statement, &signature).is_ok());
    assert!(verify_control(&Statement { script_pubkey: &other, ..statement.clone() }, &signature).is_err());
    assert!(verify_control(&statement, &signature[..63]).is_err());
}

#[test]
fn the_command_line_checks_a_report_and_names_what_fails() {
    let dir = std::env::temp_dir().join(format!("rampart-verify-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let public = hex::encode(key.verifying_key().to_bytes());
    let write = |name: &str, report: &Value| {
        let text = serde_json::to_string_pretty(report).unwrap();
        let mut signed = REPORT_CONTEXT.to_vec();
        signed.extend_from_slice(text.as_bytes());
        let (file, sig) = (dir.join(format!("{name}.json")), dir.join(format!("{name}.json.sig")));
        std::fs::write(&file, &text).unwrap();
        std::fs::write(&sig, format!("{}\n", hex::encode(key.sign(&signed).to_bytes()))).unwrap();
        (file.to_str().unwrap().to_owned(), sig.to_str().unwrap().to_owned())
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart-verify")).args(args).output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (file, sig) = write("honest", &honest());
    let root = "11".repeat(32);
    let (code, out) = run(&["report", &file, "--signature", &sig, "--key", &public, "--root", &root]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ratio 101.00 %, cold share 95.04 %") && out.contains("VERIFIED"), "{out}");
    let (code, out) = run(&["report", &file, "--signature", &sig, "--key", &public, "--root", &"22".repeat(32)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another root"), "{out}");
    let other = hex::encode(ed25519_dalek::SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes());
    let (code, out) = run(&["report", &file, "--signature", &sig, "--key", &other]);
    assert!(code == 1 && out.contains("NOT VERIFIED: signature"), "{out}");
    // Signed by the right key, but inflated: the service's signature does not make a false sum true.
    let mut inflated = honest();
    inflated["assets"][0]["reserves"] = json!("2000000");
    let (file, sig) = write("inflated", &inflated);
    let (code, out) = run(&["report", &file, "--signature", &sig, "--key", &public]);
    assert!(code == 1 && out.contains("NOT VERIFIED: totals"), "{out}");
    let (code, _) = run(&["report", &file, "--key", &public]);
    assert_eq!(code, 2, "no signature file is a usage error");
}
