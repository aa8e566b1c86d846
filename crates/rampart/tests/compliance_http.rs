//! Compliance through the real service, on SQLite and (when configured) PostgreSQL: the SDN list imported as versions
//! (bad files refused with their reasons and lines, an unchanged import refused), customers screened at sign-up (a
//! match freezes the account and opens a case; bad screening data refused before anything is written), every
//! customer re-screened when the list changes, staff screening of names and addresses, the exchange's own address
//! lists, and existing customers flagged for off-boarding when seen in a blocked jurisdiction.

#[macro_use]
#[allow(dead_code)]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{Db, Server, address_in};
use reqwest::Method;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[identity]
client_ip_header = "x-forwarded-for"

[compliance]
geoip_dir = "/usr/share/tor"
"#;

const PASSWORD: &str = "Quartz-Meadow-Lantern-58-Pebbles";

fn list_files(sdn_edit: impl Fn(String) -> String) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compliance/testdata/ofac");
    let read = |n: &str| String::from_utf8_lossy(&std::fs::read(dir.join(n)).unwrap()).into_owned();
    let eth = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../compliance/testdata/crypto-addresses/sanctioned_addresses_ETH.txt"),
    )
    .unwrap();
    json!({
        "files": {"sdn.csv": sdn_edit(read("sdn.csv")), "alt.csv": read("alt.csv"), "add.csv": read("add.csv"),
            "sdn_comments.csv": read("sdn_comments.csv")},
        "addresses": {"ETH": eth},
    })
}

async fn rescreened(server: &Server, version: i64) -> Value {
    for _ in 0..500 {
        let lists = server.get("/v1/compliance/lists").await.expect(200).clone();
        if let Some(v) = lists.as_array().unwrap().iter().find(|l| l["version"] == version)
            && !v["rescreen"].is_null()
        {
            return v["rescreen"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("version {version} was never re-screened");
}

async fn cases_of(server: &Server, kind: &str) -> Vec<Value> {
    let cases = server.get("/v1/compliance/cases?all=true").await.expect(200).clone();
    cases.as_array().unwrap().iter().filter(|c| c["kind"] == kind).cloned().collect()
}

async fn lists_screening_and_cases(db: Db) {
    let server = Server::start_with_config(&db, CONFIG).await;
    let api = server.api();
    let from = |country: &str, path: &'static str, body: Value| {
        let (api, ip) = (api.clone(), address_in(country));
        async move { api.send(api.public(Method::POST, path).header("x-forwarded-for", ip).json(&body)).await }
    };

    // Bad imports change nothing and say why.
    let mut missing = list_files(|s| s);
    missing["files"].as_object_mut().unwrap().remove("alt.csv");
    server.post("/v1/compliance/lists/ofac", &missing).await.assert_error(400, "missing_file");
    let mut unknown = list_files(|s| s);
    unknown["files"]["notes.txt"] = json!("hello");
    server.post("/v1/compliance/lists/ofac", &unknown).await.assert_error(400, "unknown_file");
    let garbage = list_files(|_| "no,such\n\"unterminated".into());
    let answer = server.post("/v1/compliance/lists/ofac", &garbage).await;
    answer.assert_error(422, "list_unreadable");
    assert!(answer.text.contains("sdn.csv line"), "the first bad line is named: {}", answer.text);
    assert_eq!(server.get("/v1/compliance/lists").await.expect(200).as_array().map(Vec::len), Some(0));

    // Before any list, a sign-up is screened against nothing and stays active.
    from(
        "DE",
        "/v1/customers/sign-up",
        json!({"email": "early@example.com", "password": PASSWORD,
        "legal_name": "Finn Berger", "country": "DE"}),
    )
    .await
    .expect(201);

    let v1 = server.post("/v1/compliance/lists/ofac", &list_files(|s| s)).await;
    let body = v1.expect(201).clone();
    assert_eq!((body["version"].as_i64(), body["report"]["entries"].as_u64()), (Some(1), Some(8976)));
    assert_eq!(body["report"]["aliases"], 11910);
    assert_eq!(body["report"]["crypto_addresses"], 97);
    assert_eq!(body["report"]["added"].as_array().map(Vec::len), Some(8976));
    assert_eq!(rescreened(&server, 1).await["screened"], 1);
    server.post("/v1/compliance/lists/ofac", &list_files(|s| s)).await.assert_error(409, "list_unchanged");

    // Screening data is checked before anything is written.
    for (body, code) in [
        (json!({"legal_name": "X Y", "country": "ZZ"}), "invalid_country"),
        (json!({"legal_name": "X Y", "date_of_birth": "1980-02-30"}), "invalid_date_of_birth"),
        (json!({"legal_name": " "}), "invalid_name"),
        (json!({"country": "DE"}), "missing_field"),
    ] {
        let mut b = body.clone();
        b["email"] = json!("careful@example.com");
        b["password"] = json!(PASSWORD);
        from("DE", "/v1/customers/sign-up", b).await.assert_error(400, code);
    }
    from(
        "DE",
        "/v1/customers/sign-up",
        json!({"email": "careful@example.com", "password": PASSWORD,
        "legal_name": "Maria Schneider", "country": "DE", "date_of_birth": "1990-05-01"}),
    )
    .await
    .expect(201);
    assert!(cases_of(&server, "sanctions_match").await.is_empty(), "an ordinary name opens no case");

    // A listed person signs up (diacritics, word order): frozen, with a case naming the entry and the score.
    from(
        "CO",
        "/v1/customers/sign-up",
        json!({"email": "jc@example.com", "password": PASSWORD,
        "legal_name": "Juan Carlos Ramírez Abadía", "country": "CO", "date_of_birth": "1963-02-16"}),
    )
    .await
    .expect(201);
    let cases = cases_of(&server, "sanctions_match").await;
    assert_eq!(cases.len(), 1, "{cases:?}");
    assert_eq!((cases[0]["outcome"].as_str(), cases[0]["details"]["entry"].as_u64()), (Some("freeze"), Some(6718)));
    assert!(cases[0]["details"]["score"].as_u64().unwrap() >= 920_000);
    assert_eq!(cases[0]["details"]["trigger"], "sign_up");
    let jc = cases[0]["customer"].as_i64().unwrap();
    let entries = api.audit_entries("action=compliance.sanctions.match").await;
    assert!(entries.iter().any(|e| e["target"] == json!(format!("customer:{jc}"))), "{entries:?}");

    // The list changes: an entry naming the early customer. Every customer is re-screened; one new case.
    let v2 = server
        .post(
            "/v1/compliance/lists/ofac",
            &list_files(|s| {
                s.replacen(
                    "\n6718,",
                    "\n99999001,\"BERGER, Finn\",\"individual\",\"SDGT\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \r\n6718,",
                    1,
                )
            }),
        )
        .await;
    let body = v2.expect(201).clone();
    assert_eq!(body["report"]["added"], json!([99999001]));
    assert_eq!(body["report"]["removed"], json!([]));
    let report = rescreened(&server, 2).await;
    assert_eq!((report["screened"].as_u64(), report["matches"].as_u64()), (Some(3), Some(2)), "{report}");
    assert_eq!(report["cases_opened"], 1, "the customer with an open case gets no second one: {report}");
    let cases = cases_of(&server, "sanctions_match").await;
    let new = cases.iter().find(|c| c["details"]["trigger"] == "list_change").expect("a case from the change");
    assert_eq!(new["details"]["entry"], 99999001);

    // A release lifts the freeze; a second resolution is refused; a bad resolution changes nothing.
    let path = format!("/v1/compliance/cases/{}/resolve", new["id"]);
    server.post(&path, &json!({"resolution": "forget", "note": "x"})).await.assert_error(400, "invalid_resolution");
    let done = server.post(&path, &json!({"resolution": "release", "note": "another Finn Berger"})).await;
    assert_eq!(done.expect(200)["resolution"], "release");
    assert_eq!(done.body["notes"].as_array().map(Vec::len), Some(1));
    server.post(&path, &json!({"resolution": "release", "note": "again"})).await.assert_error(409, "case_resolved");

    // Staff screening of names and addresses.
    let m = server.post("/v1/compliance/screen", &json!({"name": "abadia ramirez juan carlos", "limit": 3})).await;
    assert_eq!(m.expect(200)["matches"][0]["entry"], 6718);
    assert_eq!(m.body["matches"][0]["match"], true);
    server.post("/v1/compliance/screen", &json!({"name": ""})).await.assert_error(400, "invalid_name");
    let eth = "0x01e2919679362dfbc9ee1644ba9c6da6d6245bb1";
    let listed = server
        .post("/v1/compliance/addresses/screen", &json!({"address": eth.to_uppercase().replacen("0X", "0x", 1)}))
        .await;
    assert!(listed.expect(200).as_array().is_some_and(|l| !l.is_empty()), "{}", listed.text);

    // The exchange's own list: one live listing per address, removable, bad input refused.
    let own = json!({"address": "bc1qexampleblocked0000000000000000000000", "category": "blocked", "reason": "mixer"});
    let added = server.post("/v1/compliance/addresses", &own).await;
    let id = added.expect(201)["id"].as_i64().unwrap();
    server.post("/v1/compliance/addresses", &own).await.assert_error(409, "address_listed");
    server
        .post("/v1/compliance/addresses", &json!({"address": "x", "category": "blocked", "reason": "r"}))
        .await
        .assert_error(400, "invalid_address");
    let screened = server.post("/v1/compliance/addresses/screen", &json!({"address": own["address"]})).await;
    assert_eq!(screened.expect(200)[0]["category"], "blocked");
    let removed = server.send(server.request(Method::DELETE, &format!("/v1/compliance/addresses/{id}"))).await;
    assert_eq!(removed.status.as_u16(), 204);
    let screened = server.post("/v1/compliance/addresses/screen", &json!({"address": own["address"]})).await;
    assert_eq!(screened.expect(200).as_array().map(Vec::len), Some(0));

    // An existing customer seen signing in from Iran: refused, and flagged for off-boarding once.
    for _ in 0..2 {
        from("IR", "/v1/customers/sign-in", json!({"email": "careful@example.com", "password": PASSWORD}))
            .await
            .assert_error(403, "jurisdiction_blocked");
    }
    let flagged = cases_of(&server, "offboarding").await;
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!((flagged[0]["outcome"].as_str(), flagged[0]["details"]["country"].as_str()), (Some("flag"), Some("IR")));

    // Without a session, nothing.
    let anonymous = api.send(api.public(Method::GET, "/v1/compliance/cases")).await;
    assert_eq!(anonymous.status.as_u16(), 401);
}

on_both_backends!(lists_screening_and_cases);
