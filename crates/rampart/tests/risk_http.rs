//! The risk engine through the real service: the rule set in force, a reload without a restart (a higher version
//! goes in force; a file that does not compile, or one that is not newer, changes nothing), and the export of scored
//! events that back-tests read. On SQLite and (when configured) PostgreSQL.

#[macro_use]
#[allow(dead_code)]
mod common;

use common::{Db, Server};
use serde_json::json;

async fn rules_reload_without_a_restart(db: Db) {
    let rules = tempfile::tempdir().unwrap();
    let path = rules.path().join("rules.toml");
    std::fs::write(&path, rampart_risk::DEFAULT_RULES).unwrap();
    let config = format!("[risk]\nrules = {:?}\n", path.to_str().unwrap());
    let server = Server::start_with_config(&db, &config).await;

    let view = server.get("/v1/risk/rules").await.expect(200).clone();
    assert_eq!((view["name"].as_str(), view["version"].as_u64()), (Some("default"), Some(1)));
    assert_eq!(view["rules"].as_array().map(Vec::len), Some(12));

    // Version 2: stricter bursts. In force at once.
    let v2 = rampart_risk::DEFAULT_RULES
        .replace("version = 1", "version = 2")
        .replace("ip.failed_sign_ins_1m >= 20", "ip.failed_sign_ins_1m >= 3");
    std::fs::write(&path, &v2).unwrap();
    let view = server.post("/v1/risk/rules/reload", &json!({})).await.expect(200).clone();
    assert_eq!(view["version"], 2);
    let burst = view["rules"].as_array().unwrap().iter().find(|r| r["name"] == "failed_sign_in_burst_ip").unwrap();
    assert_eq!(burst["when"], "ip.failed_sign_ins_1m >= 3");

    // A typo: refused with the rule and column, and version 2 stays.
    std::fs::write(
        &path,
        v2.replace("version = 2", "version = 3").replace("ip.failed_sign_ins_1m >= 3", "ip.failed_signins_1m >= 3"),
    )
    .unwrap();
    let refused = server.post("/v1/risk/rules/reload", &json!({})).await;
    refused.assert_error(400, "invalid_rules");
    assert!(refused.text.contains("failed_sign_in_burst_ip") && refused.text.contains("column"), "{}", refused.text);
    // Not newer: refused too.
    std::fs::write(&path, &v2).unwrap();
    server.post("/v1/risk/rules/reload", &json!({})).await.assert_error(409, "stale_rules");
    assert_eq!(server.get("/v1/risk/rules").await.expect(200)["version"], 2);

    // Three wrong passwords from one address: the third failure reaches the stricter burst rule, and a right
    // password from that address is then refused by the risk engine.
    let password = "Copper-Heron-Marmalade-61";
    server.post("/v1/customers/sign-up", &json!({"email": "gil@example.com", "password": password})).await.expect(201);
    for _ in 0..3 {
        let answer = server
            .post("/v1/customers/sign-in", &json!({"email": "gil@example.com", "password": "wrong-wrong-wrong"}))
            .await;
        assert!(matches!(answer.status.as_u16(), 401 | 429), "{}", answer.text);
    }
    let answer = server.post("/v1/customers/sign-in", &json!({"email": "gil@example.com", "password": password})).await;
    if answer.status.as_u16() != 429 {
        // (Unless the identity throttle answered first, which it may on a slow machine.)
        answer.assert_error(403, "risk_blocked");
    }

    // The scored events, as JSON lines that `rampart risk backtest` reads.
    let export = server.get("/v1/risk/events?after=0").await;
    assert_eq!(export.status.as_u16(), 200);
    let lines: Vec<rampart_risk::Event> =
        export.text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert!(lines.len() >= 3, "{}", export.text);
    assert!(lines.iter().all(|e| e.kind() == rampart_risk::Kind::SignIn));
    let entries = server.get("/v1/audit/entries?action=risk.rules.reloaded").await.expect(200).clone();
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "one reload went in force: {entries}");
}

on_both_backends!(rules_reload_without_a_restart);
