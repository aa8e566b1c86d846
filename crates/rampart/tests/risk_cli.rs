//! `rampart risk`: checking rule files (a mistake is named with its rule and column) and back-testing them on
//! recorded events (what each rule would have decided, and what changes against a baseline).

use std::process::Command;

fn rampart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart")).args(args).output().expect("rampart runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Five ordinary mornings in Berlin, then a sign-in from Brazil at 03:00 on the same device, then ten failed
/// sign-ins from one address within a minute.
fn events() -> String {
    let mut lines = Vec::new();
    let start: u64 = 1_800_262_800;
    for day in 0..5u64 {
        lines.push(format!(
            r#"{{"at_ns":{},"user":1,"ip":"198.51.100.20","device":1,"country":"DE","kind":"sign_in","success":true,"factor":"totp"}}"#,
            (start + day * 86_400) * 1_000_000_000
        ));
    }
    lines.push(format!(
        r#"{{"at_ns":{},"user":1,"ip":"203.0.113.9","device":1,"country":"BR","kind":"sign_in","success":true,"factor":"totp"}}"#,
        (start + 5 * 86_400 + 18 * 3_600) * 1_000_000_000
    ));
    for k in 0..10u64 {
        lines.push(format!(
            r#"{{"at_ns":{},"user":{},"ip":"192.0.2.1","kind":"sign_in","success":false,"factor":"password"}}"#,
            (start + 6 * 86_400 + k) * 1_000_000_000,
            100 + k
        ));
    }
    lines.join("\n") + "\n"
}

#[test]
fn a_backtest_reports_what_each_rule_would_decide_and_what_changes() {
    let dir = tempfile::tempdir().unwrap();
    let events_path = dir.path().join("events.jsonl");
    std::fs::write(&events_path, events()).unwrap();
    let events_arg = events_path.to_str().unwrap();

    let (ok, out, err) = rampart(&["risk", "backtest", "--rules", "default", "--events", events_arg]);
    assert!(ok, "{err}");
    assert!(out.contains("16 events replayed"), "{out}");
    assert!(out.contains("decisions: allow 15, block 0, challenge 1, freeze 0, hold 0"), "{out}");
    let line = out.lines().find(|l| l.starts_with("login_deviation")).unwrap();
    assert!(line.split_whitespace().nth(1) == Some("1"), "login_deviation matched once: {line}");
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(json["rules"]["failed_sign_in_burst_ip"]["matched"], 0);

    // A stricter copy: bursts of five failures from one address are blocked; deviation above 0.7 only.
    let stricter = rampart_risk::DEFAULT_RULES
        .replace("version = 1", "version = 2")
        .replace("ip.failed_sign_ins_1m >= 20", "ip.failed_sign_ins_1m >= 5")
        .replace("deviation > 0.5 and", "deviation > 0.7 and");
    let rules_path = dir.path().join("stricter.toml");
    std::fs::write(&rules_path, stricter).unwrap();
    let (ok, out, err) = rampart(&[
        "risk",
        "backtest",
        "--rules",
        rules_path.to_str().unwrap(),
        "--events",
        events_arg,
        "--baseline",
        "default",
    ]);
    assert!(ok, "{err}");
    // The sixth to tenth failures are now blocked; the Brazilian sign-in (deviation 0.6) no longer challenged.
    assert!(out.contains("7 of 16 decisions change"), "{out}");
    assert!(out.contains("challenge (login_deviation) → allow"), "{out}");
    assert!(out.contains("allow → block (failed_sign_in_burst_ip)"), "{out}");
}

#[test]
fn bad_rule_files_and_event_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("bad.toml");
    std::fs::write(&rules, rampart_risk::DEFAULT_RULES.replace("deviation > 0.5 and", "deviaton > 0.5 and")).unwrap();
    let (ok, _, err) = rampart(&["risk", "check", "--rules", rules.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("rule \"login_deviation\": at column 1: unknown feature \"deviaton\""), "{err}");

    let (ok, out, _) = rampart(&["risk", "check"]);
    assert!(ok && out.contains("rule set \"default\", version 1"), "{out}");

    let events_path = dir.path().join("events.jsonl");
    let mut text = events();
    text.push_str("{\"at_ns\":1,\"user\":1,\"kind\":\"teleport\"}\n");
    std::fs::write(&events_path, text).unwrap();
    let (ok, _, err) = rampart(&["risk", "backtest", "--rules", "default", "--events", events_path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("line 17 is not an event"), "{err}");

    let (ok, out, _) = rampart(&["risk", "features"]);
    assert!(ok && out.contains("ip_new_since_sign_in") && out.contains("device.accounts_24h"), "{out}");
}
