//! The compliance chapters of `rampart demo`: the OFAC SDN list imported and versioned, a sign-up that matches it
//! frozen, KYC submitted, reviewed and masked, every customer re-screened when the list changes, a withdrawal to a
//! sanctioned address refused, and a large transfer through three levels of review with its Travel Rule record.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use base64::Engine as _;
use rampart_audit::Role;
use rampart_crypto::Keyring;
use reqwest::Method;
use serde_json::{Value, json};

use crate::demo_custody::{Http, staff_session};
use crate::demo_identity::Client;

fn chapter(title: &str) {
    println!("\n== {title}");
}

/// The shared list files, found beside the sources (the demo runs from a checkout).
fn testdata(dir: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../compliance/testdata").join(dir);
    if here.exists() { here } else { PathBuf::from("crates/compliance/testdata").join(dir) }
}

async fn wait_rescreened(staff: &Http, token: &str, version: i64) -> anyhow::Result<Value> {
    for _ in 0..600 {
        let (_, lists) = staff.call(Method::GET, "/v1/compliance/lists", Some(token), None).await;
        if let Some(v) = lists.as_array().into_iter().flatten().find(|l| l["version"] == version)
            && !v["rescreen"].is_null()
        {
            return Ok(v["rescreen"].clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    anyhow::bail!("version {version} was not re-screened")
}

/// Runs the chapters. `finn` are the headers of Finn's session (from the risk chapters).
pub(crate) async fn story(c: &Client, staff: &Http, keyring: &Keyring, finn: &[(&str, &str)]) -> anyhow::Result<()> {
    let store = c.state.store().clone();
    let sana = staff_session(staff, &c.state, &c.clock, keyring, "sana", Role::ComplianceL2).await?;
    chapter("35. Sanctions lists: the OFAC SDN list imported, versioned, and refused when unchanged");
    let list_dir = testdata("ofac");
    let body = crate::sanctions_cmd::import_body(&list_dir, &testdata("crypto-addresses"))?;
    let (status, import) = staff.call(Method::POST, "/v1/compliance/lists/ofac", Some(&sana), Some(&body)).await;
    ensure!(status == 201, "import: {status} {import}");
    let report = &import["report"];
    println!(
        "   Sana (compliance, level 2) imports the SDN files (rampart sanctions import does the same): version {},",
        import["version"]
    );
    println!(
        "   {} entries, {} aliases, {} digital-currency addresses in the remarks, {} in the per-asset lists,",
        report["entries"], report["aliases"], report["crypto_addresses"], report["asset_list_addresses"]
    );
    println!(
        "   {} rows that could not be read. Every customer is re-screened against it.",
        report["problems"].as_array().map_or(0, Vec::len)
    );
    let v1 = import["version"].as_i64().context("a version")?;
    wait_rescreened(staff, &sana, v1).await?;
    let (status, again) = staff.call(Method::POST, "/v1/compliance/lists/ofac", Some(&sana), Some(&body)).await;
    ensure!(status == 409 && again["error"]["code"] == "list_unchanged", "the same files again: {status} {again}");
    println!("   The same files again: {status} list_unchanged.");

    chapter("36. A sign-up that matches the sanctions list is frozen and a compliance case opened");
    let (status, signup) = c
        .call(
            "POST",
            "/v1/customers/sign-up",
            Some(&json!({"email": "jc@example.com", "password": "Basalt-Lantern-Quiver-83",
                "legal_name": "Juan Carlos Ramírez Abadía", "country": "CO", "date_of_birth": "1963-02-16"})),
            &[("x-forwarded-for", "198.51.100.90"), ("x-country", "CO")],
        )
        .await;
    ensure!(status == 201, "sign-up: {status} {signup}");
    let (_, cases) = staff.call(Method::GET, "/v1/compliance/cases", Some(&sana), None).await;
    let case = cases
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["kind"] == "sanctions_match")
        .context("a sanctions case")?
        .clone();
    let frozen =
        store.customer_by_id(case["customer"].as_i64().context("a customer")?).await?.context("the customer")?;
    ensure!(frozen.status.as_str() == "frozen", "the account is frozen: {:?}", frozen.status);
    println!(
        "   \"Juan Carlos Ramírez Abadía\", born 1963-02-16, Colombian, signs up: 201 (the answer does not say why"
    );
    println!(
        "   his account is {}). Case {}: entry {} \"{}\" matched as \"{}\", score {} (threshold {}).",
        frozen.status.as_str(),
        case["id"],
        case["details"]["entry"],
        case["details"]["primary_name"].as_str().unwrap_or(""),
        case["details"]["matched_name"].as_str().unwrap_or(""),
        case["details"]["score"],
        case["details"]["threshold"]
    );

    chapter("37. KYC: Finn submits his identity; a reviewer approves it; an auditor sees it masked");
    let pdf = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4\n% Finn's passport, scanned\n%%EOF\n");
    let (status, submitted) = c
        .call(
            "POST",
            "/v1/me/kyc",
            Some(&json!({"level": 1, "legal_name": "Finn Berger", "date_of_birth": "1988-06-01", "nationality": "DE",
                "documents": [{"kind": "passport", "content_base64": pdf}]})),
            finn,
        )
        .await;
    ensure!(status == 201, "KYC submission: {status} {submitted}");
    let submission = submitted["submission"].as_i64().context("a submission id")?;
    let leo = staff_session(staff, &c.state, &c.clock, keyring, "leo", Role::ComplianceL1).await?;
    let aud = staff_session(staff, &c.state, &c.clock, keyring, "aud", Role::Auditor).await?;
    let path = format!("/v1/compliance/kyc/{submission}");
    let (_, masked) = staff.call(Method::GET, &path, Some(&aud), None).await;
    let (_, plain) = staff.call(Method::GET, &path, Some(&leo), None).await;
    ensure!(masked["identity"]["legal_name"] == "F*** B***", "masked for the auditor: {masked}");
    ensure!(plain["identity"]["legal_name"] == "Finn Berger", "clear for the reviewer: {plain}");
    println!(
        "   Submission {submission}: level 1, a passport (stored sealed under the data key, with its SHA-256). The auditor"
    );
    println!(
        "   sees \"{}\", born {}; Leo (compliance, level 1) sees \"{}\", born {}. Both views are audited.",
        masked["identity"]["legal_name"].as_str().unwrap_or(""),
        masked["identity"]["date_of_birth"].as_str().unwrap_or(""),
        plain["identity"]["legal_name"].as_str().unwrap_or(""),
        plain["identity"]["date_of_birth"].as_str().unwrap_or("")
    );
    let (status, decided) = staff
        .call(
            Method::POST,
            &format!("{path}/decide"),
            Some(&leo),
            Some(&json!({"approve": true, "reason": "passport checked against the selfie call"})),
        )
        .await;
    ensure!(status == 200 && decided["level"] == 1, "approval: {status} {decided}");
    let (_, mine) = c.call("GET", "/v1/me/kyc", None, finn).await;
    println!(
        "   Leo approves: Finn is at level {}, withdrawals up to USD {} a day and {} a month.",
        mine["level"],
        mine["limits"]["daily_usd"].as_str().unwrap_or(""),
        mine["limits"]["monthly_usd"].as_str().unwrap_or("")
    );

    chapter("38. The list changes: every customer is re-screened, and a new match freezes the account");
    let mut body2 = body.clone();
    let sdn = body2["files"]["sdn.csv"].as_str().context("sdn.csv")?.replacen(
        "\n6718,",
        "\n99999001,\"BERGER, Finn\",\"individual\",\"SDGT\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \r\n6718,",
        1,
    );
    body2["files"]["sdn.csv"] = json!(sdn);
    let (status, import2) = staff.call(Method::POST, "/v1/compliance/lists/ofac", Some(&sana), Some(&body2)).await;
    ensure!(status == 201, "second import: {status} {import2}");
    let v2 = import2["version"].as_i64().context("a version")?;
    let rescreen = wait_rescreened(staff, &sana, v2).await?;
    println!(
        "   Version {v2}: added {}, removed {}, changed {}. Re-screening {} customers took {} ms: {} at or above the threshold;",
        import2["report"]["added"],
        import2["report"]["removed"].as_array().map_or(0, Vec::len),
        import2["report"]["changed"].as_array().map_or(0, Vec::len),
        rescreen["screened"],
        rescreen["elapsed_ms"],
        rescreen["matches"]
    );
    let (status, me) = c.call("GET", "/v1/me", None, finn).await;
    ensure!(status == 403, "Finn is frozen: {status} {me}");
    let (_, cases) = staff.call(Method::GET, "/v1/compliance/cases", Some(&leo), None).await;
    let finn_case = cases
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["details"]["trigger"] == "list_change")
        .context("a case from the re-screening")?
        .clone();
    println!(
        "   {} case opened: Finn (\"{}\" scores {} against the new entry). His account is frozen: GET /v1/me {status}.",
        rescreen["cases_opened"],
        finn_case["details"]["matched_name"].as_str().unwrap_or(""),
        finn_case["details"]["score"]
    );
    let (status, resolved) = staff
        .call(
            Method::POST,
            &format!("/v1/compliance/cases/{}/resolve", finn_case["id"]),
            Some(&leo),
            Some(&json!({"resolution": "release",
                "note": "false positive: the listed Finn Berger is another person (OFAC confirmed the identifiers differ)"})),
        )
        .await;
    ensure!(status == 200 && resolved["resolution"] == "release", "release: {status} {resolved}");
    let (status, _) = c.call("GET", "/v1/me", None, finn).await;
    ensure!(status == 200, "Finn is active again: {status}");
    println!("   Leo checks the identifiers and releases it as a false positive: GET /v1/me {status} again.");

    chapter("39. A withdrawal to a sanctioned address is refused, whatever its letter case");
    let listed = std::fs::read_to_string(testdata("crypto-addresses").join("sanctioned_addresses_ETH.txt"))?;
    let address =
        listed.lines().find(|l| l.starts_with("0x")).context("an ETH address")?.to_uppercase().replacen("0X", "0x", 1);
    let (status, refused) =
        c.call("POST", "/v1/me/destinations/screen", Some(&json!({"asset": "ETH", "address": address})), finn).await;
    ensure!(status == 403 && refused["error"]["code"] == "destination_refused", "{status} {refused}");
    println!("   Finn checks {address} (listed in lower case): {status} destination_refused,");
    println!("   \"{}\" — the customer is never told which list.", refused["error"]["message"].as_str().unwrap_or(""));
    let own = "bc1qdemoblockedaddress0000000000000000000000";
    let (status, _) = staff
        .call(
            Method::POST,
            "/v1/compliance/addresses",
            Some(&sana),
            Some(&json!({"address": own, "category": "blocked", "reason": "mixer deposit address seen in case 4711"})),
        )
        .await;
    ensure!(status == 201, "listing: {status}");
    let (status, body) =
        c.call("POST", "/v1/me/destinations/screen", Some(&json!({"asset": "BTC", "address": own})), finn).await;
    ensure!(status == 403, "the exchange's own block list: {status} {body}");
    let (_, cases) = staff.call(Method::GET, "/v1/compliance/cases", Some(&leo), None).await;
    let held = cases.as_array().into_iter().flatten().filter(|c| c["kind"] == "address_match").count();
    println!(
        "   Sana blocks an address on the exchange's own list; it is refused too ({status}). {held} address case open for review."
    );

    chapter("40. A USD 25,000 transfer passes three levels of review, by three people, none the requester");
    let finn_id = plain["customer"].as_i64().context("Finn's id")?;
    let (status, review) = staff
        .call(
            Method::POST,
            "/v1/compliance/reviews",
            Some(&sana),
            Some(&json!({"reference": "otc-2026-0001", "customer": finn_id, "asset": "BTC", "amount": "0.25",
                "amount_usd_micros": 25_000_000_000u64})),
        )
        .await;
    ensure!(status == 201, "review: {status} {review}");
    let decide = format!("/v1/compliance/reviews/{}/decide", review["id"]);
    let yes = |why: &str| json!({"approve": true, "reason": why});
    let (status, own) = staff.call(Method::POST, &decide, Some(&sana), Some(&yes("mine"))).await;
    ensure!(status == 403, "the requester: {status} {own}");
    let lena = staff_session(staff, &c.state, &c.clock, keyring, "lena", Role::ComplianceL2).await?;
    let mara = staff_session(staff, &c.state, &c.clock, keyring, "mara", Role::ComplianceL3).await?;
    let (status, early) = staff.call(Method::POST, &decide, Some(&lena), Some(&yes("looks fine"))).await;
    ensure!(status == 403 && early["error"]["code"] == "wrong_level", "level 2 first: {status} {early}");
    let (s1, _) = staff.call(Method::POST, &decide, Some(&leo), Some(&yes("source of funds on file"))).await;
    let (s2, _) = staff.call(Method::POST, &decide, Some(&lena), Some(&yes("counterparty known"))).await;
    let (s3, done) = staff.call(Method::POST, &decide, Some(&mara), Some(&yes("approved by the MLRO"))).await;
    ensure!((s1, s2, s3) == (200, 200, 200) && done["state"]["state"] == "approved", "{s1} {s2} {s3} {done}");
    println!("   Sana asks; her own approval is refused (own_request), Lena's before level 1 too (wrong_level);");
    println!(
        "   Leo (level 1), Lena (level 2) and Mara (level 3, the MLRO) approve in order: {}.",
        done["state"]["state"]
    );
    let travel = json!({"reference": "otc-2026-0001", "customer": finn_id, "asset": "BTC", "amount": "0.25",
        "amount_usd_micros": 25_000_000_000u64,
        "originator": {"name": "Finn Berger", "account": "customer 1"},
        "beneficiary": {"name": "Ada Lovelace", "account": "bc1qbeneficiary00000000000000000000000000",
            "institution": "Example Custody GmbH"}});
    let (status, _) = staff.call(Method::POST, "/v1/compliance/travel-rule", Some(&sana), Some(&travel)).await;
    ensure!(status == 201, "travel rule: {status}");
    let (_, seen) = staff.call(Method::GET, "/v1/compliance/travel-rule", Some(&aud), None).await;
    println!(
        "   Its Travel Rule record (over USD 1,000) is stored sealed; the auditor sees the beneficiary as \"{}\", {}.",
        seen[0]["beneficiary"]["name"].as_str().unwrap_or(""),
        seen[0]["beneficiary"]["account"].as_str().unwrap_or("")
    );
    Ok(())
}
